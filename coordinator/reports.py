"""Round reports (HTML + JSON) and trend reports across rounds.

Why
---
The central analytics team reads a federated round as a statistician reads a meta-analysis:
a forest plot per analysis, the pooled estimate with its confidence and prediction
intervals, the heterogeneity statistics (Q, tau², I² with their confidence intervals,
Higgins & Thompson, "Quantifying heterogeneity in a meta-analysis", Stat Med 21, 2002) with
the coordinator's flag and its reasons, and which sites took part or refused and why. This
module renders the *round document* (``docs/round-document.md``) into

* ``<round>.html``: one self-contained file (inline CSS and SVG, no script, no external
  resource; a Content-Security-Policy forbids both), readable offline and safe to mail;
* ``<round>.json``: the round document itself, strict JSON (non-finite numbers -> null);
* ``trend.html`` / ``trend.json``: every analysis's pooled estimate, CI, prediction
  interval and I² per round, plus each site's estimate per round, so that a drifting model
  or a site that starts to diverge is visible.

Site names, refusal reasons and spec names come from remote sites or operators and are
untrusted: every piece of text goes through :func:`html.escape`, file names are checked,
and embedded SVG is parsed and stripped of anything active (scripts, event handlers,
external references) before it is inlined.

Divergence of a site across rounds is judged by its *standardized deleted residual*
(Viechtbauer & Cheung, "Outlier and influence diagnostics for meta-analysis", Res Synth
Methods 1, 2010): the site's estimate compared with the random-effects estimate of the
*other* sites of that round, on the scale of the prediction for a new site,
``z_i = (y_i - mu_(-i)) / sqrt(v_i + tau2_(-i) + se(mu_(-i))^2)``. Leaving the site out
matters: a diverging site pulls the pooled estimate towards itself and inflates tau², so
comparing it with the all-sites fit hides exactly the site one wants to see. Between-site
variance of the leave-one-out fit is the DerSimonian-Laird moment estimator (DerSimonian &
Laird, Control Clin Trials 7, 1986), closed form and adequate for a screening statistic;
the pooled numbers shown in the reports are those the coordinator computed (REML by default).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.htmltext import escape_html as _esc
from coordinator.htmltext import format_number as _fmt
from coordinator.report_models import iecv_section
from fedsynth import __version__
from fedsynth.errors import InputError
from fedsynth.fileio import atomic_write, make_private_dirs
from fedsynth.jsonsafe import finite_or_none, strict_json
from fedsynth.meta.diagnostics import influence
from fedsynth.plots import forest_svg
from fedsynth.round_document import (
    AnalysisResult,
    HeterogeneityVerdict,
    PooledEstimate,
    RoundDocument,
)
from fedsynth.timeutil import utcnow
from fedsynth.vocabulary import AnalysisScale, from_scale

__all__ = [
    "PAGES_ABOVE_ANALYSES",
    "PAGES_ABOVE_ROWS",
    "RoundReportPaths",
    "analysis_page_name",
    "SiteTrend",
    "AnalysisTrend",
    "deleted_residuals",
    "render_round_html",
    "render_round_pages",
    "report_layout",
    "render_trend_html",
    "sanitize_svg",
    "trend_summary",
    "write_round_report",
    "write_trend_report",
]

#: Round ids become file names: letters, digits, dot, underscore, dash; no leading dot.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")

#: Measures whose estimates are on the log scale; the report also shows exp(estimate).
_LOG_MEASURES = {"OR": "OR", "RR": "RR", "HR": "HR", "ROM": "ratio of means", "IRR": "IRR",
                 "LOGOR": "OR", "LOGHR": "HR", "OE": "O/E", "LOG_OE": "O/E"}
_LOG_ESTIMATORS = {"logistic": "OR", "cox": "HR", "oe_ratio": "O/E"}

#: What an analysis without a pooled model or a flag shows (dashes, "not flagged").
_NOT_POOLED = PooledEstimate()
_NO_VERDICT = HeterogeneityVerdict(flagged=False)

#: |standardized deleted residual| beyond which a site counts as diverging in a round
#: (the 97.5% normal quantile, as metafor's influence() flags residuals).
DIVERGENCE_Z = 1.959963984540054


# --------------------------------------------------------------------------------------------
# Small helpers: numbers, escaping, validation
# --------------------------------------------------------------------------------------------



def _fmt_p(value: Any) -> str:
    number = finite_or_none(value)
    if number is None:
        return "\u2013"
    if number < 1e-4:
        return "&lt;0.0001"
    return f"{number:.4f}"


def _pair(values: Any) -> tuple[float | None, float | None]:
    """A ``[lower, upper]`` pair from the document, tolerant of null or an empty list."""
    if isinstance(values, (list, tuple)) and len(values) == 2:
        return finite_or_none(values[0]), finite_or_none(values[1])
    return None, None


def _interval(lower: Any, upper: Any, digits: int = 3) -> str:
    lo, hi = finite_or_none(lower), finite_or_none(upper)
    if lo is None or hi is None:
        return "\u2013"
    return f"{_fmt(lo, digits)} to {_fmt(hi, digits)}"


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (no torn reports).

    Reports stay private to the coordinator's user (0600): they name sites and results.
    """
    atomic_write(path, text, mode=0o600)


def _back_transform_label(analysis: AnalysisResult) -> str | None:
    """Name of exp(estimate) when the analysis is on a log scale (OR, RR, HR, ...), else None."""
    measure = (analysis.measure or "").upper()
    if measure in _LOG_MEASURES:
        return _LOG_MEASURES[measure]
    if not measure:
        return _LOG_ESTIMATORS.get(analysis.estimator or "")
    return None


def _scale_of(a: AnalysisResult) -> AnalysisScale:
    """The analysis' scales and null.

    From the document (version 2), else (version 1, where every estimate was tested
    against 0 on the scale it was pooled on) log for ratio measures and identity
    otherwise, with the null at the back-transform of 0.
    """
    if a.scale is not None:
        return AnalysisScale(a.estimator, a.estimand or a.measure or "estimate", a.scale,
                             a.null_value, a.site_scale or a.scale)
    back = _back_transform_label(a)
    if back:
        return AnalysisScale(a.estimator, back, "log", 1.0, "log")
    return AnalysisScale(a.estimator, a.measure or "estimate", "identity", 0.0, "identity")


def _shown(value: float | None, sc: AnalysisScale) -> float | None:
    """A pooling-scale value on the scale results are read on."""
    if value is None:
        return None
    try:
        return from_scale(value, sc.scale)
    except OverflowError:
        return None


def _null_text(sc: AnalysisScale) -> str:
    return "no null" if sc.null_value is None else f"{sc.estimand} = {sc.null_value:g}"


# --------------------------------------------------------------------------------------------
# SVG: render with matplotlib, sanitize, make ids unique per figure
# --------------------------------------------------------------------------------------------

_SVG_NS = "http://www.w3.org/2000/svg"
_XLINK_NS = "http://www.w3.org/1999/xlink"
#: Active or external-content elements never inlined. ``<use>`` stays: matplotlib draws
#: markers with it, and its non-local references are removed below.
_FORBIDDEN_TAGS = {"script", "foreignObject", "iframe", "object", "embed", "image", "a",
                   "animate", "set", "animateTransform", "animateMotion",
                   "metadata"}     # RDF/Dublin Core: not needed inline
_URL_REF = re.compile(r"url\(\s*#([^)\s]+)\s*\)")


def _mpl_text(text: Any) -> str:
    """Protect untrusted text from matplotlib's mathtext (``$...$``) interpretation."""
    return str(text).replace("$", r"\$")


def _figure_svg(fig: Any) -> str:
    """Serialize a matplotlib figure to SVG text with real <text> (searchable, escaped).

    ``svg.fonttype = none`` keeps labels as text: the page stays searchable, and the SVG is
    several times smaller and faster to write than with every glyph drawn as a path (which
    matters for a 100-site forest plot times 200 analyses). A fixed hash salt makes the
    output reproducible.
    """
    # lazy: matplotlib (~1 s) is imported only when a figure is drawn
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "fedsynth"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def sanitize_svg(svg_text: str, id_prefix: str) -> str:
    """Return an inline-safe ``<svg>`` element from SVG text.

    Drops the XML prolog and DOCTYPE, removes active content (``<script>``,
    ``<foreignObject>``, external ``<image>``/``<use>``, ``on*`` event attributes, non-local
    ``href``), and prefixes every ``id`` (and every ``url(#id)``/``href="#id"`` reference) with
    ``id_prefix``, because several figures inlined into one HTML document would otherwise
    share ids (matplotlib names clip paths by a hash) and clip each other.
    """
    try:
        root = ET.fromstring(svg_text.encode("utf-8") if isinstance(svg_text, str) else svg_text)
    except ET.ParseError as error:
        raise InputError(f"figure is not valid SVG: {error}") from error
    if root.tag not in (f"{{{_SVG_NS}}}svg", "svg"):
        raise InputError(f"figure root element must be <svg>, got <{root.tag}>")

    def local(tag: str) -> str:
        return tag.rsplit("}", 1)[-1]

    # Remove forbidden elements (iterate parents so we can delete children).
    for parent in list(root.iter()):
        for child in list(parent):
            if local(child.tag) in _FORBIDDEN_TAGS:
                parent.remove(child)
    seen_ids: dict[str, int] = {}
    for element in root.iter():
        for name in list(element.attrib):
            lname = local(name).lower()
            value = element.attrib[name]
            if lname.startswith("on"):
                del element.attrib[name]
            elif lname == "href":
                if value.startswith("#"):
                    element.attrib[name] = f"#{id_prefix}{value[1:]}"
                else:
                    del element.attrib[name]
            elif lname == "id":
                # Duplicate ids (matplotlib gids repeated per row) would be invalid HTML;
                # later copies get a suffix (references resolve to the first, as in browsers).
                new_id = f"{id_prefix}{value}"
                count = seen_ids.get(new_id, 0)
                seen_ids[new_id] = count + 1
                element.attrib[name] = new_id if count == 0 else f"{new_id}-{count + 1}"
            elif "url(" in value:
                element.attrib[name] = _URL_REF.sub(lambda m: f"url(#{id_prefix}{m.group(1)})",
                                                    value)
        if local(element.tag) == "style" and element.text:
            element.text = _URL_REF.sub(lambda m: f"url(#{id_prefix}{m.group(1)})",
                                        element.text)
            if "@import" in element.text or "url(" in element.text.replace("url(#", ""):
                element.text = ""
    # Inline SVG in HTML is parsed by the HTML parser, which does not know XML namespace
    # prefixes (``<ns0:svg>`` would not render): write plain SVG names, and declare the
    # namespaces on the root as HTML expects, without touching ElementTree's global
    # prefix registry.
    for element in root.iter():
        element.tag = local(element.tag)
        for name in list(element.attrib):
            if name.startswith(f"{{{_XLINK_NS}}}"):
                element.attrib["xlink:" + local(name)] = element.attrib.pop(name)
            elif name.startswith("{"):
                del element.attrib[name]
    root.set("xmlns", _SVG_NS)
    root.set("xmlns:xlink", _XLINK_NS)
    root.set("role", "img")
    return ET.tostring(root, encoding="unicode")


