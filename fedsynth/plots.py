"""Forest and funnel plots of a meta-analysis (matplotlib, Agg, no pyplot state).

Why these plots and how they are drawn:

* The **forest plot** (Lewis & Clarke 2001, "Forest plots: trying to see the wood and the
  trees", *BMJ* 322:1479) shows each site's estimate and confidence interval with a square
  whose *area* is proportional to the site's weight, the pooled estimates as diamonds spanning
  their confidence intervals, and the prediction interval for a new site (Riley, Higgins &
  Deeks 2011, *BMJ* 342:d549; IntHout et al. 2016, *BMJ Open* 6:e010247), because the CI of
  the average effect alone hides heterogeneity. Layout follows metafor's ``forest.rma``
  (Viechtbauer 2010, *J. Stat. Softw.* 36(3)): labels left, numbers right, heterogeneity
  statistics in the footer. Ratio measures are analysed on the log scale; the axis stays
  linear in the log but its ticks show the back-transformed ratios, so intervals keep their
  symmetric shape and the reader reads ratios.
* The **funnel plot** (Light & Pillemer 1984; Sterne & Egger 2001, *J. Clin. Epidemiol.*
  54:1046) plots estimates against their standard error, axis reversed, with pseudo-confidence
  regions ``estimate ± z se``; centred at the null instead, the shaded regions are the
  contour-enhanced funnel of Peters et al. 2008 (*J. Clin. Epidemiol.* 61:991). Sites added by
  trim-and-fill (Duval & Tweedie 2000, *Biometrics* 56:455) are drawn as open circles.

Readability from 3 to 200 sites comes from fixed font sizes and a fixed row height in inches:
the figure grows with the rows instead of the text shrinking. Column widths are sums of the
font's advance widths (never narrower than the laid-out text), so long labels never run into
the plot, and no text is laid out just to measure it (issue 17). The forest plot is laid out
once and drawn by matplotlib (:func:`forest_plot`) or written as SVG text directly
(:func:`forest_svg`, milliseconds for 300 sites; the round report uses it). Every other
function builds a :class:`matplotlib.figure.Figure` with its own Agg canvas, so nothing
touches pyplot's global figure registry or the process-wide backend.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special, stats

from fedsynth.effects.effect_sizes import escalc
from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none as _num
from fedsynth.meta.analysis import AnalysisResult
from fedsynth.meta.bayes import BayesBatchResult, BayesResult
from fedsynth.meta.diagnostics import deleted_fits
from fedsynth.meta.metareg import MetaRegressionResult, fit_batch, validate_yi_vi
from fedsynth.meta.pooling import BatchPoolingResult, meta_analysis
from fedsynth.meta.subgroups import SubgroupResult, subgroup_analysis
from fedsynth.vocabulary import METHODS, RATIO_MEASURES, SCALES, from_scale, to_scale

__all__ = ["RATIO_MEASURES", "forest_plot", "forest_svg", "funnel_plot", "save_figure",
           "radial_plot", "qqnorm_plot", "baujat_plot", "gosh_plot", "labbe_plot", "bubble_plot",
           "PLOT_KINDS", "qq_envelope", "QQEnvelope", "supsmu", "r_rnorm"]


_FONT = 9.0               # points, every text of the forest plot
_SMALL = 8.0              # tick labels and footer
_ROW_IN = 0.22            # inches per row
_PLOT_IN = 3.4            # width of the plotting column
_PAD_IN = 0.15
_GAP_IN = 0.2
_MAX_LABEL = 45           # characters; longer labels end in an ellipsis
_SITE_COLOUR = "#1f2a44"
_RE_COLOUR = "#1f4e79"
_FE_COLOUR = "#6b6b6b"
_BAYES_COLOUR = "#2e7d32"
_BLUP_COLOUR = "#c25e00"
_GROUP_COLOUR = "#5b6474"


# ----------------------------------------------------------------------------------------------
# Input normalisation
# ----------------------------------------------------------------------------------------------


def _get(result: Any, name: str, default: Any = None) -> Any:
    if isinstance(result, Mapping):
        return result.get(name, default)
    return getattr(result, name, default)


@dataclass(frozen=True)
class _Pooled:
    """What the plots need from a pooling result, validated."""

    yi: np.ndarray
    vi: np.ndarray
    labels: tuple[str, ...]
    weights: np.ndarray          # percent
    estimate: float | None
    ci_lb: float | None
    ci_ub: float | None
    pi_lb: float | None
    pi_ub: float | None
    tau2: float | None
    I2: float | None
    Q: float | None
    Q_pval: float | None
    method: str
    level: float
    Q_df: int


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _pooled(result: Any) -> _Pooled:
    """Read a PoolingResult (attributes) or a mapping with the same keys.

    A round-document analysis (``site_estimates`` list of ``{site, yi, vi}``) is accepted too,
    so the coordinator's report can pass what it stores.
    """
    yi, vi, labels = _get(result, "yi"), _get(result, "vi"), _get(result, "labels")
    sites = _get(result, "site_estimates")
    if yi is None and sites:
        yi = [_get(s, "yi") for s in sites]
        vi = [_get(s, "vi") for s in sites]
        labels = [str(_get(s, "site", f"Site {i + 1}")) for i, s in enumerate(sites)]
    if yi is None or vi is None:
        raise InputError("result: needs yi and vi (the site estimates and variances)")
    try:
        y = np.asarray(yi, dtype=float).ravel()
        v = np.asarray(vi, dtype=float).ravel()
    except (TypeError, ValueError):
        raise InputError("result: yi and vi must be numbers") from None
    if y.size == 0:
        raise InputError("result: no site estimates to plot (yi is empty)")
    if v.shape != y.shape:
        raise InputError(f"result: vi has {v.size} values for {y.size} estimates")
    for i in range(y.size):
        if not math.isfinite(y[i]):
            raise InputError(f"yi[{i}]: estimate must be finite, got {y[i]!r}")
        if not (math.isfinite(v[i]) and v[i] > 0):
            raise InputError(f"vi[{i}]: variance must be finite and > 0, got {v[i]!r}")
    if labels is None:
        labs = tuple(f"Study {i + 1}" for i in range(y.size))
    else:
        labs = tuple(str(x) for x in labels)
        if len(labs) != y.size:
            raise InputError(f"labels: {len(labs)} labels for {y.size} estimates")
    tau2 = _num(_get(result, "tau2"))
    w = _get(result, "weights")
    if w is not None and np.size(w) == y.size and np.all(np.isfinite(np.asarray(w, float))):
        weights = np.asarray(w, dtype=float).ravel()
    else:   # random-effects (or, with tau2 = 0, fixed-effect) weights in percent
        raw = 1.0 / (v + (tau2 or 0.0))
        weights = 100.0 * raw / raw.sum()
    level = _num(_get(result, "level")) or 95.0
    return _Pooled(
        yi=y, vi=v, labels=labs, weights=weights,
        estimate=_num(_get(result, "estimate")), ci_lb=_num(_get(result, "ci_lb")),
        ci_ub=_num(_get(result, "ci_ub")), pi_lb=_num(_get(result, "pi_lb")),
        pi_ub=_num(_get(result, "pi_ub")), tau2=tau2, I2=_num(_get(result, "I2")),
        Q=_num(_get(result, "Q")), Q_pval=_num(_get(result, "Q_pval")),
        method=str(_get(result, "method") or "RE"), level=level,
        Q_df=_int_or(_get(result, "Q_df"), y.size - 1))


def _measure(measure: str | None, result: Any) -> str | None:
    m = measure if measure is not None else _get(result, "measure")
    if m is None:
        return None
    if not isinstance(m, str) or not m.strip():
        raise InputError(f"measure: expected a measure name such as OR, got {m!r}")
    return m.strip()


def _is_ratio(measure: str | None) -> bool:
    return measure is not None and measure.upper() in RATIO_MEASURES


def _short(label: str) -> str:
    label = " ".join(label.split())       # no newlines or tabs in a row
    return label if len(label) <= _MAX_LABEL else label[: _MAX_LABEL - 1] + "\u2026"


def _scale_name(scale: bool | str) -> str:
    """``True``/``False`` (a ratio measure or not) or a scale name, as a scale name."""
    if isinstance(scale, str):
        return scale
    return "log" if scale else "identity"


def _fmt(x: float, scale: bool | str) -> str:
    """A pooling-scale value as read (back-transformed for log and logit scales)."""
    value = from_scale(float(x), _scale_name(scale))
    return f"{value:.3f}" if _scale_name(scale) == "logit" else f"{value:.2f}"


def _fmt_ci(est: float, lo: float, hi: float, ratio: bool | str) -> str:
    return f"{_fmt(est, ratio)} [{_fmt(lo, ratio)}, {_fmt(hi, ratio)}]"


def _pfmt(p: float | None) -> str:
    if p is None:
        return "p = NA"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _as_array(obj: Any, k: int, name: str, attr: str) -> np.ndarray:
    values = _get(obj, attr) if not isinstance(obj, (np.ndarray, list, tuple)) else obj
    if values is None:
        raise InputError(f"{name}: expected an array of {k} values or a result with .{attr}")
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size != k:
        raise InputError(f"{name}: {arr.size} values for {k} sites")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: values must be finite")
    return arr


# ----------------------------------------------------------------------------------------------
# Figure plumbing
# ----------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float):
    # lazy: matplotlib (~1 s) is imported only when a figure is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


#: Advance widths of DejaVu Sans (matplotlib's default font), in 1/1000 em, for the
#: printable ASCII characters " " to "~", normal and bold, read once from the font files
#: matplotlib ships (tests/unit/test_plots.py checks them against the font). Column widths
#: are sums of these: no text is laid out by a renderer to measure it (issue 17: measuring
#: every label of a 300-site plot with matplotlib cost more than drawing it).
_ADVANCE = {
    "normal": (318, 401, 460, 838, 636, 950, 780, 275, 390, 390, 500, 838, 318, 361, 318,
               337, 636, 636, 636, 636, 636, 636, 636, 636, 636, 636, 337, 337, 838, 838,
               838, 531, 1000, 684, 686, 698, 770, 632, 575, 775, 752, 295, 295, 656, 557,
               863, 748, 787, 603, 787, 695, 635, 611, 732, 684, 989, 685, 611, 685, 390,
               337, 390, 838, 500, 500, 613, 635, 550, 635, 615, 352, 635, 634, 278, 278,
               579, 278, 974, 634, 612, 635, 635, 411, 521, 392, 634, 592, 818, 592, 592,
               525, 636, 337, 636, 838),
    "bold": (348, 456, 521, 838, 696, 1002, 872, 306, 457, 457, 523, 838, 380, 415, 380,
             365, 696, 696, 696, 696, 696, 696, 696, 696, 696, 696, 400, 400, 838, 838, 838,
             580, 1000, 774, 762, 734, 830, 683, 683, 821, 837, 372, 372, 775, 637, 995, 837,
             850, 733, 850, 770, 720, 682, 812, 774, 1103, 771, 724, 725, 457, 365, 457, 838,
             500, 500, 675, 716, 593, 716, 678, 435, 716, 712, 343, 343, 665, 343, 1042, 712,
             687, 716, 716, 493, 595, 478, 712, 652, 924, 645, 652, 582, 712, 365, 712, 838),
}
#: Characters outside ASCII: the widest glyph of the symbols the plots use (ellipsis, the
#: driver triangle, tau, superscripts: at most 1 em), 0.75 em for other letters of
#: alphabetic scripts (accented Latin letters are 0.55-0.85 em) and 1 em for CJK and wider.
_WIDE_FROM = 0x2E80


_EM = {weight: {chr(32 + i): a / 1000.0 for i, a in enumerate(adv)}
       for weight, adv in _ADVANCE.items()}
_MAX_EM = max(max(adv) for adv in _ADVANCE.values()) / 1000.0   # no glyph is wider (≤ 1 em)


def _char_em(char: str, weight: str) -> float:
    em = _EM[weight].get(char)
    if em is not None:
        return em
    code = ord(char)
    if code in (0x2026, 0x25B2, 0x25C6, 0x25CB, 0x25C7) or code >= _WIDE_FROM:
        return 1.0
    return 0.75 if weight == "normal" else 0.8


def _text_width_in(texts: Sequence[str], size: float, weight: str = "normal") -> float:
    """Widest of ``texts`` in inches at this font size (points), from the font's advances.

    The sum of advance widths is what a renderer lays out before kerning, which only
    tightens text: columns sized by it never let a label run into the plot. One dictionary
    lookup per character instead of a text layout per string, and only for the longest
    strings: one of ``n`` characters is at most ``n`` times the widest glyph wide.
    """
    table = _EM[weight]
    widest = 0.0
    for s in sorted(set(texts), key=len, reverse=True):
        if len(s) * _MAX_EM <= widest:
            break
        em = 0.0
        for c in s:
            w = table.get(c)
            em += w if w is not None else _char_em(c, weight)
        widest = max(widest, em)
    return widest * size / 72.0


def _nice_ticks(lo: float, hi: float, nbins: int) -> tuple[list[float], int]:
    """At most ``nbins + 1`` ticks at 1, 2, 2.5 or 5 times a power of ten inside [lo, hi].

    As matplotlib's ``MaxNLocator(steps=[1, 2, 2.5, 5, 10])``; also returns the decimals
    a label needs to tell the ticks apart.
    """
    raw = max(hi - lo, 1e-12) / nbins
    power = math.floor(math.log10(raw))
    step, decimals = 10.0 ** (power + 1), max(0, -(power + 1))
    for mult in (1.0, 2.0, 2.5, 5.0):
        if mult * 10.0 ** power >= raw * (1 - 1e-9):
            step = mult * 10.0 ** power
            decimals = max(0, -power + (1 if mult == 2.5 else 0))
            break
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)], decimals


def _tick_label(value: float, decimals: int) -> str:
    """A tick label as matplotlib writes it (a true minus sign, no ``-0``)."""
    text = f"{value:.{decimals}f}"
    if float(text) == 0:
        text = text.lstrip("-")
    return text.replace("-", "\u2212")


def _thin_ticks(ticks: list[float], labels: list[str], lo: float, hi: float,
                null: float | None) -> tuple[list[float], list[str]]:
    """Drop every other tick until no two labels touch (4 px at 100 dpi between them).

    Widths come from the font's advances; the tick at the null value is kept when there is
    one. The plotting column is ``_PLOT_IN`` wide.
    """
    pairs = [(t, lab) for t, lab in zip(ticks, labels) if lo - 1e-12 <= t <= hi + 1e-12]
    gap = 4.0 / 100.0                                            # inches between labels
    for _ in range(8):
        if len(pairs) <= 2:
            break
        pos = [(t - lo) / (hi - lo) * _PLOT_IN for t, _ in pairs]
        half = [_text_width_in([lab], _SMALL) / 2 for _, lab in pairs]
        if all(pos[i + 1] - half[i + 1] - (pos[i] + half[i]) >= gap
               for i in range(len(pairs) - 1)):
            break
        start = 0
        if null is not None:
            at_null = [i for i, (t, _) in enumerate(pairs) if abs(t - null) < 1e-12]
            start = at_null[0] % 2 if at_null else 0
        pairs = pairs[start::2]
    return [t for t, _ in pairs], [lab for _, lab in pairs]


def _ratio_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Tick positions (log scale) and back-transformed labels for a ratio axis."""
    rlo, rhi = math.exp(lo), math.exp(hi)
    candidates: list[float] = []
    for e in range(math.floor(math.log10(rlo)) - 1, math.ceil(math.log10(rhi)) + 2):
        for m in (1, 2, 5):
            candidates.append(m * 10.0 ** e)
    inside = [c for c in candidates if rlo <= c <= rhi]
    if len(inside) > 7:
        inside = [c for c in inside if math.isclose(math.log10(c) % 1, 0, abs_tol=1e-9)
                  or math.isclose(math.log10(c) % 1, 1, abs_tol=1e-9) or c == 1]
    if len(inside) < 3:            # a narrow range (e.g. OR 0.9 to 1.1): linear-nice ratios
        nice = _nice_ticks(rlo, rhi, 4)[0]
        inside = [c for c in nice if c > 0 and rlo <= c <= rhi] or [rlo, rhi]
    labels = [f"{c:.4g}" for c in inside]
    return [math.log(c) for c in inside], labels


