"""``fedsynth init coordinator | site``: write a commented, working configuration file.

A new user should not have to write ``coordinator.toml`` or ``site.toml`` from prose. The
files written here carry one comment per key (what it does, its default, how to change
it), name the certificate files that ``fedsynth ca init`` / ``ca issue`` produce, and are
checked by the real loaders (:func:`fedsynth.config.load_coordinator_config`,
:func:`fedsynth.config.load_site_config`) *before* they are written: a name or address the
loader would refuse is refused here, with the loader's message, and nothing is written.
An existing file is never overwritten without ``--force``.

Paths given on the command line are read, as usual, relative to the working directory;
in the file they are written relative to the file's directory when they lie under it (the
loaders resolve relative paths against the file's directory), absolute otherwise, so the
file keeps working wherever it is started from. The state store, reports, audit log and
site state default to files beside the configuration file.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from fedsynth.cli.registry import Command
from fedsynth.errors import ConfigError, InputError
from fedsynth.vocabulary import DEFAULT_METHOD, DEFAULT_TEST, METHODS, TESTS

DESCRIPTION_COORDINATOR = """\
Write a commented coordinator.toml that `fedsynth coordinator serve` starts from.

examples:
  fedsynth ca init --dir pki
  fedsynth ca issue --dir pki --coordinator coord.example.org
  fedsynth init coordinator --name coord.example.org --pki pki --allow site-a,site-b
  fedsynth init coordinator --listen 127.0.0.1:0 --state postgresql://fedsynth@db/fedsynth
"""

DESCRIPTION_SITE = """\
Write a commented site.toml that `fedsynth site run` starts from.

examples:
  fedsynth ca issue --dir pki --site site-a
  fedsynth init site --name site-a --coordinator coord.example.org:50051 --pki pki \\
      --data /srv/data/cohort.csv