# --------------------------------------------------------------------------------------------
# Forest plot per analysis
# --------------------------------------------------------------------------------------------

#: What a forest plot reads of an analysis' pooled estimate (the footer and the diamond).
_FOREST_POOLED = ("estimate", "se", "ci_lb", "ci_ub", "pi_lb", "pi_ub", "tau2", "I2", "Q",
                  "Q_pval")


def _forest_svgs(analyses: Sequence[AnalysisResult | Mapping[str, Any]]) -> list[str | None]:
    """Forest plot SVG of every analysis (JSON objects are read as analyses first)."""
    return list(_forest_svgs_iter([a if isinstance(a, AnalysisResult)
                                   else AnalysisResult.from_dict(dict(a), where="forest plot")
                                   for a in analyses]))


def _forest_svgs_iter(analyses: Sequence[AnalysisResult]) -> Iterator[str | None]:
    """Forest plot SVG of each analysis, drawn when asked for, in this process.

    Drawn by :func:`fedsynth.plots.forest_svg` (milliseconds for 300 sites), so no worker
    processes: the earlier matplotlib plots (~1.6 s each at 300 sites) were drawn by a pool
    of fresh interpreters, whose start-up alone now costs more than all 200 plots of a
    300 x 200 round (issue 17; docs/decisions/report-scale.md).
    """
    for i, a in enumerate(analyses):
        yield _forest_svg(a, id_prefix=f"f{i}-")


def _forest_svg(analysis: AnalysisResult | Mapping[str, Any], *,
                id_prefix: str) -> str | None:
    """Forest plot of one analysis as inline SVG; None when no site estimate.

    Drawn by the project's forest plot (:func:`fedsynth.plots.forest_svg`) on the
    analysis' pooling scale with back-transformed ticks (a c-statistic axis for an AUC
    pooled as a logit), the null line at the measure's null (none for the Brier score),
    and, for a flagged analysis, every site's BLUP with its prediction interval as a second
    marker and the driving sites in red.

    The SVG is not passed through :func:`sanitize_svg`: that parser is for SVG whose
    structure we do not control (matplotlib's). ``forest_svg`` writes a fixed set of
    elements (``svg, style, rect, path, g, text``) with numeric or constant attributes, no
    ids and every text escaped (tests/unit/test_plots.py checks this on hostile labels);
    re-parsing it cost more than drawing it (issue 17). ``id_prefix`` is unused then
    (there are no ids) and kept for the callers.
    """
    del id_prefix
    entry = (analysis if isinstance(analysis, AnalysisResult)
             else AnalysisResult.from_dict(dict(analysis), where="forest plot"))
    sc = _scale_of(entry)
    het = entry.heterogeneity or _NO_VERDICT
    if entry.blups:                  # version 2: what was pooled, on the pooling scale
        rows = [b for b in entry.blups if b.yi is not None and (b.vi or 0) > 0]
        sites = [{"site": b.site, "yi": b.yi, "vi": b.vi} for b in rows]
    else:
        rows = []
        sites = [{"site": e.site, "yi": e.yi, "vi": e.vi} for e in entry.site_estimates
                 if e.yi is not None and (e.vi or 0) > 0]
    if not sites:
        return None
    pooled = entry.pooled or _NOT_POOLED
    data: dict[str, Any] = {"site_estimates": sites, "measure": entry.measure,
                            "method": entry.method, "k": entry.k,
                            "level": pooled.level if finite_or_none(pooled.level) else 95.0}
    for key in _FOREST_POOLED:
        data[key] = getattr(pooled, key)
    blup = None
    if het.flagged and rows and all(b.blup is not None and b.blup_pi_lb is not None
                                    and b.blup_pi_ub is not None for b in rows):
        blup = {"pred": [b.blup for b in rows], "pi_lb": [b.blup_pi_lb for b in rows],
                "pi_ub": [b.blup_pi_ub for b in rows]}
    return forest_svg(data, measure=None, title=entry.analysis, scale=sc.scale,
                      null_value=sc.null_value, estimand=sc.estimand, blup=blup,
                      drivers=het.sites if het.flagged else None)


# --------------------------------------------------------------------------------------------
# The round report
# --------------------------------------------------------------------------------------------

_CSS = """
:root { --ink:#1d2330; --muted:#5b6474; --line:#d9dee7; --accent:#1f4e79; --warn:#b22222;
        --amber:#a45d00; --ok:#2e7d32; --bg:#fbfcfd; }
* { box-sizing: border-box; }
body { font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: var(--bg); margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 32px 60px; }
h1 { font-size: 24px; margin: 0 0 4px; font-weight: 600; }
h2 { font-size: 18px; margin: 34px 0 10px; padding-bottom: 4px;
     border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 26px 0 6px; }
.sub { color: var(--muted); margin: 0 0 18px; }
.meta { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr));
        gap: 8px 20px; background: #fff; border: 1px solid var(--line); border-radius: 6px;
        padding: 12px 16px; }
.meta div span { display: block; color: var(--muted); font-size: 12px; text-transform: uppercase;
                 letter-spacing: .04em; }
table { border-collapse: collapse; width: 100%; background: #fff; margin: 6px 0 14px;
        font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left;
         vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: #f3f5f8; }
td.num, th.num, table.sites td + td { text-align: right; white-space: nowrap; }
table.sites td.note { text-align: left; white-space: normal; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         font-weight: 600; color: #fff; background: var(--muted); white-space: nowrap; }
.badge.pooled, .badge.submitted, .badge.ok { background: var(--ok); }
.badge.failed, .badge.strong, .badge.missing { background: var(--warn); }
.badge.moderate, .badge.open { background: var(--amber); }
.reasons { margin: 4px 0 0 18px; padding: 0; }
.note { color: var(--muted); font-size: 12.5px; }
.alert { border-left: 4px solid var(--warn); background: #fff4f4; padding: 8px 12px;
         margin: 10px 0; }
.scroll { overflow-x: auto; max-width: 100%; }
td.name { overflow-wrap: anywhere; min-width: 8em; }
.reasons { margin: 0; }
.nowrap { white-space: nowrap; }
figure { margin: 8px 0 4px; background: #fff; border: 1px solid var(--line); border-radius: 6px;
         padding: 8px; }
figure svg { max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 12.5px; padding: 4px 6px 0; }
nav.pager { font-size: 13px; color: var(--muted); margin: 14px 0; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line);
         padding-top: 10px; }
"""

_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "base-uri 'none'; form-action 'none'")


def _page(title: str, body: str) -> str:
    generated = utcnow().strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{body}\n<footer>Generated by fedsynth {_esc(__version__)} on {generated}. "
        "Pooled estimates, Q-profile intervals and heterogeneity flags are those computed by "
        "the coordinator; see docs/architecture.md (Heterogeneity flag) for the rule."
        "</footer>\n"
        "</main>\n</body>\n</html>\n")


def _badge(text: Any, kind: str | None = None) -> str:
    css = re.sub(r"[^a-z]", "", str(kind if kind is not None else text).lower())
    return f"<span class=\"badge {css}\">{_esc(text)}</span>"


