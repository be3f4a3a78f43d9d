"""``fedsynth round start | show | wait | list``: rounds, on the coordinator's host.

These commands read and write the coordinator's state store named in coordinator.toml; the
running coordinator serves a new round to the sites within a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedsynth.cli.registry import Command
from fedsynth.vocabulary import METHODS, TESTS, from_scale

# The command line imports every command module to build its parser, so the modules a
# command needs are imported when it runs. Measured on the shared 2-core machine (loaded):
# importing coordinator.store takes 1.2 s and fedsynth.round_document 0.18 s, against
# 0.6-0.9 s for the whole `fedsynth --help`; at module level every call would pay them.
if TYPE_CHECKING:
    from fedsynth.round_document import RoundDocument
import time
from pathlib import Path

from fedsynth.errors import FedsynthError, InputError
from fedsynth.terminal import printable


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="coordinator.toml")


def _open(args: argparse.Namespace):
    # lazy: keeps sqlalchemy out of `fedsynth --help` start-up
    from coordinator.store import Store

    # lazy: fedsynth.config is not loaded by `fedsynth --help` (start-up)
    from fedsynth.config import load_coordinator_config

    config = load_coordinator_config(args.config, insecure=True)
    return config, Store(config.state)


def _start_args(parser: argparse.ArgumentParser) -> None:
    _config_arg(parser)
    parser.add_argument("--spec", required=True, help="analysis spec (TOML)")
    parser.add_argument("--deadline", default=None,
                        help="how long the round stays open, e.g. 30s, 10m, 2h (default: "
                             "default_deadline of coordinator.toml, 10m)")
    parser.add_argument("--quorum", type=int, default=None,
                        help="sites needed to pool (default: every allowed site)")
    parser.add_argument("--method", default=None,
                        choices=METHODS,
                        help="pooling method of this round (default: [pooling] method)")
    parser.add_argument("--test", default=None, choices=TESTS,
                        help="test of this round (default: [pooling] test)")


def _start(args: argparse.Namespace) -> int:
    # lazy: keeps scipy and sqlalchemy out of `fedsynth --help` start-up
    from coordinator.rounds import open_round

    # lazy: keeps scipy and sqlalchemy out of `fedsynth --help` start-up
    from coordinator.server import pooling_dict

    # lazy: fedsynth.spec is not loaded by `fedsynth --help` (start-up)
    from fedsynth.spec import embed_model_files

    # lazy: fedsynth.timeutil is not loaded by `fedsynth --help` (start-up)
    from fedsynth.timeutil import iso, parse_duration, utcnow

    config, store = _open(args)
    deadline = (parse_duration(args.deadline, "--deadline") if args.deadline is not None
                else config.default_deadline)
    try:
        text = Path(args.spec).read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"--spec {args.spec!r} cannot be read: {error.strerror}") from None
    # A model artifact named by a path travels embedded in the spec (and its text).
    text = embed_model_files(text, Path(args.spec).parent)
    quorum = args.quorum if args.quorum is not None else config.default_quorum
    pooling = pooling_dict(config)
    if args.method is not None:
        pooling["method"] = args.method
    if args.test is not None:
        pooling["test"] = args.test
    with store:
        record = open_round(store, spec_source=text, deadline=deadline, quorum=quorum,
                            allowed=config.allow, pooling=pooling,
                            now=utcnow(), source=f"round start --spec {args.spec}")
        if config.audit_log is not None:
            # lazy: fedsynth.audit is not loaded by `fedsynth --help` (start-up)
            from fedsynth.audit import AuditLog

            AuditLog(config.audit_log).append("round.opened", {
                "round": record.id, "source": "cli", "deadline": iso(record.deadline),
                "quorum": record.quorum})
    print(f"round {record.id} opened: {len(record.spec.get('analyses', []))} analyses, "
          f"{len(record.allowed)} sites, quorum {record.quorum}, deadline "
          f"{iso(record.deadline)}", file=sys.stderr)
    print(record.id)
    return 0


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.{digits}f}"
        # A value that rounds to zero prints as zero, without a sign ("-0.0000" read as a
        # negative estimate), as the HTML report's cells do.
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    return str(value)


def render_table(doc: RoundDocument) -> str:
    r"""Plain-text view of a round document.

    Site names, statuses, refusal reasons and analysis names came from sites or from the
    spec: each is shown through :func:`fedsynth.terminal.printable`, so a control sequence
    in a refusal reason is displayed (``\x1b``), not executed by the terminal.

    A version-2 document (analyses with a ``scale``) is shown on the scale people read:
    the estimate and its confidence and prediction intervals back-transformed by
    :func:`fedsynth.vocabulary.from_scale` (a c-statistic, not its logit; an O:E ratio,
    not its log), the pooling scale in its own column and in a footnote, and the p-value
    with the measure's null it tests (``H0``; none for the Brier score: ``—``), as the
    HTML report does. A version-1 document prints as it always did: its numbers on the
    pooling scale, tested against 0.
    """
    # lazy: fedsynth.round_document is not loaded by `fedsynth --help` (start-up)
    from fedsynth.round_document import PooledEstimate

    p = printable
    lines = [f"round {p(doc.round)}  status {p(doc.status)}  quorum {p(doc.quorum)}",
             f"opened {p(doc.opened_at)}  deadline {p(doc.deadline)}  closed "
             f"{p(doc.closed_at or '-')}"]
    if doc.failure_reason:
        lines.append(f"failed: {p(doc.failure_reason)}")
    lines.append("")
    lines.append(f"{'site':<20} {'status':<10} submitted_at")
    for site in doc.sites:
        lines.append(f"{p(site.site):<20} {p(site.status or '-'):<10} "
                     f"{p(site.submitted_at or '-')}")
        for name, reason in site.refusals.items():
            lines.append(f"    refused {p(name)}: {p(reason)}")
    if not doc.analyses:
        lines.extend(_models_table(doc))
        return "\n".join(lines)
    lines.append("")
    if all(a.scale is None for a in doc.analyses):     # version 1: as before
        header = (f"{'analysis':<26} {'k':>2} {'method':<6} {'estimate':>10} {'ci_lb':>10} "
                  f"{'ci_ub':>10} {'tau2':>9} {'I2':>6}  flag")
        lines.append(header)
        for a in doc.analyses:
            het = a.heterogeneity
            flag = (het.level or "yes") if het is not None and het.flagged else ""
            pooled = a.pooled or PooledEstimate()
            lines.append(f"{p(a.analysis):<26} {a.k or 0:>2} {p(a.method or ''):<6} "
                         f"{_fmt(pooled.estimate):>10} {_fmt(pooled.ci_lb):>10} "
                         f"{_fmt(pooled.ci_ub):>10} {_fmt(pooled.tau2):>9} "
                         f"{_fmt(pooled.I2, 1):>6}  {p(flag)}")
        lines.extend(_models_table(doc))
        return "\n".join(lines)
    lines.extend(_scaled_analysis_table(doc))
    lines.extend(_models_table(doc))
    return "\n".join(lines)


def _columns(names: tuple[str, ...], rows: list[tuple[str, ...]], left: set[str]
             ) -> list[str]:
    """Rows aligned under ``names`` (text columns left, numbers right), as round show."""
    widths = [max(len(name), *(len(row[i]) for row in rows)) for i, name in enumerate(names)]

    def line(cells: tuple[str, ...]) -> str:
        return " ".join(c.ljust(w) if n in left else c.rjust(w)
                        for n, c, w in zip(names, cells, widths)).rstrip()

    return [line(names), *(line(row) for row in rows)]


def _events(model: Any) -> int | None:
    """Events (binomial outcome = 1) behind a model's fits, where the fit reports them."""
    for fit in (model.one_stage, model.extra):
        if isinstance(fit, Mapping) and isinstance(fit.get("events"), (int, float)):
            return int(fit["events"])
    return None


