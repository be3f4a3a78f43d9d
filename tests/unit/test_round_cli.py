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


# --- round show --format csv ------------------------------------------------------------

def test_round_show_csv_one_row_per_analysis(capsys, coordinator_dir):
    round_id = closed_round(coordinator_dir)
    config = coordinator_dir / "coordinator.toml"
    _, doc_text, _ = run(capsys, "round", "show", round_id, "--config", config, "--format",
                         "json")
    doc = json.loads(doc_text)
    code, out, err = run(capsys, "round", "show", round_id, "--config", config, "--format",
                         "csv")
    assert code == 0 and err == ""
    rows = list(csv.DictReader(io.StringIO(out)))
    header = out.splitlines()[0].split(",")
    assert header[:7] == ["round", "analysis", "estimator", "measure", "k", "method", "test"]
    for key in ("tau2_ci_lb", "tau2_ci_ub", "I2_ci_lb", "I2_ci_ub", "pi_lb", "pi_ub",
                "heterogeneity_flagged", "heterogeneity_sites", "refused_sites"):
        assert key in header
    assert "tau2_ci" not in header and "site_estimates" not in header
    assert [r["analysis"] for r in rows] == [a["analysis"] for a in doc["analyses"]]
    for row, entry in zip(rows, doc["analyses"]):
        assert row["round"] == round_id
        if "estimate" in entry:
            assert float(row["estimate"]) == entry["estimate"]        # repr: exact
            ub = (entry.get("tau2_ci") or [None, None])[1]
            assert (float(row["tau2_ci_ub"]) if row["tau2_ci_ub"] else None) == ub
        else:
            assert row["estimate"] == ""
        assert row["refused_sites"].split(";") == (list(entry["refused"]) or [""])
    # the same columns as fedsynth meta --format csv for the pooled fields
    path = coordinator_dir / "round.json"
    path.write_text(doc_text)
    _, meta_csv, _ = run(capsys, "meta", path, "--format", "csv")
    meta_header = meta_csv.splitlines()[0].split(",")
    start, end = meta_header.index("estimate"), meta_header.index("H2_ci_ub") + 1
    pooled = meta_header[start:end]
    assert header[header.index("estimate"):header.index("estimate") + len(pooled)] == pooled


# --- round show (table) ------------------------------------------------------------------

def test_round_show_table_states_scale_and_null(capsys, coordinator_dir):
    """A version-2 document's table names the scale and the null each p-value tests."""
    round_id = closed_round(coordinator_dir)
    config = coordinator_dir / "coordinator.toml"
    _, doc_text, _ = run(capsys, "round", "show", round_id, "--config", config, "--format",
                         "json")
    doc = json.loads(doc_text)
    code, out, err = run(capsys, "round", "show", round_id, "--config", config)
    assert code == 0 and err == ""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("analysis"))
    names = lines[start].split()
    assert names[:5] == ["analysis", "k", "method/test", "measure", "scale"]
    assert {"pi_lb", "pi_ub", "pval", "H0"} <= set(names)
    for line, entry in zip(lines[start + 1:], doc["analyses"]):
        cells = dict(zip(names, line.split()))
        assert cells["analysis"] == entry["analysis"]
        assert cells["measure"] == "MD" and cells["scale"] == "identity"
        assert cells["method/test"] == f"{entry['method']}/{entry['test']}"
        assert cells["H0"] == "0"                     # a mean difference is tested against 0
        if entry.get("estimate") is not None:
            assert cells["estimate"] == f"{entry['estimate']:.3f}"
    assert "pval tests H0, the measure's null" in out


# --- round wait -------------------------------------------------------------------------

def test_round_wait_shows_progress_and_defaults_to_the_deadline(capsys, coordinator_dir,
                                                                monkeypatch):
    import threading
    import time

    import coordinator.commands.round as round_cmd
    from fedsynth.timeutil import utcnow

    monkeypatch.setattr(round_cmd, "WAIT_GRACE_SECONDS", 1.0)
    monkeypatch.setattr(round_cmd, "PROGRESS_EVERY_SECONDS", 0.5)
    config = coordinator_dir / "coordinator.toml"
    spec = coordinator_dir / "spec.toml"
    spec.write_text(SPEC)
    # no --timeout, nobody closes it: the wait ends 1 s (grace) after the 2 s deadline
    code, out, err = run(capsys, "round", "start", "--config", config, "--spec", spec,
                         "--deadline", "2s", "--quorum", "2")
    round_id = out.strip()
    t0 = time.monotonic()
    code, out, err = run(capsys, "round", "wait", round_id, "--config", config)
    waited = time.monotonic() - t0
    assert code == 1 and out == ""
    assert "still open 1 s after its deadline" in err and "is the coordinator running" in err
    assert 1.0 < waited < 20
    assert f"round {round_id}: 0/7 sites answered (quorum 2);" in err
    assert "left until the deadline" in err or "passed" in err

    # a site answers and a closer closes the round while we wait
    code, out, err = run(capsys, "round", "start", "--config", config, "--spec", spec,
                         "--deadline", "3s", "--quorum", "2")
    round_id = out.strip()
    _, subs = _round_data()

    def site_then_close() -> None:
        time.sleep(0.8)
        with _store(coordinator_dir) as store:
            store.add_submission(round_id=round_id, site="site-a", nonce=b"n" * 16,
                                 signed_at=utcnow(), payload=b"p", signature=b"s",
                                 results=subs[0].results, agent_version="t", now=utcnow())
        time.sleep(2.6)
        with _store(coordinator_dir) as store:
            close_if_due(store, round_id, utcnow())

    worker = threading.Thread(target=site_then_close)
    worker.start()
    code, out, err = run(capsys, "round", "wait", round_id, "--config", config)
    worker.join()
    assert code == 0 and out.startswith(f"round {round_id} failed")
    assert "0/7 sites answered" in err and "1/7 sites answered" in err
    assert "left until the deadline" in err


