"""IECV over the step stream (coordinator/models.py ``iecv_on``) without a network.

A fake hub answers each step as a site agent would, the ``iecv`` steps with
:func:`fedsynth.models.iecv.evaluate_site` on the held-out site's rows. The round's IECV
must equal the in-process ``fedsynth model fit --iecv`` (``iecv_for_fit``), the round
document must carry the Output contract's keys, the report the forest plots and the
verdict, and a site that refuses its evaluation leaves the fits as they are and the IECV
not done, with the reason.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json

import numpy as np
import pytest

from coordinator.models import fit_model_on
from coordinator.reports import render_round_html
from fedsynth.datasets import generate_trauma, trauma_spec_path
from fedsynth.models import ModelLimits, build_design, fit_model
from fedsynth.models.iecv import (
    CANDIDATES,
    MEASURES,
    POOLED_MEASURES,
    ScoringModel,
    evaluate_site,
    iecv_for_fit,
)
from fedsynth.models.iecv import CHOICES as IECV_CHOICES
from fedsynth.round_document import RECOMMENDATIONS, RoundDocument
from fedsynth.serde import (
    StepAnswerContent,
    WireMeasures,
    WireRefusal,
    decode_model_step,
    model_step_digest,
    pb,
)
from fedsynth.spec import load_spec
from tests.unit.test_coordinator_models import FakeHub

T0 = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)
SITES = 4


@pytest.fixture(scope="module")
def designs():
    spec = load_spec(trauma_spec_path())
    model = next(m for m in spec.models if m.name == "tbi_mortality")
    frames = generate_trauma(SITES, seed=5)
    return model, {site: build_design(frame, model) for site, frame in frames.items()}


class IecvHub(FakeHub):
    """FakeHub that also answers ``iecv`` steps (and records the orders it got)."""

    def __init__(self, designs, *, refuse_iecv=()) -> None:
        super().__init__(designs)
        self.refuse_iecv = set(refuse_iecv)
        self.orders: list = []

    def ask(self, site: str, message: pb.ModelStep) -> concurrent.futures.Future:
        order = decode_model_step(message)
        self.orders.append((site, order))
        if order.kind != "iecv":
            return super().ask(site, message)
        future: concurrent.futures.Future = concurrent.futures.Future()
        if site in self.refuse_iecv:
            result = WireRefusal(order.model, "policy", "refused by site policy")
        else:
            measures = evaluate_site(self.designs[site],
                                     ScoringModel.from_dict(dict(order.scoring)))
            result = WireMeasures.from_dict(measures.to_dict())
        future.set_result(StepAnswerContent(order.round_id, site, b"n" * 16, T0,
                                            order.step_id, model_step_digest(message),
                                            result))
        return future


def _fit(hub, model, sites):
    return fit_model_on(hub, round_id="r-1", spec_toml="spec", model=model, sites=sites,
                        deadline=T0 + dt.timedelta(hours=1), quorum=1,
                        pooling={"method": "REML", "test": "z", "level": 95.0},
                        step_timeout=5.0, clock=lambda: T0, iecv=True)


@pytest.fixture(scope="module")
def fitted(designs):
    model, ds = designs
    hub = IecvHub(ds)
    return hub, _fit(hub, model, list(ds))


def test_the_round_iecv_equals_the_in_process_iecv(designs, fitted) -> None:
    model, ds = designs
    _hub, entry = fitted
    want = iecv_for_fit(fit_model(ds, limits=ModelLimits()), ds).to_dict()
    assert entry["recommendation"] == want["recommendation"]
    assert set(entry["iecv_candidates"]) == set(CANDIDATES[1:])
    for variant in CANDIDATES:
        got = entry["iecv"] if variant == "global" else entry["iecv_candidates"][variant]
        ref = want["iecv"] if variant == "global" else want["iecv_candidates"][variant]
        assert list(got["per_site"]) == list(ds)
        for site in ds:
            for key in MEASURES:
                a, b = got["per_site"][site][key], ref["per_site"][site][key]
                assert (a is None) == (b is None), (variant, site, key)
                if a is not None:
                    assert a == pytest.approx(b, rel=1e-10, abs=1e-12), (variant, site, key)
        for measure in POOLED_MEASURES:
            for test in ("z", "knha"):
                for key, b in ref["pooled"][measure][test].items():
                    a = got["pooled"][measure][test][key]
                    if b is None:
                        assert a is None
                    else:
                        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (measure, key)


def test_each_development_leaves_its_site_out_and_is_counted_apart(designs, fitted) -> None:
    _model, ds = designs
    hub, entry = fitted
    iecv_orders = [(s, o) for s, o in hub.orders if o.kind == "iecv"]
    # every held-out site gets the four candidates, and only its own
    assert len(iecv_orders) == SITES * len(CANDIDATES)
    for site, order in iecv_orders:
        assert site not in order.scoring["developed_on"]
        assert len(order.scoring["developed_on"]) == SITES - 1
    dev = [(s, o) for s, o in hub.orders if o.held_out]
    assert dev and all(s != o.held_out for s, o in dev)          # never asked of itself
    assert {o.held_out for _s, o in dev} == set(ds)
    assert entry["iecv_round_trips"] > 0 and entry["iecv_seconds"] >= 0
    assert entry["round_trips"] > entry["iecv_round_trips"]


def test_the_document_and_report_carry_the_iecv(designs, fitted) -> None:
    model, _ds = designs
    _hub, entry = fitted
    assert RECOMMENDATIONS == IECV_CHOICES
    doc = RoundDocument.from_dict({
        "schema_version": 4, "round": "r-20261125-0001", "status": "pooled",
        "spec": {"name": "trauma", "analyses": [], "models": [model.to_dict()]},
        "sites": [], "analyses": [], "models": [entry]})
    text = json.dumps(doc.to_dict(), allow_nan=False)
    again = RoundDocument.from_dict(json.loads(text))
    m = again.models[0]
    assert m.iecv == doc.models[0].iecv and m.recommendation["choice"] in RECOMMENDATIONS
    assert set(m.iecv["pooled"]) == set(POOLED_MEASURES)
    assert set(m.iecv["pooled"]["logit_auc"]["knha"]) >= {
        "estimate", "se", "ci_lb", "ci_ub", "tau2", "I2", "pi_lb", "pi_ub"}
    html = render_round_html(again)
    assert "Internal-external cross-validation of tbi_mortality" in html
    assert f"Recommendation: {m.recommendation['choice']}" in html
    assert "calibration-in-the-large at each held-out site" in html
    assert "c-statistic at each held-out site" in html
    # the coefficient plots and the two IECV plots
    assert html.count("<figure><svg") == len(model.coefficient_names) + 2


def test_a_model_without_iecv_has_no_iecv_keys(designs) -> None:
    model, ds = designs
    entry = fit_model_on(IecvHub(ds), round_id="r-1", spec_toml="spec", model=model,
                         sites=list(ds), deadline=T0 + dt.timedelta(hours=1),
                         step_timeout=5.0, clock=lambda: T0, hierarchical=False)
    assert "iecv" not in entry and "recommendation" not in entry
    doc = RoundDocument.from_dict({"schema_version": 4, "round": "r-1", "status": "pooled",
                                   "models": [entry]})
    assert "iecv" not in doc.to_dict()["models"][0]


def test_a_site_refusing_its_evaluation_leaves_the_fits_and_no_iecv(designs) -> None:
    model, ds = designs
    refusing = list(ds)[1]
    entry = _fit(IecvHub(ds, refuse_iecv={refusing}), model, list(ds))
    assert entry["status"] == "fitted" and entry["sites"] == list(ds)
    assert entry["iecv"] is None and entry["recommendation"] is None
    assert any(refusing in note and "refused by site policy" in note
               for note in entry["iecv_notes"])
    doc = RoundDocument.from_dict({"schema_version": 4, "round": "r-1", "status": "pooled",
                                   "models": [entry]})
    html = render_round_html(doc)
    assert "no internal-external cross-validation" in html


def test_too_few_sites_for_iecv_is_a_note(designs) -> None:
    model, ds = designs
    two = list(ds)[:2]
    entry = _fit(IecvHub(ds), model, two)
    assert entry["iecv"] is None
    assert entry["iecv_notes"] == ["no internal-external cross-validation: IECV needs at "
                                   "least 3 sites; the model rests on 2"]
    assert np.isfinite(entry["one_stage"]["deviance"])
