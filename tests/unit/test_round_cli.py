"""The round and site commands a new user hit (issue 12): ``fedsynth meta round.json``,
``round show --format csv``, ``round wait`` (progress, default timeout), ``site pending``
(the round id) and ``sites`` (revoked sites)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import pytest

from coordinator.rounds import close_if_due, open_round
from coordinator.store import Store
from fedsynth.cli import main
from fedsynth.config import load_coordinator_config
from tests.unit.test_round_close import NOW, POOLING, SPEC, _round_data


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def coordinator_dir(tmp_path: Path) -> Path:
    sites = ", ".join(f'"site-{c}"' for c in "abcdefg")
    (tmp_path / "coordinator.toml").write_text(
        f'listen = "127.0.0.1:0"\nstate = "state.db"\n[sites]\nallow = [{sites}]\n'
        '[pooling]\nmethod = "DL"\ntest = "knha"\n')
    return tmp_path


def _store(directory: Path) -> Store:
    config = load_coordinator_config(directory / "coordinator.toml", insecure=True)
    return Store(config.state)


def closed_round(directory: Path) -> str:
    _, subs = _round_data()
    pooling = {**POOLING, "method": "DL", "test": "knha"}
    with _store(directory) as store:
        record = open_round(store, spec_source=SPEC, deadline=dt.timedelta(minutes=1),
                            quorum=2, allowed=tuple(s.site for s in subs), pooling=pooling,
                            now=NOW)
        for i, sub in enumerate(subs):
            store.add_submission(round_id=record.id, site=sub.site, nonce=bytes([i]) * 16,
                                 signed_at=NOW, payload=sub.site.encode(), signature=b"s",
                                 results=sub.results, agent_version="t", now=NOW)
        outcome = close_if_due(store, record.id, NOW + dt.timedelta(seconds=1))
        assert outcome is not None and outcome.status == "pooled"
    return record.id


# --- fedsynth meta round.json -----------------------------------------------------------

def test_meta_pools_a_round_document(capsys, coordinator_dir):
    round_id = closed_round(coordinator_dir)
    config = coordinator_dir / "coordinator.toml"
    code, out, _ = run(capsys, "round", "show", round_id, "--config", config, "--format",
                       "json")
    assert code == 0
    doc = json.loads(out)
    path = coordinator_dir / "round.json"
    path.write_text(out)
    code, out, err = run(capsys, "meta", path, "--format", "json")
    assert code == 0, err
    pooled = {r["analysis"]: r for r in json.loads(out)}
    # every analysis with estimates, pooled with the round's own settings (DL, knha)
    expected = {a["analysis"]: a for a in doc["analyses"] if a.get("site_estimates")}
    assert set(pooled) == set(expected)
    for name, entry in expected.items():
        rec = pooled[name]
        assert rec["method"] == "DL" and rec["test"] == "knha"
        assert rec["k"] == entry["k"]
        for key in ("estimate", "se", "ci_lb", "ci_ub", "tau2", "I2"):
            assert rec[key] == pytest.approx(entry[key], rel=1e-9, abs=1e-12), key
    assert "left out" in err and "none" in err        # the analysis everyone refused
    # the same numbers as the site estimates written as a CSV
    rows = ["analysis,study,yi,vi"] + [
        f"{a['analysis']},{e['site']},{e['yi']!r},{e['vi']!r}"
        for a in doc["analyses"] for e in a.get("site_estimates", [])]
    flat = coordinator_dir / "flat.csv"
    flat.write_text("\n".join(rows) + "\n")
    _, from_csv, _ = run(capsys, "meta", flat, "--by", "analysis", "--method", "DL",
                         "--test", "knha", "--format", "json")
    assert json.loads(from_csv) == json.loads(out)
    # options override the round's settings
    code, out, _ = run(capsys, "meta", path, "--method", "REML", "--format", "json")
    assert {r["method"] for r in json.loads(out)} == {"REML"}
    assert {r["test"] for r in json.loads(out)} == {"knha"}


def test_meta_round_document_errors(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, out, err = run(capsys, "meta", bad)
    assert code == 2 and out == "" and "not a JSON round document" in err
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"round": "r-1", "status": "pooled", "analyses": [
        {"analysis": "a", "site_estimates": [{"site": 3, "yi": 0.1, "vi": 0.01}]}]}))
    code, out, err = run(capsys, "meta", wrong)
    assert code == 2 and out == "" and "site_estimates[0].site" in err
    empty = tmp_path / "open.json"
    empty.write_text(json.dumps({"round": "r-2", "status": "open", "analyses": []}))
    code, out, err = run(capsys, "meta", empty)
    assert code == 2 and "no site estimates" in err
    code, out, err = run(capsys, "meta", empty, "--yi", "x")
    assert code == 2 and "--yi" in err