def _logit_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Tick positions (logit scale) and labels as proportions (a c-statistic axis)."""
    plo, phi = from_scale(lo, "logit"), from_scale(hi, "logit")
    nice = _nice_ticks(plo, phi, 5)[0]
    inside = [c for c in nice if 0 < c < 1 and plo <= c <= phi] or [plo, phi]
    return [to_scale(c, "logit") for c in inside], [f"{c:.4g}" for c in inside]


def _fit_ticks(fig, ax, null: float | None = None) -> None:
    """Drop every other x tick until no two tick labels touch.

    Drop every other x tick until no two tick labels touch (long labels such as
    ``-0.015`` on a narrow axis); the tick at the null value is kept when there is one.
    """
    # lazy: matplotlib (~1 s) is imported only when a figure is drawn
    from matplotlib.ticker import MaxNLocator

    if not ax.get_xticklabels() or all(not t.get_text() for t in ax.get_xticklabels()):
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    renderer = fig.canvas.get_renderer()
    for _ in range(8):
        fig.draw_without_rendering()
        lo, hi = sorted(ax.get_xlim())
        pairs = [(loc, lab) for loc, lab in zip(ax.get_xticks(), ax.get_xticklabels())
                 if lo - 1e-12 <= loc <= hi + 1e-12]
        if len(pairs) <= 2:
            return
        boxes = [lab.get_window_extent(renderer) for _, lab in pairs]
        gap = 4.0                                                  # pixels between labels
        if all(b.x0 - a.x1 >= gap for a, b in zip(boxes, boxes[1:])):
            return
        start = 0
        if null is not None:
            at_null = [i for i, (loc, _) in enumerate(pairs) if abs(loc - null) < 1e-12]
            start = at_null[0] % 2 if at_null else 0
        keep = pairs[start::2]
        ax.set_xticks([loc for loc, _ in keep], [lab.get_text() for _, lab in keep])


def _x_limits(points: list[float], ci_lo: np.ndarray, ci_hi: np.ndarray,
              null: float | None) -> tuple[float, float]:
    """The x-axis range of a forest plot.

    Axis range: every point estimate, pooled interval and the null (if any); site CIs
    unless one alone would stretch the axis more than the core range itself (it is then
    clipped with an arrow, as metafor does).
    """
    core = points + ([] if null is None else [null])
    core_lo, core_hi = min(core), max(core)
    span = max(core_hi - core_lo, 1e-6)
    lo = max(float(np.min(ci_lo)), core_lo - span)
    hi = min(float(np.max(ci_hi)), core_hi + span)
    lo, hi = min(lo, core_lo), max(hi, core_hi)
    pad = 0.04 * (hi - lo)
    return lo - pad, hi + pad


# ----------------------------------------------------------------------------------------------
# Forest plot
# ----------------------------------------------------------------------------------------------


@dataclass
class _Row:
    kind: str                     # header | group | site | summary | pi | blank
    label: str = ""
    right: str = ""
    weight: str = ""
    site: int = -1
    estimate: float | None = None
    lo: float | None = None
    hi: float | None = None
    colour: str = _RE_COLOUR
    bold: bool = False

    def bounds(self) -> tuple[float, float, float]:
        """``(lo, estimate, hi)`` of a site, summary or prediction-interval row."""
        if self.lo is None or self.estimate is None or self.hi is None:
            raise ValueError(f"a {self.kind!r} row has no interval to draw")
        return self.lo, self.estimate, self.hi


def _subgroup_rows(subgroups: Any, data: _Pooled, level: float, ratio: bool | str,
                   method: str) -> tuple[list[list[int]], list[_Row], list[str], str | None]:
    """Split sites by group for a forest plot with subgroups.

    Split sites by group; return site indices per group, a summary row per group,
    the group names and the between-group test sentence.
    """
    k = data.yi.size
    if isinstance(subgroups, SubgroupResult):
        res = subgroups
    else:
        values = list(subgroups)
        if len(values) != k:
            raise InputError(f"subgroups: {len(values)} group values for {k} sites")
        res = subgroup_analysis(data.yi, data.vi, values, labels=data.labels,
                                method=method if method in {"FE", "DL", "ML", "REML"}
                                else "REML", level=level)
    index: dict[str, list[int]] = {lab: [] for lab in data.labels}
    for i, lab in enumerate(data.labels):
        index[lab].append(i)
    members: list[list[int]] = []
    rows: list[_Row] = []
    names: list[str] = []
    used: set[int] = set()
    for fit in res.groups:
        sites: list[int] = []
        for lab in fit.sites:
            free = [i for i in index.get(lab, []) if i not in used]
            if not free:
                raise InputError(f"subgroups: site {lab!r} of group {fit.group!r} is not in "
                                 "the plotted result")
            sites.append(free[0])
            used.add(free[0])
        members.append(sites)
        names.append(str(fit.group))
        rows.append(_Row(
            "summary", label=f"{'FE' if method == 'FE' else 'RE'} model for "
                             f"{_short(str(fit.group))} (k = {fit.k}, "
                             f"\u03c4\u00b2 = {fit.tau2:.3g}, I\u00b2 = {fit.I2:.0f}%)",
            right=_fmt_ci(fit.estimate, fit.ci_lb, fit.ci_ub, ratio), estimate=fit.estimate,
            lo=fit.ci_lb, hi=fit.ci_ub, colour=_GROUP_COLOUR))
    if len(used) != k:
        raise InputError("subgroups: some plotted sites belong to no group")
    test = (f"Test for subgroup differences: Q({res.Q_between_df}) = "
            f"{res.Q_between_separate_tau2:.2f}, {_pfmt(res.Q_between_pval)}")
    return members, rows, names, test


def _single(result: Any) -> Any:
    """One analysis of a batch result (a batch of one is that analysis)."""
    if len(result) != 1:
        raise InputError(f"result: a batch of {len(result)} analyses; plot one of them, e.g. "
                         "forest_plot(batch[0]) or forest_plot(batch['name'])")
    return result[0]


def _as_forest_input(result: Any, subgroups: Any, blup: Any, bayes: Any):
    """Every result type as (pooled data, subgroups, blup, bayes, fitted values, footer)."""
    fitted = None
    footer: list[str] = []
    if isinstance(result, (BatchPoolingResult, BayesBatchResult)):
        result = _single(result)
    if isinstance(result, AnalysisResult):
        blup = result.blup if blup is None else blup
        subgroups = result.subgroup if subgroups is None else subgroups
        result = result.pooling
    if isinstance(result, SubgroupResult):
        if result.yi is None or result.vi is None:
            raise InputError("result: this subgroup result carries no site data to plot")
        subgroups = result if subgroups is None else subgroups
        result = meta_analysis(result.yi, result.vi, labels=result.labels,
                               method=result.method, level=result.level)
    elif isinstance(result, MetaRegressionResult):
        if result.yi is None or result.vi is None or result.X is None:
            raise InputError("result: this meta-regression carries no site data to plot")
        w = 1.0 / (result.vi + result.tau2)
        fitted = result.fitted
        footer.append(f"Mixed-effects model ({result.method}): QM({result.QM_df}) = "
                      + (f"{result.QM:.2f}, {_pfmt(result.QMp)}" if result.QM is not None
                         else "NA"))
        result = {"yi": result.yi, "vi": result.vi, "labels": result.labels,
                  "weights": 100.0 * w / w.sum(), "tau2": result.tau2, "I2": result.I2,
                  "Q": result.QE, "Q_pval": result.QEp, "Q_df": result.QE_df,
                  "method": result.method, "level": result.level}
    elif isinstance(result, BayesResult):
        if result.yi is None or result.vi is None:
            raise InputError("result: this posterior carries no site data to plot")
        bayes = result if bayes is None else bayes
        tau2 = result.tau_median ** 2
        w = 1.0 / (result.vi + tau2)
        result = {"yi": result.yi, "vi": result.vi, "labels": result.labels,
                  "weights": 100.0 * w / w.sum(), "method": "Bayes", "level": result.level}
    return result, subgroups, blup, bayes, fitted, footer


_AUTO: Any = object()
_DRIVER_COLOUR = "#b22222"


@dataclass(frozen=True)
class _ForestLayout:
    """A forest plot laid out: rows, markers, axis and columns in inches.

    What :func:`forest_plot` (matplotlib) and :func:`forest_svg` (direct SVG) both draw,
    so the two look the same and no layout rule exists twice.
    """

    data: _Pooled
    rows: tuple[_Row, ...]
    driving: frozenset[str]
    blup_pred: np.ndarray | None
    blup_lo: np.ndarray | None
    blup_hi: np.ndarray | None
    fitted: np.ndarray | None
    bayes_theta: np.ndarray | None
    lo: float                               # x range, pooling scale
    hi: float
    ticks: tuple[float, ...]
    tick_labels: tuple[str, ...]
    null: float | None                      # pooling scale
    x_label: str
    title: str | None
    footer: tuple[str, ...]
    legend: tuple[tuple[str, str], ...]
    x_plot: float                           # inches from the left edge
    x_right: float
    x_weight: float
    width: float                            # inches
    height: float
    top: float
    bottom: float
    _wmax: float = 1.0

    def drives(self, row: _Row) -> bool:
        """Whether a row is a site that drives the heterogeneity."""
        return row.kind == "site" and self.data.labels[row.site] in self.driving

    def label_colour(self, row: _Row) -> str:
        """Colour of a row's label."""
        if self.drives(row):
            return _DRIVER_COLOUR
        return _GROUP_COLOUR if row.kind == "group" else "#000000"

    def marker_size(self, site: int) -> float:
        """Side of a site's square in points: its area proportional to the site's weight."""
        max_marker = 0.8 * _ROW_IN * 72.0            # a square fills 80% of a row
        return max(3.0, max_marker * math.sqrt(float(self.data.weights[site]) / self.wmax))

    @property
    def wmax(self) -> float:
        """The largest site weight (percent)."""
        return self._wmax

    def footer_lines(self) -> list[tuple[float, str, str]]:
        """``(inches from the bottom, text, colour)`` of the footer, then the legend."""
        y_in = _PAD_IN + 0.2 * (len(self.footer) + len(self.legend)) - 0.2
        out = []
        for line, colour in [(f, "#000000") for f in self.footer] + list(self.legend):
            out.append((y_in, line, colour))
            y_in -= 0.2
        return out