def _analysis_summary_rows(analyses: Sequence[AnalysisResult],
                           links: Sequence[str | None]) -> str:
    """One row per analysis of the pooled-results table.

    The estimate on the scale it is read on, tested against the measure's own null, with
    the pooling scale stated; the name links to ``links[i]`` (the analysis' section or
    page; None: no link).
    """
    rows = []
    for a, link in zip(analyses, links):
        het = a.heterogeneity or _NO_VERDICT
        p = a.pooled or _NOT_POOLED
        sc = _scale_of(a)
        digits = 3
        est = _shown(p.estimate, sc)
        ci = _interval(_shown(p.ci_lb, sc), _shown(p.ci_ub, sc), digits)
        pi = _interval(_shown(p.pi_lb, sc), _shown(p.pi_ub, sc), digits)
        scale_note = ("" if sc.scale == "identity" else
                      f"<br><span class=\"note\">pooled on the {_esc(sc.scale)} scale</span>")
        p_cell = (f"{_fmt_p(p.pval)}<br><span class=\"note\">H0: {_esc(_null_text(sc))}"
                  "</span>" if sc.null_value is not None
                  else "\u2013<br><span class=\"note\">no null</span>")
        tau = None if p.tau2 is None else math.sqrt(max(p.tau2, 0.0))
        flag = (_badge(het.level or "flagged", het.level or "moderate")
                if het.flagged else _badge("no", "ok"))
        rows.append(
            "<tr>"
            f"<td class=\"name\">{_link(a.analysis, link)}</td>"
            f"<td>{_esc(sc.estimand)}{scale_note}</td>"
            f"<td class=\"num\">{_esc(a.k if a.k is not None else '')}</td>"
            f"<td>{_esc(a.method or '')}/{_esc(a.test or '')}</td>"
            f"<td class=\"num\">{_fmt(est, digits)}<br><span class=\"note\">{ci}</span></td>"
            f"<td class=\"num\">{p_cell}</td>"
            f"<td class=\"num\">{pi}</td>"
            f"<td class=\"num\">{_fmt(tau, 3)}</td>"
            f"<td class=\"num\">{_fmt(p.I2, 1)}%</td>"
            f"<td>{flag}</td></tr>")
    return "\n".join(rows)


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _anchor(name: str) -> str:
    """An id-safe anchor for an analysis name (escaping is applied by the caller too)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:80]


def _link(text: str, href: str | None) -> str:
    """``text`` escaped, as a link to ``href`` (our own anchor or page) unless it is None."""
    return _esc(text) if href is None else f"<a href=\"{_esc(href)}\">{_esc(text)}</a>"


def _heterogeneity_table(analyses: Sequence[AnalysisResult],
                         links: Sequence[str | None]) -> str:
    rows = []
    for a, link in zip(analyses, links):
        het = a.heterogeneity or _NO_VERDICT
        p = a.pooled or _NOT_POOLED
        i2_lo, i2_hi = _pair(p.I2_ci)
        t_lo, t_hi = _pair(p.tau2_ci)
        q_df = (a.k - 1) if a.k is not None and a.k > 0 else None
        none_html = "<span class=\"note\">none</span>"
        # the reasons are one paragraph in the analysis' own section; here the rules that
        # fired, so the table stays a table
        rules = het.details.rules if het.details is not None else ()
        reason_html = ((", ".join(_esc(r) for r in rules) if rules else "see below")
                       + (f" ({_link('reasons', link)})" if link else "")
                       if het.flagged else none_html)
        flag = (_badge(het.level or "flagged", het.level or "moderate")
                if het.flagged else _badge("not flagged", "ok"))
        rows.append(
            "<tr>"
            f"<td>{_esc(a.analysis)}</td>"
            f"<td class=\"num\">{_fmt(p.Q, 2)}"
            f"{f' (df {q_df})' if q_df is not None else ''}</td>"
            f"<td class=\"num\">{_fmt_p(p.Q_pval)}</td>"
            f"<td class=\"num\">{_fmt(p.tau2, 4)}<br><span class=\"note\">"
            f"{_interval(t_lo, t_hi, 4)}</span></td>"
            f"<td class=\"num\">{_fmt(p.I2, 1)}%<br><span class=\"note\">"
            f"{_interval(i2_lo, i2_hi, 1)}</span></td>"
            f"<td class=\"num\">{_fmt(p.H2, 2)}</td>"
            f"<td>{flag}</td>"
            f"<td class=\"nowrap\">{'<br>'.join(_esc(x) for x in het.sites) or none_html}</td>"
            f"<td>{reason_html}</td></tr>")
    return ("<div class=\"scroll\"><table><thead><tr><th>Analysis</th><th class=\"num\">Q</th>"
            "<th class=\"num\">p(Q)</th><th class=\"num\">\u03c4\u00b2 (95% CI)</th>"
            "<th class=\"num\">I\u00b2 (95% CI)</th><th class=\"num\">H\u00b2</th>"
            "<th>Flag</th><th>Sites driving it</th><th>Rules fired</th></tr></thead><tbody>"
            + "\n".join(rows) + "</tbody></table></div>")


def _site_estimate_table(a: AnalysisResult) -> str:
    """The site table of one analysis.

    Each site's estimate (on the scale results are read on) with its CI and weight; for a
    flagged analysis also its BLUP with the BLUP's prediction interval, beside it.
    """
    sc = _scale_of(a)
    het = a.heterogeneity or _NO_VERDICT
    tau2 = max((a.pooled or _NOT_POOLED).tau2 or 0.0, 0.0)
    pooled_rows: dict[str, tuple[float | None, float | None]] = {}
    blups = {b.site: b for b in a.blups}
    for e in a.site_estimates:
        b = blups.get(e.site)
        if b is not None:
            pooled_rows[e.site] = (b.yi, b.vi)
        elif sc.site_scale == sc.scale:
            pooled_rows[e.site] = (e.yi, e.vi)
    total = sum(1.0 / (v + tau2) for _, v in pooled_rows.values()
                if v is not None and v + tau2 > 0)
    weights = {site: 100.0 / (v + tau2) / total for site, (_, v) in pooled_rows.items()
               if v is not None and v + tau2 > 0 and total > 0}
    show_blup = bool(het.flagged and a.blups)
    driving = set(het.sites)
    z = 1.959963984540054
    rows = []
    for e in a.site_estimates:
        y, v = pooled_rows.get(e.site, (None, None))
        lo = hi = None
        if y is not None and v is not None and v >= 0:
            lo, hi = y - z * math.sqrt(v), y + z * math.sqrt(v)
        mark = " " + _badge("drives heterogeneity", "moderate") if e.site in driving else ""
        n_cell = _esc(e.n) if e.n is not None else "&ndash;"
        blup_cells = ""
        if show_blup:
            b = blups.get(e.site)
            blup_cells = (f"<td>{_fmt(_shown(b.blup, sc))}"
                          f"<td>{_interval(_shown(b.blup_pi_lb, sc), _shown(b.blup_pi_ub, sc))}"
                          if b is not None else "<td><td>")
        # numeric cells are right-aligned by the table's class (table.sites), and cells and
        # rows end where the next begins (HTML's optional end tags): a class and an end tag
        # on each of 300,000 cells were a third of a 300 x 200 round's report (issue 17)
        rows.append(f"<tr><td>{_esc(e.site)}{mark}<td>{n_cell}"
                    f"<td>{_fmt(_shown(y, sc))}"
                    f"<td>{_interval(_shown(lo, sc), _shown(hi, sc))}{blup_cells}"
                    f"<td>{_fmt(weights.get(e.site), 1)}%")
    span = 5 + (2 if show_blup else 0)
    for site, reason in a.refused.items():
        rows.append(f"<tr><td>{_esc(site)} {_badge('refused', 'missing')}</td>"
                    f"<td colspan=\"{span - 1}\" class=\"note\">{_esc(reason)}</td></tr>")
    if not rows:
        return "<p class=\"note\">No site estimate.</p>"
    what = _esc(sc.estimand)
    blup_head = ("<th class=\"num\">BLUP</th><th class=\"num\">95% PI of the BLUP</th>"
                 if show_blup else "")
    note = ("" if sc.scale == "identity" else
            f"<p class=\"note\">Pooled on the {_esc(sc.scale)} scale; every number is shown "
            f"back-transformed as the {what}.</p>")
    if show_blup:
        note += ("<p class=\"note\">BLUP: the site's shrunken (empirical Bayes) estimate, "
                 "its effect predicted from its own data and the other sites', with its 95% "
                 "prediction interval; report these beside the pooled estimate.</p>")
    return (note + "<div class=\"scroll\"><table class=\"sites\"><thead><tr><th>Site</th>"
            "<th class=\"num\">n</th>"
            f"<th class=\"num\">{what}</th><th class=\"num\">95% CI</th>{blup_head}"
            "<th class=\"num\">Weight (RE)</th></tr></thead><tbody>" + "\n".join(rows)
            + "</tbody></table></div>")


def _ratio(value: Any) -> str:
    """A log ratio shown as the ratio (3 significant digits); unbounded/missing as a dash."""
    number = finite_or_none(value)
    return "\u2013" if number is None else f"{math.exp(number):.3g}"


def _own(estimate: float | None) -> str:
    return _ratio(estimate) if estimate is not None else "none (no finite maximum)"


def _likelihood_section(a: AnalysisResult) -> str:
    """Likelihood pooling beside the normal approximation (round document version 3)."""
    lik = a.likelihood
    if lik is None:
        return ""
    what = _esc(lik.estimand or "ratio")
    lev = f"{lik.level or 95:g}%"
    mu_lo, mu_hi = lik.mu_ci or (None, None)
    rows = [
        ("Likelihood, fixed effect (summed log-likelihoods)", lik.k,
         _ratio(lik.estimate), f"{_ratio(lik.ci_lb)} to {_ratio(lik.ci_ub)}",
         f"{lev} likelihood-ratio CI"),
        (f"Likelihood, random effects ({_esc(lik.prior)} prior on \u03c4, scale "
         f"{_esc(lik.tau_scale)})", lik.k, _ratio(lik.mu_median),
         f"{_ratio(mu_lo)} to {_ratio(mu_hi)}", f"{lev} credible interval (median)"),
        ("Normal approximation, inverse variance (sites with an estimate)", lik.normal_k,
         _ratio(lik.normal_estimate), f"{_ratio(lik.normal_ci_lb)} to "
         f"{_ratio(lik.normal_ci_ub)}", f"{lev} Wald CI"),
    ]
    body = "".join(f"<tr><td>{label}</td><td class=\"num\">{_esc(k)}</td>"
                   f"<td class=\"num\">{est}</td><td class=\"num\">{ci}</td>"
                   f"<td>{kind}</td></tr>" for label, k, est, ci, kind in rows)
    site_rows = "".join(
        f"<tr><td>{_esc(x.site)}</td><td>{_esc(x.form)}</td>"
        f"<td class=\"num\">{_esc(x.n) if x.n is not None else '&ndash;'}</td>"
        f"<td class=\"num\">{_own(x.estimate)}</td></tr>" for x in lik.sites)
    notes = "".join(f"<p class=\"note\">{_esc(n)}</p>" for n in lik.notes)
    return (f"<h4>Likelihood pooling ({_esc(lik.parameter)}; {lik.k_without_estimate} of "
            f"{lik.k} site(s) without an estimate of their own)</h4>"
            f"<p>{_esc(lik.statement)}</p>{notes}"
            "<div class=\"scroll\"><table><thead><tr><th>Pooling</th>"
            f"<th class=\"num\">k</th><th class=\"num\">{what}</th>"
            "<th class=\"num\">Interval</th><th>Interval kind</th></tr></thead><tbody>"
            + body + "</tbody></table></div>"
            "<div class=\"scroll\"><table><thead><tr><th>Site</th><th>Released form</th>"
            f"<th class=\"num\">n</th><th class=\"num\">Own {what}</th></tr></thead><tbody>"
            + site_rows + "</tbody></table></div>"
            "<p class=\"note\">A site released an approximation of its profile "
            "log-likelihood instead of an estimate; one without an estimate of its own (no "
            "events in one arm) is dropped by the normal approximation but contributes to "
            "the likelihood pooling.</p>")


def _participation(doc: RoundDocument) -> str:
    rows, refusal_rows = [], []
    for s in doc.sites:
        status = s.status or "unknown"
        rows.append(f"<tr><td>{_esc(s.site)}</td><td>{_badge(status)}</td>"
                    f"<td>{_esc(s.submitted_at or '')}</td>"
                    f"<td class=\"num\">{len(s.refusals)}</td></tr>")
        for analysis, reason in s.refusals.items():
            refusal_rows.append(f"<tr><td>{_esc(s.site)}</td><td>{_esc(analysis)}</td>"
                                f"<td>{_esc(reason)}</td></tr>")
    submitted = sum(1 for s in doc.sites if s.status == "submitted")
    quorum_text = f" (quorum {_esc(doc.quorum)})" if doc.quorum is not None else ""
    out = [f"<p>{submitted} of {len(doc.sites)} allowed sites submitted{quorum_text}.</p>",
           "<div class=\"scroll\"><table><thead><tr><th>Site</th><th>Status</th>"
           "<th>Submitted at</th><th class=\"num\">Refused analyses</th></tr></thead><tbody>",
           *rows, "</tbody></table></div>"]
    out.append("<h3>Refusals</h3>")
    if refusal_rows:
        out += ["<p class=\"note\">Analyses a site declined to compute or send, with the "
                "site's own reason (policy, disclosure limit, missing column).</p>",
                "<div class=\"scroll\"><table><thead><tr><th>Site</th><th>Analysis</th>"
                "<th>Reason</th></tr></thead><tbody>", *refusal_rows, "</tbody></table></div>"]
    else:
        out.append("<p class=\"note\">No site refused an analysis.</p>")
    return "\n".join(out)


#: A round is written as a folder of pages (a summary page and one page per analysis) when
#: it has more analyses or site rows than this; smaller rounds stay one page, which reads
#: (and searches) best when everything fits. See docs/decisions/report-scale.md.
PAGES_ABOVE_ANALYSES = 25
PAGES_ABOVE_ROWS = 5000


def _site_rows(doc: RoundDocument) -> int:
    return sum(len(a.site_estimates) + len(a.refused) for a in doc.analyses)


def report_layout(round_doc: RoundDocument | Mapping[str, Any]) -> str:
    """``"page"`` (one self-contained file) or ``"pages"`` (a summary and a page per analysis).

    ``"pages"`` when the round has more than :data:`PAGES_ABOVE_ANALYSES` analyses or more
    than :data:`PAGES_ABOVE_ROWS` site rows in all its analyses: a 300-site x 200-analysis
    round in one file weighs tens of MB, which a browser parses before it shows anything.
    """
    doc = RoundDocument.coerce(round_doc)
    if len(doc.analyses) > PAGES_ABOVE_ANALYSES or _site_rows(doc) > PAGES_ABOVE_ROWS:
        return "pages"
    return "page"


def analysis_page_name(index: int, name: str) -> str:
    """File name of the page of analysis number ``index`` (0-based) in the round's folder.

    Numbered, so two names that map to one safe file name (``a b`` and ``a_b``) never
    share a page, and the folder lists in the spec's order.
    """
    return f"{index + 1:03d}-{_anchor(name)}.html"


def _summary_parts(doc: RoundDocument, links: Sequence[str | None], *,
                   reasons: str = "see the reasons below") -> list[str]:
    """Title, facts, flags, pooled results, heterogeneity and participation of a round."""
    analyses = doc.analyses
    spec_name = (doc.spec or {}).get("name")
    status = doc.status or "unknown"
    parts = [f"<h1>Federated round {_esc(doc.round)} {_badge(status)}</h1>",
             f"<p class=\"sub\">Analysis spec <strong>{_esc(spec_name or '(unnamed)')}"
             f"</strong> &middot; {_plural(len(analyses), 'analysis', 'analyses')}</p>",
             "<div class=\"meta\">"]
    for label, value in (("Opened", doc.opened_at), ("Deadline", doc.deadline),
                         ("Closed", doc.closed_at), ("Quorum", doc.quorum)):
        parts.append(f"<div><span>{label}</span>{_esc(value) or '&ndash;'}</div>")
    flagged = [(a, link) for a, link in zip(analyses, links)
               if a.heterogeneity is not None and a.heterogeneity.flagged]
    parts.append(f"<div><span>Heterogeneity flags</span>{len(flagged)} of {len(analyses)}</div>")
    parts.append("</div>")
    if flagged:
        named = ", ".join(f"{_link(a.analysis, link)} "
                          f"({_esc((a.heterogeneity or _NO_VERDICT).level or 'flagged')})"
                          for a, link in flagged)
        parts.append(f"<div class=\"alert\"><strong>Heterogeneity flagged</strong> in "
                     f"{_plural(len(flagged), 'analysis', 'analyses')}: {named}. One pooled "
                     f"number may mislead there; {reasons}.</div>")
    if doc.failure_reason:
        parts.append(f"<div class=\"alert\"><strong>Round failed.</strong> "
                     f"{_esc(doc.failure_reason)}</div>")

    parts.append("<h2>Pooled results</h2>")
    if analyses:
        parts.append(_pooled_table(analyses, links))
        parts.append("<h2>Heterogeneity</h2>" + _heterogeneity_table(analyses, links))
    else:
        parts.append("<p class=\"note\">No analysis was pooled in this round.</p>")
    parts.append("<h2>Site participation</h2>" + _participation(doc))
    return parts


def _pooled_table(analyses: Sequence[AnalysisResult], links: Sequence[str | None]) -> str:
    return ("<div class=\"scroll\"><table class=\"pooled\"><thead><tr><th>Analysis</th>"
            "<th>Measure</th><th class=\"num\">k</th><th>Method</th>"
            "<th class=\"num\">Estimate (95% CI)</th><th class=\"num\">p</th>"
            "<th class=\"num\">95% PI</th><th class=\"num\">\u03c4</th>"
            "<th class=\"num\">I\u00b2</th><th>Flag</th>"
            "</tr></thead><tbody>" + _analysis_summary_rows(analyses, links)
            + "</tbody></table></div>"
            "<p class=\"note\">Estimates are shown on the scale they are read on (ratios, "
            "c-statistic, O:E back-transformed from the pooling scale stated under the "
            "measure); p tests the measure's own null (H0); \u03c4 is on the pooling scale. "
            "PI: 95% prediction interval for a new site.</p>")


def _analysis_section(a: AnalysisResult, svg: str | None, *, heading: bool = True) -> str:
    """One analysis: forest plot, the flag's reasons, the site table, likelihood pooling."""
    parts = []
    if heading:
        parts.append(f"<h3 id=\"a-{_esc(_anchor(a.analysis))}\">{_esc(a.analysis)}</h3>")
    het = a.heterogeneity or _NO_VERDICT
    if svg:
        extra = (" Open circles with a thin line below each site: its BLUP and the BLUP's "
                 "95% prediction interval; sites in red drive the heterogeneity."
                 if het.flagged and a.blups else "")
        null = ("" if _scale_of(a).null_value is None
                else f" Grey line: the null ({_esc(_null_text(_scale_of(a)))}).")
        parts.append(f"<figure>{svg}<figcaption>Forest plot of {_esc(a.analysis)}: "
                     "site estimates with 95% CIs (box area proportional to "
                     "random-effects weight), pooled estimate (diamond) and 95% "
                     f"prediction interval (dashed).{null}{extra}</figcaption></figure>")
    if het.reasons:
        # one short paragraph per flagged analysis: numbers first, no boilerplate
        parts.append("<div class=\"alert\"><p>" + _esc(" ".join(het.reasons))
                     + "</p></div>")
    parts.append(_site_estimate_table(a))
    parts.append(_likelihood_section(a))
    return "\n".join(parts)


