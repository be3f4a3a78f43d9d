"""Benchmark of one federated round: N sites x M analyses over real mutual TLS.

What it measures
----------------
A real coordinator process (``fedsynth coordinator serve``: grpc.aio server, mutual TLS,
revocation and rate-limit interceptors, SQLite store in WAL mode, the closer that pools with
``fedsynth.meta``) and N sites, each a separate gRPC channel with its *own* client
certificate and key (distinct TLS connections; the coordinator identifies every site by its
certificate and verifies each submission's ECDSA signature). The N sites are driven from
this one process with asyncio through the core's ``site_agent.client.FederationClient``;
their estimates are precomputed (the site-side statistics are benchmarked elsewhere), so
the figure is the federation's own cost: work distribution, signed submissions, storage,
pooling of M analyses and closing.

Timeline: all sites register (TLS handshakes) and poll ``PullWork`` every ``--poll``
seconds, as agents do; the round is opened through the store exactly as ``fedsynth round
start`` does (t0); each site submits as soon as it sees the work; t1 is when the store shows
the round pooled with its document (every analysis pooled with k = N). Reported:

* ``open_to_pooled_s``: t1 - t0 (target: under 10 s for 100 x 200 on 2 cores);
* ``submissions_per_s``: N / (last accepted submission - first submission sent);
* ``close_s``: from the last accepted submission to pooled (closer latency + pooling);
* ``report_s``: until the HTML/JSON report of the round is written (separately, since the
  report's M forest plots come after pooling);
* ``coordinator_cpu_s``: CPU seconds (user + system, /proc) the coordinator process spent
  from the round's opening to its pooled document, and ``coordinator_cpu_per_cell_ms``: that
  per site x analysis (constant when the coordinator's work grows linearly in sites x
  analyses);
* ``coordinator_peak_rss_mib``: the coordinator's VmHWM from /proc (Linux).

With several sizes (``--sites 100,300,1000``) the runs are made one after the other and a
growth table is printed: each size's CPU and its ratio to the first size's, beside the
ratio of their sites x analyses (linear growth: the two ratios are equal).
``--profile DIR`` runs the coordinator under ``py-spy record`` (``pip install py-spy``) and
writes one profile per size (collapsed stacks) into DIR.

Usage::

    python benchmarks/round.py                      # 100 sites x 200 analyses
    python benchmarks/round.py --sites 100,300,1000 --no-report-wait
    python benchmarks/round.py --sites 3 --analyses 5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: open -> pooled targets: 10 s at 100 sites x 200 analyses, 30 s at 1,000 sites (issue 17)
TARGET_SECONDS = 10.0
TARGET_SECONDS_1000 = 30.0


def _spec_toml(analyses: int) -> str:
    return "".join(f'[[analysis]]\nname = "a{i:03d}"\nestimator = "two_group"\n'
                   f'outcome = "los_days"\nexposure = "treated"\nmeasure = "MD"\n\n'
                   for i in range(analyses))


def _setup(workdir: Path, sites: list[str], analyses: int,
           in_flight_total: int | None = None) -> Path:
    """PKI (CA, coordinator and one certificate per site) and coordinator.toml.

    ``in_flight_total`` sets ``[limits] in_flight_total`` (default: the coordinator's
    512), as an operator of a network of more sites than that would.
    """
    from fedsynth.pki import init_ca, issue_coordinator, issue_site

    pki = workdir / "pki"
    init_ca(pki)
    issue_coordinator(pki, "localhost")
    for site in sites:
        issue_site(pki, site)
    (workdir / "spec.toml").write_text(_spec_toml(analyses), encoding="utf-8")
    allow = ", ".join(f'"{s}"' for s in sites)
    config = workdir / "coordinator.toml"
    config.write_text(
        'listen = "127.0.0.1:0"\nstate = "state.db"\nreport_dir = "reports"\n'
        '[tls]\nca = "pki/ca.crt"\ncert = "pki/coordinator.crt"\nkey = "pki/coordinator.key"\n'
        f'[sites]\nallow = [{allow}]\n'
        '[limits]\nrate = 50\nburst = 200\n'
        + (f'in_flight_total = {in_flight_total}\n' if in_flight_total else ''),
        encoding="utf-8")
    return config


def _peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _coordinator_pid(proc: subprocess.Popen, profiled: bool) -> int:
    """The coordinator's own pid (under py-spy, the profiler's child)."""
    if not profiled:
        return proc.pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("py-spy started no coordinator process")


def _start_coordinator(config: Path, workdir: Path,
                       profile: Path | None = None) -> tuple[subprocess.Popen, str]:
    addr_file = workdir / "coordinator.addr"
    log = open(workdir / "coordinator.log", "wb")
    command = [sys.executable, "-m", "fedsynth", "coordinator", "serve", "--config",
               str(config)]
    if profile is not None:
        command = ["py-spy", "record", "--rate", "50", "--nonblocking", "--format", "raw",
                   "-o", str(profile),
                   "--", *command]
    proc = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("coordinator exited early:\n"
                               + (workdir / "coordinator.log").read_text()[-3000:])
        if addr_file.exists() and addr_file.read_text().strip():
            return proc, addr_file.read_text().strip()
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("coordinator did not start within 60 s")


class _Site:
    """One site: its own channel, certificate and signing key; precomputed estimates."""

    def __init__(self, name: str, pki: Path, target: str, analyses: int, rng: random.Random):
        from fedsynth.serde import WireEstimate
        from fedsynth.signing import load_private_key
        from fedsynth.transport import TLSFiles
        from site_agent.client import FederationClient

        self.name = name
        self.client = FederationClient(
            target, TLSFiles(pki / "ca.crt", pki / f"{name}.crt", pki / f"{name}.key"),
            server_name="localhost", timeout=60.0)
        self.key = load_private_key(pki / f"{name}.key")
        n = rng.randint(200, 5000)
        self.results = {}
        for i in range(analyses):
            vi = 4.0 / n * rng.uniform(0.8, 1.25)
            yi = 0.1 * ((i % 7) - 3) + rng.gauss(0.0, vi ** 0.5)
            self.results[f"a{i:03d}"] = WireEstimate(f"a{i:03d}", yi, vi, vi ** 0.5, n)
        self.sent_at: float | None = None
        self.acked_at: float | None = None
        self.busy = 0          # calls the coordinator answered "busy" (retried, as agents do)

    async def _retry(self, call, poll: float):
        """``call()``, retried after about ``poll`` s while the coordinator is busy.

        What an agent does with ``CoordinatorUnavailable`` (e.g. RESOURCE_EXHAUSTED from
        the coordinator's bound on calls in flight, 512 by default): try again at the next
        poll. A resent submission is the same signed bytes (``duplicate`` if it was stored).
        """
        from site_agent.client import CoordinatorUnavailable

        while True:
            try:
                return await call()
            except CoordinatorUnavailable:
                self.busy += 1
                await asyncio.sleep(poll * random.uniform(0.5, 1.5))

    async def register(self, poll: float) -> None:
        await self._retry(self.client.register, poll)

    async def run(self, poll: float, stop: asyncio.Event) -> None:
        from fedsynth.serde import SubmissionContent, encode_submission
        from fedsynth.signing import sign

        await asyncio.sleep(random.uniform(0, poll))         # agents are not in lockstep
        while not stop.is_set():
            work = await self._retry(self.client.pull_work, poll)
            if work:
                item = work[0]
                self.sent_at = time.perf_counter()
                content = SubmissionContent(
                    round_id=item.round_id, site=self.name, nonce=secrets.token_bytes(16),
                    timestamp=dt.datetime.now(dt.UTC), results=self.results)
                payload = encode_submission(content)
                signature = sign(self.key, payload)
                ack = await self._retry(lambda: self.client.submit(payload, signature), poll)
                if ack.status not in ("accepted", "duplicate"):
                    raise RuntimeError(f"{self.name}: submission {ack.status}: {ack.message}")
                self.acked_at = time.perf_counter()
                return
            await asyncio.sleep(poll)


async def _drive(config_path: Path, target: str, sites: list[str], analyses: int,
                 poll: float, seed: int, wait_report: bool = True,
                 coordinator_pid: int | None = None) -> dict:
    from coordinator.rounds import open_round
    from coordinator.store import Store
    from fedsynth.config import load_coordinator_config

    config = load_coordinator_config(config_path)
    pki = config_path.parent / "pki"
    rng = random.Random(seed)
    t_setup = time.perf_counter()
    clients = [_Site(name, pki, target, analyses, rng) for name in sites]
    # connect and register every site (TLS handshakes) before the round opens
    await asyncio.gather(*(s.register(poll) for s in clients))
    busy_at_open = sum(s.busy for s in clients)
    connect_s = time.perf_counter() - t_setup
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(poll, stop)) for s in clients]
    spec_text = (config_path.parent / "spec.toml").read_text(encoding="utf-8")
    store = Store(config.state)
    cpu0 = cpu1 = cpu_acked = None
    try:
        cpu0 = _cpu_seconds(coordinator_pid) if coordinator_pid else None
        t0 = time.perf_counter()
        record = await asyncio.to_thread(
            open_round, store, spec_source=spec_text, deadline=dt.timedelta(minutes=10),
            quorum=len(sites), allowed=tuple(sites),
            pooling={"method": "REML", "test": "z", "level": 95.0, "i2_threshold": 50.0},
            now=dt.datetime.now(dt.UTC), source="benchmark")
        t_open = time.perf_counter()
        await asyncio.gather(*tasks)
        # every site acknowledged: the coordinator's CPU for the submissions, the rest
        # until pooled is the close
        cpu_acked = _cpu_seconds(coordinator_pid) if coordinator_pid else None
        t_pooled = None
        t_report = None
        limit = time.perf_counter() + 600
        while time.perf_counter() < limit:
            current = await asyncio.to_thread(store.get_round, record.id)
            now = time.perf_counter()
            if t_pooled is None and current.status != "open" and current.document:
                t_pooled = now
                cpu1 = _cpu_seconds(coordinator_pid) if coordinator_pid else None
                document = current.document
            if t_pooled is not None and not wait_report:
                report = None
                break
            if t_pooled is not None and current.report is not None:
                t_report = now
                report = current.report
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        store.close()
        await asyncio.gather(*(s.client.close() for s in clients), return_exceptions=True)
    if t_pooled is None:
        raise RuntimeError(f"round {record.id} was not pooled within 600 s")
    if document.get("status") != "pooled":
        raise RuntimeError(f"round {record.id} {document.get('status')}: "
                           f"{document.get('failure_reason')}")
    ks = {a.get("k") for a in document["analyses"]}
    if len(document["analyses"]) != analyses or ks != {len(sites)}:
        raise RuntimeError(f"round {record.id}: expected {analyses} analyses with k = "
                           f"{len(sites)}, got {len(document['analyses'])} with k in {ks}")
    first_sent = min(s.sent_at for s in clients)
    last_ack = max(s.acked_at for s in clients)
    return {
        "round": record.id, "sites": len(sites), "analyses": analyses, "poll_s": poll,
        "connect_register_s": connect_s,
        "open_round_s": t_open - t0,
        "open_to_pooled_s": t_pooled - t0,
        "first_to_last_submission_s": last_ack - first_sent,
        "submissions_per_s": len(sites) / (last_ack - first_sent) if last_ack > first_sent
        else float("inf"),
        "close_s": t_pooled - last_ack,
        "busy_retries_register": busy_at_open,
        "busy_retries_round": sum(s.busy for s in clients) - busy_at_open,
        "coordinator_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None
        else None,
        "coordinator_cpu_submissions_s": (cpu_acked - cpu0)
        if cpu0 is not None and cpu_acked is not None else None,
        "coordinator_cpu_close_s": (cpu1 - cpu_acked)
        if cpu1 is not None and cpu_acked is not None else None,
        "report_s": (t_report - t0) if t_report is not None else None,
        "report": report if t_report is not None else None,
    }


def run(sites: int, analyses: int, *, poll: float = 0.25, seed: int = 1,
        workdir: Path | None = None, wait_report: bool = True,
        profile: Path | None = None, in_flight_total: int | None = None) -> dict:
    """Run the benchmark; return its figures (see the module docstring)."""
    width = max(3, len(str(sites - 1)))
    names = [f"site-{i:0{width}d}" for i in range(sites)]
    with tempfile.TemporaryDirectory(prefix="fedsynth-bench-") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        config = _setup(work, names, analyses, in_flight_total)
        pki_s = time.perf_counter() - t
        proc, target = _start_coordinator(config, work, profile)
        pid = proc.pid
        try:
            pid = _coordinator_pid(proc, profile is not None)
            load_at_start = os.getloadavg()[0]
            result = asyncio.run(_drive(config, target, names, analyses, poll, seed,
                                        wait_report, pid))
            result["coordinator_peak_rss_mib"] = _peak_rss_mib(pid)
            cpu = result["coordinator_cpu_s"]
            result["coordinator_cpu_per_cell_ms"] = (1000.0 * cpu / (sites * analyses)
                                                     if cpu is not None else None)
        finally:
            # under py-spy, stopping the coordinator makes the profiler write its file
            os.kill(pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        result["pki_setup_s"] = pki_s
        # other work on the machine changes every figure: record it next to them
        result["load_avg_1m_at_start"] = load_at_start
        result["load_avg_1m_at_end"] = os.getloadavg()[0]
        target = TARGET_SECONDS if sites <= 100 else TARGET_SECONDS_1000
        result["target_s"] = target
        result["target_met"] = result["open_to_pooled_s"] < target
        return result


def _sizes(text: str) -> list[int]:
    """``--sites``: one number or a comma-separated list, each >= 1."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sites {text!r}: expected numbers such as "
                                         "100 or 100,300,1000") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sites {text!r}: every size must be >= 1")
    return sizes


