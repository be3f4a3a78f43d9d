"""metafor-like text rendering of a :class:`~fedsynth.meta.pooling.PoolingResult`.

The layout follows ``print.rma.uni`` (model line, heterogeneity block, Q test, model
results) and adds the Q-profile intervals of ``confint()`` and the prediction interval of
``predict()``, so that one summary answers the questions a statistician asks of a pooled
analysis. Pure string formatting: no I/O.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsynth.vocabulary import METHOD_INFO

if TYPE_CHECKING:  # pragma: no cover
    from fedsynth.meta.pooling import BatchPoolingResult, PoolingResult

__all__ = ["format_summary", "format_batch_summary", "fmt", "fmt_p", "signif_stars",
           "f", "p", "peq", "grid"]


def fmt(x: float | None, digits: int = 4) -> str:
    """Fixed-point number with ``digits`` decimals; ``NA`` for missing values."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NA"
    if math.isinf(x):
        return "Inf" if x > 0 else "-Inf"
    return f"{x:.{digits}f}"


def fmt_p(p: float, digits: int = 4) -> str:
    """p-value as metafor prints it (``<.0001`` below the printed precision)."""
    if p is None or math.isnan(p):
        return "NA"
    floor = 10.0 ** (-digits)
    if p < floor:
        return "<" + f"{floor:.{digits}f}".lstrip("0")
    return f"{p:.{digits}f}"


def signif_stars(p: float) -> str:
    """R's significance codes."""
    if p is None or math.isnan(p):
        return ""
    for cut, star in ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, ".")):
        if p < cut:
            return star
    return ""


def _pct(level: float) -> str:
    """``95%`` or ``97.5%``."""
    return f"{level:g}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(wd) for h, wd in zip(header, widths))]
    for r in rows:
        out.append("  ".join(c.rjust(wd) for c, wd in zip(r, widths)).rstrip())
    return out


