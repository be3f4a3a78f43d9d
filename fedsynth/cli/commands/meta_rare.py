"""``fedsynth meta --method MH|PETO|GLMM``: pooling 2x2 tables on their counts.

Hooked into :mod:`fedsynth.cli.commands.meta` by three calls (options, method names and
:func:`run_rare` at the start of its ``run``), so that the rare-event methods stay out of
the inverse-variance pipeline: they read count columns (``--ai --bi --ci --di`` or
``--ai --n1i --ci --n2i``, metafor's names) instead of ``yi``/``vi``, and print
``rma.mh``/``rma.peto``/``rma.glmm``-style results with metafor's keys.

This module has no ``COMMANDS``; like every module here it imports only ``argparse`` at the
top so that ``fedsynth --help`` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from typing import Any

from fedsynth.errors import InputError
from fedsynth.vocabulary import COUNT_METHODS, GLMM_MODELS

#: ``--method`` values handled here.
RARE_METHODS = COUNT_METHODS
MODEL_CHOICES = GLMM_MODELS
COUNT_OPTIONS: tuple[str, ...] = ("ai", "bi", "ci", "di", "n1i", "n2i")
#: Options of ``fedsynth meta`` that the count-based methods do not use.
_UNUSED = (("yi", "--yi"), ("vi", "--vi"), ("sei", "--sei"), ("diagnostics", "--diagnostics"),
           ("subgroup", "--subgroup"), ("moderator", "--moderator"), ("bayes", "--bayes"),
           ("forest", "--forest"), ("funnel", "--funnel"),
           ("cumulative_by", "--cumulative-by"))

EXAMPLES = """\
rare events (2x2 tables, no continuity correction):
  fedsynth meta trials.csv --measure OR --ai tpos --bi tneg --ci cpos --di cneg --method MH
  fedsynth meta trials.csv --measure OR --method PETO
  fedsynth meta trials.csv --measure OR --method GLMM --model CM.EL --format json