def _print_run(result: dict) -> None:
    print(f"round benchmark: {result['sites']} sites x {result['analyses']} analyses "
          f"(real mTLS, one channel and certificate per site, poll {result['poll_s']} s)")
    print(f"  PKI setup                     {result['pki_setup_s']:8.2f} s")
    print(f"  connect + register all sites  {result['connect_register_s']:8.2f} s")
    print(f"  open round (store)            {result['open_round_s']:8.3f} s")
    print(f"  open -> pooled results        {result['open_to_pooled_s']:8.2f} s   "
          f"(target < {result['target_s']:g} s: "
          f"{'met' if result['target_met'] else 'MISSED'})")
    print(f"  first -> last submission      {result['first_to_last_submission_s']:8.2f} s   "
          f"({result['submissions_per_s']:.1f} submissions/s)")
    print(f"  last submission -> pooled     {result['close_s']:8.2f} s")
    if result["busy_retries_register"] or result["busy_retries_round"]:
        print(f"  'coordinator busy' retries    {result['busy_retries_register']:8d} "
              f"registering, {result['busy_retries_round']} in the round")
    cpu = result["coordinator_cpu_s"]
    if cpu is not None:
        print(f"  coordinator CPU, open->pooled {cpu:8.2f} s   "
              f"({result['coordinator_cpu_per_cell_ms']:.3f} ms per site x analysis)")
        print(f"    of which until the last ack {result['coordinator_cpu_submissions_s']:8.2f}"
              f" s, closing {result['coordinator_cpu_close_s']:.2f} s")
    if result["report_s"] is not None:
        print(f"  open -> HTML report written   {result['report_s']:8.2f} s")
    print(f"  machine load average (1 min)  {result['load_avg_1m_at_start']:8.2f} at start, "
          f"{result['load_avg_1m_at_end']:.2f} at end ({os.cpu_count()} CPUs)")
    rss = result["coordinator_peak_rss_mib"]
    print(f"  coordinator peak RSS          {rss:8.1f} MiB" if rss else
          "  coordinator peak RSS          n/a")


