"""Benchmark of models fitted in one federated round: iterations, round trips, seconds.

What it measures
----------------
A real coordinator process (``fedsynth coordinator serve``: mutual TLS, interceptors,
SQLite store, the model-fitting loop of :mod:`coordinator.models`) and N real site agents
(:class:`site_agent.agent.SiteAgent`: policy, model disclosure control, signing, audit log,
the ``StreamSteps`` stream), each with its own certificate, key, data file and audit log.
The agents run as asyncio tasks of this one process (N separate processes would measure
N Python start-ups on a 2-core machine, not the federation); their statistics run in
worker threads as in ``fedsynth site run``.

The data are the synthetic trauma registry (``fedsynth.datasets.generate_trauma``, N
MTFs); the spec is the trauma spec (two analyses, three models: binomial, gaussian,
poisson). For every model the round document gives the one-stage and stratified IRLS
iterations, the hierarchical model's likelihood evaluations, the round trips of all its
fits (one-stage, stratified, two-stage, hierarchical) and the
coordinator's wall time of its fits; the script adds the time from the round's opening to
its pooled document.

With ``--iecv`` the spec is the trauma spec's mortality model alone with ``iecv = true``
(issue 14): the round fits it and then runs internal-external cross-validation, one
federated development (one-stage IRLS and the hierarchical model) without each site and
four evaluations at the held-out site; the figures add the IECV's round trips, seconds
and verdict.

``--demo`` times ``fedsynth demo --kind trauma`` instead (separate processes: one
coordinator and N site agents, a development round with the global and hierarchical
models, the export from the round, an evaluation round of the exported model): per N the
model's iterations, hierarchical evaluations, round trips and fit seconds, each round's
opening-to-close seconds and the whole demo's seconds.

Usage::

    python benchmarks/models.py                 # 10 and 15 sites
    python benchmarks/models.py --sites 4 --json
    python benchmarks/models.py --sites 10 --iecv
    python benchmarks/models.py --demo --sites 10 15
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _setup(workdir: Path, sites: list[str], seed: int) -> Path:
    """PKI, the sites' data and site.toml files, coordinator.toml."""
    from fedsynth.datasets import generate_trauma
    from fedsynth.pki import init_ca, issue_coordinator, issue_site

    pki = workdir / "pki"
    init_ca(pki)
    issue_coordinator(pki, "localhost")
    frames = generate_trauma(len(sites), seed=seed)
    for site in sites:
        issue_site(pki, site)
        frames[site].to_csv(workdir / f"{site}.csv", index=False)
        (workdir / f"{site}.toml").write_text(
            f'name = "{site}"\ncoordinator = "@coordinator.addr"\nserver_name = "localhost"\n'
            f'state_file = "{site}.state.json"\naudit_log = "{site}-audit.jsonl"\n'
            'poll_interval = "1s"\nheartbeat_interval = "10s"\nmax_backoff = "2s"\n'
            f'[tls]\nca = "pki/ca.crt"\ncert = "pki/{site}.crt"\nkey = "pki/{site}.key"\n'
            f'[data]\npath = "{site}.csv"\n', encoding="utf-8")
    allow = ", ".join(f'"{s}"' for s in sites)
    config = workdir / "coordinator.toml"
    config.write_text(
        'listen = "127.0.0.1:0"\nstate = "state.db"\nreport_dir = "reports"\n'
        'model_step_timeout = "60s"\n'
        '[tls]\nca = "pki/ca.crt"\ncert = "pki/coordinator.crt"\nkey = "pki/coordinator.key"\n'
        f'[sites]\nallow = [{allow}]\n', encoding="utf-8")
    return config


def _start_coordinator(config: Path, workdir: Path) -> subprocess.Popen:
    addr_file = workdir / "coordinator.addr"
    log = open(workdir / "coordinator.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "fedsynth", "coordinator", "serve",
                             "--config", str(config)], cwd=workdir, stdout=log,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("coordinator exited early:\n"
                               + (workdir / "coordinator.log").read_text()[-3000:])
        if addr_file.exists() and addr_file.read_text().strip():
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("coordinator did not start within 120 s")