def _coefficient_order(doc: RoundDocument, name: str) -> tuple[str, ...]:
    """Model ``name``'s coefficients in the spec's order (a stored fit's keys are sorted)."""
    # lazy: fedsynth.models is not loaded by `fedsynth --help` (start-up)
    from fedsynth.models.spec import parse_model

    for table in (doc.spec or {}).get("models") or ():
        if isinstance(table, Mapping) and table.get("name") == name:
            try:
                return parse_model(table).coefficient_names
            except InputError:
                return ()
    return ()


def _models_table(doc: RoundDocument) -> list[str]:
    r"""The ``models`` of a version-3 document as text, one block per model.

    Per model: family, status, sites, n, events (where the fits report them), IRLS
    iterations and round trips; then its coefficients (one-stage estimate, se, CI; the
    hierarchical model's beside them where it was fitted) with the two-stage
    heterogeneity flag of each coefficient; then the hierarchical model's tau, tau2 and
    latent ICC, and the sites that refused or were dropped. Names and reasons are shown
    through :func:`fedsynth.terminal.printable` (they came from the spec or the sites).
    """
    p = printable
    lines: list[str] = []
    for m in doc.models:
        lines.append("")
        one = m.one_stage or {}
        hier = m.hierarchical or {}
        sites = len(m.sites)
        events = _events(m)
        lines.append(
            f"model {p(m.name)}  family {p(m.family or '-')}  status {p(m.status or '-')}  "
            f"sites {sites}  n {_fmt(m.n)}"
            f"{'' if events is None else '  events ' + _fmt(events)}  iterations "
            f"{_fmt(one.get('iterations'))}  round trips {_fmt(m.round_trips)}  seconds "
            f"{_fmt(m.seconds, 1)}")
        if m.reason:
            lines.append(f"  not fitted: {p(m.reason)}")
        coefficients = dict(one.get("coefficients") or hier.get("coefficients") or {})
        order = _coefficient_order(doc, m.name)
        coefficients = {name: coefficients[name] for name in
                        [*(n for n in order if n in coefficients),
                         *(n for n in coefficients if n not in order)]}
        if coefficients:
            flags = m.heterogeneity or {}

            def get(fit: Mapping[str, Any], key: str, name: str) -> Any:
                value = fit.get(key)
                return value.get(name) if isinstance(value, Mapping) else None

            rows = []
            for name in coefficients:
                flag = flags.get(name) or {}
                shown = (flag.get("level") or "yes") if flag.get("flagged") else ""
                rows.append((p(name), *(_fmt(get(one, k, name)) for k in (
                    "coefficients", "se", "ci_lb", "ci_ub")),
                    *(_fmt(get(hier, k, name)) for k in ("coefficients", "se")), p(shown)))
            names = ("coefficient", "estimate", "se", "ci_lb", "ci_ub", "hier_est",
                     "hier_se", "flag")
            lines.extend("  " + row for row in _columns(names, rows, {"coefficient", "flag"}))
            level = one.get("level")
            percent = (None if not isinstance(level, (int, float)) else
                       float(level) * (100 if level < 1 else 1))
            lines.append("  estimate/se/CI: one-stage (federated IRLS"
                         + (f", {percent:g}% CI" if percent is not None else "")
                         + "); hier_est/hier_se: "
                         "hierarchical (random intercept); flag: two-stage heterogeneity "
                         "of the coefficient")
        if hier:
            lines.append(f"  hierarchical: tau {_fmt(hier.get('tau'))}  tau2 "
                         f"{_fmt(hier.get('tau2'))}  ICC (latent) {_fmt(hier.get('icc'))}  "
                         f"logLik {_fmt(hier.get('logLik'), 2)}  converged "
                         f"{_fmt(hier.get('converged'))}")
        for site, reason in m.refused.items():
            lines.append(f"  refused {p(site)}: {p(reason)}")
        for site, reason in m.dropped.items():
            lines.append(f"  dropped {p(site)}: {p(reason)}")
        lines.extend(f"  note: {p(note)}" for note in m.notes)
    return lines


