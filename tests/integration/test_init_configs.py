"""``fedsynth init`` end to end: the files it writes start a real coordinator and real
site agents (mutual TLS over gRPC on 127.0.0.1, port 0) that pool a round."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsynth.config import load_coordinator_config, load_site_config
from tests.integration.conftest import SITES_DIR

pytestmark = pytest.mark.integration

SPEC = """
name = "init"
[[analysis]]
name = "los_MD"
estimator = "two_group"
outcome = "los_days"
exposure = "treated"
measure = "MD"
"""
SITES = ("mtf-alpha", "mtf-bravo")


def fedsynth(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsynth", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_init_files_start_a_coordinator_and_sites(tmp_path: Path, pki) -> None:
    work = tmp_path / "fed"
    (work / "sites").mkdir(parents=True)
    made = fedsynth("init", "coordinator", "--name", "localhost", "--listen", "127.0.0.1:0",
                    "--pki", pki.dir, "--allow", ",".join(SITES), cwd=work)
    assert made.returncode == 0, made.stderr
    coordinator_toml = work / "coordinator.toml"
    config = load_coordinator_config(coordinator_toml)          # the real loader
    assert config.allow == SITES and config.tls.cert == pki.cert("coordinator")
    for name in SITES:
        made = fedsynth("init", "site", "--name", name, "--coordinator",
                        f"@{work / 'coordinator.addr'}", "--pki", pki.dir, "--data",
                        SITES_DIR / f"{name}.csv", "--out", f"sites/{name}.toml", cwd=work)
        assert made.returncode == 0, made.stderr
        site = load_site_config(work / "sites" / f"{name}.toml")
        assert site.name == name and site.data.path == SITES_DIR / f"{name}.csv"
    again = fedsynth("init", "site", "--name", "mtf-alpha", "--coordinator", "h:1",
                     "--data", "x.csv", "--out", "sites/mtf-alpha.toml", cwd=work)
    assert again.returncode == 2 and "--force" in again.stderr
    (work / "spec.toml").write_text(SPEC)

    log = open(work / "coordinator.log", "wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = subprocess.Popen([sys.executable, "-m", "fedsynth", "coordinator", "serve",
                               "--config", "coordinator.toml"], cwd=work, stdout=log,
                              stderr=subprocess.STDOUT, env=env)
    try:
        end = time.monotonic() + 60
        while not (work / "coordinator.addr").exists():
            assert server.poll() is None, (work / "coordinator.log").read_text()
            assert time.monotonic() < end
            time.sleep(0.1)
        started = fedsynth("round", "start", "--config", "coordinator.toml", "--spec",
                           "spec.toml", "--deadline", "5m", cwd=work)
        assert started.returncode == 0, started.stderr
        round_id = started.stdout.strip().splitlines()[-1]
        agents = [subprocess.Popen([sys.executable, "-m", "fedsynth", "site", "run",
                                    "--config", f"sites/{name}.toml", "--once"], cwd=work,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
                  for name in SITES]
        for agent in agents:
            out, _ = agent.communicate(timeout=120)
            assert agent.returncode == 0, out.decode(errors="replace")
        waited = fedsynth("round", "wait", round_id, "--config", "coordinator.toml",
                          cwd=work)
        assert waited.returncode == 0 and "pooled" in waited.stdout, waited.stderr
        shown = fedsynth("round", "show", round_id, "--config", "coordinator.toml",
                         "--format", "json", cwd=work)
        doc = json.loads(shown.stdout)
        assert doc["status"] == "pooled" and doc["analyses"][0]["k"] == 2
        listed = fedsynth("sites", "--config", "coordinator.toml", "--format", "json",
                          cwd=work)
        assert {r["site"] for r in json.loads(listed.stdout)} == set(SITES)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
