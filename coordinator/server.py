"""``fedsynth coordinator serve``: the coordinator process.

Runs the grpc.aio server (mutual TLS, revocation check and per-site rate limit on every
call, the standard health service), a closer loop that closes and pools due rounds, a
reporter that writes the report of every closed round in a child process
(:mod:`coordinator.report_worker`), and the scheduler of ``[[schedule]]`` rounds. SIGTERM
or SIGINT stops it gracefully: no new calls, in-flight calls get a grace period, the closer
finishes its step, a report being written gets :data:`REPORT_STOP_GRACE` seconds and is
otherwise written again at the next start.

The statistics package is imported (and exercised once) before the server binds, so the
first round to close does not pay for importing scipy; the report is off the closing path,
so a round that comes due never waits for another round's report.

Rounds opened by ``fedsynth round start`` (which writes to the same store) are noticed by
the closer and served by ``PullWork`` at once: there is no in-memory round state to
refresh, which is also why a coordinator killed with SIGKILL resumes every open round on
restart (and why two coordinator processes on one store would not pool a round twice).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator.rounds import close_if_due, open_round, pool_analyses
from coordinator.store import Store, SubmissionRecord, utcnow
from fedsynth.audit import AuditLog
from fedsynth.config import CoordinatorConfig
from fedsynth.fileio import atomic_write
from fedsynth.spec import embed_model_files
from fedsynth.transport import add_port, create_server

if TYPE_CHECKING:
    from coordinator.metrics import CoordinatorMetrics, MetricsEndpoint

__all__ = ["Coordinator", "serve", "write_addr_file", "read_addr_file",
           "preload_statistics"]

log = logging.getLogger(__name__)

#: How often the closer checks open rounds (seconds).
CLOSER_INTERVAL = 0.5

#: How long a report being written may take to finish when the coordinator stops
#: (seconds); after that its worker is stopped and the report is written at the next start.
REPORT_STOP_GRACE = 10.0


def preload_statistics() -> None:
    """Import the statistics package and run one tiny analysis through the closing path.

    scipy (``scipy.stats`` in particular) and the synthesis modules take seconds to import
    on a loaded machine; done lazily, the first round to close paid for it (7.7 s of a
    100-site, 200-analysis close under load). One three-site batch through
    :func:`coordinator.rounds.pool_analyses` also triggers the imports scipy defers until
    first use.
    """
    subs = [SubmissionRecord("warm-up", f"s{i}", "", "", "", b"", b"", "",
                             {"a": {"yi": 0.1 * i, "vi": 0.01 + 0.01 * i, "se": 0.1, "n": 50}},
                             None) for i in range(3)]
    pool_analyses([{"name": "a"}], subs, {"method": "REML", "test": "z", "level": 95.0,
                                          "i2_threshold": 50.0})


def write_addr_file(path: Path, address: str) -> None:
    """Atomically write the bound address (``HOST:PORT``) for tests and local tools.

    Atomically write the bound address (``HOST:PORT``) for tests and local tools
    (owner-only, like every file the coordinator writes).
    """
    atomic_write(path, address + "\n")


def read_addr_file(path: Path) -> str:
    """The address (``HOST:PORT``) written by :func:`write_addr_file`."""
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
            self.audit = AuditLog(config.audit_log)
        self.metrics: CoordinatorMetrics | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        try:
            # lazy: keeps prometheus_client out of `fedsynth round start/show` start-up
            from coordinator.metrics import CoordinatorMetrics

            self.metrics = CoordinatorMetrics()
        except ImportError:  # pragma: no cover - metrics are optional
            self.metrics = None
        # lazy: keeps protobuf (the gRPC stubs) out of `fedsynth round start/show` start-up
        from coordinator.handlers import Handlers
        from coordinator.models import RoundModelFitter, StepHub

        self.steps = StepHub()
        self.handlers = Handlers(self.store, config, audit=self.audit, metrics=self.metrics,
                                 steps=self.steps)
        self.fitter = RoundModelFitter(
            self.store, self.steps, step_timeout=config.model_step_timeout.total_seconds(),
            audit=self._audit)
        # rounds whose model fits this process started (a restarted coordinator fits again)
        self._fitting: set[str] = set()
        self.server: Any = None
        self.revocations: Any = None
        self.concurrency: Any = None
        self.port: int | None = None
        self.address: str | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._scheduler: Any = None
        self._reporter_task: asyncio.Task | None = None
        self._report_wanted = asyncio.Event()

    def _audit(self, event: str, data: dict[str, Any]) -> None:
        if self.audit is not None:
            try:
                self.audit.append(event, data)
            except Exception:  # noqa: BLE001
                log.exception("audit append failed")

    def _audit_soon(self, event: str, data: dict[str, Any]) -> None:
        """Audit a refusal from the event loop without waiting for the disk.

        :meth:`_audit` from the event loop (the interceptors' refusal reports): the
        fsync'd append runs in a worker thread, so a flood being refused does not stall
        every other call (health checks included) for the length of a disk flush.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._audit(event, data)
            return
        loop.run_in_executor(None, self._audit, event, data)

    def _interceptors(self) -> list[Any]:
        """Revocation check, then admission (rate and calls in flight), on every call."""
        interceptors: list[Any] = []
        if self.config.tls is not None and not self.config.insecure:
            # lazy: keeps grpc out of `fedsynth round start/show` start-up
            from fedsynth.revocation import RevocationInterceptor, RevocationList

            def on_revoked(site: str, serial: int, reason: str) -> None:
                self._audit_soon("peer.revoked", {"site": site, "serial": f"{serial:x}",
                                             "reason": reason})
                if self.metrics is not None:
                    self.metrics.submission_rejected("revoked")

            crl_path = self.config.revocation or self.config.tls.ca.parent / "revoked.crl"

            def on_crl_refused(reason: str) -> None:
                self._audit_soon("revocation.refused", {"crl": str(crl_path),
                                                        "reason": reason})

            def on_crl_accepted(der: bytes) -> None:
                # the last good CRL outlives a restart: a missing or older file is refused
                self.store.keep_trusted_crl(der, utcnow())

            self.revocations = RevocationList(
                crl_path, ca=self.config.tls.ca, last_good=self.store.trusted_crl(),
                on_accept=on_crl_accepted, on_refuse=on_crl_refused)
            interceptors.append(RevocationInterceptor(self.revocations, on_reject=on_revoked))
        # lazy: keeps grpc out of `fedsynth round start/show` start-up
        from coordinator.ratelimit import (
            AdmissionInterceptor,
            ConcurrencyLimiter,
            RateLimit,
            RateLimiter,
        )

        def on_refused(who: str, method: str, kind: str) -> None:
            event = "peer.rate_limited" if kind == "rate" else "peer.concurrency_limited"
            self._audit_soon(event, {"peer": who, "method": method, "limit": kind})
            # reported at most once per peer and kind per minute (ratelimit.py): the series
            # shows that limiting happens, not how many calls were refused
            if self.metrics is not None:
                self.metrics.submission_rejected("rate_limited" if kind == "rate"
                                                 else "concurrency_limited")

        limits = self.config.limits
        self.concurrency = ConcurrencyLimiter(limits.in_flight, limits.in_flight_total,
                                              limits.in_flight_reserved)
        interceptors.append(AdmissionInterceptor(
            RateLimiter(RateLimit(rate=limits.rate, burst=limits.burst)), self.concurrency,
            on_reject=on_refused))
        return interceptors

    async def start(self) -> int:
        """Bind, start serving, write the address file; return the port."""
        # lazy: keeps grpc out of `fedsynth round start/show` start-up
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        # lazy: keeps grpc out of `fedsynth round start/show` start-up
        from coordinator.service import FederationService
        from fedsynth.v1 import federation_pb2_grpc as pb_grpc

        preload_statistics()
        self.steps.bind(asyncio.get_running_loop())
        if self.audit is not None:
            # An append interrupted by a kill is repaired (and recorded) before anything
            # else is written; a log that was tampered with stops the start (AuditError).
            self.audit.recover()
            self.handlers.recover_audit()
        limits = self.config.limits
        self.server = create_server(
            interceptors=self._interceptors(),
            # a backstop on memory only: admission (ratelimit.py) bounds calls in flight
            # per site and in total, and keeps a share for health checks and good sites
            maximum_concurrent_rpcs=limits.in_flight_total * 4,
            # one connection gets as many streams at once as its site may have calls in
            # flight: a flood then waits at the flooder (or is refused by HTTP/2), not in
            # the server's queue ahead of the other sites
            max_concurrent_streams=limits.in_flight)
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
        # a round closed before a crash or a stop without its report gets it now
        self._reporter_task = asyncio.create_task(self._reporter(), name="reporter")
        if self.config.schedule:
            self._tasks.append(asyncio.create_task(self._run_scheduler(), name="scheduler"))
        return self.port

    # --- closing rounds ----------------------------------------------------------------------
    def close_due_rounds(self, now: _dt.datetime | None = None) -> list[str]:
        """Close every due open round (blocking; run in a thread). Returns closed ids."""
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
        if self.metrics is not None:
            self.metrics.set_open_rounds(len(self.store.list_rounds(status="open")))
        return closed

    def rounds_to_fit(self, now: _dt.datetime | None = None) -> list[str]:
        """Open rounds whose model fits are due and not started by this process."""
        # lazy: coordinator.models imports the model statistics; only a serving coordinator
        from coordinator.models import models_due

        now = now or utcnow()
        due = []
        for record in self.store.list_rounds(status="open"):
            if not record.spec.get("models") or record.id in self._fitting:
                continue
            stored = self.store.model_results(record.id)
            if stored is not None and stored[0] == "done":
                continue
            if models_due(has_models=True, started=False, n_submitted=record.n_submissions,
                          allowed=len(record.allowed), opened_at=record.opened_at,
                          deadline=record.deadline, now=now):
                due.append(record.id)
        return due

    async def _fit_models(self, round_id: str) -> None:
        try:
            await asyncio.to_thread(self.fitter.run, round_id)
        except Exception:  # noqa: BLE001 - the round closes at its deadline regardless
            log.exception("round %s: model fits failed", round_id)

    async def _closer(self) -> None:
        while not self._stop.is_set():
            try:
                for round_id in await asyncio.to_thread(self.rounds_to_fit):
                    self._fitting.add(round_id)
                    log.info("round %s: fitting its models over the step streams", round_id)
                    self._tasks.append(asyncio.create_task(self._fit_models(round_id),
                                                           name=f"models {round_id}"))
            except Exception:  # noqa: BLE001 - tried again at the next step
                log.exception("model fit step failed")
            try:
                if await asyncio.to_thread(self.close_due_rounds):
                    self._report_wanted.set()
            except Exception:  # noqa: BLE001 - keep closing other rounds next time
                log.exception("closer step failed")
            try:
                await asyncio.to_thread(self.handlers.settle_audit)
            except Exception:  # noqa: BLE001 - retried at the next step
                log.exception("audit outbox step failed")
            try:
                await asyncio.wait_for(self._stop.wait(), CLOSER_INTERVAL)
            except TimeoutError:
                pass

    # --- reports (off the closing path) -------------------------------------------------------
    async def _reporter(self) -> None:
        """Write the report of every closed round that has none, one at a time, oldest first.

        Woken by the closer when it closed a round, and every :data:`CLOSER_INTERVAL`
        otherwise (rounds closed by another coordinator on the same store, or before a
        restart). The round document is already committed when its report is written, so
        pooled results never wait for a report.
        """
        while not self._stop.is_set():
            self._report_wanted.clear()
            try:
                pending = await asyncio.to_thread(self.store.closed_without_report)
                for record in sorted(pending, key=lambda r: (r.closed_at or r.opened_at, r.id)):
                    if self._stop.is_set():
                        break
                    await self.write_report(record.id, record.document)
            except Exception:  # noqa: BLE001 - keep reporting other rounds next time
                log.exception("reporter step failed")
            try:
                await asyncio.wait_for(self._report_wanted.wait(), CLOSER_INTERVAL)
            except TimeoutError:
                pass

    async def write_report(self, round_id: str, document: dict[str, Any] | None) -> bool:
        """Write one round's report in a child process and record the outcome in the store.

        Write one round's report in a :mod:`coordinator.report_worker` child process and
        record its paths (or its error) in the store; False when stopped before it finished
        (nothing recorded, so the next start writes it).
        """
        if document is None:                       # closed rounds always carry a document
            document = (await asyncio.to_thread(self.store.get_round, round_id)).document
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
        started = asyncio.get_running_loop().time()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "coordinator.report_worker", str(self.config.report_dir),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env,
            start_new_session=True)                # its own forest-plot workers go with it
        payload = json.dumps(document, allow_nan=False).encode("utf-8")
        talk = asyncio.ensure_future(proc.communicate(payload))
        stopping = asyncio.ensure_future(self._stop.wait())
        finished = False
        try:
            await asyncio.wait({talk, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not talk.done():
                log.info("round %s: stopping; the report gets %.0f s to finish",
                         round_id, REPORT_STOP_GRACE)
                await asyncio.wait({talk}, timeout=REPORT_STOP_GRACE)
            finished = talk.done()
        finally:
            stopping.cancel()
            if not finished:                       # stopped (or cancelled): end the worker
                _kill_group(proc.pid, signal.SIGTERM)
                await asyncio.wait({talk}, timeout=5.0)
                if not talk.done():
                    _kill_group(proc.pid, signal.SIGKILL)
                await asyncio.gather(talk, return_exceptions=True)
                log.warning("round %s: report not finished before the stop; it will be "
                            "written at the next start", round_id)
        if not finished:
            return False
        out, err = talk.result()
        if proc.returncode == 0 and out.strip():
            report = json.loads(out.decode("utf-8").strip().splitlines()[-1])
        else:
            tail = err.decode("utf-8", "replace").strip().splitlines()[-5:]
            report = {"error": f"report worker exited with status {proc.returncode}: "
                               + " | ".join(tail)}
        if "error" in report:
            log.error("round %s: report could not be written: %s", round_id, report["error"])
        else:
            log.info("round %s: report written to %s in %.1f s", round_id, report["html"],
                     asyncio.get_running_loop().time() - started)
        await asyncio.to_thread(self.store.set_report, round_id, report)
        return True

    # --- scheduled rounds --------------------------------------------------------------------
    async def start_round_from_file(self, spec_path: Path, deadline: _dt.timedelta,
                                    quorum: int | None, source: str) -> str:
        """Open a round from a spec file in a worker thread (off the event loop); returns its id."""
        text = Path(spec_path).read_text(encoding="utf-8")
        # A model artifact named by a path travels embedded in the spec.
        text = await asyncio.to_thread(embed_model_files, text, Path(spec_path).parent)
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
        # lazy: keeps croniter out of `fedsynth round start/show` start-up
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
        """Ask the server to stop (from a signal handler or a test); :meth:`wait` then returns."""
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.stop()

    async def wait(self) -> None:
        """Wait until :meth:`request_stop` is called."""
        await self._stop.wait()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop serving (calls in flight get ``grace`` seconds), finishing the report in hand."""
        self.request_stop()
        if self.server is not None:
            await self.server.stop(grace)
        if self._reporter_task is not None:
            # finishes the report in progress within REPORT_STOP_GRACE or stops its worker
            await asyncio.gather(self._reporter_task, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
        try:
            self.handlers.settle_audit()
        except Exception:  # noqa: BLE001 - what is left is appended at the next start
            log.exception("audit outbox could not be settled at stop")
        try:
            if read_addr_file(self.config.addr_file) == self.address:
                self.config.addr_file.unlink()
        except OSError:
            pass
        self.store.close()
        log.info("coordinator stopped")


def _kill_group(pid: int, sig: int) -> None:
    """Stop a report worker we started, with its forest-plot workers (its own session)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def pooling_dict(config: CoordinatorConfig) -> dict[str, Any]:
    p = config.pooling
    return {"method": p.method, "test": p.test, "level": p.level,
            "i2_threshold": p.i2_threshold, "performance_method": p.performance_method,
            "performance_test": p.performance_test,
            "pi_width": {name: list(w) if isinstance(w, tuple) else w
                         for name, w in p.pi_width.items()}}


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
