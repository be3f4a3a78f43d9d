"""A PostgreSQL server for the tests (owned by the deployment helper).

``.ci/run`` starts a throw-away server and exports ``FEDSYNTH_TEST_POSTGRES_URL``. When
the tests run without it (a developer's ``python3 -m pytest``), :func:`postgres_url` starts
one itself on a free loopback port, once per test process, and stops it at exit. Only when
neither works do the PostgreSQL tests skip, with the reason in the pytest report.

Each test that writes gets its own database (:func:`fresh_database`) so tests never see
each other's tables.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

ENV_URL = "FEDSYNTH_TEST_POSTGRES_URL"
ENV_SKIP = "FEDSYNTH_TEST_POSTGRES_SKIP"

_state: dict[str, str | None] = {}


def _bin_dir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: [int(x) if x.isdigit() else x for x in p.split("/")])
    for directory in reversed(candidates):
        if os.access(os.path.join(directory, "initdb"), os.X_OK):
            return Path(directory)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_private_server() -> str:
    """Start a server in a temporary directory; return its URL or raise RuntimeError."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    tmp = Path(tempfile.mkdtemp(prefix="fedsynth-test-pg-"))
    tmp.chmod(0o755)
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
            raise RuntimeError("running as root and there is no 'postgres' user for initdb")
        shutil.chown(tmp, user="postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data = tmp / "data"
    run = subprocess.run(prefix + [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                                   "-A", "trust", "-E", "UTF8", "--no-sync"],
                         capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise RuntimeError(f"initdb failed: {run.stderr.strip()[-300:]}")
    port = _free_port()
    options = (f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    run = subprocess.run(prefix + [str(bin_dir / "pg_ctl"), "-D", str(data), "-l",
                                   str(tmp / "server.log"), "-w", "-t", "60", "-o", options,
                                   "start"], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        log = (tmp / "server.log").read_text(errors="replace")[-300:] \
            if (tmp / "server.log").exists() else run.stderr
        raise RuntimeError(f"the PostgreSQL server did not start: {log.strip()}")

    def stop() -> None:
        subprocess.run(prefix + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                 "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(stop)
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def postgres_url() -> str:
    """URL of a server the tests may create databases on; skips the test if there is none."""
    if "url" not in _state:
        url = os.environ.get(ENV_URL)
        reason = os.environ.get(ENV_SKIP)
        if not url:
            try:
                url = _start_private_server()
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                reason = (reason + "; " if reason else "") + str(error)
                url = None
        _state["url"] = url
        _state["reason"] = reason
    if not _state["url"]:
        pytest.skip(f"PostgreSQL unavailable: {_state['reason']}")
    return str(_state["url"])


def fresh_database(prefix: str = "t") -> str:
    """Create an empty database on the test server and return its SQLAlchemy URL.

    The URL uses the ``postgresql+psycopg`` driver (psycopg 3, the one pyproject installs).
    """
    import sqlalchemy as sa

    base = sa.engine.make_url(postgres_url())
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base.set(drivername="postgresql+psycopg"),
                             isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return base.set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False)