def iecv_spec() -> str:
    """The trauma spec's analyses and its mortality model alone, with ``iecv = true``."""
    from fedsynth.datasets import trauma_spec_path

    text = trauma_spec_path().read_text(encoding="utf-8")
    head, rest = text.split("[[model]]", 1)
    mortality = rest.split("[[model]]", 1)[0]
    return head + "[[model]]" + mortality.replace('family = "binomial"\n',
                                                  'family = "binomial"\niecv = true\n')


async def _drive(workdir: Path, config_path: Path, sites: list[str], *,
                 iecv: bool = False) -> dict:
    from coordinator.rounds import open_round
    from coordinator.store import Store
    from fedsynth.config import load_coordinator_config, load_site_config
    from fedsynth.datasets import trauma_spec_path
    from site_agent.agent import SiteAgent, _warm_imports

    await asyncio.to_thread(_warm_imports)
    config = load_coordinator_config(config_path)
    agents = [SiteAgent(load_site_config(workdir / f"{s}.toml")) for s in sites]
    tasks = [asyncio.create_task(a.run()) for a in agents]
    store = Store(config.state)
    try:
        # every agent registered (and its step stream opened) before the round opens
        while True:
            seen = await asyncio.to_thread(store.list_sites)
            if sum(1 for s in seen if s.name in sites) == len(sites):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        t0 = time.perf_counter()
        record = await asyncio.to_thread(
            open_round, store, spec_source=(iecv_spec() if iecv else
                                            trauma_spec_path().read_text(encoding="utf-8")),
            deadline=dt.timedelta(minutes=15), quorum=len(sites), allowed=tuple(sites),
            pooling={"method": "REML", "test": "z", "level": 95.0, "i2_threshold": 50.0},
            now=dt.datetime.now(dt.UTC), source="benchmark")
        document = None
        end = time.perf_counter() + 900
        while time.perf_counter() < end:
            current = await asyncio.to_thread(store.get_round, record.id)
            if current.status != "open" and current.document:
                document = current.document
                break
            await asyncio.sleep(0.05)
        t_pooled = time.perf_counter()
        if document is None:
            raise RuntimeError("the round did not close within 15 minutes")
    finally:
        for agent in agents:
            agent.request_stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        store.close()
    models = []
    for m in document.get("models", []):
        models.append({
            "model": m["name"], "family": m["family"], "status": m["status"],
            "sites": len(m.get("sites") or []), "n": m.get("n"),
            "one_stage_iterations": (m.get("one_stage") or {}).get("iterations"),
            "stratified_iterations": (m.get("stratified") or {}).get("iterations"),
            "hierarchical_evaluations": (m.get("hierarchical") or {}).get("evaluations"),
            "round_trips": m.get("round_trips"), "seconds": m.get("seconds"),
            "iecv_round_trips": m.get("iecv_round_trips"),
            "iecv_seconds": m.get("iecv_seconds"),
            "recommendation": (m.get("recommendation") or {}).get("choice")})
    return {"sites": len(sites), "open_to_pooled_s": round(t_pooled - t0, 2),
            "models_s": round(sum(m["seconds"] or 0 for m in models), 2),
            "round_trips": sum(m["round_trips"] or 0 for m in models),
            "steps_answered": sum(a.steps_answered for a in agents), "models": models}


def run(n_sites: int, seed: int = 0, *, iecv: bool = False) -> dict:
    """One round with ``n_sites`` agents; returns the figures."""
    from fedsynth.datasets import site_names

    sites = site_names(n_sites)
    with tempfile.TemporaryDirectory(prefix="fedsynth-models-bench-") as tmp:
        workdir = Path(tmp)
        config = _setup(workdir, sites, seed)
        proc = _start_coordinator(config, workdir)
        cwd = os.getcwd()
        os.chdir(workdir)                   # site.toml paths are relative to it
        try:
            return asyncio.run(_drive(workdir, config, sites, iecv=iecv))
        finally:
            os.chdir(cwd)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _seconds(opened: str, closed: str | None) -> float | None:
    if not closed:
        return None
    parse = dt.datetime.fromisoformat
    return round((parse(closed.replace("Z", "+00:00"))
                  - parse(opened.replace("Z", "+00:00"))).total_seconds(), 2)