#: Shown where a measure has no null: no p-value, no H0 (the Brier score).
NO_NULL = "\u2014"


def _shown(value: float | None, scale: str | None) -> float | None:
    """A pooling-scale number on the scale results are read on (``None`` stays ``None``)."""
    if value is None or scale is None:
        return value
    return from_scale(value, scale)


def _fmt_pval(value: float | None) -> str:
    if value is None:
        return "-"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _scaled_analysis_table(doc: RoundDocument) -> list[str]:
    """The analyses of a version-2 document, back-transformed, with scale and null."""
    # lazy: fedsynth.round_document is not loaded by `fedsynth --help` (start-up)
    from fedsynth.round_document import PooledEstimate

    p = printable
    rows = []
    by_scale: dict[str, dict[str, None]] = {}
    for a in doc.analyses:
        pooled = a.pooled or PooledEstimate()
        scale = a.scale or "identity"
        measure = a.estimand or a.measure or a.estimator or ""
        het = a.heterogeneity
        flag = (het.level or "yes") if het is not None and het.flagged else ""
        if a.scale is not None and a.null_value is None:
            pval, null = NO_NULL, NO_NULL
        else:
            pval = _fmt_pval(pooled.pval)
            null = "-" if a.null_value is None else f"{a.null_value:g}"
        if scale != "identity":
            by_scale.setdefault(scale, {})[p(measure)] = None
        method = "/".join(p(x) for x in (a.method, a.test) if x)
        rows.append((p(a.analysis), str(a.k or 0), method, p(measure), p(scale),
                     *(_fmt(_shown(v, a.scale), 3) for v in (
                         pooled.estimate, pooled.ci_lb, pooled.ci_ub, pooled.pi_lb,
                         pooled.pi_ub)),
                     pval, null, _fmt(pooled.tau2), _fmt(pooled.I2, 1), p(flag)))
    names = ("analysis", "k", "method/test", "measure", "scale", "estimate", "ci_lb", "ci_ub",
             "pi_lb", "pi_ub", "pval", "H0", "tau2", "I2", "flag")
    left = {"analysis", "method/test", "measure", "scale", "flag"}
    widths = [max(len(name), *(len(row[i]) for row in rows)) for i, name in enumerate(names)]
    widths[0] = max(widths[0], 26)

    def line(cells: tuple[str, ...]) -> str:
        out = [c.ljust(w) if n in left else c.rjust(w)
               for n, c, w in zip(names, cells, widths)]
        return " ".join(out).rstrip()

    lines = [line(names), *(line(row) for row in rows), ""]
    notes = ["estimate, CI (ci_lb, ci_ub) and PI (pi_lb, pi_ub) back-transformed to the "
             "measure; tau2 on the pooling scale",
             f"pval tests H0, the measure's null ({NO_NULL}: no null, no p-value)"]
    notes += [f"pooled on the {p(scale)} scale: {', '.join(measures)}"
              for scale, measures in by_scale.items()]
    # version 3: released likelihoods pooled beside the normal approximation above
    notes += [f"{p(a.analysis)}: {p(a.likelihood.statement)}" for a in doc.analyses
              if a.likelihood is not None and a.likelihood.statement]
    lines += [f"  {note}" for note in notes]
    return lines


