"""The site agent's gRPC client of ``fedsynth.v1.Federation``.

It dials out (sites never accept connections), over the channel built by
:mod:`fedsynth.transport`, names the protocol version in every request and checks the
coordinator's. gRPC errors are mapped to two domain errors: :class:`CoordinatorUnavailable`
(transient: retry with backoff) and :class:`CoordinatorRefused` (permanent for this
request: the status and the coordinator's reason).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from fedsynth import PROTOCOL_VERSION, __version__
from fedsynth.errors import FedsynthError
from fedsynth.serde import WorkItem, decode_work, pb
from fedsynth.transport import TLSFiles, create_channel
from fedsynth.v1 import federation_pb2_grpc as pb_grpc

__all__ = ["FederationClient", "CoordinatorUnavailable", "CoordinatorRefused", "SubmitAck"]

#: Statuses worth retrying: the coordinator is restarting, the network dropped, or the
#: site is being rate limited.
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
             grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


class CoordinatorUnavailable(FedsynthError):
    """The coordinator cannot be reached now (retry later)."""


class CoordinatorRefused(FedsynthError):
    """The coordinator answered with a refusal; ``code`` is the gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.reason = message


@dataclass(frozen=True)
class SubmitAck:
    """The coordinator's acknowledgement of a submission."""

    status: str
    round_id: str
    message: str


class FederationClient:
    """Calls of one site agent to its coordinator.

    Parameters
    ----------
    target
        ``HOST:PORT`` of the coordinator.
    tls
        The site's TLS files (None only with ``insecure``).
    insecure
        Plain text (local experiments only; warns loudly).
    server_name
        Name to check in the coordinator's certificate if it differs from ``target``'s host.
    site
        The site name, sent as a header only on an insecure channel (there is no certificate).
    timeout
        Per-call deadline in seconds.
    """

    def __init__(self, target: str, tls: TLSFiles | None, *, insecure: bool = False,
                 server_name: str | None = None, site: str | None = None,
                 timeout: float = 15.0) -> None:
        self.target = target
        self.timeout = timeout
        self.channel = create_channel(target, tls, insecure=insecure, server_name=server_name)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.metadata = (("x-fedsynth-insecure-site", site),) if insecure and site else None

    async def close(self) -> None:
        """Close the channel to the coordinator."""
        await self.channel.close()

    async def __aenter__(self) -> FederationClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            reply = await method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            detail = error.details() or code.name
            if code in TRANSIENT:
                raise CoordinatorUnavailable(f"coordinator {self.target} unavailable "
                                             f"({code.name}: {detail})") from None
            raise CoordinatorRefused(code.name, detail) from None
        if reply.protocol_version != PROTOCOL_VERSION:
            raise CoordinatorRefused("FAILED_PRECONDITION", "incompatible protocol: the "
                                     f"coordinator speaks {reply.protocol_version!r}, this "
                                     f"site speaks {PROTOCOL_VERSION!r}")
        return reply

    async def register(self) -> str:
        """Register this site with the coordinator; returns the name its certificate gives."""
        reply = await self._call(self.stub.Register, pb.RegisterRequest(
            protocol_version=PROTOCOL_VERSION, agent_version=__version__))
        return reply.site

    async def heartbeat(self) -> int:
        """Send a heartbeat; returns the coordinator's clock (Unix milliseconds)."""
        reply = await self._call(self.stub.Heartbeat, pb.HeartbeatRequest(
            protocol_version=PROTOCOL_VERSION, agent_version=__version__))
        return reply.server_time_unix_ms

    async def pull_work(self) -> list[WorkItem]:
        """The rounds open for this site."""
        reply = await self._call(self.stub.PullWork,
                                 pb.PullWorkRequest(protocol_version=PROTOCOL_VERSION))
        return [decode_work(w) for w in reply.work]

    async def submit(self, payload: bytes, signature: bytes) -> SubmitAck:
        """Send a signed submission; resending the same bytes is always safe.

        ``ALREADY_EXISTS`` is not final for the agent on its own: a coordinator before
        issue 10 answered it to an identical resend that raced another copy of itself ("a
        concurrent submission ... was stored first"), and a transient failure after the
        store's commit makes the agent resend bytes that are already stored. So the same
        bytes are sent once more: the coordinator then answers ``duplicate`` when what it
        stored is this submission, and refuses it again (``CoordinatorRefused``, final) when
        it stored a different answer or saw the nonce elsewhere.
        """
        request = pb.SubmitRequest(protocol_version=PROTOCOL_VERSION, submission=payload,
                                   signature=signature)
        try:
            reply = await self._call(self.stub.Submit, request)
        except CoordinatorRefused as refused:
            if refused.code != grpc.StatusCode.ALREADY_EXISTS.name:
                raise
            reply = await self._call(self.stub.Submit, request)
        return SubmitAck(reply.status, reply.round_id, reply.message)

    async def stream_steps(self) -> AsyncIterator[pb.ModelStep]:
        """The model steps the coordinator pushes to this site, as they come (long-lived).

        No deadline: the stream stays open between fits. Errors map as for every call
        (:class:`CoordinatorUnavailable` when the connection drops: reconnect and the
        coordinator pushes the unanswered steps again).
        """
        call = self.stub.StreamSteps(pb.StreamStepsRequest(
            protocol_version=PROTOCOL_VERSION, agent_version=__version__),
            metadata=self.metadata)
        try:
            async for message in call:
                if message.protocol_version != PROTOCOL_VERSION:
                    raise CoordinatorRefused(
                        "FAILED_PRECONDITION", "incompatible protocol: the coordinator "
                        f"speaks {message.protocol_version!r}, this site speaks "
                        f"{PROTOCOL_VERSION!r}")
                yield message
        except grpc.aio.AioRpcError as error:
            code = error.code()
            detail = error.details() or code.name
            if code in TRANSIENT:
                raise CoordinatorUnavailable(f"coordinator {self.target} step stream "
                                             f"ended ({code.name}: {detail})") from None
            raise CoordinatorRefused(code.name, detail) from None
        finally:
            call.cancel()

    async def answer_step(self, payload: bytes, signature: bytes) -> SubmitAck:
        """Send a signed answer to a model step; resending the same bytes is safe."""
        reply = await self._call(self.stub.AnswerStep, pb.AnswerStepRequest(
            protocol_version=PROTOCOL_VERSION, answer=payload, signature=signature))
        return SubmitAck(reply.status, reply.step_id, reply.message)
