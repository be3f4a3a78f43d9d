"""The coordinator's model fits in a round: federated IRLS and two-stage over the step stream.

Why
---
A model is fitted by many small exchanges (an IRLS step is one round trip: coefficients
out, ``XᵀWX``/score/deviance back), so a step must cost a network round trip, not a poll
interval. Each site keeps a ``StreamSteps`` stream open; :class:`StepHub` pushes a step on
it the moment a fit needs it and hands the signed answer (``AnswerStep``, verified and
stored by :meth:`coordinator.handlers.Handlers.answer_step`) back to the fit waiting for
it. The fits themselves are the pure state machines of :mod:`fedsynth.models`
(:func:`fedsynth.models.glm.run_irls`, :func:`fedsynth.models.twostage.pool_site_fits`);
this module only moves their messages, in a worker thread, so one model's arithmetic never
blocks another site's heartbeat.

Failures (docs/decisions/glmwire.md):

* a site whose stream drops mid-fit gets the unanswered step again when it reconnects
  (:meth:`StepHub.stream`), and the fit waits for it up to ``model_step_timeout`` and never
  past the round's deadline;
* a site that refuses a step (its disclosure control, its policy) or does not answer in
  time leaves the model: its rows would otherwise change the objective between
  iterations, so the fits of that model start again without it, if the round's quorum
  still holds (else the model is reported ``failed`` with the reason). The result lists
  the sites that contributed (``sites``), those that refused (``refused``) and those that
  did not answer (``dropped``).

:func:`fit_model_on` fits one model on any subset of a round's sites (the hook
internal-external cross-validation uses to develop a model without the held-out site).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as _dt
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsynth.errors import FedsynthError, InputError
from fedsynth.jsonsafe import strict_json
from fedsynth.models.fit import ModelFit
from fedsynth.models.glm import (
    GlmFit,
    IrlsControl,
    Layout,
    SiteStep,
    StepRequest,
    StratifiedFit,
    run_irls,
)
from fedsynth.models.hierarchical import FAMILIES as HIERARCHICAL_FAMILIES
from fedsynth.models.hierarchical import (
    HierarchicalFit,
    Proposal,
    SiteContribution,
    fit_random_intercept,
)
from fedsynth.models.iecv import (
    CANDIDATES as IECV_CANDIDATES,
)
from fedsynth.models.iecv import (
    IecvResult,
    ScoringModel,
    SiteMeasures,
    run_iecv,
)
from fedsynth.models.spec import INTERCEPT, ModelSpec
from fedsynth.models.twostage import SiteFit, TwoStageResult, pool_site_fits
from fedsynth.serde import (
    ModelStepOrder,
    StepAnswerContent,
    WireAggregates,
    WireContribution,
    WireMeasures,
    WireRefusal,
    WireSiteFit,
    encode_model_step,
    model_step_digest,
    pb,
)
from fedsynth.spec import parse_spec
from fedsynth.timeutil import utcnow

__all__ = ["StepHub", "SitesLost", "RoundModelFitter", "fit_model_on", "iecv_on",
           "models_due", "coefficient_flags", "DEFAULT_STEP_TIMEOUT", "MODEL_STATUSES"]

log = logging.getLogger(__name__)

#: How long a fit waits for one site's answer to one step (``model_step_timeout``).
DEFAULT_STEP_TIMEOUT = _dt.timedelta(seconds=30)
#: ``status`` of a model entry in the round document.
MODEL_STATUSES = ("fitted", "failed")


@dataclass
class _Pending:
    site: str
    round_id: str
    message: pb.ModelStep
    digest: bytes
    future: concurrent.futures.Future[StepAnswerContent]


class StepHub:
    """Routes model steps between the fits (worker threads) and the sites' streams.

    Thread-safe: :meth:`ask`, :meth:`check` and :meth:`resolve` are called from worker
    threads; :meth:`stream` runs on the server's event loop (:meth:`bind` it first).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, asyncio.Queue[pb.ModelStep | None]] = {}
        self._pending: dict[str, _Pending] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the streams run on."""
        self._loop = loop

    def connected(self) -> set[str]:
        """Sites with a step stream open now."""
        with self._lock:
            return set(self._queues)

    async def stream(self, site: str) -> AsyncIterator[pb.ModelStep]:
        """The steps for ``site``: first those waiting for it, then each new one.

        A second stream of the same site replaces the first (a reconnected agent), which
        ends; steps not yet answered are pushed again on the new one.
        """
        queue: asyncio.Queue[pb.ModelStep | None] = asyncio.Queue()
        with self._lock:
            old = self._queues.get(site)
            self._queues[site] = queue
            backlog = [p.message for p in self._pending.values()
                       if p.site == site and not p.future.done()]
        if old is not None:
            old.put_nowait(None)
        for waiting in backlog:
            queue.put_nowait(waiting)
        log.info("site %s opened its model-step stream (%d step(s) waiting)", site,
                 len(backlog))
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            with self._lock:
                if self._queues.get(site) is queue:
                    del self._queues[site]

    def ask(self, site: str, message: pb.ModelStep) -> concurrent.futures.Future[
            StepAnswerContent]:
        """Send ``message`` to ``site`` (now, or when it connects); the answer's future."""
        future: concurrent.futures.Future[StepAnswerContent] = concurrent.futures.Future()
        with self._lock:
            self._pending[message.step_id] = _Pending(site, message.round_id, message,
                                                      model_step_digest(message), future)
            queue = self._queues.get(site)
            if queue is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(queue.put_nowait, message)
        return future

    def check(self, site: str, content: StepAnswerContent) -> str | None:
        """Why ``content`` does not answer a step this hub is waiting for (None: it does)."""
        with self._lock:
            pending = self._pending.get(content.step_id)
        if pending is None or pending.future.done():
            return f"no step {content.step_id[:80]!r} is waiting for an answer"
        if pending.site != site:
            return f"step {content.step_id[:80]!r} was not sent to site {site!r}"
        if pending.round_id != content.round_id:
            return f"step {content.step_id[:80]!r} belongs to another round"
        if pending.digest != content.request_digest:
            return ("the answer names a different request (request_digest does not match "
                    "the step sent)")
        return None

    def resolve(self, content: StepAnswerContent) -> None:
        """Hand an accepted answer to the fit waiting for it."""
        with self._lock:
            pending = self._pending.get(content.step_id)
        if pending is not None and not pending.future.done():
            try:
                pending.future.set_result(content)
            except concurrent.futures.InvalidStateError:   # answered twice at once
                pass

    def forget(self, step_ids: Sequence[str]) -> None:
        """Stop waiting for ``step_ids`` (answered, or given up)."""
        with self._lock:
            for step_id in step_ids:
                pending = self._pending.pop(step_id, None)
                if pending is not None and not pending.future.done():
                    pending.future.cancel()