def _forest_layout(result: Any, *, measure: str | None, title: str | None, subgroups: Any,
                   blup: Any, bayes: Any, show_fixed: bool, scale: str | None,
                   null_value: Any, drivers: Sequence[str] | None,
                   estimand: str | None) -> _ForestLayout:
    """Rows, markers, axis and column geometry of a forest plot (see :func:`forest_plot`)."""
    result, subgroups, blup, bayes, fitted, model_footer = _as_forest_input(
        result, subgroups, blup, bayes)
    data = _pooled(result)
    meas = _measure(measure, result)
    if scale is None:
        scale = _get(result, "scale") if isinstance(_get(result, "scale"), str) else None
    if scale is None:
        scale = "log" if _is_ratio(meas) else "identity"
    if scale not in SCALES:
        raise InputError(f"scale: {scale!r} is not one of {', '.join(SCALES)}")
    ratio: str = scale                      # how numbers are shown (back-transformed)
    if null_value is _AUTO:
        has_key = isinstance(result, Mapping) and "null_value" in result
        null_value = _get(result, "null_value") if has_key else from_scale(0.0, scale)
    if null_value is not None:
        null_value = float(null_value)
        if not math.isfinite(null_value):
            raise InputError(f"null_value: must be a finite number or None, got {null_value!r}")
    estimand = estimand or (_get(result, "estimand") if isinstance(result, Mapping) else None)
    driving = {str(x) for x in (drivers or ())}
    k = data.yi.size
    level = data.level
    z = float(stats.norm.ppf(0.5 + level / 200.0))
    se = np.sqrt(data.vi)
    site_lo, site_hi = data.yi - z * se, data.yi + z * se
    method = data.method.upper()
    blup_pred = _as_array(blup, k, "blup", "pred") if blup is not None else None
    blup_lo = blup_hi = None
    if blup is not None and not isinstance(blup, (np.ndarray, list, tuple)) \
            and _get(blup, "pi_lb") is not None:
        blup_lo = _as_array(blup, k, "blup", "pi_lb")
        blup_hi = _as_array(blup, k, "blup", "pi_ub")
    fitted_values = _as_array(fitted, k, "fitted", "fitted") if fitted is not None else None
    bayes_theta = None
    if bayes is not None:
        bayes_theta = _as_array(bayes, k, "bayes", "theta_mean")
    level_txt = f"{level:g}%"

    # ---- rows, top to bottom -----------------------------------------------------------
    rows: list[_Row] = [_Row("header", label="Study", right=f"Estimate [{level_txt} CI]",
                             weight="Weight", bold=True)]

    def site_row(i: int) -> _Row:
        return _Row("site", label=_short(data.labels[i]) or f"Study {i + 1}",
                    right=_fmt_ci(data.yi[i], site_lo[i], site_hi[i], ratio),
                    weight=f"{data.weights[i]:.1f}%", site=i, estimate=data.yi[i],
                    lo=site_lo[i], hi=site_hi[i], colour=_SITE_COLOUR)

    footer: list[str] = list(model_footer)
    if subgroups is not None:
        members, group_rows, names, test = _subgroup_rows(subgroups, data, level, ratio, method)
        for sites, summary, name in zip(members, group_rows, names):
            rows.append(_Row("group", label=_short(name), bold=True))
            rows.extend(site_row(i) for i in sites)
            rows.append(summary)
            rows.append(_Row("blank"))
        if test:
            footer.append(test)
    else:
        rows.extend(site_row(i) for i in range(k))
        rows.append(_Row("blank"))
    pooled_points: list[float] = []
    if data.estimate is not None and data.ci_lb is not None and data.ci_ub is not None:
        is_fe = method == "FE"
        rows.append(_Row("summary", label=f"{'FE' if is_fe else 'RE'} model ({method})",
                         right=_fmt_ci(data.estimate, data.ci_lb, data.ci_ub, ratio),
                         weight="100%", estimate=data.estimate, lo=data.ci_lb, hi=data.ci_ub,
                         colour=_FE_COLOUR if is_fe else _RE_COLOUR, bold=True))
        pooled_points += [data.estimate, data.ci_lb, data.ci_ub]
        if data.pi_lb is not None and data.pi_ub is not None and not is_fe:
            rows.append(_Row("pi", label="Prediction interval",
                             right=f"[{_fmt(data.pi_lb, ratio)}, {_fmt(data.pi_ub, ratio)}]",
                             estimate=data.estimate, lo=data.pi_lb, hi=data.pi_ub,
                             colour=_RE_COLOUR))
            pooled_points += [data.pi_lb, data.pi_ub]
    if show_fixed:
        w = 1.0 / data.vi
        fe = float(np.sum(w * data.yi) / np.sum(w))
        fe_se = 1.0 / math.sqrt(float(np.sum(w)))
        lo, hi = fe - z * fe_se, fe + z * fe_se
        rows.append(_Row("summary", label="FE model (inverse variance)",
                         right=_fmt_ci(fe, lo, hi, ratio), estimate=fe, lo=lo, hi=hi,
                         colour=_FE_COLOUR))
        pooled_points += [fe, lo, hi]
    if bayes is not None:
        b_lo, b_hi = float(_get(bayes, "mu_ci_lb")), float(_get(bayes, "mu_ci_ub"))
        b_med = float(_get(bayes, "mu_median"))
        prior = str(_get(bayes, "prior", "")).replace("_", "-")
        rows.append(_Row("summary", label=f"Bayesian ({prior}, scale {_get(bayes, 'tau_scale')})",
                         right=_fmt_ci(b_med, b_lo, b_hi, ratio), estimate=b_med, lo=b_lo,
                         hi=b_hi, colour=_BAYES_COLOUR))
        p_lo, p_hi = float(_get(bayes, "pred_lb")), float(_get(bayes, "pred_ub"))
        rows.append(_Row("pi", label="Bayesian predictive interval",
                         right=f"[{_fmt(p_lo, ratio)}, {_fmt(p_hi, ratio)}]", estimate=b_med,
                         lo=p_lo, hi=p_hi, colour=_BAYES_COLOUR))
        pooled_points += [b_med, b_lo, b_hi, p_lo, p_hi]
    if data.tau2 is not None or data.I2 is not None or data.Q is not None:
        parts = []
        if data.tau2 is not None and method != "FE":
            parts.append(f"\u03c4\u00b2 = {data.tau2:.3g}")
        if data.I2 is not None:
            parts.append(f"I\u00b2 = {data.I2:.1f}%")
        if data.Q is not None:
            parts.append(f"Q({data.Q_df}) = {data.Q:.2f}, {_pfmt(data.Q_pval)}")
        footer.insert(0, "Heterogeneity: " + ", ".join(parts))
    legend: list[tuple[str, str]] = []
    if fitted_values is not None:
        legend.append(("\u25c6 fitted value of the model (x'b)", _FE_COLOUR))
    if blup_pred is not None:
        legend.append(("\u25cb BLUP (empirical Bayes shrunken estimate)"
                       + (f" with its {level_txt} prediction interval (thin line below)"
                          if blup_lo is not None else ""), _BLUP_COLOUR))
    if driving & set(data.labels):
        legend.append(("\u25b2 site driving the heterogeneity (red label)", _DRIVER_COLOUR))
    if bayes_theta is not None:
        legend.append(("\u25c7 Bayesian posterior mean of the site's effect", _BAYES_COLOUR))

    # ---- columns from the font's advance widths, then the figure in inches ---------------
    what = estimand or meas or "Estimate"
    x_label = what if scale == "identity" else f"{what} ({scale} scale)"
    label_w = max(_text_width_in([r.label for r in rows if not r.bold], _FONT),
                  _text_width_in([r.label for r in rows if r.bold], _FONT, "bold"))
    if driving & set(data.labels):             # "▲ " before a driving site, in bold
        label_w = max(label_w, _text_width_in(
            ["\u25b2 " + r.label for r in rows
             if r.kind == "site" and data.labels[r.site] in driving], _FONT, "bold"))
    right_w = _text_width_in([r.right for r in rows], _FONT, "bold")
    weight_w = _text_width_in([r.weight for r in rows], _FONT, "bold")
    foot_w = _text_width_in(footer + [t for t, _ in legend], _SMALL)
    title_w = _text_width_in([title] if title else [], _FONT + 2, "bold")
    x_label_w = _text_width_in([x_label], _SMALL)
    x_label_room = (x_label_w - _PLOT_IN) / 2 if x_label_w > _PLOT_IN else 0.0
    x_plot = _PAD_IN + label_w + _GAP_IN
    x_right = x_plot + _PLOT_IN + _GAP_IN
    x_weight = x_right + right_w + _GAP_IN + weight_w      # right-aligned
    width = max(x_weight + _PAD_IN, foot_w + 2 * _PAD_IN, title_w + 2 * _PAD_IN,
                x_plot + _PLOT_IN + x_label_room + _PAD_IN)
    top = _PAD_IN + (0.35 if title else 0.0)
    bottom = 0.55 + 0.2 * (len(footer) + len(legend)) + _PAD_IN
    height = top + len(rows) * _ROW_IN + bottom

    # ---- x range and ticks ----------------------------------------------------------------
    null = None if null_value is None else to_scale(null_value, scale)
    points = list(data.yi) + pooled_points + (
        list(fitted_values) if fitted_values is not None else []) + (
        list(blup_lo) + list(blup_hi) if blup_lo is not None and blup_hi is not None else [])
    lo, hi = _x_limits(points, site_lo, site_hi, null)
    if scale == "log":
        ticks, tick_labels = _ratio_ticks(lo, hi)
    elif scale == "logit":
        ticks, tick_labels = _logit_ticks(lo, hi)
    else:       # matplotlib's AutoLocator on a 3.4-inch axis with 8-point labels: 9 bins
        ticks, decimals = _nice_ticks(lo, hi, 9)
        tick_labels = [_tick_label(t, decimals) for t in ticks]
    ticks, tick_labels = _thin_ticks(ticks, tick_labels, lo, hi, null)
    return _ForestLayout(
        data=data, rows=tuple(rows), driving=frozenset(driving), blup_pred=blup_pred,
        blup_lo=blup_lo, blup_hi=blup_hi, fitted=fitted_values, bayes_theta=bayes_theta,
        lo=lo, hi=hi, ticks=tuple(ticks), tick_labels=tuple(tick_labels), null=null,
        x_label=x_label, title=title, footer=tuple(footer), legend=tuple(legend),
        x_plot=x_plot, x_right=x_right, x_weight=x_weight, width=width, height=height,
        top=top, bottom=bottom,
        _wmax=float(np.max(data.weights)) if data.weights.size else 1.0)


