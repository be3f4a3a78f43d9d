"""Fixtures that run the federation as real processes on 127.0.0.1 over mutual TLS.

Reusable by every federation test (core, security, reports, deployment helpers):

* ``pki`` (session): a CA with a coordinator certificate for localhost, the six reference
  sites ``mtf-alpha`` ... ``mtf-foxtrot``, ``mtf-zulu`` (valid but never allowed) and a
  second, unrelated CA (``other_ca``) that also issued an ``mtf-alpha`` certificate;
* ``federation`` (function): a :class:`Federation` that writes configurations, starts and
  stops coordinator and site processes (``sys.executable -m fedsynth``), runs CLI commands
  and cleans up every process it started.

Example::

    def test_round(federation, site_data):
        coord = federation.start_coordinator(allow=["mtf-alpha", "mtf-bravo"])
        round_id = federation.start_round(SPEC, deadline="60s")
        for name in ("mtf-alpha", "mtf-bravo"):
            federation.start_site(name, site_data / f"{name}.csv", once=True)
        doc = federation.wait_round(round_id, timeout=120)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SITES_DIR = REPO / "tests" / "data" / "sites_public"
SITE_NAMES = ("mtf-alpha", "mtf-bravo", "mtf-charlie", "mtf-delta", "mtf-echo", "mtf-foxtrot")
DEMO_SPEC = REPO / "fedsynth" / "data" / "demo_spec.toml"


@dataclass(frozen=True)
class PKI:
    """Paths of the session's certificates."""

    dir: Path
    other_ca_dir: Path

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """One PKI per test session (key generation is the slow part of set-up)."""
    from fedsynth.pki import init_ca, issue_coordinator, issue_site

    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "pki")
    issue_coordinator(root / "pki", "localhost")
    for name in (*SITE_NAMES, "mtf-zulu"):
        issue_site(root / "pki", name)
    init_ca(root / "other", name="some other CA")
    issue_site(root / "other", "mtf-alpha")
    issue_coordinator(root / "other", "localhost")
    return PKI(root / "pki", root / "other")


@pytest.fixture(scope="session")
def site_data() -> Path:
    """Directory of the six reference sites' CSV files."""
    return SITES_DIR


def _toml_str(value: Any) -> str:
    return json.dumps(str(value))