class SitesLost(Exception):
    """Sites that refused a step or did not answer it: the fit restarts without them."""

    def __init__(self, refused: Mapping[str, str], missing: Mapping[str, str]) -> None:
        super().__init__(f"refused: {dict(refused)}, no answer: {dict(missing)}")
        self.refused = dict(refused)
        self.missing = dict(missing)


@dataclass
class _Counters:
    round_trips: int = 0
    answers: int = 0


@dataclass
class _Exchanger:
    """One round's step traffic: sends orders, waits for answers, names who was lost."""

    hub: StepHub
    round_id: str
    spec_toml: str
    deadline: _dt.datetime
    step_timeout: float
    clock: Callable[[], _dt.datetime] = utcnow
    counters: _Counters = field(default_factory=_Counters)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def step_id(self, model: str, fit: str, sequence: int) -> str:
        return f"{next(self._ids):05d}.{fit}.{sequence}.{model}"[:128]

    def exchange(self, orders: Mapping[str, ModelStepOrder]) -> dict[str, StepAnswerContent]:
        """Send every order at once; return every answer, or raise :class:`SitesLost`."""
        futures = {site: self.hub.ask(site, encode_model_step(order))
                   for site, order in orders.items()}
        self.counters.round_trips += 1
        left = (self.deadline - self.clock()).total_seconds()
        end = time.monotonic() + max(0.0, min(self.step_timeout, left))
        answers: dict[str, StepAnswerContent] = {}
        missing: dict[str, str] = {}
        try:
            for site, future in futures.items():
                try:
                    answers[site] = future.result(timeout=max(0.0, end - time.monotonic()))
                except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                    missing[site] = (
                        "did not answer a model step within the round's deadline"
                        if self.step_timeout >= left else
                        f"did not answer a model step within {self.step_timeout:g} s "
                        "(model_step_timeout)")
        finally:
            self.hub.forget([o.step_id for o in orders.values()])
        self.counters.answers += len(answers)
        refused = {site: a.result.reason for site, a in answers.items()
                   if isinstance(a.result, WireRefusal)}
        if refused or missing:
            raise SitesLost(refused, missing)
        return answers