def forest_plot(result: Any, *, measure: str | None = None, title: str | None = None,
                subgroups: Any = None, blup: Any = None, bayes: Any = None,
                show_fixed: bool = False, scale: str | None = None,
                null_value: Any = _AUTO, drivers: Sequence[str] | None = None,
                estimand: str | None = None):
    """Forest plot of a pooled analysis, or of any other result of the library.

    Examples
    --------
    >>> from fedsynth.meta import meta_analysis
    >>> res = meta_analysis([0.2, 0.5, 0.1], [0.04, 0.05, 0.03], labels=["A", "B", "C"])
    >>> fig = forest_plot(res, measure="MD", title="three sites")
    >>> type(fig).__name__
    'Figure'

    Parameters
    ----------
    result
        Any result type: a :class:`~fedsynth.meta.PoolingResult` (also one analysis of
        a batch), a batch of one analysis, an
        :class:`~fedsynth.meta.analysis.AnalysisResult` (its BLUPs and subgroups are
        drawn), a :class:`~fedsynth.meta.subgroups.SubgroupResult` (blocks, one diamond
        per group), a :class:`~fedsynth.meta.metareg.MetaRegressionResult` (each site
        with its fitted value, no summary diamond, as metafor's ``forest`` of a model with
        moderators) or a :class:`~fedsynth.meta.bayes.BayesResult` (the posterior rows);
        or a mapping with a pooling result's keys (``yi, vi, labels, weights, estimate,
        ci_lb, ci_ub, pi_lb, pi_ub, tau2, I2, Q, Q_pval, method, level``; a
        round-document analysis with ``site_estimates`` works too).
    measure
        Effect measure (defaults to ``result.measure`` if present). OR, RR, HR, IRR and ROM
        are drawn on the log scale with back-transformed tick labels and numbers.
    title
        Title above the plot.
    subgroups
        One group value per site, or a
        :class:`~fedsynth.meta.subgroups.SubgroupResult`: sites are drawn in blocks
        with a diamond per group and the between-group test in the footer.
    blup
        Shrunken site estimates to mark on each row: a ``BlupResult`` (``.pred``) or an array.
    bayes
        A :class:`~fedsynth.meta.bayes.BayesResult`: marks each site's posterior mean
        and adds a row with the posterior median and credible interval of ``mu`` and its
        predictive interval.
    show_fixed
        Add the fixed-effect (inverse-variance) diamond.
    scale
        The scale the estimates are on: ``identity``, ``log`` or ``logit`` (default: the
        result's ``scale`` key, else ``log`` for a ratio ``measure``). The axis stays
        linear on that scale, and tick labels and numbers are back-transformed (a
        c-statistic axis for ``logit``).
    null_value
        The null on the reading scale (0.5 for a c-statistic, 1 for a ratio or a
        calibration slope), drawn as the grey vertical line; None draws no null line (the
        Brier score). Default: the result's ``null_value`` key, else the back-transform of
        0.
    drivers
        Site labels that drive the heterogeneity: drawn in red and bold, with a legend.
    estimand
        Axis label (default: the result's ``estimand``, else ``measure``).

    Returns
    -------
    matplotlib.figure.Figure
        With an Agg canvas; save it with :func:`save_figure`. :func:`forest_svg` draws
        the same plot as SVG text directly, without matplotlib (what the round report uses).

    Raises
    ------
    InputError
        Missing or non-finite estimates, non-positive variances, mismatched lengths.
    """
    lay = _forest_layout(result, measure=measure, title=title, subgroups=subgroups,
                         blup=blup, bayes=bayes, show_fixed=show_fixed, scale=scale,
                         null_value=null_value, drivers=drivers, estimand=estimand)
    return _forest_figure(lay)


def _forest_figure(lay: _ForestLayout):
    """Draw a laid-out forest plot with matplotlib."""
    # lazy: matplotlib (~1 s) is imported only when a figure is drawn
    from matplotlib import transforms
    from matplotlib.patches import Polygon

    data, rows, n = lay.data, lay.rows, len(lay.rows)
    width, height, bottom = lay.width, lay.height, lay.bottom
    lo, hi = lay.lo, lay.hi
    fig = _new_figure(width, height)
    ax = fig.add_axes((lay.x_plot / width, bottom / height, _PLOT_IN / width,
                       n * _ROW_IN / height))
    ax.set_ylim(-0.5, n - 0.5)
    ax.set_xlim(lo, hi)
    ax.set_xticks(list(lay.ticks), list(lay.tick_labels))
    ax.tick_params(axis="x", labelsize=_SMALL, length=3)
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel(lay.x_label, fontsize=_SMALL, parse_math=False)
    if lay.null is not None:
        ax.axvline(lay.null, color="#9aa0a6", lw=0.8, zorder=0, gid="null-line")

    # ---- text columns (x in inches from the left, y in rows) ------------------------------
    col = transforms.blended_transform_factory(fig.dpi_scale_trans, ax.transData)
    for i, row in enumerate(rows):
        y = n - 1 - i
        weight = "bold" if row.bold else "normal"
        if row.label:
            drives = lay.drives(row)
            fig.text(_PAD_IN, y, ("\u25b2 " if drives else "") + row.label, transform=col,
                     fontsize=_FONT, fontweight="bold" if drives else weight,
                     parse_math=False, va="center", ha="left", color=lay.label_colour(row),
                     gid=(f"label-site-{row.site}" if row.kind == "site"
                          else f"label-{row.kind}-{i}"))
        if row.right:
            fig.text(lay.x_right, y, row.right, transform=col, fontsize=_FONT,
                     fontweight=weight, parse_math=False, va="center", ha="left",
                     gid=f"right-{row.kind}-{i}")
        if row.weight:
            fig.text(lay.x_weight, y, row.weight, transform=col, fontsize=_FONT,
                     fontweight=weight, parse_math=False, va="center", ha="right",
                     gid=f"weight-{row.kind}-{i}")
        if row.kind == "site":
            i_site = row.site
            r_lo, r_est, r_hi = row.bounds()
            a, b = max(r_lo, lo), min(r_hi, hi)
            ax.plot([a, b], [y, y], color=row.colour, lw=0.9, solid_capstyle="butt", zorder=2)
            if r_lo < lo:
                ax.plot([lo], [y], marker="<", ms=4, color=row.colour, zorder=2)
            if r_hi > hi:
                ax.plot([hi], [y], marker=">", ms=4, color=row.colour, zorder=2)
            ax.plot([r_est], [y], marker="s", ms=lay.marker_size(i_site), color=row.colour,
                    mew=0, zorder=3, linestyle="none")
            if lay.fitted is not None:
                ax.plot([lay.fitted[i_site]], [y], marker="D", ms=5, color=_FE_COLOUR,
                        mew=0, zorder=4, linestyle="none")
            if lay.blup_pred is not None:
                ax.plot([lay.blup_pred[i_site]], [y], marker="o", ms=7, mfc="none",
                        mec=_BLUP_COLOUR, mew=1.1, zorder=4, linestyle="none",
                        gid=f"blup-{i_site}")
            if lay.blup_lo is not None and lay.blup_hi is not None:
                yb = y - 0.3
                a2, b2 = max(lay.blup_lo[i_site], lo), min(lay.blup_hi[i_site], hi)
                ax.plot([a2, b2], [yb, yb], color=_BLUP_COLOUR, lw=0.9, zorder=2,
                        solid_capstyle="butt", gid=f"blup-pi-{i_site}")
            if lay.bayes_theta is not None:
                ax.plot([lay.bayes_theta[i_site]], [y], marker="D", ms=4.5, mfc="none",
                        mec=_BAYES_COLOUR, mew=1.1, zorder=4, linestyle="none")
        elif row.kind == "summary":
            r_lo, r_est, r_hi = row.bounds()
            ax.add_patch(Polygon([(r_lo, y), (r_est, y + 0.38), (r_hi, y),
                                  (r_est, y - 0.38)], closed=True, color=row.colour,
                                 zorder=3))
        elif row.kind == "pi":
            r_lo, _, r_hi = row.bounds()
            a, b = max(r_lo, lo), min(r_hi, hi)
            ax.plot([a, b], [y, y], color=row.colour, lw=1.2, ls=(0, (3, 2)), zorder=2)
            ax.plot([a, b], [y, y], marker="|", ms=7, color=row.colour, linestyle="none")
        elif row.kind == "header":
            ax.axhline(y - 0.5, color="#c8ccd2", lw=0.6)
    if data.estimate is not None:
        ax.axvline(data.estimate, color=_RE_COLOUR, lw=0.6, ls=":", zorder=1)
    # ---- title and footer ------------------------------------------------------------------
    if lay.title:
        fig.text(_PAD_IN / width, 1 - _PAD_IN / height, lay.title, fontsize=_FONT + 2,
                 fontweight="bold", va="top", ha="left", gid="title", parse_math=False)
    for n_foot, (y_in, line, colour) in enumerate(lay.footer_lines(), start=1):
        fig.text(_PAD_IN / width, y_in / height, line, fontsize=_SMALL, va="bottom",
                 ha="left", color=colour,
                 gid=f"footer-{n_foot}" if n_foot <= len(lay.footer) else f"legend-{n_foot}",
                 parse_math=False)
    return fig