def growth(results: list[dict]) -> list[dict]:
    """Each run's coordinator CPU and open->pooled against the first run's.

    ``cells_ratio`` is the ratio of sites x analyses; with linear growth ``cpu_ratio``
    equals it (quadratic growth in sites: ``cpu_ratio`` about ``cells_ratio`` squared).
    """
    base = results[0]
    cells0 = base["sites"] * base["analyses"]
    rows = []
    for r in results:
        cpu, cpu0 = r["coordinator_cpu_s"], base["coordinator_cpu_s"]
        rows.append({"sites": r["sites"], "analyses": r["analyses"],
                     "cells_ratio": r["sites"] * r["analyses"] / cells0,
                     "coordinator_cpu_s": cpu,
                     "coordinator_cpu_submissions_s": r["coordinator_cpu_submissions_s"],
                     "coordinator_cpu_close_s": r["coordinator_cpu_close_s"],
                     "cpu_ratio": cpu / cpu0 if cpu is not None and cpu0 else None,
                     "open_to_pooled_s": r["open_to_pooled_s"],
                     "load_avg_1m_at_start": r["load_avg_1m_at_start"],
                     "load_avg_1m_at_end": r["load_avg_1m_at_end"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=_sizes, default=[100],
                        help="sites in the round; a comma-separated list runs each size "
                             "(e.g. 100,300,1000) and prints the growth (default 100)")
    parser.add_argument("--analyses", type=int, default=200)
    parser.add_argument("--poll", type=float, default=0.25,
                        help="PullWork polling interval of each site (seconds)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep PKI, store, logs and reports here (default: temporary; "
                             "with several sizes, one subdirectory per size)")
    parser.add_argument("--json", action="store_true", help="print figures as JSON")
    parser.add_argument("--no-report-wait", action="store_true",
                        help="stop at pooled results; do not wait for the HTML report")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="run the coordinator under py-spy record; its samples "
                             "(collapsed stacks for flamegraph.pl or speedscope, "
                             "round-SITESxANALYSES.txt) go into DIR")
    parser.add_argument("--in-flight-total", type=int, default=None, metavar="N",
                        help="the coordinator's [limits] in_flight_total (default: its own "
                             "512), as an operator of a network of more sites would set it")
    args = parser.parse_args(argv)
    if args.analyses < 1:
        parser.error("--analyses must be >= 1")
    if args.poll <= 0:
        parser.error(f"--poll {args.poll}: must be positive")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.sites:
        workdir = args.workdir
        if workdir is not None and len(args.sites) > 1:
            workdir = workdir / f"sites-{n}"
        profile = (args.profile / f"round-{n}x{args.analyses}.txt"
                   if args.profile is not None else None)
        result = run(n, args.analyses, poll=args.poll, seed=args.seed, workdir=workdir,
                     wait_report=not args.no_report_wait, profile=profile,
                     in_flight_total=args.in_flight_total)
        results.append(result)
        if not args.json:
            _print_run(result)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else
                         {"runs": results, "growth": growth(results)}, indent=2))
        return 0
    if len(results) > 1:
        print("growth (coordinator CPU from open to pooled; linear: cpu ratio = cells ratio)")
        print("  sites x analyses   cells ratio   coordinator CPU   cpu ratio   "
              "open->pooled   load 1m start/end   CPU submissions / close")
        for row in growth(results):
            ratio = ("n/a" if row["cpu_ratio"] is None else f"{row['cpu_ratio']:.2f}")
            cpu = ("n/a" if row["coordinator_cpu_s"] is None
                   else f"{row['coordinator_cpu_s']:.2f} s")
            print(f"  {row['sites']:5d} x {row['analyses']:<5d}   {row['cells_ratio']:11.2f}"
                  f"   {cpu:>15}   {ratio:>9}   {row['open_to_pooled_s']:10.2f} s"
                  f"   {row['load_avg_1m_at_start']:.2f} / {row['load_avg_1m_at_end']:.2f}"
                  f"   {row['coordinator_cpu_submissions_s'] or 0:.2f} s / "
                  f"{row['coordinator_cpu_close_s'] or 0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
