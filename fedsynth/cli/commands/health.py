"""``fedsynth health``: ask a coordinator's standard gRPC health service (over mutual TLS).

The probe of containers and orchestrators (compose ``healthcheck``, Kubernetes ``exec``
probes, systemd ``ExecStartPost``, monitoring): exit 0 when the server reports SERVING,
1 when it reports anything else or cannot be reached, 2 for bad options. Kubernetes'
built-in gRPC probe cannot present a client certificate, which mutual TLS requires;
running this command inside the pod can. It uses the same channel construction as the
site agent (:func:`fedsynth.transport.create_channel`), so it also checks the TLS set-up.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsynth.cli.registry import Command
from fedsynth.errors import InputError


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, metavar="HOST:PORT",
                        help="coordinator address")
    parser.add_argument("--service", default="",
                        help="service name to check (default: the whole server)")
    parser.add_argument("--ca", help="project CA certificate (PEM)")
    parser.add_argument("--cert", help="client certificate (PEM), signed by the CA")
    parser.add_argument("--key", help="client private key (PEM)")
    parser.add_argument("--server-name", help="name expected in the server certificate "
                        "(default: the host of --target)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--insecure", action="store_true",
                        help="plain text (only for a coordinator started with --insecure)")


def _run(args: argparse.Namespace) -> int:
    # lazy: asyncio is not loaded by `fedsynth --help` (start-up)
    import asyncio

    # lazy: keeps grpc out of `fedsynth --help` start-up
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    # lazy: fedsynth.transport is not loaded by `fedsynth --help` (start-up)
    from fedsynth.transport import TLSFiles, create_channel

    if not args.timeout > 0:
        raise InputError(f"--timeout = {args.timeout!r} must be positive")
    tls = None
    if not args.insecure:
        missing = [name for name in ("ca", "cert", "key") if not getattr(args, name)]
        if missing:
            raise InputError(f"--{missing[0]} is required for mutual TLS (or --insecure)")
        tls = TLSFiles(Path(args.ca), Path(args.cert), Path(args.key))
        tls.read()  # InputError naming the unreadable file

    async def check() -> tuple[bool, str]:
        channel = create_channel(args.target, tls, insecure=args.insecure,
                                 server_name=args.server_name)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=args.service),
                                     timeout=args.timeout)
        except grpc.aio.AioRpcError as error:
            return False, f"{error.code().name}: {error.details()}"
        finally:
            await channel.close()
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return reply.status == health_pb2.HealthCheckResponse.SERVING, status

    ok, status = asyncio.run(check())
    service = args.service or "(server)"
    print(f"{args.target} {service}: {status}")
    return 0 if ok else 1


COMMANDS = [Command(("health",), "check a coordinator's gRPC health service (mTLS)",
                    _add_arguments, _run)]