def _n(value: float) -> str:
    """A coordinate in points for SVG: one decimal, no trailing ``.0``."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


_SVG_STYLE = (
    "svg.fp text{font-family:'DejaVu Sans','Bitstream Vera Sans',Verdana,sans-serif;"
    "font-size:9px;fill:#000}svg.fp .b{font-weight:bold}svg.fp .e{text-anchor:end}"
    "svg.fp .m{text-anchor:middle}svg.fp .s{font-size:8px}svg.fp .t{font-size:11px;"
    "font-weight:bold}svg.fp .g{fill:" + _GROUP_COLOUR + "}svg.fp .d{fill:" + _DRIVER_COLOUR
    + ";font-weight:bold}")


def forest_svg(result: Any, *, measure: str | None = None, title: str | None = None,
               subgroups: Any = None, blup: Any = None, bayes: Any = None,
               show_fixed: bool = False, scale: str | None = None,
               null_value: Any = _AUTO, drivers: Sequence[str] | None = None,
               estimand: str | None = None) -> str:
    """The forest plot of :func:`forest_plot` as compact SVG text, drawn without matplotlib.

    Same arguments, rows, columns, axis, ticks, markers and colours as :func:`forest_plot`
    (both draw one layout); the SVG is written directly: labels as real ``<text>`` (the
    page stays searchable), all intervals of a kind as one ``<path>``, no clip paths and no
    ids, so several plots can share one page. A 300-site plot takes milliseconds and
    ~60 kB, where matplotlib's SVG backend takes seconds and ~500 kB (issue 17: the
    HTML report of a 300-site x 200-analysis round). Text is positioned from the font's
    advance widths (DejaVu Sans, matplotlib's default); a viewer without that font falls
    back to Verdana or another sans-serif of similar width.

    Examples
    --------
    >>> from fedsynth.meta import meta_analysis
    >>> res = meta_analysis([0.2, 0.5, 0.1], [0.04, 0.05, 0.03], labels=["A", "B", "C"])
    >>> svg = forest_svg(res, measure="MD", title="three sites")
    >>> svg.startswith("<svg") and ">B</text>" in svg
    True

    Returns
    -------
    str
        One ``<svg>`` element (namespace declared, sized in points, ``class="fp"``).

    Raises
    ------
    InputError
        As :func:`forest_plot`.
    """
    lay = _forest_layout(result, measure=measure, title=title, subgroups=subgroups,
                         blup=blup, bayes=bayes, show_fixed=show_fixed, scale=scale,
                         null_value=null_value, drivers=drivers, estimand=estimand)
    return _forest_svg_text(lay)


def _forest_svg_text(lay: _ForestLayout) -> str:
    """Write a laid-out forest plot as SVG (units: points, origin top left)."""
    pt = 72.0
    data, rows = lay.data, lay.rows
    lo, hi = lay.lo, lay.hi
    w_pt, h_pt = lay.width * pt, lay.height * pt
    ax_x0, ax_x1 = lay.x_plot * pt, (lay.x_plot + _PLOT_IN) * pt
    ax_y0 = lay.top * pt
    ax_y1 = (lay.top + len(rows) * _ROW_IN) * pt
    row_pt = _ROW_IN * pt

    def x_of(value: float) -> float:
        return ax_x0 + (value - lo) / (hi - lo) * (ax_x1 - ax_x0)

    def y_of(i: float) -> float:
        # centre of row i (0 = the header) to the point: a row's marks and text share it,
        # and whole numbers keep a 300-row plot a sixth smaller (issue 17)
        return float(round(ax_y0 + (i + 0.5) * row_pt))

    def text(x: float | None, y: float, body: str, cls: str = "",
             fill: str | None = None) -> str:
        attrs = "" if x is None else f' x="{_n(x)}"'     # None: the column's group sets x
        attrs += f' y="{round(y)}"'             # a baseline to the point is exact enough
        if cls:
            attrs += f' class="{cls}"'
        if fill:
            attrs += f' style="fill:{fill}"'
        return f"<text{attrs}>{_xml(body)}</text>"

    base9 = 0.33 * _FONT                     # baseline below a row's centre
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="fp" width="{_n(w_pt)}pt" '
           f'height="{_n(h_pt)}pt" viewBox="0 0 {_n(w_pt)} {_n(h_pt)}" role="img">',
           f"<style>{_SVG_STYLE}</style>",
           f'<rect width="{_n(w_pt)}" height="{_n(h_pt)}" fill="#fff"/>']
    if lay.null is not None and lo <= lay.null <= hi:
        x = x_of(lay.null)
        out.append(f'<path d="M{_n(x)} {_n(ax_y0)}V{_n(ax_y1)}" stroke="#9aa0a6" '
                   'stroke-width="0.8"/>')
    if data.estimate is not None and lo <= data.estimate <= hi:
        x = x_of(data.estimate)
        out.append(f'<path d="M{_n(x)} {_n(ax_y0)}V{_n(ax_y1)}" stroke="{_RE_COLOUR}" '
                   'stroke-width="0.6" stroke-dasharray="0.6 0.99"/>')
    ci, arrows, pis, pi_ticks, blup_pi = [], [], [], [], []
    squares: dict[str, list[str]] = {}
    fitted, circles, bayes_d = [], [], []
    # the three text columns, each a group that sets x once (a third of the bytes of a
    # 300-row plot were repeated x attributes)
    labels_out, rights, weights = [], [], []
    for i, row in enumerate(rows):
        y = y_of(i)
        weight_cls = "b" if row.bold else ""
        if row.label:
            drives = lay.drives(row)
            cls = "d" if drives else ("g b" if row.kind == "group" else weight_cls)
            labels_out.append(text(None, y + base9,
                                   ("\u25b2 " if drives else "") + row.label, cls))
        if row.right:
            rights.append(text(None, y + base9, row.right, weight_cls))
        if row.weight:
            weights.append(text(None, y + base9, row.weight, weight_cls))
        if row.kind == "site":
            s = row.site
            r_lo, r_est, r_hi = row.bounds()
            a, b = x_of(max(r_lo, lo)), x_of(min(r_hi, hi))
            ci.append(f"M{_n(a)} {_n(y)}H{_n(b)}")
            if r_lo < lo:
                arrows.append(f"M{_n(a - 2)} {_n(y)}l4 -2v4z")
            if r_hi > hi:
                arrows.append(f"M{_n(b + 2)} {_n(y)}l-4 -2v4z")
            # a square of side s: a stroke s wide and s long; one path per side length
            side = _n(lay.marker_size(s))
            squares.setdefault(side, []).append(
                f"M{_n(x_of(r_est) - float(side) / 2)} {_n(y)}h{side}")
            if lay.fitted is not None:
                xf = x_of(float(lay.fitted[s]))
                fitted.append(f"M{_n(xf)} {_n(y - 3.5)}l3.5 3.5l-3.5 3.5l-3.5 -3.5z")
            if lay.blup_pred is not None:
                xb = x_of(float(lay.blup_pred[s]))
                circles.append(f"M{_n(xb - 3.5)} {_n(y)}a3.5 3.5 0 1 0 7 0"
                               "a3.5 3.5 0 1 0 -7 0")
            if lay.blup_lo is not None and lay.blup_hi is not None:
                yb = y + round(0.3 * row_pt)
                a2 = x_of(max(float(lay.blup_lo[s]), lo))
                b2 = x_of(min(float(lay.blup_hi[s]), hi))
                blup_pi.append(f"M{_n(a2)} {_n(yb)}H{_n(b2)}")
            if lay.bayes_theta is not None:
                xt = x_of(float(lay.bayes_theta[s]))
                bayes_d.append(f"M{_n(xt)} {_n(y - 3.2)}l3.2 3.2l-3.2 3.2l-3.2 -3.2z")
        elif row.kind == "summary":
            r_lo, r_est, r_hi = row.bounds()
            dy = 0.38 * row_pt
            out.append(f'<path d="M{_n(x_of(r_lo))} {_n(y)}L{_n(x_of(r_est))} {_n(y - dy)}'
                       f'L{_n(x_of(r_hi))} {_n(y)}L{_n(x_of(r_est))} {_n(y + dy)}z" '
                       f'fill="{row.colour}"/>')
        elif row.kind == "pi":
            r_lo, _, r_hi = row.bounds()
            a, b = x_of(max(r_lo, lo)), x_of(min(r_hi, hi))
            pis.append((row.colour, f"M{_n(a)} {_n(y)}H{_n(b)}"))
            pi_ticks.append((row.colour, f"M{_n(a)} {_n(y - 3.5)}v7M{_n(b)} {_n(y - 3.5)}v7"))
        elif row.kind == "header":
            yh = y + row_pt / 2
            out.append(f'<path d="M{_n(ax_x0)} {_n(yh)}H{_n(ax_x1)}" stroke="#c8ccd2" '
                       'stroke-width="0.6"/>')
    if ci:
        out.append(f'<path d="{"".join(ci)}" stroke="{_SITE_COLOUR}" stroke-width="0.9"/>')
    if blup_pi:
        out.append(f'<path d="{"".join(blup_pi)}" stroke="{_BLUP_COLOUR}" '
                   'stroke-width="0.9"/>')
    for colour, d in pis:
        out.append(f'<path d="{d}" stroke="{colour}" stroke-width="1.2" '
                   'stroke-dasharray="3.6 2.4"/>')
    for colour, d in pi_ticks:
        out.append(f'<path d="{d}" stroke="{colour}" stroke-width="1"/>')
    if arrows:
        out.append(f'<path d="{"".join(arrows)}" fill="{_SITE_COLOUR}"/>')
    for side, strokes in squares.items():
        out.append(f'<path d="{"".join(strokes)}" stroke="{_SITE_COLOUR}" '
                   f'stroke-width="{side}"/>')
    if fitted:
        out.append(f'<path d="{"".join(fitted)}" fill="{_FE_COLOUR}"/>')
    if circles:
        out.append(f'<path d="{"".join(circles)}" fill="none" stroke="{_BLUP_COLOUR}" '
                   'stroke-width="1.1"/>')
    if bayes_d:
        out.append(f'<path d="{"".join(bayes_d)}" fill="none" stroke="{_BAYES_COLOUR}" '
                   'stroke-width="1.1"/>')
    # ---- x axis: spine, ticks, labels -----------------------------------------------------
    ticks = "".join(f"M{_n(x_of(t))} {_n(ax_y1)}v3" for t in lay.ticks)
    out.append(f'<path d="M{_n(ax_x0)} {_n(ax_y1)}H{_n(ax_x1)}{ticks}" stroke="#000" '
               'stroke-width="0.8"/>')
    tick_base = ax_y1 + 3 + 3.5 + 0.76 * _SMALL
    out.extend(text(x_of(t), tick_base, lab, "s m")
               for t, lab in zip(lay.ticks, lay.tick_labels))
    out.append(text((ax_x0 + ax_x1) / 2, tick_base + 0.24 * _SMALL + 4 + 0.76 * _SMALL,
                    lay.x_label, "s m"))
    for x_in, column, anchor in ((_PAD_IN, labels_out, ""), (lay.x_right, rights, ""),
                                 (lay.x_weight, weights, ' class="e"')):
        if column:
            out.append(f'<g transform="translate({_n(x_in * pt)} 0)"{anchor}>'
                       + "".join(column) + "</g>")
    if lay.title:
        out.append(text(_PAD_IN * pt, _PAD_IN * pt + 0.76 * (_FONT + 2), lay.title, "t"))
    for y_in, line, colour in lay.footer_lines():
        out.append(text(_PAD_IN * pt, h_pt - y_in * pt - 0.24 * _SMALL, line, "s",
                        None if colour == "#000000" else colour))
    out.append("</svg>")
    return "".join(out)


#: Characters XML 1.0 forbids (C0 controls but tab, newline, return; U+FFFE, U+FFFF).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml(text: str) -> str:
    """Text content for SVG/HTML: ``&``, ``<`` and ``>`` escaped, non-XML characters as U+FFFD.

    A site name with a control character would otherwise make the SVG ill-formed.
    """
    text = _NOT_XML.sub("\ufffd", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ----------------------------------------------------------------------------------------------
# Funnel plot
# ----------------------------------------------------------------------------------------------


def _filled_arrays(filled: Any) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Trim-and-fill studies as ``(yi, vi)`` arrays.

    Trim-and-fill studies from a PublicationBiasResult, a mapping/object with
    ``yi``/``vi`` (or ``filled_yi``/``filled_vi``), or ``(yi, vi)`` arrays.
    """
    est = None
    for ykey, vkey in (("trimfill_filled_yi", "trimfill_filled_vi"), ("filled_yi", "filled_vi"),
                       ("yi", "vi")):
        fy, fv = _get(filled, ykey), _get(filled, vkey)
        if fy is not None and fv is not None:
            est = _num(_get(filled, "trimfill_estimate", _get(filled, "estimate")))
            break
    else:
        if isinstance(filled, (list, tuple)) and len(filled) == 2:
            fy, fv = filled
        else:
            raise InputError("filled: expected a trim-and-fill result, a mapping with yi and vi, "
                             "or two arrays (yi, vi)")
    try:
        y = np.asarray(fy, dtype=float).ravel()
        v = np.asarray(fv, dtype=float).ravel()
    except (TypeError, ValueError):
        raise InputError("filled: yi and vi must be numbers") from None
    if y.shape != v.shape:
        raise InputError(f"filled: {y.size} estimates but {v.size} variances")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(v)) and np.all(v > 0)):
        raise InputError("filled: estimates must be finite and variances > 0")
    return y, v, est