"""


def add_rare_options(parser: argparse.ArgumentParser) -> None:
    """The count columns and ``--model`` (``--method`` gains MH, PETO and GLMM)."""
    group = parser.add_argument_group(
        "rare events (--method MH|PETO|GLMM)",
        "pool 2x2 tables on their counts: Mantel-Haenszel (OR, RR, RD), Peto's one-step OR, "
        "or a binomial GLMM (OR) as metafor's rma.mh, rma.peto and rma.glmm")
    for name, what in (("ai", "events in group 1 (treated)"),
                       ("bi", "non-events in group 1"), ("ci", "events in group 2 (control)"),
                       ("di", "non-events in group 2"), ("n1i", "size of group 1 (instead of "
                                                         "--bi)"),
                       ("n2i", "size of group 2 (instead of --di)")):
        group.add_argument(f"--{name}", metavar="COL", default=None, dest=f"rare_{name}",
                           help=f"column of {what} (default: {name})")
    group.add_argument("--model", type=str.upper, choices=MODEL_CHOICES, default=None,
                       help="GLMM: UM.FS (binomial-normal, fixed study effects; default) or "
                            "CM.EL (conditional, exact noncentral hypergeometric likelihood)")


def _check_options(args: argparse.Namespace) -> str:
    method = args.method
    for attr, option in _UNUSED:
        if getattr(args, attr, None):
            raise InputError(f"{option}: not used by --method {method}, which pools the 2x2 "
                             "counts (--ai, --bi, --ci, --di)")
    if getattr(args, "test", "z") != "z":
        raise InputError(f"--test {args.test}: --method {method} reports z tests only")
    measure = getattr(args, "measure", None) or "OR"
    if method == "MH" and measure not in ("OR", "RR", "RD"):
        raise InputError(f"--measure {measure}: --method MH pools OR, RR or RD")
    if method in ("PETO", "GLMM") and measure != "OR":
        raise InputError(f"--measure {measure}: --method {method} pools odds ratios "
                         "(--measure OR)")
    if args.model and method != "GLMM":
        raise InputError(f"--model {args.model}: only --method GLMM has models")
    return measure


def _columns(args: argparse.Namespace, frame) -> dict[str, str]:
    given = {n: getattr(args, f"rare_{n}") for n in COUNT_OPTIONS
             if getattr(args, f"rare_{n}", None)}
    cols = {"ai": given.get("ai", "ai"), "ci": given.get("ci", "ci")}
    for count, size in (("bi", "n1i"), ("di", "n2i")):
        if count in given and size in given:
            raise InputError(f"--{count} and --{size}: give only one of them")
        if count in given:
            cols[count] = given[count]
        elif size in given:
            cols[size] = given[size]
        elif count in frame.columns:
            cols[count] = count
        elif size in frame.columns:
            cols[size] = size
        else:
            cols[count] = count           # reported as missing below
    missing = [(n, c) for n, c in cols.items() if c not in frame.columns]
    if missing:
        name, col = missing[0]
        raise InputError(f"--{name}: column {col!r} not found in "
                         f"{frame.attrs.get('source', 'input')}; available columns: "
                         f"{', '.join(map(repr, frame.columns))}")
    return cols


def _fit(method: str, measure: str, model: str | None, data: dict[str, Any], level: float,
         labels: list[str]):
    if method == "MH":
        # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
        from fedsynth.meta.mh import mantel_haenszel

        return mantel_haenszel(**data, measure=measure, level=level, labels=labels)
    if method == "PETO":
        # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
        from fedsynth.meta.mh import peto

        return peto(**data, level=level, labels=labels)
    # lazy: keeps pandas and scipy out of `fedsynth --help` start-up
    from fedsynth.meta.glmm import glmm

    return glmm(**data, model=model or "UM.FS", level=level, labels=labels)


def run_rare(args: argparse.Namespace) -> int | None:
    """Run ``fedsynth meta`` for a count-based ``--method`` (MH, PETO, GLMM).

    Returns ``None`` for any other method (``meta`` then continues as before). Output is
    built completely before anything is printed.
    """
    if getattr(args, "method", None) not in RARE_METHODS:
        # with --measure, the count columns name escalc's raw columns (meta.py maps them)
        given = ([] if getattr(args, "measure", None) else
                 [f"--{n}" for n in COUNT_OPTIONS if getattr(args, f"rare_{n}", None)])
        if given or getattr(args, "model", None):
            opt = given[0] if given else "--model"
            raise InputError(f"{opt}: count columns need --measure (e.g. --measure OR, "
                             f"which computes yi and vi from them as metafor's escalc) or "
                             f"--method MH, PETO or GLMM; --model is for --method GLMM")
        return None

    # lazy: keeps numpy out of `fedsynth --help` start-up
    import numpy as np

    # lazy: keeps pandas and numpy out of `fedsynth --help` start-up
    from fedsynth import tabular

    # lazy: import cycle: fedsynth.cli.commands.meta imports this module at top
    from fedsynth.cli.commands.meta import DEFAULT_LABEL_COLUMNS, _read_frame

    measure = _check_options(args)
    frame = _read_frame(args)
    cols = _columns(args, frame)
    n = len(frame)
    if args.label:
        labels = tabular.text_column(frame, args.label, option="--label")
    else:
        col = tabular.pick_column(frame, DEFAULT_LABEL_COLUMNS)
        labels = tabular.text_column(frame, col) if col else [str(i + 1) for i in range(n)]
    values = {name: tabular.numeric_column(frame, col, option=f"--{name}", labels=labels)
              for name, col in cols.items()}
    if args.by:
        groups = tabular.text_column(frame, args.by, option="--by")
        names = list(dict.fromkeys(groups))
    else:
        groups, names = [""] * n, [""]
    results = []
    for name in names:
        rows = np.array([g == name for g in groups])
        data = {k: v[rows] for k, v in values.items()}
        labs = [lab for lab, keep in zip(labels, rows) if keep]
        results.append(_fit(args.method, measure, args.model, data, args.level, labs))
    if args.format == "json":
        recs = [({"analysis": nm} if args.by else {}) | r.to_dict()
                for nm, r in zip(names, results)]
        text = json.dumps(recs if args.by else recs[0], indent=None if args.by else 2,
                          allow_nan=False)
    elif args.format == "csv":
        recs = [({"analysis": nm} if args.by else {}) |
                {k: (";".join(v) if isinstance(v, list) else v)
                 for k, v in r.to_dict().items()} for nm, r in zip(names, results)]
        keys = list(dict.fromkeys(k for rec in recs for k in rec))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(recs)
        text = buf.getvalue().rstrip("\n")
    else:
        parts = [(f"Analysis {nm!r}\n" if args.by else "") + r.summary()
                 for nm, r in zip(names, results)]
        text = ("\n\n" + "=" * 72 + "\n\n").join(parts)
    print(text)
    return 0