def _irls_exchange(ex: _Exchanger, model: ModelSpec, fit: str, held_out: str = ""
                   ) -> Callable[[Mapping[str, StepRequest]], dict[str, SiteStep]]:
    names = model.coefficient_names

    def exchange(requests: Mapping[str, StepRequest]) -> dict[str, SiteStep]:
        orders = {site: ModelStepOrder(
            round_id=ex.round_id, step_id=ex.step_id(model.name, fit, req.step),
            model=model.name, kind="irls", fit=fit, sequence=req.step,
            spec_toml=ex.spec_toml, deadline=ex.deadline, coefficients=req.coefficients,
            held_out=held_out)
            for site, req in requests.items()}
        answers = ex.exchange(orders)
        steps: dict[str, SiteStep] = {}
        bad: dict[str, str] = {}
        for site, answer in answers.items():
            result = answer.result
            if not isinstance(result, WireAggregates) or result.names != names:
                bad[site] = "answered an IRLS step with something else than the model's sums"
                continue
            try:
                steps[site] = SiteStep.from_dict(result.to_dict())
            except InputError as error:
                bad[site] = f"sent unusable sums ({error})"
        if bad:
            raise SitesLost(bad, {})
        return steps
    return exchange


def _site_fits(ex: _Exchanger, model: ModelSpec, sites: Sequence[str],
               control: IrlsControl) -> dict[str, SiteFit]:
    orders = {site: ModelStepOrder(
        round_id=ex.round_id, step_id=ex.step_id(model.name, "site", 0), model=model.name,
        kind="site_fit", fit="site", sequence=0, spec_toml=ex.spec_toml,
        deadline=ex.deadline, epsilon=control.epsilon, maxit=control.maxit)
        for site in sites}
    answers = ex.exchange(orders)
    fits: dict[str, SiteFit] = {}
    bad: dict[str, str] = {}
    for site, answer in answers.items():
        result = answer.result
        if not isinstance(result, WireSiteFit) or result.names != model.coefficient_names:
            bad[site] = "answered a site-fit step with something else than a fit"
            continue
        try:
            fits[site] = SiteFit.from_dict(result.to_dict())
        except InputError as error:
            bad[site] = f"sent an unusable fit ({error})"
    if bad:
        raise SitesLost(bad, {})
    return fits


def coefficient_flags(two: TwoStageResult, *, i2_threshold: float = 50.0
                      ) -> dict[str, dict[str, Any]]:
    """The heterogeneity flag of every coefficient's two-stage pooling.

    The round's flag rule (docs/architecture.md: I² at or above the threshold, or a
    prediction interval crossing 0 while the confidence interval does not), applied to each
    coefficient across sites: high between-site heterogeneity of a coefficient is the
    signal that one global model hides site differences there (issue 13). Coefficients
    pooled from fewer than two sites get no flag.
    """
    # lazy: the batch flag lives with the round's pooling (coordinator.rounds)
    from coordinator.rounds import _verdict
    from fedsynth.meta.heterogeneity import assess_heterogeneity_batch

    flags = assess_heterogeneity_batch(two.pooled, i2_threshold=i2_threshold, null_value=0.0,
                                       drivers_of="flagged")
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(two.names):
        if int(two.pooled.k[i]) >= 2:
            out[name] = _verdict(flags.flags[i]).to_dict()
    return out