"""


def _common(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("--out", default=default_out, metavar="FILE",
                        help=f"file to write (default: {default_out})")
    parser.add_argument("--pki", default="pki", metavar="DIR",
                        help="directory of ca.crt and this party's certificate and key, as "
                             "'fedsynth ca init/issue' write them (default: pki)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite an existing file")


def _coordinator_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="localhost", metavar="HOST",
                        help="the host name sites reach the coordinator by, which its "
                             "certificate names ('fedsynth ca issue --coordinator HOST' "
                             "writes PKI/coordinator.crt and .key for it; default: "
                             "localhost)")
    parser.add_argument("--listen", default="0.0.0.0:50051", metavar="HOST:PORT",
                        help="address the coordinator listens on (default: 0.0.0.0:50051; "
                             "port 0 picks a free one and writes it to coordinator.addr)")
    parser.add_argument("--allow", default="", metavar="SITE,SITE",
                        help="comma-separated names of the sites allowed to take part "
                             "(their certificate names; default: none yet)")
    parser.add_argument("--state", default=None, metavar="PATH|URL",
                        help="state store: SQLite file or postgresql:// URL (default: "
                             "state.db beside the configuration file)")
    parser.add_argument("--report-dir", default=None, metavar="DIR",
                        help="where round reports are written (default: reports beside the "
                             "configuration file)")
    parser.add_argument("--method", type=str.upper, choices=METHODS, default=DEFAULT_METHOD,
                        help=f"default pooling method (default: {DEFAULT_METHOD})")
    parser.add_argument("--test", type=str.lower, choices=TESTS, default=DEFAULT_TEST,
                        help=f"default test (default: {DEFAULT_TEST})")
    _common(parser, "coordinator.toml")


def _site_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, metavar="SITE",
                        help="the site's name: its certificate name ('ca issue --site SITE' "
                             "writes PKI/SITE.crt and PKI/SITE.key)")
    parser.add_argument("--coordinator", required=True, metavar="HOST:PORT",
                        help="the coordinator's address (or @FILE: read it from the file a "
                             "local coordinator writes, e.g. @coordinator.addr)")
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="the site's patient-level data: a CSV, TSV or Parquet file")
    parser.add_argument("--server-name", default=None, metavar="HOST",
                        help="the name on the coordinator's certificate when it differs "
                             "from the host in --coordinator")
    parser.add_argument("--min-cell-count", type=int, default=5, metavar="N",
                        help="smallest count the site releases (default: 5)")
    parser.add_argument("--min-n", type=int, default=20, metavar="N",
                        help="fewest patients in an analysis the site answers (default: 20)")
    _common(parser, "site.toml")


def _toml(value: str) -> str:
    """A TOML basic string (the escapes TOML requires)."""
    out = value.replace("\\", "\\\\").replace('"', '\\"')
    for char, escape in (("\n", "\\n"), ("\t", "\\t"), ("\r", "\\r")):
        out = out.replace(char, escape)
    return f'"{out}"'


def _pi_width_line(name: str, value: float | tuple[float, float]) -> str:
    """One ``[pooling.pi_width]`` entry with a comment saying how it is read."""
    if isinstance(value, tuple):
        low, high = value
        return (f"{name} = [{low:g}, {high:g}]".ljust(40)
                + f"# the PI must stay within {low:g} to {high:g}")
    return f"{name} = {value:g}".ljust(40) + f"# a half-width: the PI beyond \u00b1{value:g} flags"


def _rel(path: str | os.PathLike[str], base: Path) -> str:
    """Name ``path`` as the file should: relative to ``base`` when under it, else absolute.

    The loaders resolve relative paths against the file's directory.
    """
    target = Path(path).expanduser().resolve()
    try:
        return target.relative_to(base).as_posix()
    except ValueError:
        return str(target)


def _check_out(out: Path, force: bool) -> None:
    if out.is_dir():
        raise InputError(f"--out: {str(out)!r} is a directory")
    if out.exists() and not force:
        raise InputError(f"--out: {str(out)!r} exists; use --force to overwrite it")
    if not out.parent.is_dir():
        raise InputError(f"--out: directory {str(out.parent)!r} does not exist")


def coordinator_toml(args: argparse.Namespace, base: Path) -> str:
    """The text of a commented coordinator.toml for these options."""
    # lazy: fedsynth.config/fileio/timeutil are not loaded by `fedsynth --help` (start-up)
    from fedsynth import __version__
    from fedsynth.config import (
        DEFAULT_PERFORMANCE_METHOD,
        DEFAULT_PERFORMANCE_TEST,
        DEFAULT_PI_WIDTH,
    )
    from fedsynth.timeutil import iso, utcnow

    pki = Path(args.pki)
    allow = [s.strip() for s in args.allow.split(",") if s.strip()]
    # paths given on the command line are relative to the working directory; the
    # defaults live beside the file
    if args.state is None:
        state = "state.db"
    else:
        state = args.state if "://" in args.state else _rel(args.state, base)
    report_dir = "reports" if args.report_dir is None else _rel(args.report_dir, base)
    allow_text = ", ".join(_toml(s) for s in allow)
    widths = "\n".join(_pi_width_line(name, value) for name, value in DEFAULT_PI_WIDTH.items())
    return f"""\
# coordinator.toml, written by `fedsynth init coordinator` (fedsynth {__version__},
# {iso(utcnow())}). Relative paths are read from this file's directory.
# Start with:  fedsynth coordinator serve --config {Path(args.out).name}

# Address the site agents connect to (HOST:PORT). Port 0 picks a free port and writes
# the address to addr_file (default coordinator.addr), for local set-ups and tests.
listen = {_toml(args.listen)}

# State store (rounds, submissions, the site registry): a SQLite file, or a
# postgresql:// URL for several coordinator processes (password from PGPASSWORD).
state = {_toml(state)}

# Where the HTML and JSON report of every closed round is written.
report_dir = {_toml(report_dir)}

# Hash-chained audit log of every round opened, every submission and every refusal
# (`fedsynth audit verify` checks it).
audit_log = "coordinator-audit.jsonl"

# How long a round stays open when `fedsynth round start` gives no --deadline, and how
# many sites it needs to be pooled (default: every allowed site).
default_deadline = "10m"
# default_quorum = 2

# A site counts as online in `fedsynth sites` when its last heartbeat is this recent.
online_within = "60s"

# Prometheus metrics (uncomment to serve /metrics on this address).
# metrics_listen = "127.0.0.1:9464"

