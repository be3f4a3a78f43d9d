"""Load generators for the starvation test (``test_load_starvation.py``), run as processes.

``python -m tests.integration.loadgen flood DIR TARGET SECONDS IN_FLIGHT NAME...`` keeps
``IN_FLIGHT`` calls open per identity (closed loop: a call is re-issued as soon as it ends)
for ``SECONDS``, cycling through Heartbeat, PullWork, a garbage Submit and Health/Check;
``python -m tests.integration.loadgen health DIR TARGET SECONDS INTERVAL NAME...`` checks
the standard health service every ``INTERVAL`` seconds from each identity (staggered) and
records each latency. Both print one
JSON object (counts by status, latencies) on their last line. Each identity uses its own
certificate (``DIR/NAME.crt``) and its own channel, as a site would; running them in their
own processes keeps their client-side CPU out of the measured sites' event loop.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedsynth import PROTOCOL_VERSION
from fedsynth.transport import TLSFiles, create_channel
from fedsynth.v1 import federation_pb2 as pb
from fedsynth.v1 import federation_pb2_grpc as pb_grpc


def _channel(pki: Path, name: str, target: str) -> grpc.aio.Channel:
    return create_channel(target, TLSFiles(pki / "ca.crt", pki / f"{name}.crt",
                                           pki / f"{name}.key"), server_name="localhost")


async def _flood(pki: Path, target: str, seconds: float, in_flight: int,
                 names: list[str]) -> dict:
    codes: collections.Counter[str] = collections.Counter()
    details: dict[str, str] = {}
    end = time.monotonic() + seconds

    async def worker(stub: pb_grpc.FederationStub, health: health_pb2_grpc.HealthStub,
                     offset: int) -> None:
        i = offset
        while time.monotonic() < end:
            i += 1
            try:
                kind = i % 4
                if kind == 0:
                    await stub.Heartbeat(pb.HeartbeatRequest(protocol_version=PROTOCOL_VERSION,
                                                             agent_version="flood"), timeout=30)
                elif kind == 1:
                    await stub.PullWork(pb.PullWorkRequest(protocol_version=PROTOCOL_VERSION),
                                        timeout=30)
                elif kind == 2:
                    await stub.Submit(pb.SubmitRequest(protocol_version=PROTOCOL_VERSION,
                                                       submission=b"\x00garbage" * 50,
                                                       signature=b"x"), timeout=30)
                else:
                    await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1
                details.setdefault(error.code().name, error.details() or "")

    channels = [_channel(pki, name, target) for name in names]
    try:
        await asyncio.gather(*(
            worker(pb_grpc.FederationStub(ch), health_pb2_grpc.HealthStub(ch), k)
            for ch in channels for k in range(in_flight)))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)
    return {"codes": dict(codes), "details": details, "identities": len(names),
            "in_flight": in_flight, "seconds": seconds}


async def _health(pki: Path, target: str, seconds: float, interval: float,
                  names: list[str]) -> dict:
    latencies: list[float] = []
    codes: collections.Counter[str] = collections.Counter()
    details: dict[str, str] = {}
    end = time.monotonic() + seconds

    async def probe(name: str, offset: float) -> None:
        channel = _channel(pki, name, target)
        stub = health_pb2_grpc.HealthStub(channel)
        await asyncio.sleep(offset)
        try:
            while time.monotonic() < end:
                started = time.perf_counter()
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""),
                                             timeout=10)
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                    codes[status] += 1
                except grpc.aio.AioRpcError as error:
                    codes[error.code().name] += 1
                    details.setdefault(error.code().name, error.details() or "")
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))
        finally:
            await channel.close()

    await asyncio.gather(*(probe(name, i * interval / len(names))
                           for i, name in enumerate(names)))
    return {"codes": dict(codes), "details": details, "latencies": latencies}


def main(argv: list[str]) -> int:
    mode, pki, target = argv[0], Path(argv[1]), argv[2]
    if mode == "flood":
        result = asyncio.run(_flood(pki, target, float(argv[3]), int(argv[4]), argv[5:]))
    elif mode == "health":
        result = asyncio.run(_health(pki, target, float(argv[3]), float(argv[4]), argv[5:]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