def funnel_plot(result: Any, *, filled: Any = None, measure: str | None = None,
                title: str | None = None, levels: Sequence[float] = (90.0, 95.0, 99.0),
                centre: str = "estimate"):
    """Funnel plot: site estimates against their standard errors (reversed axis).

    Parameters
    ----------
    result
        A pooling result (or mapping) with ``yi``, ``vi`` and ``estimate``; an
        :class:`~fedsynth.meta.analysis.AnalysisResult` (its trim-and-fill sites are
        drawn); a :class:`~fedsynth.meta.metareg.MetaRegressionResult` (the residuals
        against their standard errors, centred at 0, as metafor's ``funnel`` of a model
        with moderators); or a batch of one analysis.
    filled
        Studies added by trim-and-fill, drawn as open circles: the diagnostics'
        ``PublicationBiasResult`` (its ``trimfill_filled_yi/vi`` and adjusted estimate), a
        mapping or object with ``yi`` and ``vi``, or a pair of arrays ``(yi, vi)``.
    measure
        Ratio measures (OR, RR, HR, IRR, ROM) get back-transformed tick labels.
    title
        Title above the plot.
    levels
        Pseudo-confidence levels (percent) of the shaded regions, outermost lightest.
    centre
        ``"estimate"``: pseudo-confidence funnel around the pooled estimate (Sterne & Egger
        2001). ``"null"``: contour-enhanced funnel around 0 (Peters et al. 2008), where sites
        in the white area are not significant at the largest level.

    Returns
    -------
    matplotlib.figure.Figure
    """
    # lazy: matplotlib (~1 s) is imported only when a figure is drawn
    from matplotlib.artist import Artist
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if isinstance(result, BatchPoolingResult):
        result = _single(result)
    if isinstance(result, AnalysisResult):
        pb = result.publication_bias
        if filled is None and pb is not None and pb.trimfill_k0 > 0:
            filled = pb
        result = result.pooling
    elif isinstance(result, MetaRegressionResult):
        if result.residuals is None:
            raise InputError("result: this meta-regression carries no site data to plot")
        result = {"yi": result.residuals, "vi": result.vi, "labels": result.labels,
                  "estimate": 0.0, "method": result.method, "level": result.level}
        measure = measure or "Residual value"
    data = _pooled(result)
    meas = _measure(measure, result)
    ratio = _is_ratio(meas)
    if centre not in ("estimate", "null"):
        raise InputError(f"centre: expected 'estimate' or 'null', got {centre!r}")
    levs = sorted(float(x) for x in levels)
    if not levs or any(not (0 < x < 100) for x in levs):
        raise InputError(f"levels: percentages strictly between 0 and 100, got {list(levels)!r}")
    if centre == "estimate" and data.estimate is None:
        raise InputError("result: no pooled estimate to centre the funnel on")
    c = data.estimate if centre == "estimate" and data.estimate is not None else 0.0
    se = np.sqrt(data.vi)
    fy = fv = None
    adjusted = None
    if filled is not None:
        fy, fv, adjusted = _filled_arrays(filled)
    all_se = se if fv is None else np.concatenate([se, np.sqrt(fv)])
    se_max = float(all_se.max()) * 1.08
    fig = _new_figure(5.6, 4.6)
    ax = fig.add_axes((0.13, 0.25, 0.82, 0.66) if title else (0.13, 0.25, 0.82, 0.7))
    se_grid = np.array([0.0, se_max])
    greys = ["#f1f3f5", "#dde1e6", "#c3c9d1", "#aab2bd"]
    handles: list[Artist] = []
    for j, lev in enumerate(reversed(levs)):                  # widest first
        zq = float(stats.norm.ppf(0.5 + lev / 200.0))
        colour = greys[min(j, len(greys) - 1)] if centre == "null" else greys[j % len(greys)]
        ax.fill_betweenx(se_grid, c - zq * se_grid, c + zq * se_grid, color=colour, lw=0,
                         zorder=0)
        ax.plot(c - zq * se_grid, se_grid, color="#8a929c", lw=0.6, ls="--", zorder=1)
        ax.plot(c + zq * se_grid, se_grid, color="#8a929c", lw=0.6, ls="--", zorder=1)
        if centre == "estimate":
            text = f"{lev:g}% pseudo-CI"
        else:   # the visible band between this contour and the next narrower one
            inner = levs[len(levs) - 2 - j] if j < len(levs) - 1 else None
            p_out = (100 - lev) / 100
            text = (f"{p_out:g} < p < {(100 - inner) / 100:g}" if inner is not None
                    else f"p > {p_out:g}")
        handles.append(Patch(color=colour, label=text))
    ax.axvline(c, color=_RE_COLOUR if centre == "estimate" else "#555555", lw=0.9, zorder=1)
    if centre == "null" and data.estimate is not None:
        ax.axvline(data.estimate, color=_RE_COLOUR, lw=0.9, ls=":", zorder=1)
        handles.append(Line2D([], [], color=_RE_COLOUR, ls=":", label="pooled estimate"))
    ax.plot(data.yi, se, "o", ms=5, color=_SITE_COLOUR, zorder=3, label="sites")
    handles.append(Line2D([], [], marker="o", ls="none", color=_SITE_COLOUR, label="sites"))
    if fy is not None and fv is not None and fy.size:
        ax.plot(fy, np.sqrt(fv), "o", ms=5, mfc="white", mec=_SITE_COLOUR, mew=1.0, zorder=3)
        handles.append(Line2D([], [], marker="o", ls="none", mfc="white", mec=_SITE_COLOUR,
                              label=f"filled by trim-and-fill ({fy.size})"))
        if adjusted is not None:
            ax.axvline(adjusted, color=_BLUP_COLOUR, lw=0.9, ls="--", zorder=1)
            handles.append(Line2D([], [], color=_BLUP_COLOUR, ls="--",
                                  label="adjusted estimate"))
    ax.set_ylim(se_max, 0.0)
    widest = float(stats.norm.ppf(0.5 + levs[-1] / 200.0)) * se_max
    xs = np.concatenate([data.yi, fy if fy is not None else [], [c - widest, c + widest]])
    span = float(xs.max() - xs.min()) or 1.0
    ax.set_xlim(float(xs.min()) - 0.04 * span, float(xs.max()) + 0.04 * span)
    if ratio:
        ticks, labels = _ratio_ticks(*ax.get_xlim())
        ax.set_xticks(ticks, labels)
    ax.set_xlabel(f"{meas} (log scale)" if ratio else (meas or "Estimate"), fontsize=_FONT,
                  parse_math=False)
    ax.set_ylabel("Standard error", fontsize=_FONT)
    ax.tick_params(labelsize=_SMALL)
    _fit_ticks(fig, ax, 0.0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=_FONT + 2, fontweight="bold", loc="left", parse_math=False)
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=_SMALL, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    return fig


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------

_FORMATS = {"png", "svg", "pdf"}


def save_figure(fig: Any, path_or_file: str | os.PathLike[str] | io.IOBase,
                format: str | None = None) -> None:  # noqa: A002 (matplotlib's name)
    """Write a figure as PNG, SVG or PDF.

    Parameters
    ----------
    fig
        A figure from :func:`forest_plot` or :func:`funnel_plot`.
    path_or_file
        A path (the format follows its suffix unless ``format`` is given) or a binary file
        object (``format`` defaults to PNG).
    format
        ``"png"``, ``"svg"`` or ``"pdf"``.

    Notes
    -----
    Output is reproducible: SVG element ids come from a fixed salt and PDF/SVG carry no
    creation date, so the same figure gives the same bytes (useful in reports and tests).
    """
    # lazy: matplotlib (~1 s) is imported only when a figure is drawn
    import matplotlib

    path = os.fspath(path_or_file) if isinstance(path_or_file, (str, os.PathLike)) else None
    fmt = format
    if fmt is None:
        if path is not None:
            fmt = os.path.splitext(path)[1].lstrip(".")
        else:
            fmt = "png"
    fmt = str(fmt).lower()
    if fmt not in _FORMATS:
        where = f" of {path!r}" if path is not None else ""
        raise InputError(f"format: expected png, svg or pdf, got {fmt!r}{where}")
    if path is not None:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise InputError(f"output: directory {parent!r} does not exist")
    metadata = {"Date": None} if fmt == "svg" else ({"CreationDate": None} if fmt == "pdf"
                                                    else None)
    with matplotlib.rc_context({"svg.hashsalt": "fedsynth", "svg.fonttype": "path"}):
        fig.savefig(path_or_file, format=fmt, dpi=150, metadata=metadata,
                    facecolor="white")


# ----------------------------------------------------------------------------------------------
# Radial, QQ, Baujat, GOSH, L'Abbé and bubble plots (issue 16; metafor's radial, qqnorm,
# baujat, gosh, labbe and regplot)
# ----------------------------------------------------------------------------------------------


def _model_inputs(result: Any) -> _Pooled:
    if isinstance(result, BatchPoolingResult):
        result = _single(result)
    if isinstance(result, AnalysisResult):
        result = result.pooling
    return _pooled(result)


def _finish(fig: Any, ax: Any, title: str | None, xlabel: str, ylabel: str) -> Any:
    ax.set_xlabel(xlabel, fontsize=_FONT)
    ax.set_ylabel(ylabel, fontsize=_FONT)
    ax.tick_params(labelsize=_SMALL)
    if title:
        ax.set_title(title, fontsize=_FONT + 1)
    return fig


def radial_plot(result: Any, *, title: str | None = None) -> Any:
    """Radial (Galbraith) plot (metafor ``radial``).

    Each study is drawn at ``x = 1/sqrt(vi + tau²)`` (precision), ``y = yi/sqrt(vi + tau²)``
    (standardized effect); the pooled estimate is the slope of the line through the origin
    and the band ``±1.96`` around it marks where studies are consistent with it (Galbraith
    1988, *Stat Med* 7:889). tau² is 0 for a fixed-effect fit.

    Parameters
    ----------
    result
        A pooling result (or mapping with ``yi``, ``vi``, ``estimate``, ``tau2``).
    title
        Title above the plot.

    Returns
    -------
    matplotlib.figure.Figure
    """
    data = _model_inputs(result)
    if data.estimate is None:
        raise InputError("result: no pooled estimate for the radial line")
    tau2 = data.tau2 or 0.0
    x = 1 / np.sqrt(data.vi + tau2)
    z = data.yi / np.sqrt(data.vi + tau2)
    fig = _new_figure(5.6, 4.6)
    ax = fig.add_axes((0.13, 0.13, 0.82, 0.75 if title else 0.8))
    xs = np.array([0.0, float(x.max()) * 1.15])
    zq = float(stats.norm.isf((100 - data.level) / 200))
    ax.fill_between(xs, data.estimate * xs - zq, data.estimate * xs + zq, color="#e6e9ee",
                    lw=0, zorder=0, label=f"±{zq:.2f}")
    ax.plot(xs, data.estimate * xs, color=_RE_COLOUR, lw=1.0, label="pooled estimate")
    ax.axhline(0, color="#8a929c", lw=0.6, ls="--")
    ax.plot(x, z, "o", ms=5, color=_SITE_COLOUR, gid="points", label="studies")
    ax.set_xlim(0, xs[1])
    ax.legend(fontsize=_SMALL, loc="best", frameon=False)
    return _finish(fig, ax, title, "x_i = 1/√(v_i + τ²)", "z_i = y_i/√(v_i + τ²)")


@dataclass(frozen=True)
class QQEnvelope:
    """The pseudo-confidence envelope of a normal QQ plot (metafor ``qqnorm.rma.uni``).

    Attributes
    ----------
    x
        Theoretical normal quantiles (``qnorm(ppoints(k))``).
    lower, upper
        The envelope's lower and upper lines at ``x``.
    level, reps, seed, bonferroni, smooth
        Confidence level (percent), simulated data sets, the seed of R's generator,
        whether the quantiles were Bonferroni-corrected and the lines smoothed.
    """

    x: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    level: float
    reps: int
    seed: int
    bonferroni: bool
    smooth: bool


