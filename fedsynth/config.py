"""coordinator.toml and site.toml, read into frozen dataclasses.

Relative paths in a configuration file are resolved against the file's directory, so a
deployment directory can be moved as a whole. Every error names the key and the value
(:class:`fedsynth.errors.ConfigError`, exit code 2). Unknown keys are errors too: a typo
in ``min_cell_count`` must not silently fall back to a default disclosure limit.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fedsynth.errors import ConfigError, InputError
from fedsynth.timeutil import parse_duration
from fedsynth.transport import TLSFiles
from fedsynth.vocabulary import ESTIMATORS, METHODS, TESTS

__all__ = ["CoordinatorConfig", "SiteConfig", "PoolingConfig", "ScheduleConfig",
           "DataConfig", "PrivacyConfig", "LimitsConfig", "load_coordinator_config",
           "load_site_config", "parse_duration", "state_url", "METHODS", "TESTS",
           "DEFAULT_COORDINATOR_AUDIT_LOG"]


def state_url(value: str, base: Path) -> str:
    """SQLAlchemy URL of ``state``: a SQLite file path or a ``postgresql://`` URL."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"state = {value!r} must be a SQLite file path or a postgresql:// URL")
    if value.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + value.split("://", 1)[1]
    if value.startswith(("postgresql+", "sqlite:")):
        return value
    if "://" in value:
        raise ConfigError(f"state = {value!r}: only SQLite files and postgresql:// URLs are "
                          "supported")
    return "sqlite:///" + str((base / value).resolve())


def _load_toml(path: str | Path) -> tuple[dict[str, Any], Path]:
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle), path.resolve().parent
    except FileNotFoundError:
        raise ConfigError(f"configuration file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"configuration file {str(path)!r} is not valid TOML: {error}") from None


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: "
                          f"{', '.join(sorted(allowed))})")


def _str(table: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}: missing required key {key!r}")
        return default
    value = table[key]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}{key} = {value!r} must be a non-empty string")
    return value


def _path(base: Path, value: str) -> Path:
    return (base / value).resolve()


def _tls(data: dict[str, Any], base: Path, where: str) -> TLSFiles | None:
    if "tls" not in data:
        return None
    table = data["tls"]
    if not isinstance(table, dict):
        raise ConfigError(f"{where}tls = {table!r} must be a table with ca, cert, key")
    _check_keys(table, {"ca", "cert", "key"}, f"{where}[tls]")
    return TLSFiles(*(_path(base, _str(table, k, "tls.")) for k in ("ca", "cert", "key")))


def _listen(value: Any, key: str) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{key} = {value!r} must be 'HOST:PORT' (port 0 picks a free one)")
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key} = {value!r} must be 'HOST:PORT' with a port in 0..65535")
    return value


#: Pooling of a risk model's performance measures in rounds (Debray et al. 2017, BMJ
#: 356:i6460; metamisc's valmeta): REML with Knapp-Hartung.
DEFAULT_PERFORMANCE_METHOD = "REML"
DEFAULT_PERFORMANCE_TEST = "knha"
#: Clinically meaningful prediction-interval widths per estimator, on the scale results are
#: read on: a number is a half-width around the pooled value, a pair a range the interval
#: must stay within (docs/decisions/evaluation-rounds.md gives the reasons).
DEFAULT_PI_WIDTH: Mapping[str, float | tuple[float, float]] = MappingProxyType({
    "auc": 0.05,
    "calibration_slope": (0.8, 1.2),
    "calibration_in_the_large": (-0.2, 0.2),
    "oe_ratio": (0.8, 1.25),
    "brier": 0.02,
})


