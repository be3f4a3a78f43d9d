"""Round lifecycle: open a round, decide when it closes, pool it, build its document.

Why
---
A round is open until every allowed site has answered or its deadline passes (whichever
comes first); then it is *pooled* if at least ``quorum`` sites submitted, else *failed*
with a plain reason. All analyses are pooled in one call of the batch engine
(:func:`fedsynth.meta.pool`, metafor's definitions) over the sites that sent an
estimate, and each gets the heterogeneity flag of docs/architecture.md
(:func:`fedsynth.meta.analysis.analyse` with ``pooled=``); sites that refused are
listed with their reasons, so the report shows who is missing from each number. The
result is a typed :class:`fedsynth.round_document.RoundDocument`; the store keeps its JSON
form (:meth:`~fedsynth.round_document.RoundDocument.to_dict`).

An analysis whose spec asks for released likelihoods (``release = "likelihood"``) is
pooled twice: as every analysis, over the sites whose likelihood has a finite maximum
(their estimate and its variance: the normal approximation), and over every site's
likelihood (:mod:`fedsynth.meta.likelihood`: fixed effect by summed log-likelihoods with
the likelihood-ratio interval, random effects by Bayesian quadrature with the spec's
prior on tau), reported side by side with the difference
(:class:`fedsynth.round_document.LikelihoodPooling`).

Pooling is a pure function of the stored submissions (:func:`pool_round`), so a coordinator
that crashed mid-close recomputes the same document after restart, and the store's
conditional close (:meth:`coordinator.store.Store.close_round`) keeps only one of them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coordinator.store import RoundRecord, Store, SubmissionRecord
from fedsynth.config import (
    DEFAULT_PERFORMANCE_METHOD,
    DEFAULT_PERFORMANCE_TEST,
    DEFAULT_PI_WIDTH,
)
from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.round_document import (
    AnalysisResult,
    FlagDetails,
    HeterogeneityVerdict,
    LikelihoodPooling,
    ModelResult,
    PooledEstimate,
    PoolingSettings,
    RoundDocument,
    SiteBlup,
    SiteDriver,
    SiteEstimate,
    SiteLikelihood,
    SiteParticipation,
)
from fedsynth.spec import parse_spec
from fedsynth.timeutil import iso
from fedsynth.vocabulary import AnalysisScale, analysis_scale

if TYPE_CHECKING:
    from fedsynth.meta.heterogeneity import ClinicalWidth

__all__ = ["RoundOutcome", "open_round", "round_document", "is_due", "pool_analyses",
           "pool_round", "close_if_due", "likelihood_section", "model_entries"]

log = logging.getLogger(__name__)


def open_round(store: Store, *, spec_source: str, deadline: _dt.timedelta,
               quorum: int | None, allowed: tuple[str, ...], pooling: dict[str, Any],
               now: _dt.datetime, source: str | None = None) -> RoundRecord:
    """Validate the spec (TOML text) and the terms, then open a round in the store."""
    spec = parse_spec(spec_source)
    if not allowed:
        raise InputError("sites.allow is empty: a round needs at least one allowed site")
    if quorum is None:
        quorum = len(allowed)
    if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
        raise InputError(f"quorum = {quorum!r} must be a positive integer")
    if quorum > len(allowed):
        raise InputError(f"quorum = {quorum} exceeds the {len(allowed)} allowed sites "
                         f"({', '.join(allowed)})")
    if deadline.total_seconds() <= 0:
        raise InputError(f"deadline = {deadline} must be positive")
    return store.create_round(spec_toml=spec.to_toml(), spec=spec.to_dict(),
                              deadline=now + deadline, quorum=quorum, allowed=allowed,
                              pooling=pooling, now=now, source=source)


def _sites_section(record: RoundRecord,
                   subs: list[SubmissionRecord]) -> tuple[SiteParticipation, ...]:
    by_site = {s.site: s for s in subs}
    out = []
    for site in record.allowed:
        sub = by_site.get(site)
        if sub is None:
            out.append(SiteParticipation(site, "missing", None, {}))
        else:
            refusals = {name: r["refused"] for name, r in sub.results.items()
                        if "refused" in r}
            out.append(SiteParticipation(site, "submitted", sub.received_at, refusals))
    return tuple(out)


def _document(record: RoundRecord, *, status: str, closed_at: str | None,
              failure_reason: str | None, sites: tuple[SiteParticipation, ...],
              missing_sites: tuple[str, ...] | None,
              analyses: tuple[AnalysisResult, ...],
              models: tuple[ModelResult, ...] = ()) -> RoundDocument:
    return RoundDocument(
        round=record.id, status=status, spec=record.spec, opened_at=iso(record.opened_at),
        deadline=iso(record.deadline), closed_at=closed_at, quorum=record.quorum,
        failure_reason=failure_reason,
        pooling=PoolingSettings.from_dict(record.pooling, where=f"round {record.id}: pooling"),
        sites=sites, missing_sites=missing_sites, analyses=analyses, models=models)


def round_document(store: Store, record: RoundRecord) -> RoundDocument:
    """The round document (docs/round-document.md) of a stored round.

    A closed round's document is the one stored at its close (read back and validated by
    :meth:`~fedsynth.round_document.RoundDocument.from_dict`); an open round's shows who
    has answered so far and no analyses.
    """
    if record.document is not None:
        return RoundDocument.from_dict(record.document, where=f"stored round {record.id}")
    subs = store.submissions(record.id)
    return _document(record, status=record.status, closed_at=iso(record.closed_at),
                     failure_reason=record.failure_reason, sites=_sites_section(record, subs),
                     missing_sites=None, analyses=())


def is_due(record: RoundRecord, n_submitted: int, now: _dt.datetime, *,
           models_done: bool = True) -> bool:
    """A round closes when every allowed site answered or its deadline has passed.

    A round with models also waits, before its deadline, until their fits are done
    (``models_done``; :mod:`coordinator.models`).
    """
    if not record.is_open:
        return False
    if now > record.deadline:
        return True
    return n_submitted >= len(record.allowed) and models_done


def model_entries(record: RoundRecord, stored: tuple[str, list[dict[str, Any]]] | None,
                  *, quorum_met: bool) -> tuple[ModelResult, ...]:
    """The ``models`` of a round's document at its close, one per model of the spec.

    The stored fits when they are done; otherwise each model is ``failed`` with the reason
    (the round's quorum was not met, or the fits did not finish before the deadline).
    """
    specs = list(record.spec.get("models") or [])
    if not specs:
        return ()
    by_name = {}
    if stored is not None and stored[0] == "done":
        by_name = {str(e.get("name")): e for e in stored[1]}
    out = []
    for spec in specs:
        entry = by_name.get(str(spec.get("name")))
        if entry is None:
            reason = ("the round did not reach its quorum, so no model was fitted"
                      if not quorum_met else
                      "the model fits did not finish before the round's deadline")
            entry = {"name": spec.get("name"), "family": spec.get("family"),
                     "status": "failed", "reason": reason, "n": 0, "sites": []}
        out.append(ModelResult.from_dict(entry, where=f"round {record.id}: model"))
    return tuple(out)


def _verdict(flag: Any) -> HeterogeneityVerdict:
    """The document's heterogeneity section from a :class:`fedsynth.meta.HeterogeneityFlag`.

    The drivers' numbers may be NaN (e.g. no deleted fit): they become None.
    """
    ci = (None if flag.I2_ci_lb is None and flag.I2_ci_ub is None
          else (finite_or_none(flag.I2_ci_lb), finite_or_none(flag.I2_ci_ub)))
    drivers = tuple(SiteDriver(site=d.site, index=d.index, kinds=tuple(d.kinds),
                               rstudent=finite_or_none(d.rstudent),
                               blup=finite_or_none(d.blup),
                               blup_pi_lb=finite_or_none(d.blup_pi_lb),
                               blup_pi_ub=finite_or_none(d.blup_pi_ub))
                    for d in flag.drivers)
    clinical = None if flag.clinical is None else flag.clinical.to_dict()
    return HeterogeneityVerdict(
        flagged=bool(flag.flagged), level=flag.level, reasons=tuple(flag.reasons),
        sites=tuple(flag.sites), details=FlagDetails(
            drivers=drivers, I2=finite_or_none(flag.I2), I2_ci=ci,
            i2_threshold=flag.i2_threshold, null_value=flag.null_value,
            pi_crosses_null=bool(flag.pi_crosses_null), rules=tuple(flag.rules),
            clinical_width=clinical, pi_beyond_width=bool(flag.pi_beyond_width)))


#: The verdict of an analysis with nothing pooled.
_NO_FLAG = HeterogeneityVerdict(flagged=False, level=None, reasons=(), sites=())


@dataclass(frozen=True)
class _Plan:
    """How one analysis is pooled.

    Its scales and null (fedsynth.vocabulary), its method and test, its prediction
    interval and its clinical width.
    """

    scale: AnalysisScale
    method: str
    test: str
    pi_df: str
    clinical: ClinicalWidth | None

    @property
    def key(self) -> tuple[Any, ...]:
        """Analyses with equal keys are pooled and flagged in one batch call."""
        return (self.scale, self.method, self.test, self.pi_df, self.clinical)


def _plan(analysis: dict[str, Any], pooling: dict[str, Any]) -> _Plan:
    # lazy: keeps scipy and numpy out of `fedsynth round start/show` start-up
    from fedsynth.meta.heterogeneity import ClinicalWidth

    s = _settings(pooling)
    scale = analysis_scale(analysis.get("estimator"), analysis.get("measure"),
                           analysis.get("scale"))
    perf = scale.performance
    width = s["pi_width"].get(str(analysis.get("estimator") or ""))
    return _Plan(scale=scale,
                 method=s["performance_method"] if perf else s["method"],
                 test=s["performance_test"] if perf else s["test"],
                 pi_df="k-2" if perf else "k-1",
                 clinical=ClinicalWidth.from_setting(width) if width is not None else None)


@dataclass(frozen=True)
class _Column:
    """One analysis' inputs gathered from the submissions."""

    name: str
    estimates: tuple[SiteEstimate, ...]
    refused: dict[str, str]
    cells: dict[int, tuple[float, float]]        # column of the site -> (yi, vi), pooling scale
    notes: tuple[str, ...] = ()


def _gather(name: str, subs: list[SubmissionRecord], plan: _Plan | None = None) -> _Column:
    estimates: list[SiteEstimate] = []
    refused: dict[str, str] = {}
    cells: dict[int, tuple[float, float]] = {}
    notes: list[str] = []
    for j, sub in enumerate(subs):
        result = sub.results.get(name)
        if result is None:
            refused[sub.site] = "the site's submission has no answer for this analysis"
        elif "refused" in result:
            refused[sub.site] = str(result["refused"])
        else:
            if "likelihood" in result:
                # A released likelihood: its own estimate and variance (when it has a
                # finite maximum) are the site's normal approximation.
                lik = result["likelihood"]
                est, se = lik.get("estimate"), lik.get("se")
                if est is None or se is None:
                    notes.append(f"site {sub.site} sent a likelihood without a finite "
                                 "maximum (no estimate of its own): it is pooled in the "
                                 "likelihood section only")
                    continue
                result = {"yi": est, "vi": se * se, "se": se, "n": result.get("n")}
            n = result["n"]
            y, v = finite_or_none(result["yi"]), finite_or_none(result["vi"])
            estimates.append(SiteEstimate(
                site=sub.site, yi=y, vi=v, se=finite_or_none(result["se"]),
                n=int(n) if isinstance(n, (int, float)) and math.isfinite(n) else None))
            # a non-finite value keeps its cell out of the batch (pooled alone, with a note)
            cy, cv = (math.nan if y is None else y, math.nan if v is None else v)
            if plan is not None and plan.scale.site_scale != plan.scale.scale:
                # lazy: keeps scipy and numpy out of `fedsynth round start/show` start-up
                from fedsynth.meta.scales import to_pooling_scale

                ty, tv = to_pooling_scale([cy], [cv], plan.scale.site_scale,
                                          plan.scale.scale)
                if not (math.isfinite(ty[0]) and math.isfinite(tv[0])) and \
                        math.isfinite(cy):
                    notes.append(f"site {sub.site}: {plan.scale.estimand} {cy:g} has no "
                                 f"{plan.scale.scale} (it was left out of the pooling)")
                    continue
                cy, cv = float(ty[0]), float(tv[0])
            cells[j] = (cy, cv)
    return _Column(name, tuple(estimates), refused, cells, tuple(notes))


def _settings(pooling: dict[str, Any]) -> dict[str, Any]:
    """The round's pooling settings.

    With the defaults of rounds opened before a key existed
    (``fedsynth.config.PoolingConfig``).
    """
    width = pooling.get("pi_width")
    return {"method": pooling.get("method", "REML"), "test": pooling.get("test", "z"),
            "level": float(pooling.get("level", 95.0)),
            "i2_threshold": float(pooling.get("i2_threshold", 50.0)),
            "performance_method": pooling.get("performance_method",
                                              DEFAULT_PERFORMANCE_METHOD),
            "performance_test": pooling.get("performance_test", DEFAULT_PERFORMANCE_TEST),
            "pi_width": dict(DEFAULT_PI_WIDTH if width is None else width)}


def _entry(analysis: dict[str, Any], column: _Column, plan: _Plan, *,
           pooled: dict[str, Any] | None, verdict: HeterogeneityVerdict,
           notes: list[str], blups: tuple[SiteBlup, ...] = ()) -> AnalysisResult:
    sc = plan.scale
    return AnalysisResult(
        analysis=column.name, estimator=analysis.get("estimator"),
        measure=analysis.get("measure"), k=len(column.cells), method=plan.method,
        test=plan.test, pooled=None if pooled is None else PooledEstimate.from_mapping(pooled),
        heterogeneity=verdict, notes=tuple(column.notes) + tuple(notes),
        site_estimates=column.estimates, refused=column.refused, scale=sc.scale,
        null_value=sc.null_value, estimand=sc.estimand, site_scale=sc.site_scale,
        pi_df=plan.pi_df, blups=blups)


def _pool_group(plan: _Plan, rows: list[int], columns: list[_Column], subs: list[SubmissionRecord],
                analyses: list[dict[str, Any]], level: float,
                i2_threshold: float) -> dict[int, AnalysisResult]:
    """Pool and flag the analyses ``rows`` (all of one plan) in one batch call."""
    # lazy: keeps scipy and numpy out of `fedsynth round start/show` start-up
    import numpy as np

    # lazy: keeps scipy and numpy out of `fedsynth round start/show` start-up
    from fedsynth.meta import pool
    from fedsynth.meta.heterogeneity import assess_heterogeneity_batch
    from fedsynth.meta.scales import performance_inference, with_inference

    K = len(subs)
    yi = np.zeros((len(rows), K))
    vi = np.ones((len(rows), K))
    mask = np.zeros((len(rows), K), dtype=bool)
    for r, i in enumerate(rows):
        for j, (y, v) in columns[i].cells.items():
            yi[r, j], vi[r, j], mask[r, j] = y, v, True
    labels = np.broadcast_to(np.array([sub.site for sub in subs], dtype=object),
                             (len(rows), K))
    batch = pool(yi, vi, mask=mask, method=plan.method, test=plan.test, level=level,
                 names=[columns[i].name for i in rows], labels=labels)
    # the measure's own null and, for performance measures, the t(k - 2) PI
    batch = with_inference(batch, performance_inference(
        batch.estimate, batch.se, batch.tau2, batch.k, null=plan.scale.null_on_scale,
        test=plan.test, level=batch.level, pi_df=plan.pi_df,
        random_effects=plan.method != "FE"))
    flags = assess_heterogeneity_batch(
        batch, i2_threshold=i2_threshold, null_value=plan.scale.null_on_scale,
        scale=plan.scale.scale, clinical=plan.clinical, estimand=plan.scale.estimand)
    diag = flags.diagnostics
    dicts = batch.to_dicts()
    out: dict[int, AnalysisResult] = {}
    for r, i in enumerate(rows):
        column = columns[i]
        notes = [str(batch.messages[r])] if batch.messages[r] else []
        k = int(batch.k[r])
        if plan.pi_df == "k-2" and plan.method != "FE" and k == 2:
            notes.append("no prediction interval with k = 2: it uses t with k - 2 df "
                         "(Riley et al. 2011)")
        if plan.scale.null_value is None:
            notes.append(f"the {plan.scale.estimand} has no null value: no p-value")
        blups = tuple(
            SiteBlup(site=subs[j].site, yi=float(yi[r, j]), vi=float(vi[r, j]),
                     blup=finite_or_none(diag.blup[r, j]),
                     blup_pi_lb=finite_or_none(diag.blup_pi_lb[r, j]),
                     blup_pi_ub=finite_or_none(diag.blup_pi_ub[r, j]))
            for j in range(K) if mask[r, j])
        out[i] = _entry(analyses[i], column, plan, pooled=dicts[r],
                        verdict=_verdict(flags[r]), notes=notes, blups=blups)
    return out


def _analysis_entry(analysis: dict[str, Any], column: _Column, plan: _Plan,
                    subs: list[SubmissionRecord], pooling: dict[str, Any]) -> AnalysisResult:
    """One analysis pooled on its own: the fallback when the batch call fails.

    A batch of all analyses fails as a whole on one bad value (``pool`` validates every
    cell), so the analyses are then pooled one by one and only the bad one carries the
    error as a note; one bad analysis must not sink the round.
    """
    # lazy: keeps scipy and numpy out of `fedsynth round start/show` start-up

    if not column.cells:
        note = ("no site sent an estimate for this analysis; nothing was pooled"
                if not column.estimates else "no site estimate could be pooled")
        return _entry(analysis, column, plan, pooled=None, verdict=_NO_FLAG, notes=[note])
    s = _settings(pooling)
    try:
        return _pool_group(plan, [0], [column], subs, [analysis], s["level"],
                           s["i2_threshold"])[0]
    except Exception as error:  # noqa: BLE001 - one bad analysis must not sink the round
        log.exception("pooling of analysis %s failed", column.name)
        return _entry(analysis, column, plan, pooled=None, verdict=_NO_FLAG,
                      notes=[f"pooling failed: {error}"])


def pool_analyses(analyses: list[dict[str, Any]], subs: list[SubmissionRecord],
                  pooling: dict[str, Any]) -> list[AnalysisResult]:
    """The ``analyses`` section of a pooled round: one batch call per kind of analysis.

    Each analysis is pooled on its measure's scale and tested against its measure's null
    (:func:`fedsynth.vocabulary.analysis_scale`: an AUC on the logit scale against 0.5, a
    calibration slope against 1, O:E on the log scale against 1, the Brier score without
    a test); measures of a risk model's performance are pooled as the prediction-model
    literature does (``performance_method``/``performance_test`` of ``[pooling]``, REML
    with Knapp-Hartung by default, prediction interval with t(k - 2); Debray et al. 2017,
    BMJ 356:i6460). Analyses that share all of that are laid out as a sites x analyses
    grid with a mask of the cells a site answered (refusals and missing answers are outside
    the mask), pooled by one vectorised :func:`fedsynth.meta.pool` call and flagged by
    one :func:`fedsynth.meta.heterogeneity.assess_heterogeneity_batch` call, which also
    gives every site's BLUP (the report shows them for flagged analyses). The case
    diagnostics and small-study tests (leave-one-out, influence table, Egger, Begg,
    trim-and-fill) are not part of the round document: they are reproducible on demand
    from ``site_estimates`` (``fedsynth meta --diagnostics``); see
    docs/decisions/federation.md ("Closing a round").

    Every value is built JSON-ready (``PoolingResult``/``BatchPoolingResult`` dicts map
    NaN to None, site estimates are converted as they are gathered).
    """
    # lazy: keeps numpy out of `fedsynth round start/show` start-up

    # lazy: keeps scipy and numpy out of `fedsynth round start/show` start-up

    plans = [_plan(a, pooling) for a in analyses]
    columns = [_gather(a["name"], subs, plan) for a, plan in zip(analyses, plans)]
    s = _settings(pooling)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, c in enumerate(columns):
        if c.cells and all(math.isfinite(y) and math.isfinite(v) and v > 0
                           for y, v in c.cells.values()):
            groups.setdefault(plans[i].key, []).append(i)
    entries: dict[int, AnalysisResult] = {}
    for rows in groups.values():
        try:
            entries.update(_pool_group(plans[rows[0]], rows, columns, subs, analyses,
                                       s["level"], s["i2_threshold"]))
        except Exception:  # noqa: BLE001 - fall back to one analysis at a time
            log.exception("batch pooling of %d analyses failed; pooling one by one",
                          len(rows))
    out = [entries[i] if i in entries
           else _analysis_entry(a, columns[i], plans[i], subs, pooling)
           for i, a in enumerate(analyses)]
    for i, a in enumerate(analyses):
        if a.get("release") == "likelihood":
            out[i] = dataclasses.replace(out[i], likelihood=likelihood_section(
                a, subs, out[i].pooled, level=s["level"], method=out[i].method))
    return out


def _fmt_ratio(x: float | None) -> str:
    return "unbounded" if x is None else f"{math.exp(x):.3g}"


def _statement(section: LikelihoodPooling, pooled: PooledEstimate | None,
               method: str | None) -> str:
    """Plain sentences comparing likelihood pooling with the normal approximation."""
    est, lev = section.estimand or "ratio", f"{section.level or 95:g}%"
    parts = []
    if section.estimate is not None:
        parts.append(
            f"Likelihood pooling of {section.k} site(s) ({section.k_without_estimate} "
            f"without an estimate of their own), fixed effect: {est} "
            f"{_fmt_ratio(section.estimate)}, {lev} likelihood-ratio CI "
            f"[{_fmt_ratio(section.ci_lb)}, {_fmt_ratio(section.ci_ub)}].")
    if section.mu_median is not None and section.mu_ci is not None:
        parts.append(
            f"Random effects ({section.prior} prior on tau, scale {section.tau_scale:g}): "
            f"median {est} {_fmt_ratio(section.mu_median)}, {lev} CrI "
            f"[{_fmt_ratio(section.mu_ci[0])}, {_fmt_ratio(section.mu_ci[1])}].")
    if section.normal_estimate is not None:
        parts.append(
            f"Normal approximation (inverse variance, the {section.normal_k} site(s) with "
            f"an estimate): {est} {_fmt_ratio(section.normal_estimate)} "
            f"[{_fmt_ratio(section.normal_ci_lb)}, {_fmt_ratio(section.normal_ci_ub)}].")
    else:
        parts.append("Normal approximation: no site has an estimate of its own.")
    if section.difference is not None:
        parts.append(f"Difference (likelihood - normal, fixed effect): "
                     f"{section.difference:+.4f} on the log scale (ratio "
                     f"{math.exp(section.difference):.3g}).")
    if section.difference_random is not None and pooled is not None:
        parts.append(f"Against the analysis's {method} pooling of the normal "
                     f"approximations ({est} {_fmt_ratio(pooled.estimate)}): "
                     f"{section.difference_random:+.4f} on the log scale.")
    return " ".join(parts)


def likelihood_section(analysis: dict[str, Any], subs: list[SubmissionRecord],
                       pooled: PooledEstimate | None, *, level: float,
                       method: str | None = None) -> LikelihoodPooling:
    """Pool the sites' released likelihoods of one analysis (the round document's section).

    Each site's stored ``likelihood`` is read back with
    :func:`fedsynth.effects.likelihood.approximation_from_dict` (an estimate sent instead
    is a normal likelihood); the fixed-effect and random-effects poolings are those of
    :mod:`fedsynth.meta.likelihood`, so the section equals pooling the same likelihoods
    directly. A stage that cannot be computed (e.g. every likelihood monotone in the same
    direction: no finite maximum) leaves its fields null with a note.
    """
    # lazy: keeps scipy and numpy out of `fedsynth round start/show` start-up
    from fedsynth.effects.likelihood import NormalApproximation, approximation_from_dict
    from fedsynth.meta.likelihood import pool_likelihoods, pool_likelihoods_random

    name = str(analysis.get("name"))
    ratio = "HR" if analysis.get("estimator") == "cox" else "OR"
    prior, _, scale = str(analysis.get("prior") or "half_normal:0.5").partition(":")
    sites: list[SiteLikelihood] = []
    approx: list[Any] = []
    notes: list[str] = []
    for sub in subs:
        result = sub.results.get(name)
        if not result or "refused" in result:
            continue
        try:
            if "likelihood" in result:
                a = approximation_from_dict(result["likelihood"],
                                            where=f"site {sub.site}: likelihood")
                data = result["likelihood"]
            else:
                a = NormalApproximation(float(result["yi"]), float(result["se"]))
                data = a.to_dict()
        except (InputError, KeyError, TypeError, ValueError) as error:
            notes.append(f"site {sub.site}: its likelihood could not be read ({error})")
            continue
        approx.append(a)
        sites.append(SiteLikelihood(
            site=sub.site, form=a.form, n=result.get("n"),
            estimate=finite_or_none(a.estimate), se=finite_or_none(a.se),
            likelihood=data))
    values: dict[str, Any] = {}
    if approx:
        try:
            fe = pool_likelihoods(approx, level=level)
            values.update(
                estimate=finite_or_none(fe.estimate), se=finite_or_none(fe.se),
                ci_lb=finite_or_none(fe.ci_lb), ci_ub=finite_or_none(fe.ci_ub),
                normal_estimate=finite_or_none(fe.normal_estimate),
                normal_se=finite_or_none(fe.normal_se),
                normal_ci_lb=finite_or_none(fe.normal_ci_lb),
                normal_ci_ub=finite_or_none(fe.normal_ci_ub), normal_k=fe.normal_k,
                difference=finite_or_none(fe.difference))
        except InputError as error:
            notes.append(f"fixed effect: {error}")
        try:
            re = pool_likelihoods_random(approx, prior=prior, scale=float(scale or 0.5),
                                         level=level)
            values.update(
                prior=re.prior, tau_scale=re.tau_scale,
                mu_median=finite_or_none(re.mu_median), mu_mean=finite_or_none(re.mu_mean),
                mu_sd=finite_or_none(re.mu_sd),
                mu_ci=(finite_or_none(re.mu_ci_lb), finite_or_none(re.mu_ci_ub)),
                tau_median=finite_or_none(re.tau_median),
                tau_ci=(finite_or_none(re.tau_ci_lb), finite_or_none(re.tau_ci_ub)),
                prob_mu_positive=finite_or_none(re.prob_mu_positive))
            if pooled is not None and pooled.estimate is not None and \
                    values["mu_median"] is not None:
                values["difference_random"] = values["mu_median"] - pooled.estimate
        except InputError as error:
            notes.append(f"random effects: {error}")
    else:
        notes.append("no site released a likelihood for this analysis; nothing was pooled")
    section = LikelihoodPooling(
        parameter=f"log {ratio}", estimand=ratio, form=analysis.get("likelihood_form"),
        k=len(approx), k_without_estimate=sum(1 for x in sites if x.estimate is None),
        level=level, notes=tuple(notes), sites=tuple(sites), **values)
    return dataclasses.replace(section, statement=_statement(section, pooled, method))


@dataclass(frozen=True)
class RoundOutcome:
    """The result of closing a round.

    Attributes
    ----------
    status
        ``pooled`` or ``failed``.
    document
        The round document committed to the store.
    failure_reason
        Why the round failed, or None.
    n_submissions
        How many sites submitted.
    """

    status: str
    document: RoundDocument
    failure_reason: str | None
    n_submissions: int


def pool_round(record: RoundRecord, subs: list[SubmissionRecord],
               now: _dt.datetime,
               models: tuple[str, list[dict[str, Any]]] | None = None) -> RoundOutcome:
    """Pool every analysis of the round (pure: no store access).

    ``models`` is the round's stored model fits (:meth:`coordinator.store.Store.
    model_results`), written into the document's ``models``.
    """
    submitted = [s.site for s in subs]
    missing = tuple(s for s in record.allowed if s not in submitted)
    analyses: list[AnalysisResult] = []
    if len(subs) >= record.quorum:
        status, reason = "pooled", None
        analyses = pool_analyses(list(record.spec.get("analyses", [])), subs,
                                 record.pooling)
    else:
        status = "failed"
        reason = (f"only {len(subs)} of {len(record.allowed)} sites submitted before the "
                  f"deadline {iso(record.deadline)}, fewer than the quorum of "
                  f"{record.quorum}; missing: {', '.join(missing) or 'none'}")
    document = _document(record, status=status, closed_at=iso(now), failure_reason=reason,
                         sites=_sites_section(record, subs), missing_sites=missing,
                         analyses=tuple(analyses),
                         models=model_entries(record, models,
                                              quorum_met=len(subs) >= record.quorum))
    return RoundOutcome(status, document, reason, len(subs))


def close_if_due(store: Store, round_id: str, now: _dt.datetime) -> RoundOutcome | None:
    """Close ``round_id`` if it is due; return the outcome if *this call* closed it.

    Retries when a submission arrived between reading and closing (the store's optimistic
    check); returns None when the round is not due or someone else closed it.
    """
    for _attempt in range(10):
        record = store.get_round(round_id)
        if not record.is_open:
            return None
        models = store.model_results(round_id) if record.spec.get("models") else None
        done = not record.spec.get("models") or (models is not None and models[0] == "done")
        # the round's counter (bumped in each submission's transaction) decides; the
        # submissions are read only to pool them, not at every closer step while the round
        # fills (that read parsed every stored submission twice a second)
        if not is_due(record, record.n_submissions, now, models_done=done):
            return None
        subs = store.submissions(round_id)
        if len(subs) != record.n_submissions:
            continue                  # a submission committed in between: read again
        outcome = pool_round(record, subs, now, models)
        if store.close_round(round_id, status=outcome.status,
                             document=outcome.document.to_dict(),
                             failure_reason=outcome.failure_reason,
                             seen_submissions=len(subs), now=now):
            return outcome
    return None