def r_rnorm(n: int, seed: int) -> np.ndarray:
    """``set.seed(seed); rnorm(n)`` of R (Mersenne-Twister, inversion), bit for bit.

    R seeds its Mersenne Twister by scrambling the seed with the LCG ``69069 s + 1`` (50
    times, then once per state word), draws uniforms as 32-bit integers times 2^-32, and
    turns two of them into a normal by inversion (``BIG = 2^27``; R's ``norm_rand``). numpy's
    MT19937 is the same generator, so the state can be set and the raw draws reused: the
    envelope of :func:`qq_envelope` is then metafor's for the same ``seed``.
    """
    state = int(seed) & 0xFFFFFFFF
    for _ in range(50):
        state = (69069 * state + 1) & 0xFFFFFFFF
    words = []
    for _ in range(625):
        state = (69069 * state + 1) & 0xFFFFFFFF
        words.append(state)
    bits = np.random.MT19937()
    bits.state = {"bit_generator": "MT19937",
                  "state": {"key": np.array(words[1:], dtype=np.uint32), "pos": 624}}
    u = bits.random_raw(2 * int(n)).astype(np.float64) * 2.3283064365386963e-10
    tiny = 0.5 * 2.328306437080797e-10          # R's fixup of 0 and 1
    u = np.where(u <= 0, tiny, np.where(1 - u <= 0, 1 - tiny, u))
    big = 134217728.0
    return special.ndtri((np.floor(big * u[0::2]) + u[1::2]) / big)


#: The super smoother's spans and constants as Friedman's program stores them (single
#: precision literals widened to double: 0.05 is 0.05000000074505806), so that the running
#: windows and the span interpolation are R's ``supsmu`` to the last bit.
_SPANS = tuple(float(v) for v in np.array([0.05, 0.2, 0.5], dtype=np.float32))
_SUPSMU_BIG = float(np.float32(1.0e20))
_SUPSMU_SML = float(np.float32(1.0e-7))
_SUPSMU_EPS = float(np.float32(1.0e-3))


def _running_lines(x: np.ndarray, y: np.ndarray, span: float, vsmlsq: float,
                   cv: bool) -> tuple[np.ndarray, np.ndarray]:
    """Running-lines smoother of span ``span`` (unit weights), with its CV residuals.

    A local least-squares line over the ``2 ibw + 1`` nearest neighbours in order
    (``ibw = span n / 2``, at least 2), updated as the window slides (Friedman 1984, "A
    variable span smoother", Tech. Rep. 5, Stanford). With ``cv`` the absolute
    leave-one-out residuals ``|y - s| / (1 - h)`` are returned as well. Values at tied
    ``x`` are averaged.
    """
    n = x.size
    ibw = max(int(0.5 * span * n + 0.5), 2)
    xm = ym = var = cvar = fbw = 0.0

    def add(xi: float, yi: float) -> None:
        nonlocal xm, ym, var, cvar, fbw
        fbo = fbw
        fbw = fbw + 1.0
        xm = (fbo * xm + xi) / fbw
        ym = (fbo * ym + yi) / fbw
        tmp = fbw * (xi - xm) / fbo if fbo > 0 else 0.0
        var += tmp * (xi - xm)
        cvar += tmp * (yi - ym)

    for j in range(min(2 * ibw + 1, n)):
        add(float(x[j]), float(y[j]))
    smo = np.empty(n)
    acvr = np.zeros(n)
    for j in range(n):
        out, into = j - ibw - 1, j + ibw
        if out >= 0 and into < n:
            xo, yo = float(x[out]), float(y[out])
            fbo = fbw
            fbw = fbw - 1.0
            tmp = fbo * (xo - xm) / fbw if fbw > 0 else 0.0
            var -= tmp * (xo - xm)
            cvar -= tmp * (yo - ym)
            if fbw > 0:
                xm = (fbo * xm - xo) / fbw
                ym = (fbo * ym - yo) / fbw
            add(float(x[into]), float(y[into]))
        slope = cvar / var if var > vsmlsq else 0.0
        smo[j] = slope * (x[j] - xm) + ym
        if cv:
            h = (1.0 / fbw if fbw > 0 else 0.0) + ((x[j] - xm) ** 2 / var
                                                   if var > vsmlsq else 0.0)
            if 1.0 - h > 0:
                acvr[j] = abs(y[j] - smo[j]) / (1.0 - h)
            elif j > 0:
                acvr[j] = acvr[j - 1]
    start = 0
    while start < n:                     # average over tied x
        end = start
        while end + 1 < n and x[end + 1] <= x[end]:
            end += 1
        if end > start:
            smo[start:end + 1] = smo[start:end + 1].mean()
        start = end + 1
    return smo, acvr