def _hierarchical(ex: _Exchanger, model: ModelSpec, sites: Sequence[str],
                  held_out: str = "") -> HierarchicalFit:
    """The exact random-intercept GLM over the stream (issue 14's hierarchical model).

    :func:`fedsynth.models.hierarchical.fit_random_intercept` optimises; each of its
    evaluations is one round trip: the proposal to every site, their terms of the marginal
    log-likelihood back.
    """
    names = model.coefficient_names
    q = len(names) + (2 if model.family == "gaussian" else 1)

    def evaluate(proposal: Proposal) -> dict[str, SiteContribution]:
        orders = {site: ModelStepOrder(
            round_id=ex.round_id, step_id=ex.step_id(model.name, "hierarchical",
                                                     proposal.iteration),
            model=model.name, kind="hierarchical", fit="hierarchical",
            sequence=proposal.iteration, spec_toml=ex.spec_toml, deadline=ex.deadline,
            proposal=proposal.to_dict(), held_out=held_out) for site in sites}
        answers = ex.exchange(orders)
        out: dict[str, SiteContribution] = {}
        bad: dict[str, str] = {}
        for site, answer in answers.items():
            result = answer.result
            if not isinstance(result, WireContribution):
                bad[site] = "answered a hierarchical step with something else"
                continue
            try:
                out[site] = SiteContribution.from_dict(result.to_dict(), parameters=q,
                                                       site=site)
            except InputError as error:
                bad[site] = f"sent an unusable contribution ({error})"
        if bad:
            raise SitesLost(bad, {})
        return out

    return fit_random_intercept(evaluate, names=names, family=model.family)


Progress = Callable[[str], None]


def iecv_on(ex: _Exchanger, model: ModelSpec, sites: Sequence[str], *,
            control: IrlsControl, level: float = 95.0,
            coefficients: Mapping[str, Mapping[str, Any]] | None = None,
            hierarchical: bool = True, progress: Progress | None = None) -> IecvResult:
    """Internal-external cross-validation of ``model`` over the step stream (issue 14).

    :func:`fedsynth.models.iecv.run_iecv` with network-backed callables: ``develop``
    fits the global one-stage model (federated IRLS) and, with ``hierarchical``, the
    exact random-intercept model on every site but the held-out one, with the same pure
    drivers as the round's own fits (so the result equals ``fedsynth model fit --iecv``
    on the same rows); ``evaluate`` sends each candidate to the held-out site as an
    ``iecv`` step, which scores its own rows (:func:`fedsynth.models.iecv.evaluate_site`)
    and answers only the aggregates. Development steps carry ``held_out`` so a site caps
    the steps of each development fit separately.

    Raises
    ------
    SitesLost
        A site refused or did not answer a development or evaluation step.
    """
    names = model.coefficient_names
    sites = list(sites)
    position = {s: i + 1 for i, s in enumerate(sites)}

    def develop(others: Sequence[str]) -> dict[str, ScoringModel]:
        held = next(s for s in sites if s not in others)
        if progress is not None:
            progress(f"IECV {position[held]} of {len(sites)}: developing without {held}")
        one = run_irls(Layout("one_stage", names, tuple(others)), model.family,
                       _irls_exchange(ex, model, "one_stage", held), control=control,
                       model=model.name, level=level)
        if one.status != "converged":
            raise InputError(f"the global model without site {held} did not converge: "
                             f"{one.message or one.status}")
        out = {"global": ScoringModel(variant="global", family=model.family,
                                      names=one.names, coefficients=one.coefficients,
                                      developed_on=tuple(others))}
        if hierarchical:
            h = _hierarchical(ex, model, others, held)
            beta = dict(zip(h.names, h.coefficients))
            out["hierarchical"] = ScoringModel(
                variant="hierarchical", family=model.family, names=one.names,
                coefficients=np.array([beta.get(n, np.nan) for n in one.names]),
                developed_on=tuple(others))
        return out

    def evaluate(site: str, scoring: ScoringModel) -> SiteMeasures:
        order = ModelStepOrder(
            round_id=ex.round_id, step_id=ex.step_id(model.name, "iecv",
                                                     IECV_CANDIDATES.index(scoring.variant)),
            model=model.name, kind="iecv", fit="iecv",
            sequence=IECV_CANDIDATES.index(scoring.variant), spec_toml=ex.spec_toml,
            deadline=ex.deadline, scoring=scoring.to_dict())
        answer = ex.exchange({site: order})[site].result
        if not isinstance(answer, WireMeasures):
            raise SitesLost({site: "answered an IECV step with something else than its "
                                   "measures"}, {})
        try:
            return SiteMeasures.from_dict(answer.to_dict())
        except (InputError, KeyError, ValueError) as error:
            raise SitesLost({site: f"sent unusable IECV measures ({error})"}, {}) from None

    candidates = IECV_CANDIDATES if hierarchical else IECV_CANDIDATES[:2]
    result = run_iecv(sites, develop, evaluate, candidates=candidates, level=level,
                      coefficients=coefficients)
    if progress is not None:
        verdict = result.recommendation.choice if result.recommendation else "none"
        progress(f"IECV done over {len(sites)} sites: {verdict}")
    return result


