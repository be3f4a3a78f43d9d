"""Operations: Prometheus metrics and the standard gRPC health service of the coordinator.

Why
---
A central team runs the coordinator unattended (monthly evaluation rounds). It needs to
see, without reading logs, whether rounds open and close, whether sites keep submitting,
why submissions are rejected (an expired certificate looks very different from a replay
attack), how long pooling takes and when each site was last heard from. Those are the
metrics below, in the Prometheus exposition format (the de-facto standard scraped by
Prometheus, Grafana Agent, OpenTelemetry collectors; see the Prometheus naming guide,
https://prometheus.io/docs/practices/naming/). Liveness and readiness probes (Kubernetes,
load balancers) use the standard ``grpc.health.v1.Health`` service, so no custom probe
code is needed (``grpc_health_probe``, Kubernetes' built-in gRPC probe).

Label cardinality is bounded on purpose: rejection reasons are mapped to a fixed set
(:data:`REJECTION_REASONS`) and per-site series exist only for authenticated, allowed
sites, so a hostile client cannot create series by sending made-up names.

The coordinator calls :class:`CoordinatorMetrics` methods; nothing here imports the
store or the servicers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from fedsynth.errors import InputError

#: rejection reasons with their own series; anything else is counted as "other". The
#: first group are the kinds coordinator/handlers.py raises (``Rejected.kind``: version,
#: unauthenticated (no or bad certificate or signature), permission (not allowed, signed
#: for another site), not_found (unknown round), invalid (malformed or bad values),
#: precondition (round closed, late), conflict (replay, different content)); the second
#: finer names for callers that know more.
REJECTION_REASONS: frozenset[str] = frozenset({
    "version", "unauthenticated", "permission", "not_found", "invalid", "precondition",
    "conflict",
    "bad_signature", "replay", "wrong_round", "round_closed", "late", "duplicate",
    "invalid_value", "unknown_site", "unknown_analysis", "revoked", "rate_limited",
    "concurrency_limited", "oversized", "protocol_version", "malformed", "other",
})

#: pooling time buckets (seconds): a round pools in milliseconds to a few seconds
POOLING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                   30, 60)


def normalise_reason(reason: str) -> str:
    """Map a rejection reason to one of :data:`REJECTION_REASONS` (bounded cardinality)."""
    key = str(reason).strip().lower().replace("-", "_").replace(" ", "_")
    return key if key in REJECTION_REASONS else "other"


class CoordinatorMetrics:
    """The coordinator's Prometheus metrics.

    Parameters
    ----------
    registry
        Where the metrics are registered. Each instance should get its own registry
        (the default creates one), so tests and several coordinators in one process do
        not collide; :meth:`serve` exposes exactly this registry.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rounds_started = Counter("fedsynth_rounds_started_total",
                                      "Rounds opened.", registry=r)
        self.rounds_closed = Counter("fedsynth_rounds_closed_total",
                                     "Rounds closed, by final status (pooled, failed).",
                                     ["status"], registry=r)
        self.rounds_open = Gauge("fedsynth_rounds_open", "Rounds currently open.",
                                 registry=r)
        self.submissions = Counter("fedsynth_submissions_total",
                                   "Submissions accepted, by site.", ["site"], registry=r)
        self.rejections = Counter("fedsynth_rejections_total",
                                  "Requests rejected, by reason.", ["reason"], registry=r)
        self.pooling_seconds = Histogram("fedsynth_pooling_seconds",
                                         "Time to pool all analyses of a round.",
                                         buckets=POOLING_BUCKETS, registry=r)
        self.site_last_seen = Gauge("fedsynth_site_last_seen_timestamp_seconds",
                                    "Unix time of the last authenticated call of a site.",
                                    ["site"], registry=r)
        self.build = Info("fedsynth_build", "Package and protocol versions.", registry=r)
        from fedsynth import PROTOCOL_VERSION, __version__

        self.build.info({"version": __version__, "protocol": PROTOCOL_VERSION})
        for reason in REJECTION_REASONS:  # export zeros, so rate() works from the start
            self.rejections.labels(reason=reason)
        for status in ("pooled", "failed"):
            self.rounds_closed.labels(status=status)

    # ------------------------------------------------------------- called by the core
    def round_started(self) -> None:
        """A round was opened."""
        self.rounds_started.inc()
        self.rounds_open.inc()

    def round_closed(self, status: str) -> None:
        """A round closed with ``status`` (``pooled`` or ``failed``)."""
        if status not in ("pooled", "failed"):
            raise InputError(f"round status {status!r} is not 'pooled' or 'failed'")
        self.rounds_closed.labels(status=status).inc()
        self.rounds_open.dec()

    def set_open_rounds(self, count: int) -> None:
        """Set the open-round gauge (at start-up, from the store)."""
        self.rounds_open.set(int(count))

    def submission_accepted(self, site: str) -> None:
        """An allowed site's submission was accepted (also marks the site as seen)."""
        self.submissions.labels(site=site).inc()
        self.site_seen(site)

    def submission_rejected(self, reason: str) -> None:
        """A request was rejected; ``reason`` is mapped by :func:`normalise_reason`."""
        self.rejections.labels(reason=normalise_reason(reason)).inc()

    def site_seen(self, site: str, when: float | None = None) -> None:
        """An authenticated, allowed site called (heartbeat, pull, submit)."""
        self.site_last_seen.labels(site=site).set(time.time() if when is None else when)

    def known_sites(self, sites: Iterable[str]) -> None:
        """Create the per-site series of the allow-list (0 = never seen) at start-up."""
        for site in sites:
            self.submissions.labels(site=site)
            self.site_last_seen.labels(site=site)

    @contextmanager
    def time_pooling(self) -> Iterator[None]:
        """Context manager observing the wall time of pooling a round."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.pooling_seconds.observe(time.perf_counter() - start)

    # ------------------------------------------------------------- exposition
    def exposition(self) -> bytes:
        """The current metrics in the Prometheus text format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def serve(self, listen: str) -> MetricsEndpoint:
        """Serve ``/metrics`` over HTTP on ``listen`` (``host:port``; port 0 = free port).

        The endpoint carries no patient data, only counts and times; bind it to a
        loopback or cluster-internal address (``metrics_listen`` in coordinator.toml).
        """
        from prometheus_client import start_http_server

        host, port = parse_listen(listen, "metrics_listen")
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise InputError(f"metrics_listen = {listen!r}: cannot listen: {error}") \
                from None
        return MetricsEndpoint(host=host, port=server.server_port, _server=server,
                               _thread=thread)