def format_summary(res: PoolingResult, digits: int = 4) -> str:
    """Multi-line summary of one pooled analysis.

    Model, k, tau², I², H², Q test, estimate table with CI and PI, notes.
    """
    lines: list[str] = []
    if res.name:
        lines.append(f"Analysis: {res.name}")
    re_fit = res.method != "FE" and res.k >= 2
    if re_fit:
        lines.append(f"Random-Effects Model (k = {res.k}; tau^2 estimator: {res.method}, "
                     f"{METHOD_INFO[res.method].label})")
    else:
        lines.append(f"Fixed-Effect Model (k = {res.k})")
    lines.append("")

    if re_fit:
        lines.append(f"tau^2 (estimated amount of total heterogeneity): {fmt(res.tau2, digits)} "
                     f"(SE = {fmt(res.se_tau2, digits)})")
        lines.append(f"tau (square root of estimated tau^2 value):      {fmt(res.tau, digits)}")
    if res.k >= 2:
        lines.append(f"I^2 (total heterogeneity / total variability):   {fmt(res.I2, 2)}%")
        lines.append(f"H^2 (total variability / sampling variability):  {fmt(res.H2, 2)}")
        lines.append("")
        lines.append("Test for Heterogeneity:")
        lines.append(f"Q(df = {res.Q_df}) = {fmt(res.Q, digits)}, "
                     f"p-val = {fmt_p(res.Q_pval, digits)}")
        lines.append("")

    if re_fit and res.tau2_ci is not None:
        lines.append(f"Q-profile {_pct(res.level)} confidence intervals:")
        rows = [["tau^2", fmt(res.tau2, digits), fmt(res.tau2_ci.low, digits),
                 fmt(res.tau2_ci.high, digits)],
                ["tau", fmt(res.tau, digits), fmt(math.sqrt(res.tau2_ci.low), digits),
                 fmt(math.sqrt(res.tau2_ci.high), digits)]]
        if res.I2_ci is not None and res.H2_ci is not None:
            rows.append(["I^2(%)", fmt(res.I2, 2), fmt(res.I2_ci.low, 2), fmt(res.I2_ci.high, 2)])
            rows.append(["H^2", fmt(res.H2, 2), fmt(res.H2_ci.low, 2), fmt(res.H2_ci.high, 2)])
        lines.extend(_table(["", "estimate", "ci.lb", "ci.ub"], rows))
        lines.append("")

    stat_name = "tval" if res.test != "z" and res.k >= 2 else "zval"
    title = "Model Results"
    if res.test != "z" and res.k >= 2:
        kind = {"knha": "Knapp-Hartung", "adhoc": "Knapp-Hartung, factor >= 1"}.get(res.test,
                                                                                     "t")
        title += f" ({kind}, t with df = {res.k - 1})"
    lines.append(title + ":")
    lines.append("")
    header = ["estimate", "se", stat_name, "pval", "ci.lb", "ci.ub"]
    row = [fmt(res.estimate, digits), fmt(res.se, digits), fmt(res.stat, digits),
           fmt_p(res.pval, digits), fmt(res.ci_lb, digits), fmt(res.ci_ub, digits)]
    pi = res.prediction_interval()
    if pi is not None:
        header += ["pi.lb", "pi.ub"]
        row += [fmt(pi.low, digits), fmt(pi.high, digits)]
    table = _table(header, [row])
    table[1] = (table[1] + "  " + signif_stars(res.pval)).rstrip()
    lines.extend(table)
    lines.append("")
    lines.append("---")
    lines.append("Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1")
    if re_fit or res.method == "FE":
        ll_kind = "restricted " if res.method == "REML" else ""
        lines.append(f"{ll_kind}log-likelihood: {fmt(res.logLik, digits)}; "
                     f"{_pct(res.level)} intervals")
    else:
        # k = 1 under a random-effects method: the fixed-effect result was reported, so a
        # (restricted) likelihood of a model that was not fitted is not printed
        lines.append(f"{_pct(res.level)} intervals")
    if res.message:
        lines.append("")
        lines.append(f"Note: {res.message}.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# helpers of the other results' summaries (diagnostics, subgroups, meta-regression, flag)
# ---------------------------------------------------------------------------------------


def f(x: Any, digits: int) -> str:
    """Fixed-point number; ``NA`` for None, NaN and infinity."""
    if x is None:
        return "NA"
    x = float(x)
    return "NA" if not np.isfinite(x) else f"{x:.{digits}f}"


def p(x: Any, digits: int) -> str:
    """A p-value (``<.0001`` below the printed precision)."""
    if x is None or not np.isfinite(float(x)):
        return "NA"
    floor = 10.0 ** (-digits)
    return "<" + f"{floor:.{digits}f}".lstrip("0") if float(x) < floor else f"{float(x):.{digits}f}"


def peq(x: Any, digits: int) -> str:
    """``= 0.1234`` or ``< .0001`` for a p-value in a sentence."""
    text = p(x, digits)
    return text.replace("<", "< ") if text.startswith("<") else f"= {text}"


def btt_label(btt: Any) -> str:
    """The label of the coefficients an omnibus test covers, as metafor prints it.

    1-based; ``2:4`` for a run, ``2,4`` otherwise (``Test of Moderators (coefficients 2:4)``).
    """
    b = [int(i) + 1 for i in btt]
    if len(b) > 1 and b == list(range(b[0], b[-1] + 1)):
        return f"{b[0]}:{b[-1]}"
    return ",".join(str(i) for i in b)


def grid(header: list[str], rows: list[list[str]]) -> list[str]:
    """A text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) if i else h.ljust(w)
                     for i, (h, w) in enumerate(zip(header, widths)))]
    for r in rows:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return out


#: Analyses listed by :func:`format_batch_summary` before it says how many more there are.
BATCH_ROWS = 20


def format_batch_summary(batch: BatchPoolingResult, digits: int = 4) -> str:
    """One line per analysis of a batch (the first :data:`BATCH_ROWS`)."""
    n = len(batch)
    title = (f"{n} analyses pooled ({batch.method}, {batch.test} test, "
             f"{batch.level:g}% intervals):")
    rows = []
    for i in range(min(n, BATCH_ROWS)):
        rows.append([batch.names[i] or str(i), str(int(batch.k[i])),
                     f(batch.estimate[i], digits), f(batch.se[i], digits),
                     f(batch.ci_lb[i], digits), f(batch.ci_ub[i], digits),
                     f(batch.tau2[i], digits), f(batch.I2[i], 2),
                     p(batch.Q_pval[i], digits)])
    lines = [title, *grid(["analysis", "k", "estimate", "se", "ci.lb", "ci.ub", "tau^2",
                           "I^2(%)", "Q pval"], rows)]
    if n > BATCH_ROWS:
        lines.append(f"... and {n - BATCH_ROWS} more (to_frame() has them all)")
    return "\n".join(lines)