def test_round_wait_timeout_option(capsys, coordinator_dir):
    config = coordinator_dir / "coordinator.toml"
    spec = coordinator_dir / "spec.toml"
    spec.write_text(SPEC)
    _, out, _ = run(capsys, "round", "start", "--config", config, "--spec", spec,
                    "--deadline", "10m", "--quorum", "2")
    round_id = out.strip()
    code, out, err = run(capsys, "round", "wait", round_id, "--config", config, "--timeout",
                         "0.5", "--quiet")
    assert code == 1 and "still open after 0.5 s" in err and "sites answered (" not in err
    code, out, err = run(capsys, "round", "wait", round_id, "--config", config, "--timeout",
                         "-1")
    assert code == 2 and "--timeout" in err
    code, out, err = run(capsys, "round", "wait", round_id, "--config", config, "--timeout",
                         "1s")
    assert code == 1 and "left until the deadline" in err


# --- fedsynth sites shows a revoked site -------------------------------------------------

def test_sites_shows_revoked(capsys, tmp_path):
    from fedsynth.timeutil import utcnow

    pki = tmp_path / "pki"
    assert run(capsys, "ca", "init", "--dir", pki)[0] == 0
    for args in (("--coordinator", "localhost"), ("--site", "site-a"), ("--site", "site-b")):
        assert run(capsys, "ca", "issue", "--dir", pki, *args)[0] == 0
    config = tmp_path / "coordinator.toml"
    config.write_text(
        'listen = "127.0.0.1:0"\nstate = "state.db"\n'
        f'[tls]\nca = "{pki / "ca.crt"}"\ncert = "{pki / "coordinator.crt"}"\n'
        f'key = "{pki / "coordinator.key"}"\n[sites]\nallow = ["site-a", "site-b"]\n')
    with _store(tmp_path) as store:
        for site in ("site-a", "site-b"):     # both heartbeat now: "online"
            store.record_contact(site, agent_version="t", protocol_version="1", now=utcnow())
    code, out, _ = run(capsys, "sites", "--config", config)
    assert code == 0 and "revoked" not in out.lower() and out.count("online") == 2
    assert run(capsys, "ca", "revoke", "--dir", pki, "--site", "site-a")[0] == 0
    code, out, _ = run(capsys, "sites", "--config", config)
    line_a = next(ln for ln in out.splitlines() if ln.startswith("site-a"))
    line_b = next(ln for ln in out.splitlines() if ln.startswith("site-b"))
    assert "REVOKED" in line_a and "revoked" in line_a and "yes" not in line_a
    assert "revoked" not in line_b.lower() and "yes" in line_b
    code, out, _ = run(capsys, "sites", "--config", config, "--format", "json")
    rows = {r["site"]: r for r in json.loads(out)}
    assert rows["site-a"]["revoked"] and rows["site-a"]["status"] == "revoked"
    assert rows["site-a"]["revoked_serial"] and rows["site-a"]["allowed"] is True
    assert not rows["site-b"]["revoked"] and rows["site-b"]["status"] == "online"


# --- site pending names the round to approve ----------------------------------------------

def test_site_pending_prints_the_approve_command_per_round(capsys, tmp_path):
    from site_agent.policy import site_policy
    from tests.unit.test_policy import SPEC, _site

    config = _site(tmp_path, '[policy]\nrequire_approval = true\napprovals = "appr"\n')
    policy = site_policy(config)
    policy.store().record_pending("r-20261127-0003", SPEC)
    other = {"analyses": SPEC["analyses"][:1]}
    policy.store().record_pending("r-20261127-0004", other)
    code, out, _ = run(capsys, "site", "pending", "--config", config)
    assert code == 0 and "ROUND" not in out
    assert f"approve with: fedsynth site approve r-20261127-0003 --config {config}" in out
    assert f"approve with: fedsynth site approve r-20261127-0004 --config {config}" in out
    # the printed command works as it is
    line = next(ln for ln in out.splitlines() if "r-20261127-0003 --config" in ln)
    argv = line.split("approve with: fedsynth ", 1)[1].split()
    assert run(capsys, *argv)[0] == 0
    code, out, _ = run(capsys, "site", "pending", "--config", config)
    assert "r-20261127-0003" not in out and "r-20261127-0004" in out
