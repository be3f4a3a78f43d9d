"""Closing a round: one batch pool call, the document, and the report off the closing path."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pytest

import coordinator.server as server_module
from coordinator.rounds import close_if_due, open_round, pool_analyses, pool_round
from coordinator.server import Coordinator
from coordinator.store import Store, SubmissionRecord
from fedsynth.config import CoordinatorConfig, PoolingConfig
from fedsynth.meta.analysis import analyse

NOW = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)
POOLING = {"method": "REML", "test": "z", "level": 95.0, "i2_threshold": 50.0}
POOLED_KEYS = ("estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "tau2", "Q", "Q_pval",
               "I2", "H2", "pi_lb", "pi_ub")


def _sub(site: str, results: dict) -> SubmissionRecord:
    return SubmissionRecord("r", site, site, "", "", b"", b"", "", results, None)


def _round_data(seed: int = 3) -> tuple[list[dict], list[SubmissionRecord]]:
    """Seven sites, six analyses: heterogeneous, homogeneous, refusals and gaps, k = 1,
    k = 0 (everyone refused)."""
    rng = np.random.default_rng(seed)
    sites = [f"site-{c}" for c in "abcdefg"]
    analyses = [{"name": n, "estimator": "two_group", "measure": "MD"}
                for n in ("hetero", "homo", "gaps", "single", "none", "outlier")]
    results: dict[str, dict] = {s: {} for s in sites}
    for j, site in enumerate(sites):
        v = float(rng.uniform(0.01, 0.05))
        results[site]["hetero"] = {"yi": float(rng.normal(0.2, 0.5)), "vi": v,
                                   "se": v ** 0.5, "n": 100 + j}
        results[site]["homo"] = {"yi": float(rng.normal(0.1, 0.02)), "vi": v,
                                 "se": v ** 0.5, "n": 100 + j}
        if j % 3 == 0:
            results[site]["gaps"] = {"refused": "fewer than 5 events", "code": "min_cell"}
        elif j != 4:          # site-e sent no answer at all for "gaps"
            results[site]["gaps"] = {"yi": float(rng.normal(-0.3, 0.2)), "vi": v,
                                     "se": v ** 0.5, "n": 80}
        results[site]["single"] = ({"yi": 0.5, "vi": 0.02, "se": 0.02 ** 0.5, "n": 60}
                                   if j == 2 else {"refused": "too few", "code": "min_n"})
        results[site]["none"] = {"refused": "no such column", "code": "missing_column"}
        results[site]["outlier"] = {"yi": 2.5 if j == 6 else float(rng.normal(0.0, 0.05)),
                                    "vi": v, "se": v ** 0.5, "n": 90}
    return analyses, [_sub(s, results[s]) for s in sites]


def test_batch_close_equals_analyse_per_analysis() -> None:
    analyses, subs = _round_data()
    entries = [e.to_dict() for e in pool_analyses(analyses, subs, POOLING)]
    assert [e["analysis"] for e in entries] == [a["name"] for a in analyses]
    json.dumps(entries, allow_nan=False)               # JSON-ready as built
    flagged = 0
    for entry in entries:
        name = entry["analysis"]
        sent = [(s.site, s.results[name]) for s in subs
                if name in s.results and "refused" not in s.results[name]]
        assert entry["k"] == len(sent)
        assert [e["site"] for e in entry["site_estimates"]] == [site for site, _ in sent]
        missing = {s.site for s in subs} - {site for site, _ in sent}
        assert set(entry["refused"]) == missing
        # the diagnostics the report does not show are not computed at close
        for section in ("leave_one_out", "influence", "blup", "publication_bias"):
            assert section not in entry
        if not sent:
            assert entry["heterogeneity"]["flagged"] is False
            assert "nothing was pooled" in entry["notes"][0]
            continue
        ref = analyse([r["yi"] for _, r in sent], [r["vi"] for _, r in sent],
                      labels=[site for site, _ in sent], **{k: POOLING[k] for k in
                                                            ("method", "test", "level",
                                                             "i2_threshold")})
        expected = ref.to_dict()
        for key in POOLED_KEYS:
            if expected[key] is None:
                assert entry[key] is None, (name, key)
            else:
                assert entry[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), \
                    (name, key)
        for key in ("flagged", "level", "reasons", "sites"):
            assert entry["heterogeneity"][key] == expected["heterogeneity"][key], (name, key)
        flagged += entry["heterogeneity"]["flagged"]
    # the data exercise both verdicts and a named driver site
    assert 0 < flagged < len(entries)
    outlier = next(e for e in entries if e["analysis"] == "outlier")
    assert "site-g" in outlier["heterogeneity"]["sites"]


def test_a_bad_value_does_not_sink_the_round() -> None:
    analyses, subs = _round_data()
    subs[0].results["homo"]["vi"] = -1.0                 # validation normally rejects this
    entries = {e.analysis: e.to_dict() for e in pool_analyses(analyses, subs, POOLING)}
    assert entries["homo"]["notes"][0].startswith("pooling failed")
    assert "vi" in entries["homo"]["notes"][0]
    assert entries["hetero"]["estimate"] is not None and "notes" not in entries["hetero"]
    subs[1].results["hetero"]["yi"] = math.nan
    entries = {e.analysis: e.to_dict() for e in pool_analyses(analyses, subs, POOLING)}
    assert entries["hetero"]["notes"][0].startswith("pooling failed")
    json.dumps(list(entries.values()), allow_nan=False)


SPEC = "".join(f'[[analysis]]\nname = "{n}"\nestimator = "two_group"\noutcome = "y"\n'
               f'exposure = "t"\nmeasure = "MD"\n\n'
               for n in ("hetero", "homo", "gaps", "single", "none", "outlier"))


def _closed_round(store: Store) -> str:
    _, subs = _round_data()
    record = open_round(store, spec_source=SPEC, deadline=dt.timedelta(minutes=1),
                        quorum=2, allowed=tuple(s.site for s in subs), pooling=POOLING,
                        now=NOW)
    for i, sub in enumerate(subs):
        store.add_submission(round_id=record.id, site=sub.site, nonce=bytes([i]) * 16,
                             signed_at=NOW, payload=sub.site.encode(), signature=b"s",
                             results=sub.results, agent_version="t", now=NOW)
    outcome = close_if_due(store, record.id, NOW + dt.timedelta(seconds=1))
    assert outcome is not None and outcome.status == "pooled"
    # what the store keeps is exactly the document pooled
    assert store.get_round(record.id).document == json.loads(json.dumps(
        outcome.document.to_dict()))
    return record.id


def _coordinator(tmp_path: Path) -> Coordinator:
    config = CoordinatorConfig(listen="127.0.0.1:0", state=f"sqlite:///{tmp_path / 's.db'}",
                               report_dir=tmp_path / "reports", tls=None,
                               allow=tuple(f"site-{c}" for c in "abcdefg"),
                               pooling=PoolingConfig())
    return Coordinator(config)


def test_report_written_by_a_worker_process(tmp_path: Path) -> None:
    coordinator = _coordinator(tmp_path)
    try:
        round_id = _closed_round(coordinator.store)
        assert [r.id for r in coordinator.store.closed_without_report()] == [round_id]
        record = coordinator.store.get_round(round_id)
        assert asyncio.run(coordinator.write_report(round_id, record.document)) is True
        report = coordinator.store.get_round(round_id).report
        assert Path(report["html"]).exists()
        assert json.loads(Path(report["json"]).read_text()) == record.document
        assert coordinator.store.closed_without_report() == []
        # a document the report cannot render is recorded as an error, not retried forever
        bad = dict(record.document, analyses="not a list")
        assert asyncio.run(coordinator.write_report(round_id, bad)) is True
        assert "error" in coordinator.store.get_round(round_id).report
    finally:
        coordinator.store.close()


def test_stop_during_a_report_leaves_it_for_the_next_start(tmp_path: Path,
                                                           monkeypatch) -> None:
    monkeypatch.setattr(server_module, "REPORT_STOP_GRACE", 0.0)
    coordinator = _coordinator(tmp_path)
    try:
        round_id = _closed_round(coordinator.store)
        document = coordinator.store.get_round(round_id).document

        async def stopped_mid_report() -> bool:
            coordinator.request_stop()       # the stop arrives while the worker starts
            return await coordinator.write_report(round_id, document)

        assert asyncio.run(stopped_mid_report()) is False
        assert coordinator.store.get_round(round_id).report is None
        assert not (tmp_path / "reports" / f"{round_id}.html").exists()
    finally:
        coordinator.store.close()
    # "restart": the reporter of a new coordinator on the same store writes it
    restarted = _coordinator(tmp_path)

    async def run_reporter() -> None:
        task = asyncio.create_task(restarted._reporter())
        for _ in range(600):
            if (await asyncio.to_thread(restarted.store.get_round, round_id)).report:
                break
            await asyncio.sleep(0.1)
        restarted.request_stop()
        await task

    try:
        asyncio.run(run_reporter())
        report = restarted.store.get_round(round_id).report
        assert report is not None and Path(report["html"]).exists()
    finally:
        restarted.store.close()


def test_failed_round_document_is_json_ready(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        record = open_round(store, spec_source=SPEC, deadline=dt.timedelta(minutes=1),
                            quorum=3, allowed=("site-a", "site-b", "site-c"),
                            pooling=POOLING, now=NOW)
        outcome = pool_round(store.get_round(record.id), [], NOW + dt.timedelta(minutes=2))
        assert outcome.status == "failed" and outcome.document.analyses == ()
        json.dumps(outcome.document.to_dict(), allow_nan=False)


def test_a_due_round_closes_while_another_rounds_report_is_being_written(
        tmp_path: Path, monkeypatch) -> None:
    """The closer and the reporter are separate tasks: a long report (here: one that
    never finishes until released) does not hold up the close of the next due round."""
    coordinator = _coordinator(tmp_path)
    first = _closed_round(coordinator.store)            # closed, its report pending
    started, release = asyncio.Event(), asyncio.Event()
    reported: list[str] = []

    async def slow_report(round_id: str, document: dict | None) -> bool:
        started.set()
        await release.wait()
        reported.append(round_id)
        coordinator.store.set_report(round_id, {"html": "x", "json": "y"})
        return True

    monkeypatch.setattr(coordinator, "write_report", slow_report)
    _, subs = _round_data()
    second = open_round(coordinator.store, spec_source=SPEC,
                        deadline=dt.timedelta(hours=1), quorum=2,
                        allowed=tuple(s.site for s in subs), pooling=POOLING,
                        now=server_module.utcnow())

    async def scenario() -> str:
        reporter = asyncio.create_task(coordinator._reporter())
        closer = asyncio.create_task(coordinator._closer())
        await asyncio.wait_for(started.wait(), 30)
        # every site answers the second round while the first one's report is running
        for i, sub in enumerate(subs):
            await asyncio.to_thread(
                coordinator.store.add_submission, round_id=second.id, site=sub.site,
                nonce=bytes([100 + i]) * 16, signed_at=server_module.utcnow(),
                payload=sub.site.encode() + b"2", signature=b"s", results=sub.results,
                agent_version="t", now=server_module.utcnow())
        for _ in range(300):
            record = await asyncio.to_thread(coordinator.store.get_round, second.id)
            if not record.is_open:
                break
            await asyncio.sleep(0.1)
        status = record.status
        assert reported == []                          # the first report is still running
        release.set()
        for _ in range(300):
            if len(reported) == 2:
                break
            await asyncio.sleep(0.1)
        coordinator.request_stop()
        await asyncio.gather(reporter, closer)
        return status

    try:
        assert asyncio.run(scenario()) == "pooled"
        assert reported == [first, second.id]          # oldest first, both written
    finally:
        coordinator.store.close()