@dataclass(frozen=True)
class _Fitted:
    one_stage: GlmFit
    stratified: StratifiedFit | None
    two_stage: TwoStageResult
    notes: tuple[str, ...]
    hierarchical: HierarchicalFit | None = None


def _fit_all(ex: _Exchanger, model: ModelSpec, sites: Sequence[str], *,
             control: IrlsControl, pooling: Mapping[str, Any],
             hierarchical: bool = True) -> _Fitted:
    layout_sites = tuple(sites)
    names = model.coefficient_names
    level = float(pooling.get("level", 95.0))
    one = run_irls(Layout("one_stage", names, layout_sites), model.family,
                   _irls_exchange(ex, model, "one_stage"), control=control,
                   model=model.name, level=level)
    notes: list[str] = []
    strat = None
    if len(layout_sites) >= 2 and names and names[0] == INTERCEPT:
        strat = StratifiedFit(run_irls(Layout("stratified", names, layout_sites),
                                       model.family, _irls_exchange(ex, model, "stratified"),
                                       control=control, model=model.name, level=level))
    else:
        notes.append("the stratified model needs at least two sites and an intercept")
    fits = _site_fits(ex, model, layout_sites, control)
    two = pool_site_fits(fits, method=str(pooling.get("method", "REML")),
                         test=str(pooling.get("test", "z")), level=level)
    hier = None
    if (hierarchical and len(layout_sites) >= 2 and INTERCEPT in names
            and model.family in HIERARCHICAL_FAMILIES):
        try:
            hier = _hierarchical(ex, model, layout_sites)
        except (FedsynthError, ValueError, ArithmeticError) as error:
            notes.append(f"the hierarchical model could not be fitted: {error}")
    elif hierarchical:
        notes.append("the hierarchical model needs at least two sites and an intercept")
    return _Fitted(one, strat, two, tuple(notes), hier)