# Mutual TLS: `fedsynth ca init --dir {args.pki}` writes ca.crt and ca.key;
# `fedsynth ca issue --dir {args.pki} --coordinator {args.name}` writes the
# certificate (for host {args.name}) and key below. Sites connect to
# {args.name}:PORT. The revocation list is revoked.crl beside ca.crt
# (`fedsynth ca revoke`); a revoked site is refused on its next call.
[tls]
ca = {_toml(_rel(pki / "ca.crt", base))}
cert = {_toml(_rel(pki / "coordinator.crt", base))}
key = {_toml(_rel(pki / "coordinator.key", base))}

# The sites allowed to take part: the names on their certificates
# (`fedsynth ca issue --dir {args.pki} --site NAME` for each).
[sites]
allow = [{allow_text}]

# Defaults of every round's pooling (a round may override method and test).
[pooling]
method = {_toml(args.method)}   # tau^2 estimator: {", ".join(METHODS)}
test = {_toml(args.test)}        # z (Wald) or knha (Knapp-Hartung)
level = 95          # confidence level, percent
i2_threshold = 50   # I^2 (percent) at which an analysis is flagged as heterogeneous
# A risk model's performance measures (AUC, calibration, O:E, Brier) are pooled as the
# prediction-model literature does (Debray et al. 2017; metamisc's valmeta): on their own
# method and test, with the prediction interval on t(k-2).
performance_method = {_toml(DEFAULT_PERFORMANCE_METHOD)}
performance_test = {_toml(DEFAULT_PERFORMANCE_TEST)}

# Clinically meaningful prediction-interval widths, on the scale results are read on
# (c-statistic, O:E, slope): a number is a half-width around the pooled value, a pair
# [low, high] a range the interval must stay within. A prediction interval beyond its
# width flags the analysis (rule pi_width); within it, a high I^2 alone does not.
# Any estimator may get one (e.g. logistic = [0.8, 1.25]); false switches a default off.
[pooling.pi_width]
{widths}

# Recurring rounds (uncomment and repeat per schedule): an analysis spec, a cron
# expression in UTC, how long each round stays open and how many sites it needs.
# [[schedule]]
# spec = "spec.toml"
# cron = "0 6 1 * *"
# deadline = "2h"
# quorum = 2
"""


def site_toml(args: argparse.Namespace, base: Path) -> str:
    """The text of a commented site.toml for these options."""
    # lazy: fedsynth.config/fileio/timeutil are not loaded by `fedsynth --help` (start-up)
    from fedsynth import __version__
    from fedsynth.timeutil import iso, utcnow

    pki = Path(args.pki)
    name = args.name
    coordinator = args.coordinator
    if coordinator.startswith("@"):
        coordinator = "@" + _rel(coordinator[1:], base)
    server = (f"server_name = {_toml(args.server_name)}" if args.server_name else
              "# server_name = \"coordinator.example.org\"")
    return f"""\
# site.toml, written by `fedsynth init site` (fedsynth {__version__}, {iso(utcnow())}).
# Relative paths are read from this file's directory.
# Start with:  fedsynth site run --config {Path(args.out).name}

# The site's name: it must equal the common name of its certificate.
name = {_toml(name)}

# The coordinator's address (HOST:PORT), or @FILE to read it from the file a local
# coordinator writes when it listens on port 0.
coordinator = {_toml(coordinator)}
# The name on the coordinator's certificate, when it is not the host above.
{server}

# What was sent in each round (so a restarted agent never submits twice), and the
# site's hash-chained audit log of everything that left the site.
state_file = {_toml(f"{name}.state.json")}
audit_log = {_toml(f"{name}-audit.jsonl")}

# How often the agent asks for work and tells the coordinator it is alive, and the
# longest pause between reconnection attempts.
poll_interval = "2s"
heartbeat_interval = "10s"
max_backoff = "30s"

# Optional site policy: which estimators and columns may be used, and whether an
# operator approves each new spec first (`fedsynth site pending` / `site approve`).
# policy = "policy.toml"

# Mutual TLS: `fedsynth ca issue --dir {args.pki} --site {name}` writes the
# certificate and key below; ca.crt is the project CA's certificate.
[tls]
ca = {_toml(_rel(pki / "ca.crt", base))}
cert = {_toml(_rel(pki / f"{name}.crt", base))}
key = {_toml(_rel(pki / f"{name}.key", base))}

