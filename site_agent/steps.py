"""The site's side of a model fit: answer one model step under policy and disclosure control.

Why
---
A model step asks the site for sums of its rows at coefficients the coordinator chose
(IRLS), or for its own fit of the model (two-stage). Both are releases of patient data in
aggregate form, so before each answer the site decides, from its own rules only:

1. **policy** (:mod:`site_agent.policy`): the round's spec, models included, must pass the
   site's policy, and be approved by the operator where the policy requires approval; a
   model naming a column the policy does not permit is refused;
2. **disclosure control** (:mod:`fedsynth.models.disclosure`, thresholds from site.toml's
   ``[privacy]``): minimum rows, coefficients at most a fraction of the rows, small levels,
   and, the first time the model is answered, differencing against the ``n`` of earlier
   releases (rule 6); then, before *every* step, the cap on steps per model per round and
   bounded, finite coefficients (rules 4-5). The count of steps answered per round and
   model is kept in a file next to the site's state, so a restarted agent cannot be asked
   for a fresh allowance.

Anything refused becomes a refusal with a code and a fixed sentence (the refusal
vocabulary: the limits and the spec's own column names, never a data value or a count);
the full local detail goes to the site's log only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.audit import canonical_json
from fedsynth.config import SiteConfig
from fedsynth.errors import FedsynthError, InputError
from fedsynth.fileio import atomic_write, read_json_object
from fedsynth.models.coding import CodingError, Design, build_design
from fedsynth.models.disclosure import (
    MODEL_REFUSAL_CODES,
    ModelLimits,
    check_design,
    check_release,
    check_request,
)
from fedsynth.models.glm import IrlsControl, Layout, SiteStep, StepRequest, run_irls, site_step
from fedsynth.models.hierarchical import Proposal, site_contribution, site_data
from fedsynth.models.iecv import ScoringModel, evaluate_site
from fedsynth.models.spec import ModelSpec
from fedsynth.models.twostage import fit_site
from fedsynth.serde import (
    ModelStepOrder,
    WireAggregates,
    WireContribution,
    WireMeasures,
    WireRefusal,
    WireSiteFit,
)
from fedsynth.spec import Spec, parse_spec
from site_agent.data import load_table
from site_agent.policy import site_policy

__all__ = ["ModelSteps", "StepCounts", "model_release_key", "load_model_frame",
           "describe_answer", "preview_model", "STEP_REFUSALS"]

log = logging.getLogger("fedsynth.site")

#: Fixed sentences of the refusals this module words itself (``key: (code, text)``).
STEP_REFUSALS: dict[str, tuple[str, str]] = {
    "unknown_model": ("invalid_request", "the step names no model of the round's spec"),
    "not_approved": ("policy", "refused by site policy: the round's spec waits for the "
                               "approval of the site's operator"),
    "data_unusable": ("invalid_values", "the site's data cannot be coded for this model "
                                        "(the details are in the site's log)"),
    "bad_proposal": ("invalid_request", "the hierarchical proposal does not match the "
                                        "model or is out of its bounds"),
    "bad_scoring": ("invalid_request", "the model sent for internal-external "
                                       "cross-validation does not match the round's model"),
}


def _refusal(model: str, key: str) -> WireRefusal:
    code, text = STEP_REFUSALS[key]
    return WireRefusal(model, code, text)


def model_release_key(model: ModelSpec) -> str:
    """The release-history key of a model's definition (rule 6 differences against it)."""
    text = canonical_json(model.to_dict())
    return "model:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def load_model_frame(data: Any, model: ModelSpec) -> pd.DataFrame:
    """The columns ``model`` uses, from the site's ``[data]`` (a file or a SQL source)."""
    def get(key: str) -> Any:
        return data.get(key) if isinstance(data, dict) else getattr(data, key, None)

    path, url = get("path"), get("url")
    if path is not None:
        return load_table(path)
    if url is None:
        raise InputError("[data] needs 'path' or 'url'")
    # lazy: SQLAlchemy is loaded only by sites whose data live in a database
    from site_agent.connectors.sql import SqlSource

    columns = list(dict.fromkeys([model.outcome, *model.covariates,
                                  *([model.offset] if model.offset else [])]))
    source = SqlSource(str(url), table=get("table"), query=get("query"))
    try:
        arrays = source.fetch_columns(columns, analysis=model.name)
    finally:
        source.dispose()
    return pd.DataFrame({c: np.asarray(v) for c, v in arrays.items()})