def render_csv(doc: RoundDocument) -> str:
    """Write a round document as CSV, one row per analysis.

    Columns: the round id, the analysis' scalar fields (estimator, measure, k, method,
    test), its pooled fields with intervals as ``_lb``/``_ub`` columns (as ``fedsynth meta
    --format csv``), the heterogeneity flag and the refusing sites.

    Text from sites (names, reasons) is written as it is: CSV is data, and the csv module
    quotes it; it is never printed to a terminal as a table cell.
    """
    # lazy: the meta command's CSV writer and the round document are not loaded by `fedsynth --help`
    from fedsynth.cli.commands.meta import records_csv
    from fedsynth.round_document import PooledEstimate

    # a closed round's document is stored with sorted keys: the columns follow the
    # document contract's order instead (analysis first, then meta's pooled fields)
    order = ("analysis", "estimator", "measure", "k", "method", "test", *PooledEstimate.KEYS)
    recs = []
    for analysis in doc.analyses:
        entry = analysis.to_dict()
        rec: dict[str, Any] = {"round": doc.round}
        ordered = [*(k for k in order if k in entry), *(k for k in entry if k not in order)]
        for key in ordered:
            value = entry[key]
            if key in ("heterogeneity", "notes", "site_estimates", "refused"):
                continue
            if isinstance(value, (dict, list)) and not key.endswith("_ci"):
                continue
            rec[key] = value
        het = analysis.heterogeneity
        rec["heterogeneity_flagged"] = None if het is None else het.flagged
        rec["heterogeneity_level"] = None if het is None else het.level
        rec["heterogeneity_sites"] = "" if het is None else ";".join(het.sites)
        rec["heterogeneity_reasons"] = "" if het is None else " ".join(het.reasons)
        rec["refused_sites"] = ";".join(analysis.refused)
        recs.append(rec)
    if not recs:
        return "round,analysis"
    return records_csv(recs)