def render_round_html(round_doc: RoundDocument | Mapping[str, Any]) -> str:
    """Render a round document (``docs/round-document.md``) as one self-contained HTML page.

    Everything inline: the summary tables, then per analysis its forest plot, reasons and
    site table. :func:`write_round_report` writes this page for small rounds and a folder
    of pages (:func:`render_round_pages`) for big ones (:func:`report_layout`).

    A mapping is read with :meth:`RoundDocument.from_dict` first (an
    :class:`~fedsynth.errors.InputError` naming the field when it is malformed).
    """
    doc = RoundDocument.coerce(round_doc)
    analyses = doc.analyses
    parts = _summary_parts(doc, [f"#a-{_anchor(a.analysis)}" for a in analyses])
    if analyses:
        parts.append("<h2>Analyses</h2>")
    if doc.models:
        parts.append(_models_section(doc))
    for a, svg in zip(analyses, _forest_svgs(analyses)):
        parts.append(_analysis_section(a, svg))
    return _page(f"fedsynth round {doc.round}", "\n".join(parts))


def _pager(doc: RoundDocument, index: int | None, names: Sequence[str],
           pages: Sequence[str]) -> str:
    """Links back to the summary and to the previous and next analysis pages."""
    items = [f"<a href=\"../{_esc(doc.round)}.html\">&larr; round {_esc(doc.round)} "
             "summary</a>"]
    if index is not None:
        if index > 0:
            items.append(f"previous: {_link(names[index - 1], pages[index - 1])}")
        if index + 1 < len(pages):
            items.append(f"next: {_link(names[index + 1], pages[index + 1])}")
        items.append(f"analysis {index + 1} of {len(pages)}")
    return "<nav class=\"pager\">" + " &middot; ".join(items) + "</nav>"


