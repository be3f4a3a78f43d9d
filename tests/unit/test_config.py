"""coordinator.toml and site.toml: defaults, path resolution, errors naming key and value."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from coordinator.ratelimit import ConcurrencyLimiter, RateLimit
from fedsynth.config import (
    LimitsConfig,
    load_coordinator_config,
    load_site_config,
    parse_duration,
    state_url,
)
from fedsynth.errors import ConfigError

COORD = """
listen = "127.0.0.1:0"
state = "state.db"
report_dir = "reports"
[tls]
ca = "PKI/ca.crt"
cert = "PKI/coordinator.crt"
key = "PKI/coordinator.key"
[sites]
allow = ["mtf-alpha", "mtf-bravo"]
[pooling]
method = "DL"
test = "knha"
i2_threshold = 40
[[schedule]]
spec = "monthly.toml"
cron = "0 6 1 * *"
deadline = "2h"
quorum = 2
"""

SITE = """
name = "mtf-alpha"
coordinator = "localhost:50051"
[tls]
ca = "PKI/ca.crt"
cert = "PKI/mtf-alpha.crt"
key = "PKI/mtf-alpha.key"
[data]
path = "data/mtf-alpha.csv"
[privacy]
min_cell_count = 10
min_n = 50
"""


def _write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_coordinator_config(tmp_path: Path) -> None:
    config = load_coordinator_config(_write(tmp_path, COORD))
    assert config.listen == "127.0.0.1:0"
    assert config.state == f"sqlite:///{tmp_path.resolve() / 'state.db'}"
    assert config.report_dir == tmp_path.resolve() / "reports"
    assert config.tls is not None and config.tls.ca == tmp_path.resolve() / "PKI" / "ca.crt"
    assert config.allow == ("mtf-alpha", "mtf-bravo")
    assert (config.pooling.method, config.pooling.test, config.pooling.i2_threshold) == (
        "DL", "knha", 40.0)
    (entry,) = config.schedule
    assert entry.deadline == timedelta(hours=2) and entry.quorum == 2
    assert entry.spec == tmp_path.resolve() / "monthly.toml"
    assert config.addr_file == tmp_path.resolve() / "coordinator.addr"
    assert config.revocation == tmp_path.resolve() / "PKI" / "revoked.crl"


def test_site_config(tmp_path: Path) -> None:
    config = load_site_config(_write(tmp_path, SITE))
    assert config.name == "mtf-alpha" and config.coordinator == "localhost:50051"
    assert config.data.path == tmp_path.resolve() / "data" / "mtf-alpha.csv"
    assert (config.privacy.min_cell_count, config.privacy.min_n) == (10, 50)
    assert config.state_file == tmp_path.resolve() / "mtf-alpha.state.json"


@pytest.mark.parametrize("old, new, words", [
    ('method = "DL"', 'method = "XX"', ["pooling.method", "'XX'"]),
    ('test = "knha"', 'test = "t"', ["pooling.test", "'t'"]),
    ('listen = "127.0.0.1:0"', 'listen = "nohost"', ["listen", "'nohost'"]),
    ('listen = "127.0.0.1:0"', 'listen = "h:99999"', ["listen", "'h:99999'"]),
    ('allow = ["mtf-alpha", "mtf-bravo"]', 'allow = ["Bad Name"]', ["sites.allow", "Bad Name"]),
    ('allow = ["mtf-alpha", "mtf-bravo"]', 'allow = ["a1", "a1"]', ["twice"]),
    ('cron = "0 6 1 * *"', 'cron = "every day"', ["schedule[0].cron", "'every day'"]),
    ('deadline = "2h"', 'deadline = "soon"', ["schedule[0].deadline", "'soon'"]),
    ('quorum = 2', 'quorum = 0', ["schedule[0].quorum", "0"]),
    ('quorum = 2', 'quorum = 3', ["schedule[0].quorum = 3", "exceeds"]),
    ('state = "state.db"', 'state = "mysql://x"', ["state", "mysql://x"]),
    ('report_dir = "reports"', 'report_dirs = "reports"', ["unknown key", "report_dirs"]),
    ('i2_threshold = 40', 'i2_threshold = 140', ["pooling.i2_threshold", "140"]),
])
def test_coordinator_errors_name_key_and_value(tmp_path, old, new, words) -> None:
    assert old in COORD
    with pytest.raises(ConfigError) as info:
        load_coordinator_config(_write(tmp_path, COORD.replace(old, new)))
    for word in words:
        assert word in str(info.value)


def test_tls_required_unless_insecure(tmp_path: Path) -> None:
    text = COORD.split("[tls]")[0] + "[sites]\nallow = []\n"
    with pytest.raises(ConfigError, match=r"\[tls\]"):
        load_coordinator_config(_write(tmp_path, text))
    assert load_coordinator_config(_write(tmp_path, text), insecure=True).tls is None


@pytest.mark.parametrize("old, new, words", [
    ("min_cell_count = 10", "min_cell_count = 0", ["privacy.min_cell_count", "0"]),
    ("min_cell_count = 10", "min_cell_cont = 3", ["unknown key", "min_cell_cont"]),
    ('name = "mtf-alpha"', 'name = "MTF Alpha"', ["name", "'MTF Alpha'"]),
    ('coordinator = "localhost:50051"', 'coordinator = "localhost"', ["coordinator",
                                                                    "'localhost'"]),
    ('path = "data/mtf-alpha.csv"', 'file = "x.csv"', ["[data]"]),
])
def test_site_errors_name_key_and_value(tmp_path, old, new, words) -> None:
    with pytest.raises(ConfigError) as info:
        load_site_config(_write(tmp_path, SITE.replace(old, new)))
    for word in words:
        assert word in str(info.value)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_site_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_site_config(_write(tmp_path, "name = = 1"))


@pytest.mark.parametrize("text, seconds", [("10m", 600), ("2h", 7200), ("30s", 30),
                                           ("1d", 86400), ("500ms", 0.5), (45, 45),
                                           ("1.5h", 5400)])
def test_durations(text, seconds) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["", "10 minutes", "-5m", 0, True, "m"])
def test_bad_durations(bad) -> None:
    with pytest.raises(ConfigError, match="deadline"):
        parse_duration(bad, "deadline")


def test_state_urls(tmp_path: Path) -> None:
    assert state_url("postgresql://u@h/db", tmp_path) == "postgresql+psycopg://u@h/db"
    assert state_url("s.db", tmp_path) == f"sqlite:///{tmp_path.resolve() / 's.db'}"


def test_coordinator_keeps_an_audit_log_by_default(tmp_path: Path) -> None:
    """Issue 10, item 11: without ``audit_log`` the coordinator kept no audit log."""
    (tmp_path / "c.toml").write_text(COORD)
    config = load_coordinator_config(tmp_path / "c.toml")
    assert config.audit_log == (tmp_path / "coordinator-audit.jsonl").resolve()
    (tmp_path / "c.toml").write_text('audit_log = "logs/a.jsonl"\n' + COORD)
    assert load_coordinator_config(tmp_path / "c.toml").audit_log == \
        (tmp_path / "logs" / "a.jsonl").resolve()


def test_documented_limits_are_the_configured_ones() -> None:
    """Issue 10, item 6: the docs said 5 calls/s with bursts of 50 while config.py used 20
    and 100. The defaults are defined once (LimitsConfig); the README states them, and any
    document that states a rate, burst or bound on calls in flight must state the same."""
    limits = LimitsConfig()
    assert (RateLimit().rate, RateLimit().burst) == (limits.rate, limits.burst)
    concurrency = ConcurrencyLimiter()
    assert (concurrency.per_identity, concurrency.total, concurrency.reserved) == (
        limits.in_flight, limits.in_flight_total, limits.in_flight_reserved)
    root = Path(__file__).resolve().parents[2]
    documents = [root / "README.md", root / "SECURITY.md",
                 *sorted((root / "docs").rglob("*.md")),
                 *sorted((root / "deploy").rglob("*.md"))]
    patterns = {
        "rate": re.compile(r"(\d+(?:\.\d+)?)\s*calls?/s"),
        "burst": re.compile(r"bursts? of (\d+)|`burst`\D{0,20}?(\d+)"),
        "in_flight": re.compile(r"`in_flight` (\d+)"),
        "in_flight_total": re.compile(r"`in_flight_total` (\d+)"),
        "in_flight_reserved": re.compile(r"`in_flight_reserved` (\d+)"),
    }
    stated: dict[str, set[float]] = {key: set() for key in patterns}
    for document in documents:
        text = " ".join(document.read_text(encoding="utf-8").split())
        for key, pattern in patterns.items():
            for match in pattern.finditer(text):
                value = next(g for g in match.groups() if g is not None)
                stated[key].add(float(value))
    expected = {key: {float(getattr(limits, key))} for key in patterns}
    assert stated == expected, "a document states other limits than fedsynth.config"
    readme = " ".join((root / "README.md").read_text(encoding="utf-8").split())
    assert f"`rate` {limits.rate:g} calls/s" in readme