def supsmu(x: Any, y: Any, bass: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Friedman's super smoother with cross-validated span, as R's ``supsmu(x, y, bass=)``.

    Three running-lines smooths (spans 0.05, 0.2, 0.5 of the data) and their
    cross-validated absolute residuals (smoothed with span 0.2) choose a span at every
    point; the chosen spans are smoothed, the fits interpolated between the two nearest
    spans, and the result smoothed with span 0.05 (Friedman 1984, "A variable span
    smoother", Tech. Rep. 5, Laboratory for Computational Statistics, Stanford).
    ``bass`` in (0, 10] favours larger spans. metafor smooths the QQ envelope with it.

    Returns
    -------
    x, y : numpy.ndarray
        The distinct ``x`` in increasing order and the smoothed values there.
    """
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    order = np.lexsort((ys, xs))
    xs, ys = xs[order], ys[order]
    n = xs.size
    if n == 0:
        raise InputError("supsmu: no observations")
    if not xs[-1] > xs[0]:
        smo = np.full(n, ys.mean())
    else:
        i, j = max(n // 4, 1), max(3 * (n // 4), 1)
        scale = xs[j - 1] - xs[i - 1]
        while scale <= 0:
            j, i = min(j + 1, n), max(i - 1, 1)
            scale = xs[j - 1] - xs[i - 1]
        vsmlsq = (_SUPSMU_EPS * scale) ** 2
        fits, resid = [], []
        for span in _SPANS:
            fit, cvres = _running_lines(xs, ys, span, vsmlsq, cv=True)
            fits.append(fit)
            resid.append(_running_lines(xs, cvres, _SPANS[1], vsmlsq, cv=False)[0])
        res = np.stack(resid)
        best = np.array(_SPANS)[np.argmin(res, axis=0)]   # first minimum, as the program
        resmin = res.min(axis=0)
        if 0 < bass <= 10:
            adjust = (resmin < res[2]) & (resmin > 0)
            ratio = np.maximum(_SUPSMU_SML, np.divide(resmin, res[2], out=np.ones(n),
                                                      where=res[2] != 0))
            best = np.where(adjust, best + (_SPANS[2] - best) * ratio ** (10 - bass), best)
        span_s = np.clip(_running_lines(xs, best, _SPANS[1], vsmlsq, cv=False)[0],
                         _SPANS[0], _SPANS[2])
        f = span_s - _SPANS[1]
        low = -f / (_SPANS[1] - _SPANS[0])
        high = f / (_SPANS[2] - _SPANS[1])
        mixed = np.where(f < 0, (1 - low) * fits[1] + low * fits[0],
                         (1 - high) * fits[1] + high * fits[2])
        smo = _running_lines(xs, mixed, _SPANS[0], vsmlsq, cv=False)[0]
    keep = np.concatenate([[True], xs[1:] != xs[:-1]])
    return xs[keep], smo[keep]


def _ppoints(k: int) -> np.ndarray:
    a = 3 / 8 if k <= 10 else 1 / 2                     # R's ppoints
    return (np.arange(1, k + 1) - a) / (k + 1 - 2 * a)


def qq_envelope(result: Any, *, level: float | None = None, reps: int = 1000,
                seed: int = 1234, bonferroni: bool = False, smooth: bool = True,
                bass: float = 0.0) -> QQEnvelope:
    """Pseudo-confidence envelope of the QQ plot, as metafor's ``qqnorm.rma.uni``.

    ``reps`` standard normal vectors are multiplied by ``I - H`` (``H`` the hat matrix of
    the fit), sorted, and the ``α/2`` and ``1 - α/2`` quantiles of each order statistic
    give the envelope (Cook & Weisberg 1982; Wang & Bushman 1998, *Psychol Methods* 3:46).
    The normal draws are R's for ``set.seed(seed)`` (:func:`r_rnorm`) and the lines are
    smoothed by the super smoother (:func:`supsmu`, metafor's default ``smooth = TRUE``),
    so the envelope is metafor's ``qqnorm(res, envelope = TRUE, seed = seed)`` to rounding.

    Parameters
    ----------
    result
        A pooled result or a meta-regression result (with ``yi``, ``vi``, ``tau2``).
    level
        Confidence level in percent (default: the fit's).
    reps
        Simulated data sets.
    seed
        Seed of R's generator (metafor's ``seed``).
    bonferroni
        Bonferroni-corrected quantiles (``α / (2k)``).
    smooth, bass
        Smooth the lines with :func:`supsmu` (metafor's default) and its bass control.

    Returns
    -------
    QQEnvelope
    """
    if isinstance(result, MetaRegressionResult):
        if result.yi is None or result.vi is None or result.X is None:
            raise InputError("result: the meta-regression result carries no data")
        v = np.asarray(result.vi, dtype=float) + float(result.tau2)
        X = np.asarray(result.X, dtype=float)
        fit_level = float(result.level)
    else:
        data = _model_inputs(result)
        v = data.vi + (data.tau2 or 0.0)
        X = np.ones((data.yi.size, 1))
        fit_level = data.level
    if int(reps) < 2:
        raise InputError(f"reps: needs at least 2 simulated data sets, got {reps!r}")
    level = fit_level if level is None else (float(level) * 100 if level <= 1 else float(level))
    alpha = 1 - level / 100
    k = v.size
    w = 1 / v
    H = X @ np.linalg.solve(X.T @ (w[:, None] * X), (X * w[:, None]).T)
    draws = r_rnorm(k * int(reps), seed).reshape(int(reps), k).T      # R's column order
    ei = np.sort((np.eye(k) - H) @ draws, axis=0)
    q = alpha / 2 / (k if bonferroni else 1)
    lower = np.quantile(ei, q, axis=1)
    upper = np.quantile(ei, 1 - q, axis=1)
    x = stats.norm.ppf(_ppoints(k))
    if smooth:
        _, lower = supsmu(x, lower, bass=bass)
        _, upper = supsmu(x, upper, bass=bass)
    return QQEnvelope(x=x, lower=lower, upper=upper, level=level, reps=int(reps),
                      seed=int(seed), bonferroni=bool(bonferroni), smooth=bool(smooth))


def qqnorm_plot(result: Any, *, title: str | None = None, envelope: bool = True,
                level: float | None = None, reps: int = 1000, seed: int = 1234,
                bonferroni: bool = False, smooth: bool = True) -> Any:
    """Normal QQ plot of the standardized residuals (metafor ``qqnorm.rma.uni``).

    The residuals ``(yi - estimate) / sqrt(vi + tau² - var(estimate))`` (metafor's
    ``rstandard``) against the normal quantiles ``qnorm(ppoints(k))``, with the identity
    line (Wang & Bushman 1998, *Psychol Methods* 3:46) and, as metafor's default, the
    seeded pseudo-confidence envelope of :func:`qq_envelope` (dotted).

    Parameters
    ----------
    result
        A pooling result with ``yi``, ``vi``, ``estimate``, ``se`` and ``tau2``.
    title
        Title above the plot.
    envelope
        Draw the envelope (metafor's default ``envelope = TRUE``).
    level, reps, seed, bonferroni, smooth
        Passed to :func:`qq_envelope`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    data = _model_inputs(result)
    se = _num(_get(result.pooling if isinstance(result, AnalysisResult) else result, "se"))
    if data.estimate is None or se is None:
        raise InputError("result: needs the pooled estimate and its standard error")
    z = (data.yi - data.estimate) / np.sqrt(data.vi + (data.tau2 or 0.0) - se**2)
    k = z.size
    theo = stats.norm.ppf(_ppoints(k))
    order = np.argsort(z, kind="stable")
    fig = _new_figure(5.0, 4.6)
    ax = fig.add_axes((0.14, 0.13, 0.8, 0.75 if title else 0.8))
    lim = float(max(np.abs(theo).max(), np.abs(z).max())) * 1.1
    if envelope:
        env = qq_envelope(result, level=level, reps=reps, seed=seed, bonferroni=bonferroni,
                          smooth=smooth)
        lim = max(lim, float(np.abs(env.lower).max()) * 1.05,
                  float(np.abs(env.upper).max()) * 1.05)
        ax.plot(env.x, env.lower, color="#8a929c", lw=0.9, ls=":", gid="envelope_lower")
        ax.plot(env.x, env.upper, color="#8a929c", lw=0.9, ls=":", gid="envelope_upper")
    ax.plot([-lim, lim], [-lim, lim], color="#8a929c", lw=0.8, ls="--")
    ax.plot(theo, z[order], "o", ms=5, color=_SITE_COLOUR, gid="points")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    return _finish(fig, ax, title, "Theoretical quantiles", "Sample quantiles (standardized)")


def baujat_plot(result: Any, *, title: str | None = None, label_top: int = 3) -> Any:
    """Baujat plot (metafor ``baujat``): contribution to heterogeneity vs influence.

    ``x_i = (yi - estimate)² / (vi + tau²)`` is the study's contribution to Q and
    ``y_i = (estimate_(-i) - estimate)² / var(estimate_(-i))`` its influence on the pooled
    result (Baujat et al. 2002, *Stat Med* 21:2641). The ``label_top`` studies furthest
    out are labelled.

    Parameters
    ----------
    result
        A pooling result with ``yi``, ``vi``, ``estimate``, ``tau2`` and ``method``.
    title
        Title above the plot.
    label_top
        How many of the most outlying studies get their label.

    Returns
    -------
    matplotlib.figure.Figure
    """
    data = _model_inputs(result)
    if data.estimate is None:
        raise InputError("result: no pooled estimate")
    if data.yi.size < 2:
        raise InputError("result: the Baujat plot needs at least 2 studies")
    tau2 = data.tau2 or 0.0
    xh = (data.yi - data.estimate) ** 2 / (data.vi + tau2)
    method = data.method if data.method in METHODS else "REML"
    fits = deleted_fits(data.yi, data.vi, method=method)     # rows 0..k-1: deletions
    k = data.yi.size
    yh = (fits.estimate[:k] - data.estimate) ** 2 / fits.se[:k] ** 2
    fig = _new_figure(5.6, 4.6)
    ax = fig.add_axes((0.13, 0.13, 0.82, 0.75 if title else 0.8))
    ax.plot(xh, yh, "o", ms=5, color=_SITE_COLOUR, gid="points")
    top = np.argsort(-(xh / max(xh.max(), 1e-300) + yh / max(yh.max(), 1e-300)))
    mid = (xh.min() + xh.max()) / 2
    for j, i in enumerate(top[:max(0, int(label_top))]):
        # labels point inwards and are stacked, so they neither leave the figure nor
        # overlap each other
        right = xh[i] > mid
        ax.annotate(_short(data.labels[i]), (xh[i], yh[i]),
                    xytext=(-6 if right else 6, -14 * j - 4), textcoords="offset points",
                    ha="right" if right else "left", va="top", fontsize=_SMALL)
    ax.margins(0.15)
    return _finish(fig, ax, title, "Squared Pearson residual (contribution to Q)",
                   "Influence on the pooled result")


def gosh_plot(yi: Any, vi: Any, *, method: str = "FE", subsets: int = 1000,
              seed: int = 0, title: str | None = None) -> Any:
    """GOSH plot (metafor ``gosh``): pooled estimate and I² of subsets of the studies.

    All ``2^k - 1`` non-empty subsets when there are at most ``subsets`` of them, else
    ``subsets`` random ones drawn as metafor does (a size from the binomial(k, 1/2) law,
    then that many studies), reproducibly from ``seed`` (Olkin, Dahabreh & Trikalinos
    2012, *Res Synth Methods* 3:214). The subset fits are one vectorised batch.

    Parameters
    ----------
    yi, vi
        Effect sizes and sampling variances.
    method
        tau² estimator of the subset fits (metafor's default for gosh examples: ``FE``).
    subsets
        Maximum number of subsets (default 1000).
    seed
        Seed of the random subsets.
    title
        Title above the plot.

    Returns
    -------
    matplotlib.figure.Figure
        The points have gid ``"points"``; ``fig.gosh`` holds the subset fits (a
        :class:`fedsynth.meta.metareg.BatchFit`) and ``fig.gosh_incl`` the (m, k) mask.
    """
    y, v = validate_yi_vi(yi, vi, min_k=2)
    k = y.size
    n = int(subsets)
    if n < 2:
        raise InputError(f"subsets: must be >= 2, got {subsets!r}")
    total = 2.0 ** k - 1
    if total <= n:
        codes = np.arange(1, 2 ** k)
        incl = ((codes[:, None] >> np.arange(k)) & 1).astype(bool)
    else:
        rng = np.random.default_rng(seed)
        sizes = np.arange(1, k + 1)
        prob = stats.binom.pmf(sizes, k, 0.5)
        m = rng.choice(sizes, size=n, p=prob / prob.sum())
        keys = rng.random((n, k))
        ranks = np.argsort(np.argsort(keys, axis=1), axis=1)
        incl = ranks < m[:, None]
    fit = fit_batch(y, v, incl, method=method)
    fig = _new_figure(5.6, 4.6)
    ax = fig.add_axes((0.13, 0.13, 0.82, 0.75 if title else 0.8))
    ax.plot(fit.estimate, fit.I2, "o", ms=2.5, alpha=0.4, color=_SITE_COLOUR, gid="points")
    ax.set_ylim(-2, 102)
    fig.gosh = fit
    fig.gosh_incl = incl
    return _finish(fig, ax, title, "Pooled estimate of the subset", "I² (%)")


def labbe_plot(ai: Any, ci: Any, *, bi: Any = None, di: Any = None, n1i: Any = None,
               n2i: Any = None, measure: str = "OR", estimate: float | None = None,
               add: float = 0.5, to: str = "only0", title: str | None = None) -> Any:
    """L'Abbé plot (metafor ``labbe``): treatment-arm against control-arm outcomes.

    Each study's arm outcomes on the scale of ``measure`` (logit for ``OR``, log for
    ``RR``, raw proportion for ``RD``; metafor's PLO, PLN, PR with the same ``add``/``to``)
    with the line of no effect and, given the pooled ``estimate``, the line of the pooled
    effect (L'Abbé, Detsky & O'Rourke 1987, *Ann Intern Med* 107:224). Point areas are
    proportional to the precision.

    Parameters
    ----------
    ai, ci, bi, di, n1i, n2i
        The 2x2 tables (``bi, di`` or the group sizes ``n1i, n2i``).
    measure
        ``"OR"``, ``"RR"`` or ``"RD"``.
    estimate
        The pooled effect on that scale (drawn as ``y = x + estimate``).
    add, to
        Continuity correction of the arm outcomes.
    title
        Title above the plot.

    Returns
    -------
    matplotlib.figure.Figure
    """
    arm = {"OR": "PLO", "RR": "PLN", "RD": "PR"}.get(str(measure).upper())
    if arm is None:
        raise InputError(f"measure: the L'Abbé plot takes OR, RR or RD, got {measure!r}")
    a, c = np.asarray(ai, dtype=float), np.asarray(ci, dtype=float)
    if bi is not None and di is not None:
        b, d = np.asarray(bi, dtype=float), np.asarray(di, dtype=float)
    elif n1i is not None and n2i is not None:
        b, d = np.asarray(n1i, dtype=float) - a, np.asarray(n2i, dtype=float) - c
    else:
        raise InputError("bi, di: give the non-events (bi, di) or the group sizes (n1i, n2i)")
    t = escalc(arm, xi=a, mi=b, add=add, to=to, undefined="nan")
    cc = escalc(arm, xi=c, mi=d, add=add, to=to, undefined="nan")
    ok = np.isfinite(t.yi) & np.isfinite(cc.yi) & np.isfinite(t.vi) & np.isfinite(cc.vi)
    size = 1 / np.sqrt(t.vi[ok] + cc.vi[ok])
    fig = _new_figure(5.0, 4.8)
    ax = fig.add_axes((0.14, 0.13, 0.8, 0.75 if title else 0.8))
    ax.scatter(cc.yi[ok], t.yi[ok], s=20 + 180 * size / size.max(), facecolor="none",
               edgecolor=_SITE_COLOUR, gid="points")
    lo = float(min(cc.yi[ok].min(), t.yi[ok].min()))
    hi = float(max(cc.yi[ok].max(), t.yi[ok].max()))
    pad = 0.1 * (hi - lo or 1.0)
    xs = np.array([lo - pad, hi + pad])
    ax.plot(xs, xs, color="#8a929c", lw=0.8, ls="--", label="no effect")
    if estimate is not None:
        ax.plot(xs, xs + float(estimate), color=_RE_COLOUR, lw=1.0, label="pooled effect")
    ax.set_xlim(*xs)
    ax.legend(fontsize=_SMALL, loc="upper left", frameon=False)
    scale = {"PLO": "log odds", "PLN": "log risk", "PR": "risk"}[arm]
    return _finish(fig, ax, title, f"Control group ({scale})", f"Treatment group ({scale})")


def bubble_plot(result: Any, moderator: str | None = None, *,
                title: str | None = None) -> Any:
    """Bubble plot of a meta-regression on one moderator (metafor ``regplot``).

    The studies' effects against the moderator, point areas proportional to the model's
    weights, with the fitted line and its confidence band.

    Parameters
    ----------
    result
        A :class:`~fedsynth.meta.metareg.MetaRegressionResult` with one numeric moderator.
    moderator
        Its name (default: the only moderator).
    title
        Title above the plot.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(result, MetaRegressionResult):
        raise InputError("result: the bubble plot takes a meta-regression result")
    names = [n for n in result.names if n != "intrcpt"]
    if moderator is None:
        if len(names) != 1:
            raise InputError(f"moderator: name one of {', '.join(names)}")
        moderator = names[0]
    if moderator not in result.names or moderator == "intrcpt":
        raise InputError(f"moderator: {moderator!r} is not a moderator of this model")
    X = _get(result, "X")
    if X is None or result.yi is None:
        raise InputError("result: this meta-regression carries no study data to plot")
    X = np.asarray(X, dtype=float)
    j = list(result.names).index(moderator)
    if X.shape[1] != 2:
        raise InputError("result: the bubble plot needs a model with one moderator")
    xm = X[:, j]
    y = np.asarray(result.yi, dtype=float)
    w = 1 / (np.asarray(result.vi, dtype=float) + float(result.tau2))
    grid_x = np.linspace(xm.min(), xm.max(), 100)
    G = np.column_stack([np.ones_like(grid_x), grid_x])
    fitted = G @ result.coef
    vb = np.asarray(result.vb, dtype=float)
    se = np.sqrt(np.einsum("ij,jk,ik->i", G, vb, G))
    crit = float(stats.norm.isf((100 - result.level) / 200))
    fig = _new_figure(5.6, 4.6)
    ax = fig.add_axes((0.13, 0.13, 0.82, 0.75 if title else 0.8))
    ax.fill_between(grid_x, fitted - crit * se, fitted + crit * se, color="#e6e9ee", lw=0)
    ax.plot(grid_x, fitted, color=_RE_COLOUR, lw=1.0, gid="fit")
    ax.scatter(xm, y, s=20 + 280 * w / w.max(), facecolor="none", edgecolor=_SITE_COLOUR,
               gid="points")
    return _finish(fig, ax, title, moderator, "Observed outcome")


#: Plot kinds of ``fedsynth meta --plot KIND OUT`` (and their functions).
PLOT_KINDS = ("radial", "qqnorm", "baujat", "gosh", "labbe", "bubble")