class StepCounts:
    """Steps answered per round and model (``{round: {model: n}}``), in a small JSON file.

    Written before each answer leaves, so the cap of :class:`ModelLimits` holds across
    restarts of the agent.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _load(self) -> dict[str, dict[str, int]]:
        data = read_json_object(self.path, "model step counts")
        return {str(r): {str(m): int(n) for m, n in v.items()} for r, v in data.items()}

    def get(self, round_id: str, model: str) -> int:
        """Steps answered so far for ``model`` in ``round_id``."""
        return self._load().get(round_id, {}).get(model, 0)

    def add(self, round_id: str, model: str) -> int:
        """Count one more answered step; returns the new count."""
        data = self._load()
        n = data.setdefault(round_id, {}).get(model, 0) + 1
        data[round_id][model] = n
        atomic_write(self.path, json.dumps(data, sort_keys=True))
        return n


@dataclass
class _Prepared:
    design: Design | None
    refusal: WireRefusal | None


class ModelSteps:
    """Answers model steps for one site (see the module docstring for the rules).

    Parameters
    ----------
    config
        The site configuration (data, privacy limits, policy, state file).
    """

    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        state = Path(config.state_file)
        self.counts = StepCounts(state.with_name(state.stem + ".model-steps.json"))
        self.history_path = state.with_name(state.stem + ".releases.json")
        self.limits: ModelLimits = config.privacy.model_limits()
        self._specs: dict[str, Spec] = {}
        self._prepared: dict[tuple[str, str], _Prepared] = {}

    def _spec(self, text: str) -> Spec:
        key = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if key not in self._specs:
            self._specs = {key: parse_spec(text)}      # one round's spec at a time
        return self._specs[key]

    def _earlier_n(self, key: str) -> list[int]:
        data = read_json_object(self.history_path, "release history")
        return [int(n) for n in data.get(key, [])]

    def _record_n(self, key: str, n: int) -> None:
        data = read_json_object(self.history_path, "release history")
        ns = [int(v) for v in data.get(key, [])]
        if n not in ns:
            data[key] = [*ns, n]
            atomic_write(self.history_path, json.dumps(data, sort_keys=True))

    def prepare(self, round_id: str, model: ModelSpec) -> _Prepared:
        """The model's design at this site, or the refusal of the whole model (rules 1-3, 6).

        Computed once per round and model; the ``n`` is recorded in the release history
        the first time the model is allowed (later rounds difference against it).
        """
        key = (round_id, model.name)
        if key in self._prepared:
            return self._prepared[key]
        try:
            design = build_design(load_model_frame(self.config.data, model), model)
        except CodingError as error:
            log.error("round %s, model %s: %s", round_id, model.name, error)
            prepared = _Prepared(None, WireRefusal(model.name, error.code, error.reason))
        except (FedsynthError, OSError, ValueError) as error:
            log.error("round %s, model %s: the data cannot be coded: %s", round_id,
                      model.name, error)
            prepared = _Prepared(None, _refusal(model.name, "data_unusable"))
        else:
            refusal = check_design(design, self.limits)
            release = model_release_key(model)
            if refusal is None:
                refusal = check_release(design, self._earlier_n(release), self.limits)
            if refusal is None:
                self._record_n(release, design.n)
                prepared = _Prepared(design, None)
            else:
                prepared = _Prepared(None, WireRefusal(model.name, refusal.code,
                                                       refusal.reason))
        self._prepared = {k: v for k, v in self._prepared.items() if k[0] == round_id}
        self._prepared[key] = prepared
        return prepared

    def answer(self, order: ModelStepOrder
               ) -> WireAggregates | WireSiteFit | WireContribution | WireMeasures | WireRefusal:
        """What this site sends for ``order``: its sums, its own fit, or a refusal.

        An ``iecv`` step (internal-external cross-validation, issue 14) sends a model
        developed without this site; the site scores its own rows with it
        (:func:`fedsynth.models.iecv.evaluate_site`) and answers only ``n``, the
        performance measures with their variances, O and E: the outcome margins its
        design already passed rules 1-3 for, and the evaluation estimators' own refusals
        (no events, perfect discrimination) apply per measure.
        """
        spec = self._spec(order.spec_toml)
        model = next((m for m in spec.models if m.name == order.model), None)
        if model is None:
            return _refusal(order.model, "unknown_model")
        decision = site_policy(self.config).review(spec)
        if decision.needs_approval:
            return _refusal(model.name, "not_approved")
        if model.name in decision.refusals:
            return WireRefusal(model.name, "policy", decision.refusals[model.name])
        prepared = self.prepare(order.round_id, model)
        if prepared.refusal is not None:
            return prepared.refusal
        design = prepared.design
        assert design is not None
        # the cap counts the steps of each fit of the model (docs/decisions/glmwire.md);
        # a development fit of IECV (held_out set) is a fit of its own
        counter = f"{model.name}/{order.fit}"
        if order.held_out:
            counter += f"/without:{order.held_out}"
        answered = self.counts.get(order.round_id, counter)
        coefficients = order.coefficients if order.kind == "irls" else None
        proposal = None
        scoring = None
        if order.kind == "iecv":
            try:
                scoring = ScoringModel.from_dict(dict(order.scoring or {}))
            except InputError:
                return _refusal(model.name, "bad_scoring")
            if scoring.family != model.family or set(scoring.names) != set(design.names):
                return _refusal(model.name, "bad_scoring")
            # bounded as an IRLS step's coefficients (rule 5); an aliased (NaN)
            # coefficient scores as 0, as R's predict with an NA coefficient
            coefficients = {n: (v if np.isfinite(v) else 0.0)
                            for n, v in zip(scoring.names, scoring.coefficients)}
        if order.kind == "hierarchical":
            try:
                proposal = Proposal.from_dict(dict(order.proposal or {}))
            except InputError:
                return _refusal(model.name, "bad_proposal")
            if proposal.family != model.family or len(proposal.beta) != design.p:
                return _refusal(model.name, "bad_proposal")
            # the fixed coefficients are bounded as an IRLS step's are (rule 5)
            coefficients = dict(zip(design.names, proposal.beta))
        refusal = check_request(design, coefficients, answered, self.limits)
        if refusal is not None:
            code = refusal.code if refusal.code in MODEL_REFUSAL_CODES else "refused"
            return WireRefusal(model.name, code, refusal.reason)
        self.counts.add(order.round_id, counter)
        if scoring is not None:
            try:
                measures = evaluate_site(design, scoring)
            except InputError:
                return _refusal(model.name, "bad_scoring")
            return WireMeasures.from_dict(measures.to_dict())
        if order.kind == "irls":
            return WireAggregates.from_dict(site_step(design, order.coefficients).to_dict())
        if proposal is not None:
            data = site_data(design.x, design.y, family=model.family, offset=design.offset)
            return WireContribution.from_dict(site_contribution(data, proposal).to_dict())
        fit = fit_site(design, control=IrlsControl(epsilon=order.epsilon, maxit=order.maxit))
        return WireSiteFit.from_dict(fit.to_dict())


def describe_answer(order: ModelStepOrder, answer: Any) -> str:
    """One plain sentence saying what the site sends for a step (log and ``site estimate``)."""
    where = f"model {order.model}, {order.fit} fit, step {order.sequence}"
    if isinstance(answer, WireRefusal):
        return f"{where}: NOT answered. Reason given to the coordinator: {answer.reason}"
    if isinstance(answer, WireMeasures):
        held = answer.values
        return (f"{where}: the held-out performance of a model developed without this site, "
                f"on n = {answer.n} rows: c-statistic {held.get('auc', float('nan')):.3f}, "
                f"calibration slope {held.get('calibration_slope', float('nan')):.3f}, "
                "calibration-in-the-large, O and E, each with its variance; nothing per "
                "patient")
    if isinstance(answer, WireContribution):
        return (f"{where}: its term of the hierarchical model's log-likelihood on n = "
                f"{answer.n} rows, with {len(answer.gradient)} derivatives and their "
                "second derivatives, and its random intercept's conditional mode")
    if isinstance(answer, WireAggregates):
        p = len(answer.names)
        at = "the starting values" if order.coefficients is None else "the coefficients sent"
        return (f"{where}: sums over n = {answer.n} rows at {at}: X'WX ({p} x {p}), the "
                f"score ({p} numbers), deviance = {answer.deviance:.6g}; nothing per patient")
    return (f"{where}: the site's own fit on n = {answer.n} rows, status {answer.status}"
            + (f": {len(answer.names)} coefficients and their covariance"
               if answer.status == "ok" else ""))



def preview_model(frame: pd.DataFrame, model: ModelSpec, limits: ModelLimits, *,
                  earlier_n: list[int] | None = None) -> dict[str, Any]:
    """What this site would send for ``model``, step by step (``fedsynth site estimate``).

    The same decisions as :class:`ModelSteps` (coding, rules 1-3 and 6 on the design,
    rules 4-5 before every step), on the path of the site's own fit: the first step at
    R's starting values (no coefficients), then each step at the coefficients that
    step's Newton update gives (in a round the coordinator sends the coefficients of the
    summed sums instead; the content of each answer is the same kind), then the site's
    own fit (two-stage). Nothing is written (no step count, no release history).

    Returns
    -------
    dict
        ``{"model", "family", "n", "steps": [{"step", "coefficients", "sends"}],
        "site_fit", "refused"}``; ``sends`` is :meth:`fedsynth.models.SiteStep.to_dict`
        (``names, n, xtwx, score, deviance, ...``), ``refused`` a ``{code, reason}`` when
        the site would refuse (then no later step is shown).
    """
    out: dict[str, Any] = {"model": model.name, "family": model.family, "n": None,
                           "steps": [], "site_fit": None, "refused": None}
    try:
        design = build_design(frame, model)
    except CodingError as error:
        out["refused"] = {"code": error.code, "reason": error.reason,
                          "kept_at_site": str(error)}
        return out
    out["n"] = design.n
    refusal = check_design(design, limits) or check_release(design, earlier_n or [], limits)
    if refusal is not None:
        out["refused"] = {"code": refusal.code, "reason": refusal.reason}
        return out
    answered = 0

    class _Refused(Exception):
        pass

    def exchange(requests: Mapping[str, StepRequest]) -> dict[str, SiteStep]:
        nonlocal answered
        request = requests["site"]
        refused = check_request(design, request.coefficients, answered, limits)
        if refused is not None:
            out["refused"] = {"code": refused.code, "reason": refused.reason,
                              "at_step": request.step}
            raise _Refused
        answered += 1
        step = site_step(design, request.coefficients)
        out["steps"].append({"step": request.step,
                             "coefficients": None if request.coefficients is None else
                             dict(request.coefficients), "sends": step.to_dict()})
        return {"site": step}

    try:
        run_irls(Layout("site", design.names, ("site",)), model.family, exchange,
                 model=model.name)
    except _Refused:
        return out
    out["site_fit"] = fit_site(design).to_dict()
    return out
