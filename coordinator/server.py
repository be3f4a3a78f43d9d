"""``fedsynth coordinator serve``: the coordinator process.

Runs the grpc.aio server (mutual TLS, revocation check and per-site rate limit on every
call, the standard health service), a closer loop that closes and pools due rounds, writes
their reports, and the scheduler of ``[[schedule]]`` rounds. SIGTERM or SIGINT stops it
gracefully: no new calls, in-flight calls get a grace period, the closer finishes its step.

Rounds opened by ``fedsynth round start`` (which writes to the same store) are noticed by
the closer and served by ``PullWork`` at once: there is no in-memory round state to
refresh, which is also why a coordinator killed with SIGKILL resumes every open round on
restart (and why two coordinator processes on one store would not pool a round twice).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import os
import signal
from pathlib import Path
from typing import Any

from fedsynth.config import CoordinatorConfig
from coordinator.store import Store, utcnow

__all__ = ["Coordinator", "serve", "write_addr_file", "read_addr_file"]

log = logging.getLogger(__name__)

#: How often the closer checks open rounds (seconds).
CLOSER_INTERVAL = 0.5


def write_addr_file(path: Path, address: str) -> None:
    """Atomically write the bound address (``HOST:PORT``) for tests and local tools."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(address + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_addr_file(path: Path) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def _connect_host(listen_host: str) -> str:
    # A wildcard bind is reachable on loopback; the certificate covers 127.0.0.1.
    return "127.0.0.1" if listen_host in ("0.0.0.0", "[::]", "::", "") else listen_host