def render_round_pages(round_doc: RoundDocument | Mapping[str, Any]
                       ) -> Iterator[tuple[str, str]]:
    """The report of a big round as pages: ``(path relative to the report folder, HTML)``.

    ``<round>/NNN-<analysis>.html`` per analysis (:func:`analysis_page_name`: its pooled
    row, heterogeneity row, forest plot, reasons, site table), ``<round>/models.html`` when
    the round fitted models, and last ``<round>.html``, the summary page: the tables of
    :func:`render_round_html` without the per-analysis sections, each analysis name a
    link to its page. Every page is self-contained (inline CSS and SVG, the same CSP, no
    script) and links only to pages of the same report, so the folder can be zipped,
    mailed and opened offline. Pages are produced one at a time: a 300-site x
    200-analysis round never holds more than one page's forest plot in memory.
    """
    doc = RoundDocument.coerce(round_doc)
    analyses = doc.analyses
    folder = doc.round
    pages = [analysis_page_name(i, a.analysis) for i, a in enumerate(analyses)]
    names = [a.analysis for a in analyses]
    for i, (a, svg) in enumerate(zip(analyses, _forest_svgs_iter(analyses))):
        het = a.heterogeneity or _NO_VERDICT
        flag = (_badge(het.level or "flagged", het.level or "moderate")
                if het.flagged else _badge("not flagged", "ok"))
        pager = _pager(doc, i, names, pages)
        body = "\n".join([
            pager, f"<h1>{_esc(a.analysis)} {flag}</h1>",
            f"<p class=\"sub\">Round {_esc(doc.round)} &middot; "
            f"{_esc(_scale_of(a).estimand)} &middot; k = {_esc(a.k)}</p>",
            _pooled_table([a], [None]),
            "<h2>Heterogeneity</h2>" + _heterogeneity_table([a], [None]),
            "<h2>Forest plot and sites</h2>", _analysis_section(a, svg, heading=False),
            pager])
        yield f"{folder}/{pages[i]}", _page(f"{a.analysis} \u2013 fedsynth round {doc.round}",
                                            body)
    if doc.models:
        pager = _pager(doc, None, names, pages)
        yield f"{folder}/models.html", _page(
            f"models \u2013 fedsynth round {doc.round}",
            "\n".join([pager, _models_section(doc), pager]))
    parts = _summary_parts(doc, [f"{folder}/{p}" for p in pages],
                           reasons="each analysis' page gives the reasons")
    if analyses:
        parts.append("<h2>Analyses</h2><p class=\"note\">This round has "
                     f"{_plural(len(analyses), 'analysis', 'analyses')}: each has its own page "
                     "(its forest plot, the flag's reasons and the site table) in the folder "
                     f"<code>{_esc(folder)}/</code> beside this file; follow an analysis "
                     "name in the tables above.</p>")
    if doc.models:
        parts.append(f"<h2>Models</h2><p><a href=\"{_esc(folder)}/models.html\">The models "
                     f"of this round</a> ({_plural(len(doc.models), 'model', 'models')}: "
                     "coefficients, forest plots, flags).</p>")
    yield f"{doc.round}.html", _page(f"fedsynth round {doc.round}", "\n".join(parts))


# --------------------------------------------------------------------------------------------
# Models (issue 13)
# --------------------------------------------------------------------------------------------

def _coef_cell(fit: Mapping[str, Any] | None, name: str) -> str:
    """``estimate (ci_lb, ci_ub)`` of one coefficient of a fit's object, or a dash."""
    if not fit:
        return "&ndash;"
    coefficients = fit.get("coefficients") or {}
    if name not in coefficients:
        return "&ndash;"
    lb = (fit.get("ci_lb") or {}).get(name)
    ub = (fit.get("ci_ub") or {}).get(name)
    return (f"{_fmt(coefficients[name])}<br><span class=\"note\">"
            f"{_interval(lb, ub)}</span>")


def _model_forest_svg(model: Mapping[str, Any], name: str, pooled: Mapping[str, Any],
                      flag: Mapping[str, Any] | None, prefix: str) -> str | None:
    """Forest plot of one coefficient across sites: each site's own estimate, pooled."""
    per_site = (model.get("two_stage") or {}).get("per_site") or {}
    rows = []
    for site, fit in per_site.items():
        y = finite_or_none((fit.get("coefficients") or {}).get(name))
        se = finite_or_none((fit.get("se") or {}).get(name))
        if y is not None and se is not None and se > 0:
            rows.append({"site": site, "yi": y, "vi": se * se})
    if len(rows) < 2:
        return None
    data: dict[str, Any] = {"analysis": name, "site_estimates": rows}
    for key in ("k", "estimate", "se", "ci_lb", "ci_ub", "pi_lb", "pi_ub", "tau2", "I2", "Q",
                "Q_pval", "method", "test", "level"):
        if key in pooled:
            data[key] = pooled[key]
    if finite_or_none(data.get("level")) is None:
        data["level"] = 95.0
    flagged = bool(flag and flag.get("flagged"))
    del prefix                                   # no ids in forest_svg (see _forest_svg)
    return forest_svg(data, measure=None, title=f"{model.get('name')}: {name}",
                      scale="identity", null_value=0.0,
                      drivers=list(flag.get("sites") or []) if flagged and flag else None)