def _show_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="round id")
    _config_arg(parser)
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="table, the round document as JSON (docs/round-document.md; "
                             "'fedsynth meta FILE.json' pools it again) or CSV with one row "
                             "per analysis (default: table)")


def _show(args: argparse.Namespace) -> int:
    # lazy: keeps scipy and sqlalchemy out of `fedsynth --help` start-up
    from coordinator.rounds import round_document

    _config, store = _open(args)
    with store:
        doc = round_document(store, store.get_round(args.id))
    if args.format == "json":
        print(json.dumps(doc.to_dict(), indent=2, allow_nan=False))
    elif args.format == "csv":
        print(render_csv(doc))
    else:
        print(render_table(doc))
    return 0


def _wait_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="round id")
    _config_arg(parser)
    parser.add_argument("--timeout", default=None, metavar="DURATION",
                        help="how long to wait, e.g. 90, 30s, 10m (default: until the "
                             "round's deadline, plus a grace of 30 s for the coordinator "
                             "to close it)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress lines on stderr")


#: After the deadline, how long ``round wait`` (without --timeout) gives the running
#: coordinator to close and pool the round before it gives up.
WAIT_GRACE_SECONDS = 30.0
#: How often a progress line is repeated when nothing changes.
PROGRESS_EVERY_SECONDS = 10.0


