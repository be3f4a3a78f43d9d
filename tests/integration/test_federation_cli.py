"""`fedsynth simulate` end to end, and the round CLI's answers to bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import SITES_DIR

pytestmark = pytest.mark.integration

SPEC = """
name = "cli"
[[analysis]]
name = "los_MD"
estimator = "two_group"
outcome = "los_days"
exposure = "treated"
measure = "MD"
[[analysis]]
name = "crude_OR"
estimator = "two_by_two"
outcome = "outcome"
exposure = "treated"
measure = "OR"
"""


def fedsynth(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsynth", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_simulate_three_sites(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    sites.mkdir()
    for name in ("mtf-alpha", "mtf-delta", "mtf-foxtrot"):
        shutil.copy(SITES_DIR / f"{name}.csv", sites / f"{name}.csv")
    (sites / "notes.txt").write_text("not a site")
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    result = fedsynth("simulate", "--sites", str(sites), "--spec", str(spec), "--out",
                      str(out), "--deadline", "3m", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in result.stdout
    assert "pooled" in result.stdout and "mtf-foxtrot answered" in result.stdout
    (report,) = (out / "reports").glob("*.json")
    doc = json.loads(report.read_text())
    assert doc["status"] == "pooled"
    by_name = {a["analysis"]: a for a in doc["analyses"]}
    assert by_name["los_MD"]["k"] == 3
    # foxtrot's 2x2 table has a cell of 4: suppressed at the site with the default limits.
    assert by_name["crude_OR"]["k"] == 2
    assert "mtf-foxtrot" in by_name["crude_OR"]["refused"]
    assert (out / "reports" / report.name.replace(".json", ".html")).exists()
    for name in ("ca", "coordinator", "mtf-alpha"):
        assert (out / "pki" / f"{name}.key").stat().st_mode & 0o077 == 0
    # A second run into the same directory is refused without --force: nothing changes.
    again = fedsynth("simulate", "--sites", str(sites), "--spec", str(spec), "--out",
                     str(out), cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr
    assert report.exists()


def test_round_cli_bad_input(tmp_path: Path, pki) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(
        'listen = "127.0.0.1:0"\nstate = "state.db"\n'
        f'[tls]\nca = "{pki.ca}"\ncert = "{pki.cert("coordinator")}"\n'
        f'key = "{pki.key("coordinator")}"\n[sites]\nallow = ["mtf-alpha", "mtf-bravo"]\n')
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    cases = [
        (("round", "show", "r-20990101-0001"), "'r-20990101-0001' does not exist"),
        (("round", "start", "--spec", str(spec), "--quorum", "3"), "quorum = 3 exceeds"),
        (("round", "start", "--spec", str(spec), "--deadline", "soon"), "--deadline = 'soon'"),
        (("round", "start", "--spec", str(tmp_path / "missing.toml")), "missing.toml"),
        (("round", "wait", "r-20990101-0001", "--timeout", "1"), "does not exist"),
    ]
    for args, message in cases:
        result = fedsynth(*args, "--config", str(config), cwd=tmp_path, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert result.stdout == ""
    listed = fedsynth("round", "list", "--config", str(config), "--format", "json",
                      cwd=tmp_path)
    assert json.loads(listed.stdout) == []                       # no state change
    started = fedsynth("round", "start", "--config", str(config), "--spec", str(spec),
                       "--quorum", "1", cwd=tmp_path)
    round_id = started.stdout.strip().splitlines()[-1]
    assert started.returncode == 0 and round_id.startswith("r-")
    shown = fedsynth("round", "show", round_id, "--config", str(config), cwd=tmp_path)
    assert "status open" in shown.stdout and "mtf-bravo" in shown.stdout


def test_insecure_mode_works_and_warns(tmp_path: Path) -> None:
    import signal
    import time

    (tmp_path / "coordinator.toml").write_text(
        'listen = "127.0.0.1:0"\nstate = "state.db"\n[sites]\nallow = ["mtf-alpha"]\n')
    (tmp_path / "site.toml").write_text(
        'name = "mtf-alpha"\ncoordinator = "@coordinator.addr"\npoll_interval = "0.3s"\n'
        f'[data]\npath = "{SITES_DIR / "mtf-alpha.csv"}"\n')
    (tmp_path / "spec.toml").write_text(SPEC)
    # Without --insecure and without [tls], both sides refuse to start.
    refused = fedsynth("coordinator", "serve", "--config", "coordinator.toml", cwd=tmp_path)
    assert refused.returncode == 2 and "[tls]" in refused.stderr
    log = open(tmp_path / "coordinator.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "fedsynth", "coordinator", "serve",
                               "--config", "coordinator.toml", "--insecure"], cwd=tmp_path,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 60
        while not (tmp_path / "coordinator.addr").exists():
            assert server.poll() is None and time.monotonic() < end
            time.sleep(0.1)
        started = fedsynth("round", "start", "--config", "coordinator.toml", "--spec",
                           "spec.toml", cwd=tmp_path)
        round_id = started.stdout.strip().splitlines()[-1]
        site = fedsynth("site", "run", "--config", "site.toml", "--insecure", "--once",
                        cwd=tmp_path)
        assert site.returncode == 0, site.stderr
        assert "NO TLS" in site.stderr
        waited = fedsynth("round", "wait", round_id, "--config", "coordinator.toml",
                          "--timeout", "60", cwd=tmp_path)
        assert waited.returncode == 0 and "pooled" in waited.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    assert "NO TLS" in (tmp_path / "coordinator.log").read_text()