@dataclass(frozen=True)
class PoolingConfig:
    """``[pooling]``: defaults for every analysis of a round.

    ``method``/``test`` pool the effect measures; ``performance_method`` and
    ``performance_test`` the performance measures of a risk model (AUC, calibration, O:E,
    Brier); ``pi_width`` maps an estimator to its clinically meaningful prediction-interval
    width (``[pooling.pi_width]``; ``false`` switches a default off).
    """

    method: str = "REML"
    test: str = "z"
    level: float = 95.0
    i2_threshold: float = 50.0
    performance_method: str = DEFAULT_PERFORMANCE_METHOD
    performance_test: str = DEFAULT_PERFORMANCE_TEST
    pi_width: Mapping[str, float | tuple[float, float]] = field(
        default_factory=lambda: dict(DEFAULT_PI_WIDTH))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]`` of coordinator.toml: what one site may ask of the coordinator.

    The one definition of these defaults: :mod:`coordinator.ratelimit` and the
    documentation (README, SECURITY.md, docs/decisions/security.md) refer to it. An agent
    needs about one call every two seconds (a pull per ``poll_interval``, a heartbeat per
    ``heartbeat_interval``, one submission per round) and makes them one at a time, so the
    defaults leave it a wide margin while a flooding identity is held to its own share.

    Attributes
    ----------
    rate
        Sustained calls per second of one site (token bucket refill; default 5).
    burst
        Calls one site may make at once before ``rate`` applies (bucket size; default 50).
    in_flight
        Calls of one site being served at the same time (default 4); more are refused
        with ``RESOURCE_EXHAUSTED`` before any work, so a site can only slow itself.
    in_flight_total
        Calls being served at the same time, all sites together (default 512).
    in_flight_reserved
        Of ``in_flight_total``, the share (default 128) that only health checks and sites
        in good standing (no call refused for a limit within the last minute) may use: a
        crowd of misbehaving identities cannot take the whole server.

    Raises
    ------
    ConfigError
        A value of the wrong type or out of range, naming ``limits.KEY``.
    """

    rate: float = 5.0
    burst: int = 50
    in_flight: int = 4
    in_flight_total: int = 512
    in_flight_reserved: int = 128

    def __post_init__(self) -> None:
        rate = self.rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0 \
                or rate == float("inf"):
            raise ConfigError(f"limits.rate = {rate!r} must be a finite number > 0 (calls "
                              "per second)")
        for key in ("burst", "in_flight", "in_flight_total"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"limits.{key} = {value!r} must be an integer >= 1")
        if self.in_flight_total < self.in_flight:
            raise ConfigError(f"limits.in_flight_total = {self.in_flight_total!r} must be at "
                              f"least limits.in_flight = {self.in_flight!r}")
        reserved = self.in_flight_reserved
        if not _is_int(reserved) or not 0 <= reserved < self.in_flight_total:
            raise ConfigError(f"limits.in_flight_reserved = {reserved!r} must be an integer "
                              f"in [0, limits.in_flight_total = {self.in_flight_total!r})")


#: The coordinator's audit log unless ``audit_log`` says otherwise (next to its
#: configuration file); a coordinator always keeps one.
DEFAULT_COORDINATOR_AUDIT_LOG = "coordinator-audit.jsonl"


@dataclass(frozen=True)
class ScheduleConfig:
    """One ``[[schedule]]`` entry: a recurring federated round."""

    spec: Path
    cron: str
    deadline: timedelta
    quorum: int


@dataclass(frozen=True)
class CoordinatorConfig:
    """coordinator.toml.

    Attributes
    ----------
    listen
        ``HOST:PORT``; port 0 picks a free port (written to :attr:`addr_file`).
    state
        SQLAlchemy URL of the state store.
    report_dir
        Where round reports are written.
    tls
        Mutual-TLS files; None only with ``insecure``.
    allow
        Site names allowed to connect.
    pooling
        Default pooling options.
    schedule
        Scheduled rounds.
    submission_window
        Largest accepted difference between a submission's timestamp and the coordinator's
        clock (replay and stale-submission protection).
    default_deadline, default_quorum
        Round defaults for ``fedsynth round start``.
    addr_file
        File the coordinator writes its bound address to (``coordinator.addr`` next to the
        configuration file unless ``addr_file`` is set).
    audit_log
        Coordinator audit log (hash-chained): ``audit_log`` of coordinator.toml, by default
        :data:`DEFAULT_COORDINATOR_AUDIT_LOG` next to the file. It cannot be switched off in
        a configuration file (None only for programmatic use in tests).
    revocation
        CRL checked on every call (default ``revoked.crl`` next to the CA certificate).
    limits
        Per-site rate and concurrency limits (:class:`LimitsConfig`).
    model_step_timeout
        How long a model fit waits for one site's answer to one step before it goes on
        without the site (never past the round's deadline; docs/decisions/glmwire.md).
    config_path
        The file this was read from.
    """

    listen: str
    state: str
    report_dir: Path
    tls: TLSFiles | None
    allow: tuple[str, ...]
    pooling: PoolingConfig = PoolingConfig()
    schedule: tuple[ScheduleConfig, ...] = ()
    submission_window: timedelta = timedelta(minutes=10)
    default_deadline: timedelta = timedelta(minutes=10)
    default_quorum: int | None = None
    addr_file: Path = Path("coordinator.addr")
    audit_log: Path | None = None
    revocation: Path | None = None
    insecure: bool = False
    limits: LimitsConfig = LimitsConfig()
    metrics_listen: str | None = None
    online_within: timedelta = timedelta(seconds=60)
    model_step_timeout: timedelta = timedelta(seconds=30)
    config_path: Path | None = None

    @property
    def rate(self) -> float:
        """``limits.rate`` (sustained calls per second per site)."""
        return self.limits.rate

    @property
    def burst(self) -> int:
        """``limits.burst`` (token bucket size per site)."""
        return self.limits.burst


def load_coordinator_config(path: str | Path, *, insecure: bool = False) -> CoordinatorConfig:
    """Read coordinator.toml (see docs/architecture.md, configuration)."""
    # lazy: cryptography (via fedsynth.pki, ~0.3 s) stays out of fedsynth.config
    from fedsynth.pki import validate_site_name

    data, base = _load_toml(path)
    _check_keys(data, {"listen", "state", "report_dir", "tls", "sites", "pooling", "schedule",
                       "submission_window", "default_deadline", "default_quorum", "addr_file",
                       "audit_log", "revocation", "insecure", "limits", "metrics_listen",
                       "online_within", "model_step_timeout"}, "coordinator.toml")
    listen = _listen(data.get("listen", "127.0.0.1:50051"), "listen")
    state = state_url(data.get("state", "state.db"), base)
    report_dir = _path(base, _str(data, "report_dir", "", "reports"))
    insecure = insecure or bool(data.get("insecure", False))
    tls = _tls(data, base, "")
    if tls is None and not insecure:
        raise ConfigError("coordinator.toml: missing [tls] section (ca, cert, key); mutual TLS "
                          "is required (--insecure only for local experiments)")
    sites = data.get("sites", {})
    if not isinstance(sites, dict):
        raise ConfigError(f"sites = {sites!r} must be a table with 'allow'")
    _check_keys(sites, {"allow"}, "[sites]")
    allow = sites.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(s, str) for s in allow):
        raise ConfigError(f"sites.allow = {allow!r} must be a list of site names")
    for name in allow:
        try:
            validate_site_name(name)
        except Exception as error:  # noqa: BLE001 - re-raised as a config error
            raise ConfigError(f"sites.allow: {error}") from None
    if len(set(allow)) != len(allow):
        raise ConfigError(f"sites.allow = {allow!r} lists a site twice")
    pooling = _pooling(data.get("pooling", {}))
    schedule = tuple(_schedule(entry, i, base)
                     for i, entry in enumerate(data.get("schedule", []) or []))
    for i, entry in enumerate(schedule):
        if entry.quorum > len(allow):
            raise ConfigError(f"schedule[{i}].quorum = {entry.quorum} exceeds the "
                              f"{len(allow)} sites of sites.allow")
    quorum = data.get("default_quorum")
    if quorum is not None and (not isinstance(quorum, int) or isinstance(quorum, bool)
                               or quorum < 1):
        raise ConfigError(f"default_quorum = {quorum!r} must be a positive integer")
    revocation = data.get("revocation")
    limits_table = data.get("limits", {})
    if not isinstance(limits_table, dict):
        raise ConfigError(f"limits = {limits_table!r} must be a table (rate, burst, "
                          "in_flight, in_flight_total, in_flight_reserved)")
    _check_keys(limits_table, set(LimitsConfig.__dataclass_fields__), "[limits]")
    limits = LimitsConfig(**limits_table)
    if isinstance(limits.rate, int):
        limits = LimitsConfig(**{**limits_table, "rate": float(limits.rate)})
    metrics_listen = data.get("metrics_listen")
    if metrics_listen is not None:
        _listen(metrics_listen, "metrics_listen")
    return CoordinatorConfig(
        listen=listen, state=state, report_dir=report_dir, tls=tls, allow=tuple(allow),
        pooling=pooling, schedule=schedule,
        submission_window=parse_duration(data.get("submission_window", "10m"),
                                         "submission_window"),
        default_deadline=parse_duration(data.get("default_deadline", "10m"), "default_deadline"),
        default_quorum=quorum,
        addr_file=_path(base, _str(data, "addr_file", "", "coordinator.addr")),
        audit_log=_path(base, _str(data, "audit_log", "", DEFAULT_COORDINATOR_AUDIT_LOG)),
        revocation=(_path(base, _str(data, "revocation", "")) if revocation is not None
                    else (tls.ca.parent / "revoked.crl" if tls is not None else None)),
        insecure=insecure, limits=limits, metrics_listen=metrics_listen,
        online_within=parse_duration(data.get("online_within", "60s"), "online_within"),
        model_step_timeout=parse_duration(data.get("model_step_timeout", "30s"),
                                          "model_step_timeout"),
        config_path=Path(path).resolve())


def _pooling(table: Any) -> PoolingConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"pooling = {table!r} must be a table")
    _check_keys(table, {"method", "test", "level", "i2_threshold", "performance_method",
                        "performance_test", "pi_width"}, "[pooling]")
    method = table.get("method", "REML")
    if method not in METHODS:
        raise ConfigError(f"pooling.method = {method!r} must be one of {', '.join(METHODS)}")
    test = table.get("test", "z")
    if test not in TESTS:
        raise ConfigError(f"pooling.test = {test!r} must be one of {', '.join(TESTS)}")
    perf_method = table.get("performance_method", DEFAULT_PERFORMANCE_METHOD)
    if perf_method not in METHODS:
        raise ConfigError(f"pooling.performance_method = {perf_method!r} must be one of "
                          f"{', '.join(METHODS)}")
    perf_test = table.get("performance_test", DEFAULT_PERFORMANCE_TEST)
    if perf_test not in TESTS:
        raise ConfigError(f"pooling.performance_test = {perf_test!r} must be one of "
                          f"{', '.join(TESTS)}")
    pi_width = _pi_width(table.get("pi_width", {}))
    level = table.get("level", 95)
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 50 <= level < 100:
        raise ConfigError(f"pooling.level = {level!r} must be a number in [50, 100)")
    threshold = table.get("i2_threshold", 50)
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not 0 <= threshold <= 100):
        raise ConfigError(f"pooling.i2_threshold = {threshold!r} must be a number in [0, 100]")
    return PoolingConfig(method, test, float(level), float(threshold), perf_method,
                         perf_test, pi_width)


def _pi_width(table: Any) -> dict[str, float | tuple[float, float]]:
    """``[pooling.pi_width]`` over the defaults.

    ``estimator = 0.05`` (half-width), ``estimator = [low, high]`` (range) or
    ``estimator = false`` (no clinical width).
    """
    if not isinstance(table, dict):
        raise ConfigError(f"pooling.pi_width = {table!r} must be a table of estimator = "
                          "half-width or [low, high]")
    out: dict[str, float | tuple[float, float]] = dict(DEFAULT_PI_WIDTH)
    for name, value in table.items():
        key = f"pooling.pi_width.{name}"
        if name not in ESTIMATORS:
            raise ConfigError(f"{key}: unknown estimator {name!r} (known: "
                              f"{', '.join(ESTIMATORS)})")
        if value is False:
            out.pop(name, None)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{key} = {value!r} must be a half-width > 0")
            out[name] = float(value)
        elif (isinstance(value, list) and len(value) == 2
              and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                      and math.isfinite(x) for x in value) and value[0] < value[1]):
            out[name] = (float(value[0]), float(value[1]))
        else:
            raise ConfigError(f"{key} = {value!r} must be a half-width > 0, a [low, high] "
                              "pair with low < high, or false")
    return out


def _schedule(entry: Any, index: int, base: Path) -> ScheduleConfig:
    where = f"schedule[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} = {entry!r} must be a table")
    _check_keys(entry, {"spec", "cron", "deadline", "quorum"}, where)
    spec = _path(base, _str(entry, "spec", where + "."))
    cron = _str(entry, "cron", where + ".")
    try:
        # lazy: croniter (~0.1 s) only for a schedule; every command loads fedsynth.config
        from croniter import croniter

        if not croniter.is_valid(cron):
            raise ValueError
    except ValueError:
        raise ConfigError(f"{where}.cron = {cron!r} is not a valid cron expression") from None
    quorum = entry.get("quorum", 1)
    if not isinstance(quorum, int) or isinstance(quorum, bool) or quorum < 1:
        raise ConfigError(f"{where}.quorum = {quorum!r} must be a positive integer")
    return ScheduleConfig(spec, cron, parse_duration(entry.get("deadline", "1h"),
                                                     where + ".deadline"), quorum)


@dataclass(frozen=True)
class DataConfig:
    """``[data]`` of site.toml: where the site's rows live (exactly one of three).

    ``path``: a CSV/Parquet file, or a folder of (partitioned) Parquet files scanned in
    batches; ``url`` with ``table`` or ``query``: a SQL source (any SQLAlchemy URL; every
    estimator runs in the database); ``spark``: ``{ table = "...", master = "local[2]" }``,
    a Spark table whose aggregates run as Spark jobs (``pip install fedsynth[spark]``).
    """

    path: Path | None = None
    url: str | None = None
    table: str | None = None
    query: str | None = None
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    spark: dict[str, str] | None = field(default=None, compare=False, hash=False)


def _spark(value: Any) -> dict[str, str]:
    """``[data] spark = { table = "...", master = "local[2]" }``, validated."""
    if not isinstance(value, dict):
        raise ConfigError(f"[data] spark = {value!r} must be a table such as "
                          "{ table = \"db.visits\", master = \"local[2]\" }")
    _check_keys(value, {"table", "master", "app_name"}, "[data.spark]")
    table = value.get("table")
    if not isinstance(table, str) or not table.strip():
        raise ConfigError(f"[data] spark.table = {table!r} must name a table "
                          "(catalog table or 'parquet.`/path`')")
    out = {"table": table, "master": value.get("master", "local[2]"),
           "app_name": value.get("app_name", "fedsynth-site")}
    for key in ("master", "app_name"):
        if not isinstance(out[key], str) or not out[key]:
            raise ConfigError(f"[data] spark.{key} = {out[key]!r} must be a non-empty string")
    return out


@dataclass(frozen=True)
class PrivacyConfig:
    """``[privacy]`` of site.toml (see :class:`site_agent.privacy.PrivacyLimits`).

    ``models`` is the ``[privacy.models]`` table: limits for model steps
    (:class:`fedsynth.models.ModelLimits`; checked when the file is read).
    """

    min_cell_count: int = 5
    min_n: int = 20
    models: Mapping[str, Any] = field(default_factory=dict)

    def model_limits(self, *, min_n: int | None = None,
                     min_cell_count: int | None = None) -> Any:
        """The site's :class:`fedsynth.models.ModelLimits`.

        ``[privacy.models]`` keys win; ``min_rows`` and ``min_cell_count`` default to the
        site's ``min_n`` and ``min_cell_count`` (or the values given, e.g. command-line
        overrides).
        """
        # lazy: fedsynth.models pulls pandas and scipy; config is read at every start-up
        from fedsynth.models.disclosure import ModelLimits

        return ModelLimits.from_mapping(
            self.models, min_rows=self.min_n if min_n is None else min_n,
            min_cell_count=self.min_cell_count if min_cell_count is None else min_cell_count)


@dataclass(frozen=True)
class SiteConfig:
    """site.toml.

    Attributes
    ----------
    name
        The site name; must equal the common name of its certificate.
    coordinator
        ``HOST:PORT`` of the coordinator; ``@FILE`` reads it from a file the coordinator
        wrote (local set-ups and tests, where the port is chosen at start-up).
    tls
        Mutual-TLS files; None only with ``insecure``.
    data
        Where the patient-level data is.
    privacy
        Disclosure limits.
    state_file
        Local record of what was sent per round (never double-submit).
    audit_log
        Site audit log: what left the site.
    policy
        Optional site policy file (security helper's :mod:`site_agent.policy`).
    poll_interval, heartbeat_interval
        How often to pull work and send a heartbeat.
    """

    name: str
    coordinator: str
    tls: TLSFiles | None
    data: DataConfig
    privacy: PrivacyConfig = PrivacyConfig()
    state_file: Path = Path("site-state.json")
    audit_log: Path | None = None
    policy: Path | None = None
    poll_interval: timedelta = timedelta(seconds=2)
    heartbeat_interval: timedelta = timedelta(seconds=10)
    server_name: str | None = None
    insecure: bool = False
    max_backoff: timedelta = timedelta(seconds=30)
    config_path: Path | None = None


def load_site_config(path: str | Path, *, insecure: bool = False) -> SiteConfig:
    """Read site.toml (see docs/architecture.md, configuration)."""
    # lazy: cryptography (via fedsynth.pki, ~0.3 s) stays out of fedsynth.config
    from fedsynth.pki import validate_site_name

    data, base = _load_toml(path)
    _check_keys(data, {"name", "coordinator", "tls", "data", "privacy", "state_file",
                       "audit_log", "policy", "poll_interval", "heartbeat_interval",
                       "server_name", "insecure", "max_backoff"}, "site.toml")
    name = _str(data, "name", "site.toml: ")
    try:
        validate_site_name(name)
    except Exception as error:  # noqa: BLE001
        raise ConfigError(f"name: {error}") from None
    coordinator = _str(data, "coordinator", "site.toml: ")
    if coordinator.startswith("@"):
        coordinator = "@" + str(_path(base, coordinator[1:]))
    else:
        _listen(coordinator, "coordinator")
    insecure = insecure or bool(data.get("insecure", False))
    tls = _tls(data, base, "")
    if tls is None and not insecure:
        raise ConfigError("site.toml: missing [tls] section (ca, cert, key); mutual TLS is "
                          "required (--insecure only for local experiments)")
    table = data.get("data")
    if not isinstance(table, dict):
        raise ConfigError(f"site.toml: data = {table!r}: a [data] table with 'path' (CSV or "
                          "Parquet) or 'url' is required")
    known = {"path", "url", "table", "query"}
    given = [k for k in ("path", "url", "spark") if k in table]
    if len(given) > 1:
        raise ConfigError(f"[data]: give one of 'path', 'url' and 'spark', not "
                          f"{' and '.join(repr(k) for k in given)}")
    if "path" in table:
        _check_keys(table, {"path"}, "[data]")
        dconf = DataConfig(path=_path(base, _str(table, "path", "data.")))
    elif "url" in table:
        options = {k: v for k, v in table.items() if k not in known}
        dconf = DataConfig(url=_str(table, "url", "data."),
                           table=table.get("table"), query=table.get("query"), options=options)
    elif "spark" in table:
        _check_keys(table, {"spark"}, "[data]")
        dconf = DataConfig(spark=_spark(table["spark"]))
    else:
        raise ConfigError(f"[data] = {table!r} needs 'path' (CSV or Parquet file, or a "
                          "Parquet folder), 'url' (SQL) or 'spark'")
    privacy = data.get("privacy", {})
    if not isinstance(privacy, dict):
        raise ConfigError(f"privacy = {privacy!r} must be a table")
    _check_keys(privacy, {"min_cell_count", "min_n", "models"}, "[privacy]")
    limits: dict[str, Any] = {}
    for key, default in (("min_cell_count", 5), ("min_n", 20)):
        value = privacy.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"privacy.{key} = {value!r} must be a positive integer")
        limits[key] = value
    models = privacy.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"privacy.models = {models!r} must be a table")
    limits["models"] = dict(models)
    if models:
        try:
            PrivacyConfig(**limits).model_limits()
        except InputError as exc:
            raise ConfigError(str(exc)) from None
    opt = {k: data.get(k) for k in ("audit_log", "policy")}
    server_name = data.get("server_name")
    if server_name is not None and (not isinstance(server_name, str) or not server_name):
        raise ConfigError(f"server_name = {server_name!r} must be a host name")
    return SiteConfig(
        name=name, coordinator=coordinator, tls=tls, data=dconf,
        privacy=PrivacyConfig(**limits),
        state_file=_path(base, _str(data, "state_file", "", f"{name}.state.json")),
        audit_log=_path(base, _str(data, "audit_log", "")) if opt["audit_log"] else None,
        policy=_path(base, _str(data, "policy", "")) if opt["policy"] else None,
        poll_interval=parse_duration(data.get("poll_interval", "2s"), "poll_interval"),
        heartbeat_interval=parse_duration(data.get("heartbeat_interval", "10s"),
                                          "heartbeat_interval"),
        server_name=data.get("server_name"), insecure=insecure,
        max_backoff=parse_duration(data.get("max_backoff", "30s"), "max_backoff"),
        config_path=Path(path).resolve())