def run_demo(n_sites: int, seed: int = 0) -> dict:
    """``fedsynth demo --kind trauma`` with ``n_sites`` MTFs; returns its figures."""
    with tempfile.TemporaryDirectory(prefix="fedsynth-trauma-demo-") as tmp:
        out = Path(tmp) / "demo"
        t0 = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "fedsynth", "demo", "--kind",
                                 "trauma", "--sites-count", str(n_sites), "--seed",
                                 str(seed), "--out", str(out)], capture_output=True,
                                text=True, cwd=tmp)
        total = time.perf_counter() - t0
        if result.returncode != 0:
            raise SystemExit(f"demo with {n_sites} sites failed:\n{result.stderr[-3000:]}")
        docs = [json.loads(p.read_text())
                for p in sorted((out / "federation" / "reports").glob("*.json"))]
    development, evaluation = docs
    model = development["models"][0]
    return {"sites": n_sites, "demo_s": round(total, 2),
            "development_round_s": _seconds(development["opened_at"],
                                            development["closed_at"]),
            "evaluation_round_s": _seconds(evaluation["opened_at"], evaluation["closed_at"]),
            "one_stage_iterations": (model.get("one_stage") or {}).get("iterations"),
            "hierarchical_evaluations": (model.get("hierarchical") or {}).get("evaluations"),
            "round_trips": model.get("round_trips"), "fit_s": model.get("seconds")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 15])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--iecv", action="store_true",
                        help="the mortality model alone, with internal-external "
                             "cross-validation")
    parser.add_argument("--demo", action="store_true",
                        help="time `fedsynth demo --kind trauma` (separate processes)")
    args = parser.parse_args(argv)
    if args.demo:
        demos = [run_demo(n, args.seed) for n in args.sites]
        if args.json:
            print(json.dumps(demos, indent=2))
            return 0
        print("| sites | IRLS iterations | hierarchical evaluations | round trips | fit seconds "
              "| development round s | evaluation round s | whole demo s |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for d in demos:
            print(f"| {d['sites']} | {d['one_stage_iterations']} | "
                  f"{d['hierarchical_evaluations']} | {d['round_trips']} | {d['fit_s']:.2f} | "
                  f"{d['development_round_s']} | {d['evaluation_round_s']} | "
                  f"{d['demo_s']:.1f} |")
        return 0
    results = [run(n, args.seed, iecv=args.iecv) for n in args.sites]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("| sites | model | family | one-stage iterations | stratified iterations | "
          "hierarchical evaluations | round trips | fit seconds | seconds per round trip |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        for m in r["models"]:
            per = m["seconds"] / m["round_trips"] if m["round_trips"] else float("nan")
            print(f"| {r['sites']} | {m['model']} | {m['family']} | "
                  f"{m['one_stage_iterations']} | {m['stratified_iterations']} | "
                  f"{m['hierarchical_evaluations']} | {m['round_trips']} | "
                  f"{m['seconds']:.2f} | {per:.3f} |")
    for r in results:
        for m in r["models"]:
            if m["iecv_round_trips"] is not None:
                print(f"{r['sites']} sites, {m['model']}: IECV {m['iecv_round_trips']} round "
                      f"trips, {m['iecv_seconds']:.2f} s (of the model's "
                      f"{m['seconds']:.2f} s); recommendation: {m['recommendation']}")
    for r in results:
        print(f"{r['sites']} sites: {len(r['models'])} model(s) in {r['models_s']:.2f} s of "
              f"fitting, {r['round_trips']} round trips, {r['steps_answered']} answers; "
              f"round opened to pooled document {r['open_to_pooled_s']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
