"""The IECV part of a round report: forest plots of held-out performance and the verdict.

Why
---
Issue 14 asks the report to show, per model with ``iecv = true``, how the global model
performs at each site it was not developed on: the forest plots of calibration-in-the-large
and of the c-statistic (each held-out site's estimate, the Knapp-Hartung pooled estimate
and the ``t(k-2)`` prediction interval: Riley et al., BMJ 2016; Debray et al., BMJ 2017),
the pooled measures of every candidate model, and the verdict with the numbers that drove
it (docs/decisions/iecv.md). The section lives in its own module so the report's layout
(coordinator/reports.py) calls it in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from coordinator.htmltext import escape_html as _esc
from coordinator.htmltext import format_number as _fmt
from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.models.iecv import POOLED_MEASURES, CandidateResult
from fedsynth.plots import forest_plot
from fedsynth.round_document import ModelResult

__all__ = ["iecv_section", "IECV_PLOTS"]

#: The forest plots the report draws (measure, label), on the global model.
IECV_PLOTS: tuple[tuple[str, str], ...] = (
    ("calibration_in_the_large", "calibration-in-the-large"), ("logit_auc", "c-statistic"))
_LABELS = {"logit_auc": "c-statistic (logit)", "calibration_slope": "calibration slope",
           "calibration_in_the_large": "calibration-in-the-large", "log_OE": "log O:E"}
_VARIANTS = {"global": "global", "global_recalibrated": "global, intercept recalibrated",
             "hierarchical": "hierarchical (mean intercept)",
             "hierarchical_recalibrated": "hierarchical, intercept recalibrated"}

#: ``to_svg(figure, id_prefix) -> sanitized SVG text`` (the report's serializer).
ToSvg = Callable[[Any, str], str]




def _interval(lower: Any, upper: Any) -> str:
    if finite_or_none(lower) is None or finite_or_none(upper) is None:
        return "\u2013"
    return f"{_fmt(lower)} to {_fmt(upper)}"


def _candidates(entry: ModelResult) -> dict[str, CandidateResult]:
    out = {}
    raw: dict[str, Mapping[str, Any]] = {}
    if entry.iecv:
        raw["global"] = entry.iecv
    raw.update({str(v): c for v, c in (entry.iecv_candidates or {}).items() if c})
    for variant, data in raw.items():
        try:
            out[variant] = CandidateResult.from_dict(variant, data)
        except (InputError, KeyError, TypeError, ValueError):
            continue               # a hand-edited document: show what can be read
    return out


def iecv_section(entry: ModelResult, *, prefix: str, to_svg: ToSvg) -> str:
    """HTML of one model's IECV: verdict, pooled measures per candidate, two forest plots.

    Parameters
    ----------
    entry
        The model's entry of the round document.
    prefix
        Unique id prefix for the SVGs of this model (the page holds many).
    to_svg
        The report's figure serializer (sanitizes the SVG).

    Returns
    -------
    str
        Empty when the model has no IECV keys.
    """
    if entry.iecv is None and not entry.iecv_notes and not entry.iecv_candidates:
        return ""
    parts = [f"<h4 id=\"iecv-{_esc(entry.name)}\">Internal-external cross-validation of "
             f"{_esc(entry.name)}</h4>",
             "<p class=\"note\">Each site held out in turn: the model is developed on the "
             "other sites (federated) and measured on the held-out site's own patients. "
             "Pooled across held-out sites by REML with Knapp-Hartung; 95% prediction "
             "interval with t(k-2).</p>"]
    rec = entry.recommendation or {}
    if rec.get("choice"):
        reasons = "".join(f"<li>{_esc(r)}</li>" for r in rec.get("reasons") or [])
        parts.append(f"<div class=\"alert\"><p><strong>Recommendation: "
                     f"{_esc(rec['choice'])}</strong></p><ul class=\"reasons\">{reasons}"
                     "</ul></div>")
    candidates = _candidates(entry)
    if candidates:
        rows = []
        for variant, result in candidates.items():
            for measure in POOLED_MEASURES:
                p = result.pooled.get(measure, {}).get("knha")
                if p is None:
                    continue
                rows.append(f"<tr><td>{_esc(_VARIANTS.get(variant, variant))}</td>"
                            f"<td>{_esc(_LABELS[measure])}</td>"
                            f"<td class=\"num\">{_fmt(p.estimate)}</td>"
                            f"<td class=\"num\">{_interval(p.ci_lb, p.ci_ub)}</td>"
                            f"<td class=\"num\">{_fmt(p.tau)}</td>"
                            f"<td class=\"num\">{_interval(p.pi_lb, p.pi_ub)}</td>"
                            f"<td class=\"num\">{p.k}</td></tr>")
        parts.append("<div class=\"scroll\"><table class=\"iecv\"><thead><tr>"
                     "<th>Candidate</th><th>Measure</th><th class=\"num\">Pooled</th>"
                     "<th class=\"num\">95% CI</th><th class=\"num\">\u03c4</th>"
                     "<th class=\"num\">95% PI</th><th class=\"num\">k</th></tr></thead>"
                     "<tbody>" + "\n".join(rows) + "</tbody></table></div>"
                     "<p class=\"note\">On the pooling scale (logit c-statistic, log O:E). "
                     "A recalibrated candidate's calibration-in-the-large and log O:E are 0 "
                     "at every site by construction.</p>")
    glob = candidates.get("global")
    if glob is not None:
        for index, (measure, label) in enumerate(IECV_PLOTS):
            data = glob.forest_input(measure)
            if len(data["yi"]) < 2:
                continue
            fig = forest_plot(data, measure=label, estimand=label,
                              title=f"{entry.name}: {label} at each held-out site")
            parts.append(f"<figure>{to_svg(fig, f'{prefix}{index}-')}<figcaption>"
                         f"{_esc(entry.name)}, global model: {_esc(label)} at each held-out "
                         "site with its 95% CI (box area: random-effects weight), the "
                         "Knapp-Hartung pooled estimate (diamond) and the 95% prediction "
                         "interval, t(k-2) (dashed).</figcaption></figure>")
    if entry.iecv_notes:
        items = "".join(f"<li>{_esc(n)}</li>" for n in entry.iecv_notes)
        parts.append(f"<ul class=\"reasons note\">{items}</ul>")
    if entry.iecv_round_trips is not None:
        parts.append(f"<p class=\"note\">IECV: {entry.iecv_round_trips} round trips, "
                     f"{_fmt(entry.iecv_seconds, 2)} s.</p>")
    return "\n".join(parts)