# The patient-level data, one row per patient: a CSV, TSV or Parquet file. (A SQL
# source instead: url = "postgresql://..." with table = "..." or query = "...".)
[data]
path = {_toml(_rel(args.data, base))}

# Disclosure limits: no count below min_cell_count is released, and an analysis with
# fewer than min_n patients is refused.
[privacy]
min_cell_count = {args.min_cell_count}
min_n = {args.min_n}
"""


#: The loader's key -> the option that set it (for messages).
_OPTION_OF_KEY = {"name": "--name", "coordinator": "--coordinator", "listen": "--listen",
                  "sites.allow": "--allow", "state": "--state", "server_name": "--server-name"}


def _option_message(message: str, kind: str) -> str:
    """The loader's message, led by the option that set the key it names."""
    for key, option in _OPTION_OF_KEY.items():
        if message.startswith((f"{key}:", f"{key} =")):
            detail = message.split(": ", 1)[1] if message.startswith(f"{key}:") else message
            return f"{option}: {detail} (the {kind}.toml was not written)"
    return f"{kind}.toml would not load, so it was not written: {message}"


def _write_checked(args: argparse.Namespace, kind: str) -> int:
    """Build the text, check it with the real loader, then write it atomically.

    The loader reads a temporary file in the target directory, so relative paths resolve
    as they will when the file is used.
    """
    # lazy: fedsynth.config/fileio/timeutil are not loaded by `fedsynth --help` (start-up)
    from fedsynth.config import load_coordinator_config, load_site_config
    from fedsynth.fileio import atomic_write

    out = Path(args.out)
    _check_out(out, args.force)
    base = out.parent.resolve()
    text = coordinator_toml(args, base) if kind == "coordinator" else site_toml(args, base)
    loader = load_coordinator_config if kind == "coordinator" else load_site_config
    handle, tmp = tempfile.mkstemp(prefix=".fedsynth-init-", suffix=".toml", dir=base)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        try:
            config = loader(tmp)
        except ConfigError as error:
            raise InputError(_option_message(str(error), kind)) from None
    finally:
        os.unlink(tmp)
    atomic_write(out, text.encode("utf-8"))
    missing = [p for p in (config.tls.ca, config.tls.cert, config.tls.key)
               if not p.exists()] if config.tls is not None else []
    print(f"fedsynth: wrote {out}", file=sys.stderr)
    if missing:
        how = (f"fedsynth ca issue --dir {args.pki} --coordinator {args.name}"
               if kind == "coordinator" else f"fedsynth ca issue --dir {args.pki} "
                                             f"--site {args.name}")
        print(f"fedsynth: note: {', '.join(str(p) for p in missing)} do(es) not exist yet: "
              f"create the project CA with 'fedsynth ca init --dir {args.pki}' (once) and "
              f"this party's certificate with '{how}'", file=sys.stderr)
    data_path = getattr(getattr(config, "data", None), "path", None)
    if kind == "site" and data_path is not None and not Path(data_path).exists():
        print(f"fedsynth: note: the data file {str(data_path)!r} does not exist yet",
              file=sys.stderr)
    start = ("fedsynth coordinator serve" if kind == "coordinator" else "fedsynth site run")
    print(f"fedsynth: start with: {start} --config {out}", file=sys.stderr)
    return 0


def _run_coordinator(args: argparse.Namespace) -> int:
    # the host name goes into comments and the certificate's subject alternative name
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|[0-9a-fA-F:.]+",
                        args.name):
        raise InputError(f"--name: {args.name!r} is not a host name (letters, digits, '.' "
                         "and '-') or an IP address")
    return _write_checked(args, "coordinator")


def _run_site(args: argparse.Namespace) -> int:
    for option in ("min_cell_count", "min_n"):
        if getattr(args, option) < 1:
            raise InputError(f"--{option.replace('_', '-')} = {getattr(args, option)} must "
                             "be a positive integer")
    return _write_checked(args, "site")


COMMANDS = [
    Command(("init", "coordinator"), "write a commented, working coordinator.toml",
            _coordinator_args, _run_coordinator, description=DESCRIPTION_COORDINATOR),
    Command(("init", "site"), "write a commented, working site.toml", _site_args, _run_site,
            description=DESCRIPTION_SITE),
]