def _duration_text(seconds: float) -> str:
    """``4m 05s``, ``12s``, ``1h 02m`` (for progress lines)."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _timeout(text: str | None) -> float | None:
    """``--timeout``: seconds (``90``, ``2.5``) or a duration (``30s``, ``10m``)."""
    # lazy: fedsynth.timeutil is not loaded by `fedsynth --help` (start-up)
    from fedsynth.errors import InputError
    from fedsynth.timeutil import parse_duration

    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = parse_duration(text, "--timeout").total_seconds()
    if not seconds > 0 or seconds == float("inf"):
        raise InputError(f"--timeout = {text!r} must be a positive number of seconds or a "
                         "duration such as 30s or 10m")
    return seconds


def _model_progress(store: Any, round_id: str) -> str:
    """``"; models: NAME: what it is doing"`` while a round's models are being fitted.

    The coordinator stores, while it fits, one ``running`` entry with a ``progress``
    sentence (e.g. ``IECV 3 of 10: developing without mtf-charlie``); empty otherwise.
    """
    stored = store.model_results(round_id)
    if stored is None or stored[0] != "running":
        return ""
    done = [e for e in stored[1] if e.get("status") != "running"]
    running = [e for e in stored[1] if e.get("status") == "running"]
    text = f"; models: {len(done)} done"
    for entry in running:
        text += (f", {printable(str(entry.get('name')))}: "
                 f"{printable(str(entry.get('progress') or 'fitting'))}")
    return text


def _wait(args: argparse.Namespace) -> int:
    """Wait until the round has closed, with progress on stderr.

    Progress (sites answered of the allowed ones, time left to the deadline) is printed
    when a site answers and every 10 s otherwise, on stderr so that stdout carries only
    the outcome line. Without ``--timeout`` the wait ends at the round's own deadline
    plus :data:`WAIT_GRACE_SECONDS`, the time a running coordinator needs to close it.
    """
    # lazy: fedsynth.timeutil is not loaded by `fedsynth --help` (start-up)
    from fedsynth.timeutil import iso, utcnow

    timeout = _timeout(args.timeout)
    _config, store = _open(args)
    start = time.monotonic()
    shown: tuple[int, int, str] | None = None
    end: float | None = None
    last_print = 0.0
    with store:
        while True:
            record = store.get_round(args.id)
            if not record.is_open:
                print(f"round {printable(record.id)} {record.status}"
                      + (f": {printable(record.failure_reason)}" if record.failure_reason
                         else ""))
                return 0
            now = time.monotonic()
            left = (record.deadline - utcnow()).total_seconds()
            if end is None:      # first look at the round: the wait's end is fixed
                end = start + (timeout if timeout is not None
                               else max(left, 0.0) + WAIT_GRACE_SECONDS)
            state = (record.n_submissions, len(record.allowed), _model_progress(store,
                                                                                  record.id))
            if not args.quiet and (state != shown
                                   or now - last_print >= PROGRESS_EVERY_SECONDS):
                when = (f"{_duration_text(left)} left until the deadline "
                        f"{iso(record.deadline)}" if left > 0 else
                        f"deadline {iso(record.deadline)} passed; waiting for the "
                        "coordinator to close it")
                print(f"round {printable(record.id)}: {state[0]}/{state[1]} sites answered "
                      f"(quorum {record.quorum}); {when}{state[2]}", file=sys.stderr,
                      flush=True)
                last_print = now
            shown = state
            if now >= end:
                waited = (f"after {timeout:g} s" if timeout is not None else
                          f"{WAIT_GRACE_SECONDS:g} s after its deadline")
                raise FedsynthError(f"round {args.id} still open {waited} (deadline "
                                    f"{iso(record.deadline)}; {state[0]}/{state[1]} sites "
                                    "answered): is the coordinator running?")
            time.sleep(0.2)


def _list_args(parser: argparse.ArgumentParser) -> None:
    _config_arg(parser)
    parser.add_argument("--format", choices=("table", "json"), default="table")


def _list(args: argparse.Namespace) -> int:
    # lazy: fedsynth.timeutil is not loaded by `fedsynth --help` (start-up)
    from fedsynth.timeutil import iso

    _config, store = _open(args)
    with store:
        records = store.list_rounds()
        rows = [{"round": r.id, "status": r.status, "opened_at": iso(r.opened_at),
                 "deadline": iso(r.deadline), "closed_at": iso(r.closed_at),
                 "quorum": r.quorum, "submissions": r.n_submissions,
                 "sites": len(r.allowed)} for r in records]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'round':<18} {'status':<7} {'subm':>4}/{'sites':<5} {'opened_at':<25} deadline")
    for row in rows:
        print(f"{printable(row['round']):<18} {row['status']:<7} "
              f"{row['submissions']:>4}/{row['sites']:<5} {row['opened_at']:<25} "
              f"{row['deadline']}")
    return 0


COMMANDS = [
    Command(("round", "start"), "open a federated round (prints its id last)", _start_args,
            _start),
    Command(("round", "show"), "show a round (pooled results when closed)", _show_args, _show),
    Command(("round", "wait"), "wait until a round has closed", _wait_args, _wait),
    Command(("round", "list"), "list rounds", _list_args, _list),
]
