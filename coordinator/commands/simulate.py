"""``fedsynth simulate`` and ``fedsynth demo``: the whole federation on one machine.

``simulate`` makes a fresh PKI, starts a coordinator process and one site-agent process per
CSV/Parquet file of ``--sites`` (site name = file name), all speaking mutual TLS on
127.0.0.1, opens one round with ``--spec``, shows progress while the sites answer, and
prints the pooled results and the report's path. Every file it uses is left in ``--out``
(PKI, configurations, state store, logs, audit logs, reports) so a user can inspect or
re-run each part by hand.

``demo`` writes demo data (``fedsynth demo-data``) and runs ``simulate`` on it with the
bundled demo spec.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.commands.round import render_table
from fedsynth.cli.registry import Command
from fedsynth.errors import FedsynthError, InputError
from fedsynth.vocabulary import METHODS


def _site_name(path: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]", "-", path.stem.lower()).strip("-._") or "site"
    return name[:63]


def _toml_str(value: str | Path) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class RoundRun:
    """One round a local federation ran: its stored record and its round document."""

    record: Any
    document: Any
    spec: Path


#: What a multi-round run is given per round: the runs so far -> the spec of the next one.
NextSpec = Callable[[list[RoundRun]], "str | Path"]


def simulate(sites_dir: str | Path, spec: str | Path, out: str | Path, *,
             deadline: str = "2m", quorum: int | None = None, min_cell_count: int = 5,
             min_n: int = 20, method: str = "REML", force: bool = False,
             progress=print) -> int:
    """Run one federated round on this machine; return 0 if it was pooled, 1 otherwise."""
    runs = federate(sites_dir, [lambda _runs: spec], out, deadline=deadline, quorum=quorum,
                    min_cell_count=min_cell_count, min_n=min_n, method=method, force=force,
                    progress=progress)
    run = runs[-1]
    print(render_table(run.document))
    report = run.record.report or {}
    if "html" in report:
        print(f"\nreport: {report['html']}\nround document: {report['json']}")
    elif "error" in report:
        print(f"\nthe report could not be written: {report['error']}", file=sys.stderr)
    print(f"everything else (PKI, configs, logs, audit logs, state): {Path(out).resolve()}")
    return 0 if run.record.status == "pooled" else 1


def federate(sites_dir: str | Path, rounds: Sequence[NextSpec], out: str | Path, *,
             deadline: str = "2m", quorum: int | None = None, min_cell_count: int = 5,
             min_n: int = 20, method: str = "REML", force: bool = False,
             progress: Callable[[str], Any] = print) -> list[RoundRun]:
    """Run rounds one after the other over one local federation; return each round's run.

    One machinery for ``simulate``, ``demo`` and ``demo --kind trauma``: a fresh PKI, one
    coordinator process and a site-agent process per site file (``site run``, started
    with the first round, stopped when the last one closed), which answer each round,
    its model steps included.
    ``rounds`` gives each round's spec lazily, from the runs before it, so a later round
    can use what an earlier one produced (the trauma demo's evaluation round names the
    model exported from its first round). A model artifact a spec names by path is
    embedded in the round's spec, as ``round start`` does.
    """
    # lazy: signal is not loaded by `fedsynth --help` (start-up)
    import signal

    # lazy: subprocess is not loaded by `fedsynth --help` (start-up)
    import subprocess

    # lazy: keeps scipy and sqlalchemy out of `fedsynth --help` start-up
    from coordinator.rounds import open_round, round_document

    # lazy: keeps scipy and sqlalchemy out of `fedsynth --help` start-up
    from coordinator.server import pooling_dict

    # lazy: keeps sqlalchemy out of `fedsynth --help` start-up
    from coordinator.store import Store

    # lazy: fedsynth.config is not loaded by `fedsynth --help` (start-up)
    from fedsynth.config import load_coordinator_config

    # lazy: keeps cryptography out of `fedsynth --help` start-up
    from fedsynth.pki import init_ca, issue_coordinator, issue_site, validate_site_name

    # lazy: fedsynth.spec is not loaded by `fedsynth --help` (start-up)
    from fedsynth.spec import embed_model_files, load_spec

    # lazy: fedsynth.timeutil is not loaded by `fedsynth --help` (start-up)
    from fedsynth.timeutil import parse_duration, utcnow

    sites_dir, out = Path(sites_dir), Path(out)
    if not sites_dir.is_dir():
        raise InputError(f"--sites {str(sites_dir)!r} is not a directory")
    files = sorted(p for p in sites_dir.iterdir()
                   if p.suffix.lower() in (".csv", ".parquet", ".pq") and p.is_file())
    if not files:
        raise InputError(f"--sites {str(sites_dir)!r} has no .csv or .parquet file")
    names = [_site_name(p) for p in files]
    for name in names:
        validate_site_name(name)
    if len(set(names)) != len(names):
        raise InputError(f"--sites {str(sites_dir)!r}: two files give the same site name")
    if not rounds:
        raise InputError("no round to run")
    duration = parse_duration(deadline, "--deadline")
    if quorum is not None and not 1 <= quorum <= len(names):
        raise InputError(f"--quorum = {quorum} must be between 1 and {len(names)} (sites)")
    if (out / "pki").exists() or (out / "state.db").exists():
        if not force:
            raise InputError(f"--out {str(out)!r} already holds a simulation; pass --force to "
                             "replace it")
        for sub in ("pki", "sites", "logs", "reports"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for leftover in out.glob("state.db*"):
            leftover.unlink()
        for leftover in out.glob("*.jsonl*"):
            leftover.unlink()
        (out / "coordinator.addr").unlink(missing_ok=True)
    for sub in ("sites", "logs", "reports"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    total = len(rounds)

    def tag(i: int) -> str:
        return "" if total == 1 else f" (round {i + 1} of {total})"

    progress(f"[1/5] fresh PKI in {out / 'pki'}: CA, coordinator and {len(names)} site "
             "certificates")
    pki = out / "pki"
    init_ca(pki)
    issue_coordinator(pki, "localhost")
    for name in names:
        issue_site(pki, name)

    coord_toml = out / "coordinator.toml"
    coord_toml.write_text(
        'listen = "127.0.0.1:0"\nstate = "state.db"\nreport_dir = "reports"\n'
        'addr_file = "coordinator.addr"\naudit_log = "coordinator-audit.jsonl"\n'
        # the site agents start with the round, all at once on this machine: a model step
        # waits for them as long as the round does (not the 30 s default)
        f'model_step_timeout = {_toml_str(deadline)}\n'
        '[tls]\nca = "pki/ca.crt"\ncert = "pki/coordinator.crt"\nkey = "pki/coordinator.key"\n'
        f'[sites]\nallow = [{", ".join(_toml_str(n) for n in names)}]\n'
        f'[pooling]\nmethod = "{method}"\n', encoding="utf-8")
    site_tomls = []
    for name, path in zip(names, files):
        site_toml = out / "sites" / f"{name}.toml"
        site_toml.write_text(
            f'name = "{name}"\ncoordinator = "@../coordinator.addr"\n'
            f'state_file = "{name}.state.json"\naudit_log = "{name}-audit.jsonl"\n'
            'poll_interval = "0.5s"\nmax_backoff = "2s"\n'
            f'[tls]\nca = "../pki/ca.crt"\ncert = "../pki/{name}.crt"\n'
            f'key = "../pki/{name}.key"\n[data]\npath = {_toml_str(path.resolve())}\n'
            f'[privacy]\nmin_cell_count = {min_cell_count}\nmin_n = {min_n}\n',
            encoding="utf-8")
        site_tomls.append(site_toml)
    config = load_coordinator_config(coord_toml)

    processes: list[tuple[str, subprocess.Popen]] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def spawn(label: str, *argv: str) -> subprocess.Popen:
        log = open(out / "logs" / f"{label}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "fedsynth", *argv], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=out)
        log.close()
        processes.append((label, proc))
        return proc

    def log_tail(label: str) -> str:
        try:
            lines = (out / "logs" / f"{label}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-8:])

    runs: list[RoundRun] = []
    # The agents run (not --once) for the whole federation: an agent with --once stops
    # when it has submitted, and so would leave the round's model steps unanswered.
    agents: list[tuple[str, subprocess.Popen]] = []
    try:
        progress("[2/5] starting the coordinator (mutual TLS on 127.0.0.1)")
        coordinator = spawn("coordinator", "coordinator", "serve", "--config", str(coord_toml))
        addr_file = out / "coordinator.addr"
        end = time.monotonic() + 60
        while not addr_file.exists():
            if coordinator.poll() is not None:
                raise FedsynthError("the coordinator exited at start-up:\n"
                                    + log_tail("coordinator"))
            if time.monotonic() > end:
                raise FedsynthError("the coordinator did not start within 60 s:\n"
                                    + log_tail("coordinator"))
            time.sleep(0.1)
        progress(f"      coordinator listening on {addr_file.read_text().strip()}")
        for index, next_spec in enumerate(rounds):
            spec = Path(next_spec(runs))
            spec_obj = load_spec(spec)   # fail early, before starting site processes
            text = embed_model_files(spec.read_text(encoding="utf-8"), spec.parent)
            with Store(config.state) as store:
                record = open_round(store, spec_source=text, deadline=duration,
                                    quorum=quorum, allowed=config.allow,
                                    pooling=pooling_dict(config), now=utcnow(),
                                    source=f"simulate --spec {spec}")
                models = (f", {len(spec_obj.models)} models" if spec_obj.models else "")
                progress(f"[3/5] round {record.id} opened{tag(index)}: "
                         f"{len(spec_obj.analyses)} analyses{models}, quorum "
                         f"{record.quorum} of {len(names)} sites, deadline {deadline}")
                if not agents:
                    progress(f"[4/5] starting {len(names)} site agents")
                    for name, site_toml in zip(names, site_tomls):
                        agents.append((name, spawn(name, "site", "run", "--config",
                                                   str(site_toml))))
                else:
                    progress(f"[4/5] the {len(names)} site agents pick the round up")
                seen: set[str] = set()
                limit = time.monotonic() + duration.total_seconds() + 120
                while True:
                    record = store.get_round(record.id)
                    answered = {s.site for s in store.submissions(record.id)}
                    # each site once, with its own running count (several sites answering
                    # between two polls used to print the same "(4/6)" for each)
                    for site in sorted(answered - seen):
                        seen.add(site)
                        progress(f"      {site} answered ({len(seen)}/{len(names)})")
                    if not record.is_open and record.report is not None:
                        break
                    if coordinator.poll() is not None:
                        raise FedsynthError("the coordinator stopped unexpectedly:\n"
                                            + log_tail("coordinator"))
                    for name, proc in agents:
                        code = proc.poll()
                        if code not in (None, 0) and name not in answered:
                            raise FedsynthError(f"site agent {name} failed (exit {code}):\n"
                                                + log_tail(name))
                    if time.monotonic() > limit:
                        raise FedsynthError(f"round {record.id} did not close in time")
                    time.sleep(0.3)
                doc = round_document(store, record)
            progress(f"[5/5] round {record.id} {record.status}{tag(index)}")
            runs.append(RoundRun(record=record, document=doc, spec=spec))
        return runs
    finally:
        for _label, proc in reversed(processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _label, proc in processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sites", required=True, metavar="DIR",
                        help="one CSV or Parquet file per site (site name = file name)")
    parser.add_argument("--spec", required=True, help="analysis spec (TOML)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="where the PKI, configs, logs, state and reports go")
    _common(parser)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--deadline", default=None,
                        help="round deadline (default 2m; the trauma demo 15m: a round "
                             "closes as soon as every site answered and its models are "
                             "fitted)")
    parser.add_argument("--quorum", type=int, default=None,
                        help="sites needed to pool (default: all)")
    parser.add_argument("--min-cell-count", type=int, default=5,
                        help="sites' disclosure limit: minimum cell count (default 5)")
    parser.add_argument("--min-n", type=int, default=20,
                        help="sites' disclosure limit: minimum n (default 20)")
    parser.add_argument("--method", default="REML",
                        choices=METHODS,
                        help="pooling method (default REML)")
    parser.add_argument("--force", action="store_true", help="replace an earlier run in --out")


def _check_limits(args: argparse.Namespace) -> None:
    for key in ("min_cell_count", "min_n"):
        if getattr(args, key) < 1:
            raise InputError(f"--{key.replace('_', '-')} = {getattr(args, key)} must be >= 1")


def _run(args: argparse.Namespace) -> int:
    _check_limits(args)
    return simulate(args.sites, args.spec, args.out,
                    deadline="2m" if args.deadline is None else args.deadline,
                    quorum=args.quorum, min_cell_count=args.min_cell_count, min_n=args.min_n,
                    method=args.method, force=args.force)


def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=("patients", "trauma"), default="patients",
                        help="patients (default): one round of effect estimates; trauma: "
                             "the model story (a development round with the global and "
                             "hierarchical models, the verdict, the model exported from the "
                             "round, an evaluation round of it at every site)")
    parser.add_argument("--out", default="fedsynth-demo", metavar="DIR",
                        help="output directory (default ./fedsynth-demo)")
    parser.add_argument("--sites-count", type=int, default=None, dest="n_sites",
                        help="number of demo sites (default 6; trauma 10)")
    parser.add_argument("--seed", type=int, default=0, help="demo data seed")
    parser.add_argument("--heterogeneity", choices=("none", "low", "high"), default=None,
                        help="between-site heterogeneity of the demo data (default low; "
                             "high: sites differ clearly, so the report shows strong flags, "
                             "BLUPs and driving sites; trauma: none, low or high (default) "
                             "spread of the baseline risk)")
    _common(parser)


def _demo(args: argparse.Namespace) -> int:
    # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
    from fedsynth.datasets import demo_spec_path, write_demo

    _check_limits(args)
    out = Path(args.out)
    if args.kind == "trauma":
        # lazy: demo_trauma imports this module (its federate); loaded only for the trauma demo
        from coordinator.commands.demo_trauma import trauma_demo

        return trauma_demo(out, sites=10 if args.n_sites is None else args.n_sites,
                           seed=args.seed, heterogeneity=args.heterogeneity or "high",
                           deadline="15m" if args.deadline is None else args.deadline,
                           quorum=args.quorum, min_cell_count=args.min_cell_count,
                           min_n=args.min_n, method=args.method)
    if args.heterogeneity == "none":
        raise InputError("--heterogeneity none is for --kind trauma; the patients demo has "
                         "low or high")
    n_sites = 6 if args.n_sites is None else args.n_sites
    heterogeneity = args.heterogeneity or "low"
    data_dir = out / "data"
    print(f"writing demo data for {n_sites} sites ({heterogeneity} heterogeneity) "
          f"to {data_dir}")
    write_demo(data_dir, n_sites, seed=args.seed, heterogeneity=heterogeneity, force=True)
    spec = demo_spec_path()
    sites_dir = out / "site-data"
    sites_dir.mkdir(parents=True, exist_ok=True)
    for csv in sorted(data_dir.glob("*.csv")):      # only the site files, not spec.toml
        target = sites_dir / csv.name
        target.write_bytes(csv.read_bytes())
    return simulate(sites_dir, spec, out / "federation",
                    deadline="2m" if args.deadline is None else args.deadline,
                    quorum=args.quorum, min_cell_count=args.min_cell_count,
                    min_n=args.min_n, method=args.method, force=True)


COMMANDS = [
    Command(("simulate",), "run a whole federation (coordinator + one agent per file) on "
            "this machine, one round", _args, _run),
    Command(("demo",), "demo data + simulate with the bundled demo spec (--kind trauma: "
            "develop, export and evaluate a model across sites)", _demo_args, _demo),
]