def _models_section(doc: RoundDocument) -> str:
    """The models of a round: coefficient table, forest plot per coefficient, flags."""
    parts = ["<h2>Models</h2>",
             "<p class=\"note\">Each model is fitted three ways across the sites: one-stage "
             "(federated IRLS, equal to the model fitted to all patients in one place), "
             "stratified (one intercept per site, common slopes) and two-stage (each site "
             "fits its own model; every coefficient is pooled by random effects). A flagged "
             "coefficient differs between sites: one global model hides that difference "
             "(consider site-specific or hierarchical terms).</p>"]
    for m_index, entry in enumerate(doc.models):
        model = entry.to_dict()
        status = entry.status or "unknown"
        kind = "ok" if status == "fitted" else "failed"
        parts.append(f"<h3 id=\"m-{_esc(_anchor(entry.name))}\">Model {_esc(entry.name)} "
                     f"({_esc(entry.family)}) {_badge(status, kind)}</h3>")
        one = entry.one_stage or {}
        facts = [f"sites: {_esc(', '.join(entry.sites) or 'none')}",
                 f"n = {_esc(entry.n)}"]
        if one:
            facts.append(f"one-stage: {_esc(one.get('iterations'))} iterations, deviance "
                         f"{_fmt(one.get('deviance'), 2)}")
        if entry.round_trips is not None:
            facts.append(f"{entry.round_trips} round trips, {_fmt(entry.seconds, 2)} s")
        parts.append("<p>" + " &middot; ".join(facts) + "</p>")
        if entry.reason:
            parts.append(f"<div class=\"alert\">{_esc(entry.reason)}</div>")
        for label, sites in (("Refused by", entry.refused), ("Dropped", entry.dropped)):
            if sites:
                items = "".join(f"<li>{_esc(s)}: {_esc(r)}</li>" for s, r in sites.items())
                parts.append(f"<p class=\"note\">{label}:</p><ul class=\"reasons\">"
                             f"{items}</ul>")
        if status != "fitted":
            continue
        two = entry.two_stage or {}
        pooled = two.get("pooled") or {}
        flags = entry.heterogeneity or {}
        names = list(one.get("coefficients") or pooled)
        rows = []
        for name in names:
            p = pooled.get(name) or {}
            flag = flags.get(name)
            badge = ("&ndash;" if not flag else
                     _badge(flag.get("level") or "flagged", flag.get("level") or "moderate")
                     if flag.get("flagged") else _badge("not flagged", "ok"))
            strat = ("site-specific" if name == "intercept"
                     else _coef_cell(entry.stratified, name))
            hier = _coef_cell(entry.hierarchical, name) if entry.hierarchical else ""
            rows.append(
                f"<tr><td class=\"name\">{_esc(name)}</td>"
                f"<td class=\"num\">{_coef_cell(one, name)}</td>"
                f"<td class=\"num\">{strat}</td>"
                + (f"<td class=\"num\">{hier}</td>" if entry.hierarchical else "") +
                f"<td class=\"num\">{_fmt(p.get('estimate'))}<br><span class=\"note\">"
                f"{_interval(p.get('ci_lb'), p.get('ci_ub'))}</span></td>"
                f"<td class=\"num\">{_interval(p.get('pi_lb'), p.get('pi_ub'))}</td>"
                f"<td class=\"num\">{_fmt(p.get('I2'), 1)}%</td>"
                f"<td class=\"num\">{_fmt(p.get('tau2'), 4)}</td>"
                f"<td class=\"num\">{_esc(p.get('k'))}</td><td>{badge}</td></tr>")
        parts.append(
            "<div class=\"scroll\"><table class=\"model\"><thead><tr><th>Coefficient</th>"
            "<th class=\"num\">One-stage (95% CI)</th>"
            "<th class=\"num\">Stratified (95% CI)</th>"
            + ("<th class=\"num\">Hierarchical (95% CI)</th>" if entry.hierarchical else "")
            + "<th class=\"num\">Two-stage pooled (95% CI)</th>"
            "<th class=\"num\">95% PI</th><th class=\"num\">I\u00b2</th>"
            "<th class=\"num\">\u03c4\u00b2</th><th class=\"num\">k</th><th>Flag</th>"
            "</tr></thead><tbody>" + "\n".join(rows) + "</tbody></table></div>"
            f"<p class=\"note\">Coefficients on the {_esc(one.get('link') or 'link')} scale. "
            "PI: 95% prediction interval of the coefficient at a new site (two-stage)."
            + (f" Hierarchical: random intercept per site, \u03c4 = "
               f"{_fmt((entry.hierarchical or {}).get('tau'))}, ICC (latent) = "
               f"{_fmt((entry.hierarchical or {}).get('icc'))}." if entry.hierarchical
               else "") + "</p>")
        for c_index, name in enumerate(names):
            p = pooled.get(name) or {}
            flag = flags.get(name)
            svg = _model_forest_svg(model, name, p, flag, f"m{m_index}-{c_index}-")
            if svg is None:
                continue
            reasons = " ".join(flag.get("reasons") or []) if flag and flag.get("flagged") \
                else ""
            parts.append(f"<figure>{svg}<figcaption>{_esc(entry.name)}, coefficient "
                         f"{_esc(name)}: each site's own estimate with its 95% CI, the "
                         "two-stage pooled estimate (diamond) and its 95% prediction "
                         "interval (dashed); grey line at 0."
                         + (f" <strong>Flagged:</strong> {_esc(reasons)}" if reasons else "")
                         + "</figcaption></figure>")
        parts.append(iecv_section(entry, prefix=f"m{m_index}-iecv-",
                                  to_svg=lambda fig, p: sanitize_svg(_figure_svg(fig), p)))
    return "\n".join(parts)


@dataclass(frozen=True)
class RoundReportPaths:
    """Files written for one round.

    Attributes
    ----------
    html
        The HTML report: the whole report (one page) or its summary page (``pages``).
    json
        The round document as strict JSON.
    pages
        The folder of per-analysis pages (``<round>/``) when the round was written as
        pages (:func:`report_layout`), else None.
    """

    html: Path
    json: Path
    pages: Path | None = None


def _check_pages_folder(folder: Path) -> None:
    """Refuse to go on when ``<round>/`` exists but is not a folder of our pages.

    A folder that contains anything but our ``.html`` pages is left alone (and named in
    the error): it is not ours to delete.
    """
    if (folder.exists() or folder.is_symlink()) and (
            folder.is_symlink() or not folder.is_dir()
            or any(not p.is_file() or p.suffix != ".html" for p in folder.iterdir())):
        raise InputError(f"report folder {str(folder)!r} exists and holds other files than "
                         "report pages; move it away to write this round's report")


def _remove_pages_folder(folder: Path) -> None:
    """Remove a round's folder of pages written earlier (checked to hold only pages)."""
    _check_pages_folder(folder)
    if folder.exists():
        shutil.rmtree(folder)


