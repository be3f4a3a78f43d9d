"""Thin grpc.aio servicers of ``fedsynth.v1.Federation``.

Each method reads the request, takes the caller's identity from the TLS auth context (the
verified peer certificate), calls :class:`coordinator.handlers.Handlers` and maps a
:class:`~coordinator.handlers.Rejected` to a gRPC status. Blocking store work runs in a
worker thread so that one slow disk write does not stall every other site's heartbeat.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from coordinator.handlers import Handlers, Rejected
from fedsynth import PROTOCOL_VERSION, __version__
from fedsynth.serde import encode_work, pb
from fedsynth.v1 import federation_pb2_grpc as pb_grpc

__all__ = ["FederationService", "STATUS_OF", "peer_pem"]

#: gRPC status of each :class:`Rejected` kind.
STATUS_OF = {
    "version": grpc.StatusCode.FAILED_PRECONDITION,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "permission": grpc.StatusCode.PERMISSION_DENIED,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "conflict": grpc.StatusCode.ALREADY_EXISTS,
}

#: Metadata key a site may use to name itself on an --insecure server (only there).
INSECURE_SITE_HEADER = "x-fedsynth-insecure-site"


def peer_pem(context: Any) -> bytes | None:
    """PEM of the verified TLS peer certificate, or None (no TLS)."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return None
    pem = pems[0]
    return pem if isinstance(pem, bytes) else pem.encode()


def _insecure_name(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == INSECURE_SITE_HEADER:
            return str(value)
    return None


class FederationService(pb_grpc.FederationServicer):
    """The coordinator's ``Federation`` service."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers

    async def _call(self, context: Any, work: Any) -> Any:
        pem = peer_pem(context)
        insecure_name = _insecure_name(context)

        def identified() -> Any:
            return work(self.handlers.identify(pem, insecure_name), pem)

        try:
            # identification may audit (a refused peer): like the work, off the event loop
            return await asyncio.to_thread(identified)
        except Rejected as rejected:
            await context.abort(STATUS_OF[rejected.kind], rejected.message)

    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterReply:
        """The ``Register`` RPC: register the calling site, named by its certificate."""
        def work(site: str, _pem: Any) -> pb.RegisterReply:
            self.handlers.register(site, agent_version=request.agent_version,
                                   protocol_version=request.protocol_version)
            return pb.RegisterReply(protocol_version=PROTOCOL_VERSION, site=site,
                                    coordinator_version=__version__,
                                    heartbeat_interval_seconds=10.0)
        return await self._call(context, work)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatReply:
        """The ``Heartbeat`` RPC: record that the calling site is alive."""
        def work(site: str, _pem: Any) -> pb.HeartbeatReply:
            self.handlers.heartbeat(site, agent_version=request.agent_version,
                                    protocol_version=request.protocol_version)
            return pb.HeartbeatReply(protocol_version=PROTOCOL_VERSION,
                                     server_time_unix_ms=int(time.time() * 1000))
        return await self._call(context, work)

    async def PullWork(self, request: pb.PullWorkRequest, context: Any) -> pb.PullWorkReply:
        """The ``PullWork`` RPC: the rounds open for the calling site."""
        def work(site: str, _pem: Any) -> pb.PullWorkReply:
            items = self.handlers.pull_work(site, protocol_version=request.protocol_version)
            return pb.PullWorkReply(protocol_version=PROTOCOL_VERSION,
                                    work=[encode_work(i) for i in items])
        return await self._call(context, work)

    async def Submit(self, request: pb.SubmitRequest, context: Any) -> pb.SubmitReply:
        """The ``Submit`` RPC: verify and store a signed submission of the calling site."""
        def work(site: str, pem: Any) -> pb.SubmitReply:
            result = self.handlers.submit(site, pem, protocol_version=request.protocol_version,
                                          payload=bytes(request.submission),
                                          signature=bytes(request.signature))
            return pb.SubmitReply(protocol_version=PROTOCOL_VERSION, status=result.status,
                                  round_id=result.round_id, message=result.message)
        return await self._call(context, work)

    async def StreamSteps(self, request: pb.StreamStepsRequest, context: Any
                          ) -> AsyncIterator[pb.ModelStep]:
        """The ``StreamSteps`` RPC: the model steps for the calling site, as they come."""
        def work(site: str, _pem: Any) -> tuple[str, Any]:
            hub = self.handlers.open_steps(site, protocol_version=request.protocol_version)
            return site, hub
        opened = await self._call(context, work)
        if opened is None:          # aborted (context.abort raised inside _call)
            return
        site, hub = opened
        async for message in hub.stream(site):
            yield message

    async def AnswerStep(self, request: pb.AnswerStepRequest, context: Any
                         ) -> pb.AnswerStepReply:
        """The ``AnswerStep`` RPC: verify, store and deliver a signed answer to a step."""
        def work(site: str, pem: Any) -> pb.AnswerStepReply:
            result = self.handlers.answer_step(site, pem,
                                               protocol_version=request.protocol_version,
                                               payload=bytes(request.answer),
                                               signature=bytes(request.signature))
            return pb.AnswerStepReply(protocol_version=PROTOCOL_VERSION,
                                      status=result.status, step_id=result.step_id,
                                      message=result.message)
        return await self._call(context, work)