@dataclass(frozen=True)
class MetricsEndpoint:
    """A running ``/metrics`` HTTP endpoint."""

    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def parse_listen(value: str, key: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` allowed); errors name the key and value."""
    text = str(value).strip()
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InputError(f"{key} = {value!r} is not 'host:port' with a port in 0..65535")
    return host, int(port_text)


# ---------------------------------------------------------------------- gRPC health
async def add_health_service(server: Any, services: Iterable[str] = ()) -> Any:
    """Register the standard ``grpc.health.v1.Health`` service on a ``grpc.aio`` server.

    The overall server (``""``) and every name in ``services`` start as ``SERVING``.
    Call it before ``server.start()``; the returned servicer's ``await set(name,
    status)`` changes a status and :func:`mark_not_serving` flips everything to
    ``NOT_SERVING`` on shutdown, so load balancers and Kubernetes stop sending work
    before the server goes away. A synchronous ``grpc.server`` gets the synchronous
    servicer (same behaviour).
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    serving = health_pb2.HealthCheckResponse.SERVING
    if isinstance(server, grpc.aio.Server):
        from grpc_health.v1._async import HealthServicer as AioHealthServicer

        servicer = AioHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        for name in ("", *services):
            await servicer.set(name, serving)
        return servicer
    from grpc_health.v1 import health

    servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ("", *services):
        servicer.set(name, serving)
    return servicer


async def mark_not_serving(servicer: Any) -> None:
    """Report NOT_SERVING for every service (graceful shutdown: stop new work first)."""
    result = servicer.enter_graceful_shutdown()
    if hasattr(result, "__await__"):
        await result