def _write_pages(doc: RoundDocument, report_dir: Path) -> Path:
    """Write every page of :func:`render_round_pages`; the summary page last.

    The analysis pages go into a fresh hidden folder that replaces ``<round>/`` only when
    all are written (a failure leaves the previous report as it was); then the summary
    page is replaced atomically.
    """
    make_private_dirs(report_dir)
    for stale in report_dir.glob(f".{doc.round}.pages-*"):      # left by a crash
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{doc.round}.pages-", dir=report_dir))
    final = report_dir / doc.round
    summary = None
    try:
        for relative, text in render_round_pages(doc):
            if relative == f"{doc.round}.html":
                summary = text
                continue
            target = staging / Path(relative).name
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        assert summary is not None                   # render_round_pages yields it last
        _remove_pages_folder(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _atomic_write(report_dir / f"{doc.round}.html", summary)
    return final


def write_round_report(round_doc: RoundDocument | Mapping[str, Any],
                       report_dir: Path, *, layout: str | None = None) -> RoundReportPaths:
    """Write the report of a closed round into ``report_dir``: HTML and the round's JSON.

    A small round is one self-contained page, ``<round>.html``; a big one
    (:func:`report_layout`: more than :data:`PAGES_ABOVE_ANALYSES` analyses or
    :data:`PAGES_ABOVE_ROWS` site rows) is ``<round>.html``, a summary page that loads at
    once, plus the folder ``<round>/`` with one page per analysis
    (:func:`render_round_pages`). ``<round>.json`` is the round document as strict JSON.

    Parameters
    ----------
    round_doc
        The round document (``docs/round-document.md``): a
        :class:`~fedsynth.round_document.RoundDocument`, or its JSON object, which is
        validated first.
    report_dir
        Directory for the reports; created when missing.
    layout
        ``"page"`` or ``"pages"`` to choose; default: :func:`report_layout`.

    Returns
    -------
    RoundReportPaths
        Paths of the HTML report (the summary page), the JSON document and the folder of
        pages (None for one page).

    Raises
    ------
    fedsynth.errors.InputError
        When the document lacks a field the report needs or has one of the wrong type, or
        ``layout`` is not one of the two; no file is written then.
    """
    doc = RoundDocument.coerce(round_doc)           # validates first: nothing written on error
    if layout is None:
        layout = report_layout(doc)
    if layout not in ("page", "pages"):
        raise InputError(f"layout: {layout!r} is not 'page' or 'pages'")
    report_dir = Path(report_dir)
    _check_pages_folder(report_dir / doc.round)     # before anything is written
    paths = RoundReportPaths(html=report_dir / f"{doc.round}.html",
                             json=report_dir / f"{doc.round}.json",
                             pages=report_dir / doc.round if layout == "pages" else None)
    html_text = render_round_html(doc) if layout == "page" else None
    # Indented for a small round (read by people); compact for a big one: json's indenting
    # encoder is pure Python, 6.6 s for a 300 x 200 document against 0.5 s in C, and a
    # third bigger (issue 17).
    json_text = json.dumps(strict_json(doc.to_dict()), allow_nan=False,
                           indent=2 if layout == "page" else None) + "\n"
    _atomic_write(paths.json, json_text)            # first: the HTML's existence means done
    if html_text is None:
        _write_pages(doc, report_dir)
    else:
        _remove_pages_folder(report_dir / doc.round)    # of an earlier write as pages
        _atomic_write(paths.html, html_text)
    return paths


# --------------------------------------------------------------------------------------------
# Trend across rounds
# --------------------------------------------------------------------------------------------

def deleted_residuals(yi: Sequence[float], vi: Sequence[float]) -> list[float | None]:
    """Standardized deleted residual of each site (Viechtbauer & Cheung, 2010).

    ``z_i = (y_i - mu_(-i)) / sqrt(v_i + tau2_(-i) + se(mu_(-i))^2)`` where ``mu_(-i)`` is
    the random-effects estimate of the other sites with the DerSimonian-Laird ``tau2_(-i)``:
    the studentized deleted residual of :func:`fedsynth.meta.diagnostics.influence` with
    ``method="DL"`` (metafor's ``rstudent``). Under the random-effects model ``z_i`` is
    approximately standard normal, so ``|z_i| > 1.96`` marks a site whose effect lies
    outside the 95% prediction interval formed by the others. Needs at least three sites
    (two others); otherwise None.
    """
    # imported here: the diagnostics load scipy.stats, slower to import than the rest of
    # this module, and only the trend report needs them

    if len(yi) < 3:
        return [None] * len(yi)
    rstudent = influence(list(yi), list(vi), method="DL").rstudent
    return [float(z) if math.isfinite(z) else None for z in rstudent]


@dataclass(frozen=True)
class SiteTrend:
    """One site's estimates of one analysis across rounds.

    Attributes
    ----------
    site
        Site name.
    yi, se, z
        Per round (aligned with :attr:`AnalysisTrend.rounds`): the site's estimate, its
        standard error and its standardized deleted residual; None when the site did not
        contribute to that round.
    diverging
        True when ``|z| > 1.96`` in the latest round the site contributed to.
    diverging_since
        First round of the latest unbroken run of rounds in which the site diverged.
    """

    site: str
    yi: tuple[float | None, ...]
    se: tuple[float | None, ...]
    z: tuple[float | None, ...]
    diverging: bool
    diverging_since: str | None


@dataclass(frozen=True)
class AnalysisTrend:
    """One analysis across rounds: pooled series, I² series and per-site series."""

    analysis: str
    measure: str | None
    rounds: tuple[str, ...]
    opened_at: tuple[str | None, ...]
    estimate: tuple[float | None, ...]
    ci_lb: tuple[float | None, ...]
    ci_ub: tuple[float | None, ...]
    pi_lb: tuple[float | None, ...]
    pi_ub: tuple[float | None, ...]
    I2: tuple[float | None, ...]
    I2_lb: tuple[float | None, ...]
    I2_ub: tuple[float | None, ...]
    k: tuple[int | None, ...]
    flagged: tuple[bool, ...]
    sites: tuple[SiteTrend, ...] = field(default_factory=tuple)

    def drift(self) -> tuple[float, float] | None:
        """Change of the pooled estimate from the first to the latest pooled round and its z.

        ``z = (mu_last - mu_first) / sqrt(se_first^2 + se_last^2)`` treats the two rounds as
        independent samples (true for disjoint evaluation windows; conservative otherwise
        would need the overlap, which the coordinator does not know). None with fewer than
        two pooled rounds.
        """
        points = [(e, (u - lo) / (2 * 1.959963984540054)) for e, lo, u in
                  zip(self.estimate, self.ci_lb, self.ci_ub)
                  if e is not None and lo is not None and u is not None]
        if len(points) < 2:
            return None
        (first, se0), (last, se1) = points[0], points[-1]
        denom = math.sqrt(se0 ** 2 + se1 ** 2)
        return last - first, ((last - first) / denom if denom > 0 else float("nan"))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the content of ``trend.json``)."""
        drift = self.drift()
        return {
            "analysis": self.analysis, "measure": self.measure,
            "rounds": [
                {"round": r, "opened_at": o, "k": k, "estimate": e, "ci_lb": lo, "ci_ub": hi,
                 "pi_lb": pl, "pi_ub": pu, "I2": i2, "I2_ci": [il, iu], "flagged": f}
                for r, o, k, e, lo, hi, pl, pu, i2, il, iu, f in zip(
                    self.rounds, self.opened_at, self.k, self.estimate, self.ci_lb,
                    self.ci_ub, self.pi_lb, self.pi_ub, self.I2, self.I2_lb, self.I2_ub,
                    self.flagged)],
            "drift": None if drift is None else {"change": drift[0], "z": drift[1]},
            "sites": [{"site": s.site, "yi": list(s.yi), "se": list(s.se), "z": list(s.z),
                       "diverging": s.diverging, "diverging_since": s.diverging_since}
                      for s in self.sites],
        }


def _outside(z: float | None) -> bool:
    """A deleted residual beyond the divergence threshold (None: not computed)."""
    return z is not None and abs(z) > DIVERGENCE_Z


def _round_sort_key(doc: RoundDocument) -> tuple[str, str]:
    return (doc.opened_at or "", doc.round)


def trend_summary(round_docs: Sequence[RoundDocument | Mapping[str, Any]],
                  analyses: Sequence[str] | None = None) -> list[AnalysisTrend]:
    """Collect each analysis's series across rounds (ordered by ``opened_at``, then id).

    Parameters
    ----------
    round_docs
        Round documents (typed, or JSON objects validated here); rounds without the
        analysis are skipped for it.
    analyses
        Restrict to these analysis names (an unknown name is an InputError).
    """
    docs = sorted((RoundDocument.coerce(doc, where=f"round document #{index + 1}")
                   for index, doc in enumerate(round_docs)), key=_round_sort_key)
    names: list[str] = []
    for doc in docs:
        for a in doc.analyses:
            if a.analysis not in names:
                names.append(a.analysis)
    if analyses is not None:
        unknown = [n for n in analyses if n not in names]
        if unknown:
            raise InputError(f"--analysis {unknown[0]!r} is not in any round; analyses found: "
                             f"{', '.join(names) or 'none'}")
        names = [n for n in names if n in set(analyses)]
    trends = []
    for name in names:
        rows: list[tuple[RoundDocument, AnalysisResult]] = []
        for doc in docs:
            for a in doc.analyses:
                if a.analysis == name:
                    rows.append((doc, a))
                    break
        site_names: list[str] = []
        per_round: list[dict[str, tuple[float, float, float | None]]] = []
        for _, a in rows:
            ests = [(e.site, e.yi, e.vi) for e in a.site_estimates
                    if e.yi is not None and e.vi is not None and e.vi > 0]
            zs = deleted_residuals([y for _, y, _ in ests], [v for _, _, v in ests])
            per_round.append({s: (y, math.sqrt(v), z) for (s, y, v), z in zip(ests, zs)})
            for s, _, _ in ests:
                if s not in site_names:
                    site_names.append(s)
        site_trends = []
        for s in site_names:
            yi = tuple(r[s][0] if s in r else None for r in per_round)
            se = tuple(r[s][1] if s in r else None for r in per_round)
            z = tuple(r[s][2] if s in r else None for r in per_round)
            # Only the deleted residual counts: the coordinator's heterogeneity "sites" also
            # name merely *influential* sites (a large hospital with a typical effect), which
            # is not divergence.
            out_flags = [s in r and _outside(r[s][2]) for r in per_round]
            present = [i for i, r in enumerate(per_round) if s in r]
            diverging = bool(present) and out_flags[present[-1]]
            since = None
            if diverging:
                start = present[-1]
                for i in reversed(present):
                    if not out_flags[i]:
                        break
                    start = i
                since = rows[start][0].round
            site_trends.append(SiteTrend(s, yi, se, z, diverging, since))
        pooled = [a.pooled or _NOT_POOLED for _, a in rows]
        i2_ci = [_pair(p.I2_ci) for p in pooled]
        trends.append(AnalysisTrend(
            analysis=name,
            measure=next((a.measure for _, a in rows if a.measure), None),
            rounds=tuple(d.round for d, _ in rows),
            opened_at=tuple(d.opened_at for d, _ in rows),
            estimate=tuple(p.estimate for p in pooled),
            ci_lb=tuple(p.ci_lb for p in pooled),
            ci_ub=tuple(p.ci_ub for p in pooled),
            pi_lb=tuple(p.pi_lb for p in pooled),
            pi_ub=tuple(p.pi_ub for p in pooled),
            I2=tuple(p.I2 for p in pooled),
            I2_lb=tuple(lo for lo, _ in i2_ci), I2_ub=tuple(hi for _, hi in i2_ci),
            k=tuple(a.k for _, a in rows),
            flagged=tuple(bool(a.heterogeneity is not None and a.heterogeneity.flagged)
                          for _, a in rows),
            sites=tuple(site_trends)))
    return trends


_PALETTE = ["#b22222", "#a45d00", "#6a1b9a", "#00838f", "#ad1457", "#2e7d32"]


def _trend_figure(trend: AnalysisTrend, i2_threshold: float | None):
    """Three stacked panels: pooled estimate (CI, PI), site estimates, I² (CI)."""
    # A bare Figure with its own Agg canvas: no pyplot global state, which is not
    # thread-safe (the coordinator writes reports from a worker thread).
    # lazy: matplotlib (~1 s) is imported only when a figure is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(trend.rounds)
    x = list(range(n))
    fig = Figure(figsize=(8.4, 7.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1.1, 1.3, 0.8]})
    ax_est, ax_site, ax_i2 = axes
    label = None
    measure = (trend.measure or "").upper()
    if measure in _LOG_MEASURES:
        label = f"log {_LOG_MEASURES[measure]}"
    # Pooled estimate with CI whiskers and the prediction interval as a band.
    pts = [(i, e, lo, hi) for i, e, lo, hi in zip(x, trend.estimate, trend.ci_lb, trend.ci_ub)
           if e is not None]
    pis = [(i, lo, hi) for i, lo, hi in zip(x, trend.pi_lb, trend.pi_ub)
           if lo is not None and hi is not None]
    if len(pis) >= 2:
        ax_est.fill_between([p[0] for p in pis], [p[1] for p in pis], [p[2] for p in pis],
                            color="#1f4e79", alpha=0.10, lw=0)
    if pis:
        # each round's PI as a wide translucent bar too: visible for a single round, where
        # a band between rounds has no width
        ax_est.vlines([p[0] for p in pis], [p[1] for p in pis], [p[2] for p in pis],
                      color="#1f4e79", alpha=0.18, lw=9, label="95% prediction interval")
    if pts:
        ax_est.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color="#1f4e79",
                    label="pooled estimate", ms=5, clip_on=False, zorder=3)
        for i, e, lo, hi in pts:
            if lo is not None and hi is not None:
                ax_est.plot([i, i], [lo, hi], color="#1f4e79", lw=1.6)
    ax_est.axhline(0, color="#777777", lw=0.8)
    ax_est.set_ylabel(_mpl_text(label or "pooled estimate"))
    ax_est.legend(loc="best", fontsize=8, frameon=False)
    ax_est.set_title(_mpl_text(trend.analysis), loc="left", fontsize=11)
    # Per-site series; diverging sites in colour, the rest grey.
    colour = iter(_PALETTE * 10)
    for s in trend.sites:
        pts_s = [(i, y) for i, y in zip(x, s.yi) if y is not None]
        if not pts_s:
            continue
        if s.diverging:
            c = next(colour)
            ax_site.plot([p[0] for p in pts_s], [p[1] for p in pts_s], "-o", color=c, lw=2,
                         ms=5, label=_mpl_text(f"{s.site} (diverging)"), zorder=3)
        else:
            ax_site.plot([p[0] for p in pts_s], [p[1] for p in pts_s], "-", color="#9aa3b0",
                         lw=0.9, marker=".", ms=4, zorder=2)
        for i, (zv, y) in enumerate(zip(s.z, s.yi)):
            if zv is not None and y is not None and abs(zv) > DIVERGENCE_Z:
                ax_site.plot([i], [y], marker="o", ms=10, mfc="none", mec="#b22222", zorder=4)
    if pts:
        # a marker as well as the dashed line: one round is a point, and the legend shows both
        ax_site.plot([p[0] for p in pts], [p[1] for p in pts], "--D", color="#1f4e79", lw=1.2,
                     ms=5, label="pooled", zorder=2.5, clip_on=False)
    ax_site.axhline(0, color="#777777", lw=0.8)
    ax_site.set_ylabel("site estimates")
    handles = ax_site.get_legend_handles_labels()[0]
    if handles:
        ax_site.legend(loc="best", fontsize=8, frameon=False)
    # I² with its Q-profile CI.
    for i, v, lo, hi in zip(x, trend.I2, trend.I2_lb, trend.I2_ub):
        if v is None:
            continue
        if lo is not None and hi is not None:
            ax_i2.plot([i, i], [lo, hi], color="#a45d00", lw=1.6)
    i2_pts = [(i, v) for i, v in zip(x, trend.I2) if v is not None]
    if i2_pts:
        ax_i2.plot([p[0] for p in i2_pts], [p[1] for p in i2_pts], "-o", color="#a45d00", ms=5,
                   clip_on=False, zorder=3)
    if i2_threshold is not None:
        ax_i2.axhline(i2_threshold, color="#b22222", lw=0.8, ls=":")
    ax_i2.set_ylim(-6, 106)                     # a point at 0% or 100% stays whole
    ax_i2.set_ylabel("I\u00b2 (%)")
    # At most ~12 labelled rounds (always the latest), so two years of monthly rounds stay
    # readable; the tables below list every round.
    step = max(1, math.ceil(n / 12))
    ticks = sorted({i for i in range(n - 1, -1, -step)})
    ax_i2.set_xticks(ticks)
    ax_i2.set_xticklabels([_mpl_text(trend.rounds[i]) for i in ticks], rotation=30,
                          ha="right", fontsize=8)
    ax_i2.set_xlabel("round")
    for ax in axes:
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    if n == 1:
        ax_i2.set_xlim(-0.5, 0.5)
    for ax in (ax_est, ax_site):
        ax.margins(y=0.12)                      # markers at the extremes are not cut
    fig.tight_layout()
    return fig


def render_trend_html(trends: Sequence[AnalysisTrend], *, i2_threshold: float | None = 50.0,
                      title: str = "fedsynth trend report") -> str:
    """Render trend series (from :func:`trend_summary`) as a self-contained HTML page."""
    rounds = sorted({r for t in trends for r in t.rounds})
    parts = [f"<h1>{_esc(title)}</h1>",
             f"<p class=\"sub\">{_plural(len(trends), 'analysis', 'analyses')} across "
             f"{_plural(len(rounds), 'round', 'rounds')}</p>"]
    alerts = []
    for t in trends:
        for s in t.sites:
            if s.diverging:
                alerts.append(f"<li><strong>{_esc(s.site)}</strong> diverges in "
                              f"<em>{_esc(t.analysis)}</em> since round "
                              f"{_esc(s.diverging_since)}.</li>")
        drift = t.drift()
        if drift is not None and math.isfinite(drift[1]) and abs(drift[1]) > DIVERGENCE_Z:
            alerts.append(f"<li><em>{_esc(t.analysis)}</em>: the pooled estimate moved by "
                          f"{_fmt(drift[0])} from round {_esc(t.rounds[0])} to "
                          f"{_esc(t.rounds[-1])} (z = {drift[1]:.2f}).</li>")
    if alerts:
        parts.append("<div class=\"alert\"><strong>Worth a look</strong><ul class=\"reasons\">"
                     + "".join(alerts) + "</ul></div>")
    else:
        parts.append("<p class=\"note\">No site diverges in its latest round and no pooled "
                     "estimate drifted beyond its 95% band.</p>")
    parts.append("<p class=\"note\">A site diverges in a round when its standardized deleted "
                 "residual (its estimate against the random-effects fit of the other sites, "
                 "Viechtbauer &amp; Cheung 2010) exceeds \u00b11.96 (circled points in the "
                 "site panel). Drift "
                 "compares the first and latest pooled estimates, z = \u0394 / "
                 "\u221a(SE\u2081\u00b2 + SE\u2082\u00b2).</p>")
    for index, t in enumerate(trends):
        parts.append(f"<h2 id=\"a-{_esc(_anchor(t.analysis))}\">{_esc(t.analysis)}</h2>")
        svg = sanitize_svg(_figure_svg(_trend_figure(t, i2_threshold)), f"t{index}-")
        parts.append(f"<figure>{svg}<figcaption>Pooled estimate with 95% CI and prediction "
                     "band; site estimates (diverging sites in colour); I\u00b2 with its 95% "
                     "CI and the flag threshold.</figcaption></figure>")
        rows = []
        for r, e, lo, hi, pl, pu, i2, k, f in zip(t.rounds, t.estimate, t.ci_lb, t.ci_ub,
                                                  t.pi_lb, t.pi_ub, t.I2, t.k, t.flagged):
            k_cell = _esc(k) if k is not None else "&ndash;"
            rows.append(f"<tr><td>{_esc(r)}</td><td class=\"num\">{k_cell}</td>"
                        f"<td class=\"num\">{_fmt(e)}</td>"
                        f"<td class=\"num\">{_interval(lo, hi)}</td>"
                        f"<td class=\"num\">{_interval(pl, pu)}</td>"
                        f"<td class=\"num\">{_fmt(i2, 1)}%</td>"
                        f"<td>{_badge('flagged', 'moderate') if f else _badge('no', 'ok')}</td>"
                        "</tr>")
        parts.append("<div class=\"scroll\"><table><thead><tr><th>Round</th>"
                     "<th class=\"num\">k</th>"
                     "<th class=\"num\">Estimate</th><th class=\"num\">95% CI</th>"
                     "<th class=\"num\">95% PI</th><th class=\"num\">I\u00b2</th>"
                     "<th>Heterogeneity</th></tr></thead><tbody>" + "".join(rows)
                     + "</tbody></table></div>")
        site_rows = []
        for s in t.sites:
            cells = "".join(
                f"<td class=\"num\">{_fmt(y)}" + (f"<br><span class=\"note\">z {z:+.2f}</span>"
                                                  if z is not None else "") + "</td>"
                for y, z in zip(s.yi, s.z))
            status = (_badge(f"diverging since {s.diverging_since}", "strong")
                      if s.diverging else "")
            site_rows.append(f"<tr><td>{_esc(s.site)}{'<br>' + status if status else ''}</td>"
                             f"{cells}</tr>")
        if site_rows:
            head = "".join(f"<th class=\"num\">{_esc(r)}</th>" for r in t.rounds)
            parts.append("<div class=\"scroll\"><table><thead><tr><th>Site</th>" + head
                         + "</tr></thead><tbody>" + "".join(site_rows)
                         + "</tbody></table></div>")
    return _page(title, "\n".join(parts))


def write_trend_report(round_docs: Sequence[RoundDocument | Mapping[str, Any]],
                       report_dir: Path, *,
                       analyses: Sequence[str] | None = None,
                       i2_threshold: float | None = 50.0) -> Path:
    """Write ``trend.html`` and ``trend.json`` across rounds into ``report_dir``.

    Parameters
    ----------
    round_docs
        Round documents, typed or as JSON objects (any order; sorted by ``opened_at``).
        Rounds that failed without
        pooling still count as points with missing values.
    report_dir
        Output directory; created when missing.
    analyses
        Restrict the report to these analyses.
    i2_threshold
        The heterogeneity threshold drawn on the I² panel (the coordinator's
        ``[pooling] i2_threshold``).

    Returns
    -------
    Path
        The HTML file.
    """
    if not round_docs:
        raise InputError("trend report: no round documents given (need at least one round)")
    trends = trend_summary(round_docs, analyses)
    html_text = render_trend_html(trends, i2_threshold=i2_threshold)
    report_dir = Path(report_dir)
    json_text = json.dumps(strict_json({"analyses": [t.to_dict() for t in trends]}),
                           indent=2, allow_nan=False) + "\n"
    _atomic_write(report_dir / "trend.json", json_text)
    out = report_dir / "trend.html"
    _atomic_write(out, html_text)
    return out