def fit_model_on(hub: StepHub, *, round_id: str, spec_toml: str, model: ModelSpec,
                 sites: Sequence[str], deadline: _dt.datetime, quorum: int = 1,
                 pooling: Mapping[str, Any] | None = None,
                 step_timeout: float = DEFAULT_STEP_TIMEOUT.total_seconds(),
                 control: IrlsControl | None = None,
                 clock: Callable[[], _dt.datetime] = utcnow,
                 skipped: Mapping[str, str] | None = None,
                 hierarchical: bool = True, iecv: bool | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Fit one model on ``sites`` of a round over the step stream (blocking).

    The one-stage, stratified and two-stage (per-coefficient and multivariate) fits of
    ``model``, on the sites given (any subset of the round's: internal-external
    cross-validation develops the model without the held-out site). A site that refuses a
    step or does not answer within ``step_timeout`` seconds (never past ``deadline``) leaves
    the model, and the fits start again without it while at least ``quorum`` sites remain.
    ``skipped`` (``{site: reason}``) are sites of the round left out from the start (they
    did not answer an earlier model and are not connected): reported under ``dropped``.
    ``hierarchical`` adds the exact random-intercept model (binomial, poisson, gaussian)
    fitted over the same stream (issue 14's ``"hierarchical"`` object). ``iecv`` (default:
    the model's ``iecv`` key) adds internal-external cross-validation over the sites that
    contributed (:func:`iecv_on`): ``iecv``, ``iecv_candidates``, ``recommendation`` and
    ``iecv_notes``; a site lost during it leaves the fits as they are and the IECV is
    reported as not done, with the reason, in ``iecv_notes``. ``progress(text)`` is told
    each IECV step (the coordinator's log and the round's status).

    Returns
    -------
    dict
        The round document's ``models`` entry: ``name, family, status, n, sites``
        (the sites that contributed), ``refused``/``dropped`` (``{site: reason}``),
        ``one_stage``, ``stratified``, ``two_stage``, ``round_trips``, ``answers``,
        ``seconds``, ``notes``; ``status`` is ``fitted`` or ``failed`` (``reason`` says
        why).
    """
    started = time.monotonic()
    ex = _Exchanger(hub, round_id, spec_toml, deadline, step_timeout, clock)
    control = control or IrlsControl()
    taking = list(dict.fromkeys(sites))
    refused: dict[str, str] = {}
    dropped: dict[str, str] = dict(skipped or {})
    fitted: _Fitted | None = None
    reason = None
    restarts = 0
    while True:
        if len(taking) < max(1, quorum):
            reason = (f"only {len(taking)} site(s) could take part in the model, fewer than "
                      f"the quorum of {quorum}")
            break
        try:
            fitted = _fit_all(ex, model, taking, control=control, pooling=pooling or {},
                              hierarchical=hierarchical)
            break
        except SitesLost as lost:
            for site, why in lost.refused.items():
                refused[site] = why
            for site, why in lost.missing.items():
                dropped[site] = why
            taking = [s for s in taking if s not in lost.refused and s not in lost.missing]
            restarts += 1
            log.warning("round %s, model %s: sites left the fit (%s); %s", round_id,
                        model.name, lost, "starting again without them"
                        if len(taking) >= quorum else "the quorum no longer holds")
    notes: list[str] = []
    if restarts and fitted is not None:
        notes.append(f"the fits started again {restarts} time(s) after sites left")
    if fitted is None:
        entry = ModelFit(model=model, sites=(), refused=refused, one_stage=None,
                         stratified=None, two_stage=None, notes=tuple(notes)).to_dict()
        entry.update(status="failed", reason=reason)
    else:
        notes.extend(fitted.notes)
        entry = ModelFit(model=model, sites=tuple(taking), refused=refused,
                         one_stage=fitted.one_stage, stratified=fitted.stratified,
                         two_stage=fitted.two_stage, notes=tuple(notes)).to_dict()
        entry.update(status="fitted", reason=None)
        entry["hierarchical"] = (None if fitted.hierarchical is None
                                 else fitted.hierarchical.to_dict())
        try:
            entry["heterogeneity"] = coefficient_flags(
                fitted.two_stage, i2_threshold=float((pooling or {}).get("i2_threshold")
                                                     or 50.0))
        except (InputError, ValueError, IndexError) as error:
            entry["notes"].append(f"no heterogeneity flags per coefficient: {error}")
        if model.iecv if iecv is None else iecv:
            entry.update(_iecv_entry(ex, model, taking, fitted, control=control,
                                     pooling=pooling or {}, hierarchical=hierarchical,
                                     progress=progress))
    entry.update(dropped=dropped, round_trips=ex.counters.round_trips,
                 answers=ex.counters.answers,
                 seconds=round(time.monotonic() - started, 3))
    return dict(strict_json(entry))


def _iecv_entry(ex: _Exchanger, model: ModelSpec, sites: Sequence[str], fitted: _Fitted, *,
                control: IrlsControl, pooling: Mapping[str, Any], hierarchical: bool,
                progress: Progress | None) -> dict[str, Any]:
    """The IECV keys of a fitted model's entry (``iecv`` null and a note when not done)."""
    def not_done(why: str) -> dict[str, Any]:
        log.warning("round %s, model %s: no IECV: %s", ex.round_id, model.name, why)
        return {"iecv": None, "iecv_candidates": {}, "recommendation": None,
                "iecv_notes": [f"no internal-external cross-validation: {why}"]}

    if model.family != "binomial":
        return not_done(f"IECV measures a risk model and model {model.name!r} is "
                        f"{model.family}")
    if len(sites) < 3:
        return not_done(f"IECV needs at least 3 sites; the model rests on {len(sites)}")
    started, trips = time.monotonic(), ex.counters.round_trips
    try:
        result = iecv_on(ex, model, sites, control=control,
                         level=float(pooling.get("level", 95.0)),
                         coefficients=fitted.two_stage.pooled_dict(),
                         hierarchical=hierarchical and fitted.hierarchical is not None,
                         progress=progress)
    except SitesLost as lost:
        why = "; ".join([f"site {s} refused a step: {r}" for s, r in lost.refused.items()]
                        + [f"site {s} {r}" for s, r in lost.missing.items()])
        return not_done(why)
    except (FedsynthError, ValueError, ArithmeticError) as error:
        return not_done(str(error))
    out = result.to_dict()
    out["iecv_round_trips"] = ex.counters.round_trips - trips
    out["iecv_seconds"] = round(time.monotonic() - started, 3)
    return out


def models_due(*, has_models: bool, started: bool, n_submitted: int, allowed: int,
               opened_at: _dt.datetime, deadline: _dt.datetime, now: _dt.datetime) -> bool:
    """Whether a round's model fits should start now.

    When every allowed site has submitted the round's analyses (a submission says the site
    reviewed and accepted the spec), or, if some never do, once half the time to the
    deadline has passed with at least one submission; never after the deadline.
    """
    if not has_models or started or n_submitted == 0 or now > deadline:
        return False
    return n_submitted >= allowed or now >= opened_at + (deadline - opened_at) / 2


class RoundModelFitter:
    """Fits every model of one round, one after the other, and stores the results.

    Parameters
    ----------
    store
        The state store (:class:`coordinator.store.Store`).
    hub
        The :class:`StepHub` of the server.
    step_timeout
        Seconds a fit waits for one site's answer to one step.
    audit
        ``audit(event, data)`` of the coordinator.
    """

    def __init__(self, store: Any, hub: StepHub, *, step_timeout: float,
                 audit: Callable[[str, dict[str, Any]], None] | None = None,
                 clock: Callable[[], _dt.datetime] = utcnow) -> None:
        self.store = store
        self.hub = hub
        self.step_timeout = step_timeout
        self.audit = audit
        self.clock = clock

    def run(self, round_id: str) -> list[dict[str, Any]]:
        """Fit the round's models on the sites that submitted; store them as ``done``."""
        record = self.store.get_round(round_id)
        spec = parse_spec(record.spec_toml)
        submitted = {s.site for s in self.store.submissions(round_id)}
        sites = [s for s in record.allowed if s in submitted]
        self.store.put_model_results(round_id, status="running", results=[],
                                     now=self.clock())
        results: list[dict[str, Any]] = []
        # sites that did not answer a model: the next models wait for them again only if
        # they are connected when that model starts (a restarted agent), so a site that is
        # gone for good costs one step timeout per round, not one per model
        gone: dict[str, str] = {}
        for model in spec.models:
            connected = self.hub.connected()
            skipped = {s: f"{why} (and was not connected when this model started)"
                       for s, why in gone.items() if s not in connected}
            def progress(text: str, name: str = model.name) -> None:
                log.info("round %s, model %s: %s", round_id, name, text)
                self.store.put_model_results(
                    round_id, status="running",
                    results=[*results, {"name": name, "status": "running",
                                        "progress": text}], now=self.clock())

            progress("fitting" + (" (then IECV)" if model.iecv else ""))
            try:
                entry = fit_model_on(self.hub, round_id=round_id, spec_toml=record.spec_toml,
                                     model=model, sites=[s for s in sites if s not in skipped],
                                     deadline=record.deadline, quorum=record.quorum,
                                     pooling=record.pooling, step_timeout=self.step_timeout,
                                     clock=self.clock, skipped=skipped, progress=progress)
            except Exception as error:  # noqa: BLE001 - one model's bug must not hang the round
                log.exception("round %s: model %s could not be fitted", round_id, model.name)
                entry = {"name": model.name, "family": model.family, "status": "failed",
                         "reason": f"the coordinator could not fit it: {error}", "n": 0,
                         "sites": [], "refused": {}, "dropped": {}}
            results.append(entry)
            for site, why in (entry.get("dropped") or {}).items():
                gone.setdefault(site, why)
            for site in entry.get("sites", []):
                gone.pop(site, None)
            log.info("round %s: model %s %s in %.2f s (%s round trips, sites %s)", round_id,
                     model.name, entry["status"], entry.get("seconds", 0.0),
                     entry.get("round_trips"), ", ".join(entry.get("sites", [])) or "none")
            if self.audit is not None:
                self.audit("model.fitted", {
                    "round": round_id, "model": model.name, "status": entry["status"],
                    "sites": entry.get("sites", []), "refused": entry.get("refused", {}),
                    "dropped": entry.get("dropped", {}),
                    "round_trips": entry.get("round_trips"),
                    "iterations": (entry.get("one_stage") or {}).get("iterations"),
                    "recommendation": (entry.get("recommendation") or {}).get("choice")})
        self.store.put_model_results(round_id, status="done", results=results,
                                     now=self.clock())
        return results