class Coordinator:
    """One running coordinator (server + closer + scheduler).

    Parameters
    ----------
    config
        The coordinator configuration.
    """

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.store = Store(config.state)
        self.audit = None
        if config.audit_log is not None:
            from fedsynth.audit import AuditLog

            self.audit = AuditLog(config.audit_log)
        self.metrics = None
        self._metrics_endpoint = None
        try:
            from coordinator.metrics import CoordinatorMetrics

            self.metrics = CoordinatorMetrics()
        except ImportError:  # pragma: no cover - metrics are optional
            self.metrics = None
        from coordinator.handlers import Handlers

        self.handlers = Handlers(self.store, config, audit=self.audit, metrics=self.metrics)
        self.server: Any = None
        self.port: int | None = None
        self.address: str | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._scheduler: Any = None

    def _audit(self, event: str, data: dict[str, Any]) -> None:
        if self.audit is not None:
            try:
                self.audit.append(event, data)
            except Exception:  # noqa: BLE001
                log.exception("audit append failed")

    def _interceptors(self) -> list[Any]:
        interceptors: list[Any] = []
        if self.config.tls is not None and not self.config.insecure:
            from fedsynth.revocation import RevocationInterceptor, RevocationList

            revocations = RevocationList(self.config.revocation or
                                         self.config.tls.ca.parent / "revoked.crl",
                                         ca=self.config.tls.ca)
            def on_revoked(site: str, serial: int, reason: str) -> None:
                self._audit("peer.revoked", {"site": site, "serial": f"{serial:x}",
                                             "reason": reason})
                if self.metrics is not None:
                    self.metrics.submission_rejected("revoked")

            interceptors.append(RevocationInterceptor(revocations, on_reject=on_revoked))
        from coordinator.ratelimit import RateLimit, RateLimiter, RateLimitInterceptor

        def on_rate_limited(who: str, method: str) -> None:
            self._audit("peer.rate_limited", {"peer": who, "method": method})
            # reported at most once per peer per minute (ratelimit.py): the series shows
            # that limiting happens, not how many calls were refused
            if self.metrics is not None:
                self.metrics.submission_rejected("rate_limited")

        interceptors.append(RateLimitInterceptor(RateLimiter(RateLimit(
            rate=self.config.rate, burst=self.config.burst)), on_reject=on_rate_limited))
        return interceptors

    async def start(self) -> int:
        """Bind, start serving, write the address file; return the port."""
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        from fedsynth.transport import add_port, create_server
        from fedsynth.v1 import federation_pb2_grpc as pb_grpc
        from coordinator.service import FederationService

        self.server = create_server(interceptors=self._interceptors())
        pb_grpc.add_FederationServicer_to_server(FederationService(self.handlers), self.server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        self.port = add_port(self.server, self.config.listen, self.config.tls,
                             insecure=self.config.insecure)
        await self.server.start()
        await health_servicer.set("fedsynth.v1.Federation",
                                  health_pb2.HealthCheckResponse.SERVING)
        host = self.config.listen.rpartition(":")[0]
        self.address = f"{_connect_host(host)}:{self.port}"
        write_addr_file(self.config.addr_file, self.address)
        log.info("coordinator listening on %s (state %s, allowed sites: %s)", self.address,
                 self.store._safe_url(), ", ".join(self.config.allow) or "none")
        print(f"coordinator listening on {self.address}", flush=True)
        if self.metrics is not None and self.config.metrics_listen:
            self._metrics_endpoint = self.metrics.serve(self.config.metrics_listen)
            log.info("metrics on %s", self._metrics_endpoint.url)
        self._tasks.append(asyncio.create_task(self._closer(), name="closer"))
        if self.config.schedule:
            self._tasks.append(asyncio.create_task(self._run_scheduler(), name="scheduler"))
        return self.port

    # --- closing rounds ----------------------------------------------------------------------
    def _write_report(self, round_id: str) -> None:
        from coordinator.reports import write_round_report

        record = self.store.get_round(round_id)
        try:
            paths = write_round_report(record.document, self.config.report_dir)
            report = {"html": str(paths.html), "json": str(paths.json)}
            log.info("round %s: report written to %s", round_id, paths.html)
        except Exception as error:  # noqa: BLE001 - a report bug must not stop the closer
            log.exception("round %s: report could not be written", round_id)
            report = {"error": f"{type(error).__name__}: {error}"}
        self.store.set_report(round_id, report)

    def close_due_rounds(self, now: _dt.datetime | None = None) -> list[str]:
        """Close every due open round (blocking; run in a thread). Returns closed ids."""
        from coordinator.rounds import close_if_due

        closed = []
        for record in self.store.list_rounds(status="open"):
            outcome = close_if_due(self.store, record.id, now or utcnow())
            if outcome is None:
                continue
            closed.append(record.id)
            log.info("round %s closed: %s (%d submissions)%s", record.id, outcome.status,
                     outcome.n_submissions,
                     f": {outcome.failure_reason}" if outcome.failure_reason else "")
            self._audit("round.closed", {"round": record.id, "status": outcome.status,
                                         "submissions": outcome.n_submissions,
                                         "failure_reason": outcome.failure_reason})
            if self.metrics is not None:
                self.metrics.round_closed(outcome.status)
        for record in self.store.closed_without_report():
            self._write_report(record.id)
        if self.metrics is not None:
            self.metrics.set_open_rounds(len(self.store.list_rounds(status="open")))
        return closed

    async def _closer(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.close_due_rounds)
            except Exception:  # noqa: BLE001 - keep closing other rounds next time
                log.exception("closer step failed")
            try:
                await asyncio.wait_for(self._stop.wait(), CLOSER_INTERVAL)
            except asyncio.TimeoutError:
                pass

    # --- scheduled rounds --------------------------------------------------------------------
    async def start_round_from_file(self, spec_path: Path, deadline: _dt.timedelta,
                                    quorum: int | None, source: str) -> str:
        from coordinator.rounds import open_round

        text = Path(spec_path).read_text(encoding="utf-8")
        record = await asyncio.to_thread(
            open_round, self.store, spec_source=text, deadline=deadline, quorum=quorum,
            allowed=self.config.allow, pooling=pooling_dict(self.config), now=utcnow(),
            source=source)
        self._audit("round.opened", {"round": record.id, "source": source,
                                     "deadline": record.deadline.isoformat(),
                                     "quorum": record.quorum})
        if self.metrics is not None:
            self.metrics.round_started()
        return record.id

    async def _run_scheduler(self) -> None:
        from coordinator.scheduler import ScheduleEntry, Scheduler

        entries = [ScheduleEntry(spec=e.spec, cron=e.cron, deadline=e.deadline,
                                 quorum=e.quorum) for e in self.config.schedule]
        self._scheduler = Scheduler(entries)

        async def start_round(entry: Any, slot: _dt.datetime) -> str:
            return await self.start_round_from_file(entry.spec, entry.deadline, entry.quorum,
                                                    f"schedule {entry.cron} {slot.isoformat()}")

        await self._scheduler.run(start_round, self.store)

    # --- lifecycle ---------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.stop()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self, grace: float = 5.0) -> None:
        self.request_stop()
        if self.server is not None:
            await self.server.stop(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
        try:
            if read_addr_file(self.config.addr_file) == self.address:
                self.config.addr_file.unlink()
        except OSError:
            pass
        self.store.close()
        log.info("coordinator stopped")


def pooling_dict(config: CoordinatorConfig) -> dict[str, Any]:
    p = config.pooling
    return {"method": p.method, "test": p.test, "level": p.level,
            "i2_threshold": p.i2_threshold}


async def serve(config: CoordinatorConfig) -> None:
    """Run a coordinator until SIGTERM/SIGINT."""
    coordinator = Coordinator(config)
    await coordinator.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, coordinator.request_stop)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    try:
        await coordinator.wait()
        log.info("stopping (signal received)")
    finally:
        await coordinator.stop()