class Federation:
    """Start and stop coordinator and site processes; run CLI commands.

    Parameters
    ----------
    root
        Working directory of this federation (configs, state, logs, reports).
    pki
        The session PKI.
    """

    def __init__(self, root: Path, pki: PKI) -> None:
        self.root = root
        self.pki = pki
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.coordinator_config_path: Path | None = None
        # state store backend: "sqlite" (a file per coordinator name) or "postgresql"
        # (a fresh database per coordinator name; deployment helper, pg_server.py)
        self.state_backend = "sqlite"
        self._state_urls: dict[str, str] = {}
        (root / "logs").mkdir(parents=True, exist_ok=True)

    # --- configuration ---------------------------------------------------------------------
    def write_coordinator_config(self, *, allow: list[str] | tuple[str, ...] = SITE_NAMES,
                                 name: str = "coordinator", method: str = "REML",
                                 extra: str = "", tls: bool = True) -> Path:
        """Write ``NAME.toml`` (listen on port 0, SQLite state, reports, audit log)."""
        path = self.root / f"{name}.toml"
        text = (f'listen = "127.0.0.1:0"\nstate = {_toml_str(self.state_url(name))}\n'
                f'report_dir = "reports"\naddr_file = "{name}.addr"\n'
                f'audit_log = "{name}-audit.jsonl"\nsubmission_window = "5m"\n{extra}\n')
        if tls:
            text += (f"[tls]\nca = {_toml_str(self.pki.ca)}\n"
                     f"cert = {_toml_str(self.pki.cert('coordinator'))}\n"
                     f"key = {_toml_str(self.pki.key('coordinator'))}\n")
        text += (f"[sites]\nallow = [{', '.join(_toml_str(s) for s in allow)}]\n"
                 f'[pooling]\nmethod = "{method}"\n')
        path.write_text(text, encoding="utf-8")
        self.coordinator_config_path = path
        return path

    def state_url(self, name: str = "coordinator") -> str:
        """``state`` of coordinator ``name``: its SQLite file, or its PostgreSQL database."""
        if self.state_backend == "sqlite":
            return f"{name}-state.db"
        if name not in self._state_urls:
            from tests.integration.pg_server import fresh_database

            self._state_urls[name] = fresh_database("fed")
        return self._state_urls[name]

    def addr_file(self, name: str = "coordinator") -> Path:
        return self.root / f"{name}.addr"

    def write_site_config(self, name: str, data: Path, *, min_cell_count: int = 5,
                          min_n: int = 20, coordinator: str | None = None,
                          extra: str = "") -> Path:
        """Write ``sites/NAME.toml``; by default it reads the coordinator address file."""
        sites = self.root / "sites"
        sites.mkdir(exist_ok=True)
        path = sites / f"{name}.toml"
        target = coordinator or "@" + str(self.addr_file())
        path.write_text(
            f'name = "{name}"\ncoordinator = {_toml_str(target)}\n'
            f'state_file = "{name}.state.json"\naudit_log = "{name}-audit.jsonl"\n'
            f'poll_interval = "0.3s"\nmax_backoff = "1s"\nheartbeat_interval = "2s"\n{extra}\n'
            f"[tls]\nca = {_toml_str(self.pki.ca)}\ncert = {_toml_str(self.pki.cert(name))}\n"
            f"key = {_toml_str(self.pki.key(name))}\n"
            f"[data]\npath = {_toml_str(data)}\n"
            f"[privacy]\nmin_cell_count = {min_cell_count}\nmin_n = {min_n}\n",
            encoding="utf-8")
        return path

    # --- processes -------------------------------------------------------------------------
    def _spawn(self, label: str, *args: str) -> subprocess.Popen:
        log = open(self.root / "logs" / f"{label}.log", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, "-m", "fedsynth", *args], stdout=log,
                                stderr=subprocess.STDOUT, cwd=self.root, env=env)
        log.close()
        self.procs.append((label, proc))
        return proc

    def log(self, label: str) -> str:
        path = self.root / "logs" / f"{label}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_coordinator(self, config: Path | None = None, *, timeout: float = 60,
                          **config_kwargs: Any) -> str:
        """Start ``fedsynth coordinator serve``; wait for its address file; return it."""
        if config is None:
            config = (self.write_coordinator_config(**config_kwargs)
                      if config_kwargs or self.coordinator_config_path is None
                      else self.coordinator_config_path)
        self.coordinator_config_path = config
        addr = self.root / f"{config.stem}.addr"
        addr.unlink(missing_ok=True)
        proc = self._spawn(config.stem, "coordinator", "serve", "--config", str(config))
        end = time.monotonic() + timeout
        while not addr.exists():
            if proc.poll() is not None:
                raise AssertionError(f"coordinator exited ({proc.returncode}):\n"
                                     + self.log(config.stem))
            if time.monotonic() > end:
                raise AssertionError("coordinator did not start:\n" + self.log(config.stem))
            time.sleep(0.05)
        return addr.read_text().strip()

    def coordinator_process(self, name: str = "coordinator") -> subprocess.Popen:
        running = [p for label, p in self.procs if label == name and p.poll() is None]
        if not running:
            raise AssertionError(f"no running process {name!r}")
        return running[-1]

    def start_site(self, name: str, data: Path, *, once: bool = False,
                   **config_kwargs: Any) -> subprocess.Popen:
        """Start ``fedsynth site run`` for ``name`` on ``data``."""
        config = self.write_site_config(name, data, **config_kwargs)
        args = ["site", "run", "--config", str(config)]
        if once:
            args.append("--once")
        return self._spawn(name, *args)

    def cli(self, *args: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess:
        """Run ``fedsynth ARGS`` to completion (text output)."""
        result = subprocess.run([sys.executable, "-m", "fedsynth", *args], cwd=self.root,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"fedsynth {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def start_round(self, spec: Path = DEMO_SPEC, *, deadline: str = "60s",
                    quorum: int | None = None, method: str | None = None) -> str:
        args = ["round", "start", "--config", str(self.coordinator_config_path),
                "--spec", str(spec), "--deadline", deadline]
        if quorum is not None:
            args += ["--quorum", str(quorum)]
        if method is not None:
            args += ["--method", method]
        return self.cli(*args).stdout.strip().splitlines()[-1]

    def show_round(self, round_id: str) -> dict[str, Any]:
        out = self.cli("round", "show", round_id, "--config",
                       str(self.coordinator_config_path), "--format", "json").stdout
        return json.loads(out)

    def wait_round(self, round_id: str, timeout: float = 180) -> dict[str, Any]:
        """Wait until the round closed (``round wait``) and return its document."""
        result = self.cli("round", "wait", round_id, "--config",
                          str(self.coordinator_config_path), "--timeout", str(timeout),
                          check=False, timeout=timeout + 60)
        if result.returncode != 0:
            logs = "\n".join(f"--- {label}\n{self.log(label)[-3000:]}"
                             for label in dict(self.procs))
            raise AssertionError(f"round {round_id} did not close: {result.stderr}\n{logs}")
        return self.show_round(round_id)

    def wait_for(self, predicate: Any, timeout: float = 120, what: str = "condition") -> None:
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                logs = "\n".join(f"--- {label}\n{self.log(label)[-2000:]}"
                                 for label in dict(self.procs))
                raise AssertionError(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.2)

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for _label, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _label, proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


#: test modules whose federation runs on both state backends (the others on SQLite only)
BOTH_BACKENDS = ("test_federation", "test_faults")
#: tests of those modules that exercise no store behaviour beyond the others (deadline
#: timing, quorum arithmetic): SQLite only, to keep the suite within its time budget
SQLITE_ONLY = ("test_killed_site_round_closes_at_deadline_with_quorum",
               "test_round_without_quorum_fails_with_reason")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the integration and fault tests on SQLite and on PostgreSQL."""
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if ("federation" in metafunc.fixturenames and module.startswith(BOTH_BACKENDS)
            and metafunc.function.__name__ not in SQLITE_ONLY):
        metafunc.parametrize("state_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def state_backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` unless parametrized; ``postgresql`` skips (with the reason) without a
    server."""
    backend = getattr(request, "param", "sqlite")
    if backend == "postgresql":
        from tests.integration.pg_server import postgres_url

        postgres_url()
    return backend


@pytest.fixture
def federation(tmp_path: Path, pki: PKI, state_backend: str):
    """A :class:`Federation` in a fresh directory; every process is stopped afterwards."""
    fed = Federation(tmp_path / "federation", pki)
    fed.state_backend = state_backend
    try:
        yield fed
    finally:
        fed.stop_all()
        shutil.rmtree(tmp_path / "federation" / "sites", ignore_errors=True)
