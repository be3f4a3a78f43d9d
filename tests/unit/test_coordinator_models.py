"""The coordinator's model-fitting loop (coordinator/models.py) without a network.

A fake hub answers each step the way a site agent would (``site_step``/``fit_site`` on the
site's rows), or refuses, or never answers. The loop must give exactly the in-memory fits
of :func:`fedsynth.models.fit_model`, leave out (and report) refusing and silent sites,
start again without them, and fail the model when the quorum no longer holds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json

import numpy as np
import pytest

from coordinator.models import StepHub, fit_model_on, models_due
from coordinator.reports import render_round_html
from fedsynth.datasets import generate_trauma, trauma_spec_path
from fedsynth.models import ModelLimits, build_design, fit_model
from fedsynth.models.glm import IrlsControl, site_step
from fedsynth.models.hierarchical import Proposal, fit_sites, site_contribution, site_data
from fedsynth.models.twostage import fit_site
from fedsynth.round_document import RoundDocument
from fedsynth.serde import (
    StepAnswerContent,
    WireAggregates,
    WireContribution,
    WireRefusal,
    WireSiteFit,
    decode_model_step,
    model_step_digest,
    pb,
)
from fedsynth.spec import load_spec

T0 = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def designs():
    spec = load_spec(trauma_spec_path())
    model = next(m for m in spec.models if m.name == "tbi_mortality")
    frames = generate_trauma(5, seed=3)
    return model, {site: build_design(frame, model) for site, frame in frames.items()}


class FakeHub(StepHub):
    """Answers at once from in-memory designs; ``refuse``/``silent`` sites misbehave."""

    def __init__(self, designs, *, refuse=(), silent=(), silent_after: int = 0) -> None:
        super().__init__()
        self.designs = designs
        self.refuse = set(refuse)
        self.silent = set(silent)
        self.silent_after = silent_after
        self.asked: dict[str, int] = {}

    def ask(self, site: str, message: pb.ModelStep) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.asked[site] = self.asked.get(site, 0) + 1
        if site in self.silent and self.asked[site] > self.silent_after:
            return future                                # never answered
        order = decode_model_step(message)
        design = self.designs[site]
        if site in self.refuse:
            result = WireRefusal(order.model, "disclosure_min_n", "suppressed by the site's "
                                 "disclosure control: too few rows")
        elif order.kind == "irls":
            result = WireAggregates.from_dict(site_step(design, order.coefficients).to_dict())
        elif order.kind == "hierarchical":
            data = site_data(design.x, design.y, family=design.model.family,
                             offset=design.offset)
            result = WireContribution.from_dict(site_contribution(
                data, Proposal.from_dict(dict(order.proposal))).to_dict())
        else:
            fit = fit_site(design, control=IrlsControl(order.epsilon, order.maxit))
            result = WireSiteFit.from_dict(fit.to_dict())
        future.set_result(StepAnswerContent(order.round_id, site, b"n" * 16, T0,
                                            order.step_id, model_step_digest(message),
                                            result))
        return future


def _fit(hub, model, sites, *, quorum=1, timeout=5.0, spec_toml="spec"):
    return fit_model_on(hub, round_id="r-1", spec_toml=spec_toml, model=model, sites=sites,
                        deadline=T0 + dt.timedelta(hours=1), quorum=quorum,
                        pooling={"method": "REML", "test": "z", "level": 95.0},
                        step_timeout=timeout, clock=lambda: T0)


def _coefs(entry: dict, fit: str) -> np.ndarray:
    return np.array([v for v in entry[fit]["coefficients"].values()], dtype=float)


def test_the_loop_gives_the_in_memory_fits_exactly(designs) -> None:
    model, ds = designs
    entry = _fit(FakeHub(ds), model, list(ds))
    want = fit_model(ds, limits=ModelLimits()).to_dict()
    assert entry["status"] == "fitted" and entry["sites"] == list(ds)
    assert entry["refused"] == {} and entry["dropped"] == {}
    for fit in ("one_stage", "stratified"):
        np.testing.assert_allclose(_coefs(entry, fit), _coefs(want, fit), rtol=1e-12)
    assert entry["two_stage"]["pooled"] == want["two_stage"]["pooled"]
    # the hierarchical model over the same steps equals the in-process federated fit
    hier = fit_sites({s: site_data(d.x, d.y, family="binomial") for s, d in ds.items()},
                     names=model.coefficient_names)
    got = entry["hierarchical"]
    np.testing.assert_allclose(list(got["coefficients"].values()), hier.coefficients,
                               rtol=1e-10)
    assert got["tau2"] == pytest.approx(hier.tau2, rel=1e-10)
    assert set(got["site_intercepts"]) == set(ds) and got["logLik"] < 0
    # one round trip per IRLS request of the two fits, one for the site fits, one per
    # evaluation of the hierarchical likelihood
    assert entry["round_trips"] == (entry["one_stage"]["round_trips"]
                                    + entry["stratified"]["round_trips"] + 1
                                    + got["evaluations"])
    assert entry["answers"] == entry["round_trips"] * len(ds)


def test_a_refusing_site_is_left_out_reported_and_the_fits_start_again(designs) -> None:
    model, ds = designs
    sites = list(ds)
    entry = _fit(FakeHub(ds, refuse=[sites[1]]), model, sites, quorum=3)
    rest = {s: d for s, d in ds.items() if s != sites[1]}
    want = fit_model(rest, limits=ModelLimits()).to_dict()
    assert entry["status"] == "fitted" and entry["sites"] == list(rest)
    assert "disclosure control" in entry["refused"][sites[1]]
    np.testing.assert_allclose(_coefs(entry, "one_stage"), _coefs(want, "one_stage"),
                               rtol=1e-12)


def test_a_silent_site_is_dropped_after_the_step_timeout(designs) -> None:
    model, ds = designs
    sites = list(ds)
    # answers the first three steps, then goes silent mid-fit
    hub = FakeHub(ds, silent=[sites[0]], silent_after=3)
    entry = _fit(hub, model, sites, quorum=4, timeout=0.2)
    assert entry["status"] == "fitted" and sites[0] not in entry["sites"]
    assert "within 0.2 s" in entry["dropped"][sites[0]]
    assert any("started again" in note for note in entry["notes"])


def test_the_model_fails_when_the_quorum_no_longer_holds(designs) -> None:
    model, ds = designs
    sites = list(ds)
    entry = _fit(FakeHub(ds, silent=sites[:2]), model, sites, quorum=4, timeout=0.1)
    assert entry["status"] == "failed" and entry["one_stage"] is None
    assert "fewer than the quorum of 4" in entry["reason"]
    assert set(entry["dropped"]) == set(sites[:2])


def test_a_deadline_in_the_past_leaves_no_time_to_answer(designs) -> None:
    model, ds = designs
    entry = fit_model_on(FakeHub(ds, silent=list(ds)), round_id="r-1", spec_toml="s",
                         model=model, sites=list(ds), deadline=T0, quorum=1,
                         step_timeout=30, clock=lambda: T0 + dt.timedelta(seconds=1))
    assert entry["status"] == "failed"
    assert all("deadline" in why for why in entry["dropped"].values())


def test_a_reconnecting_stream_gets_the_unanswered_steps_again() -> None:
    async def scenario() -> list[str]:
        hub = StepHub()
        hub.bind(asyncio.get_running_loop())
        message = pb.ModelStep(round_id="r-1", step_id="s1", model="m", kind="irls")
        first = hub.stream("mtf-alpha")
        hub.ask("mtf-alpha", message)
        got = [(await first.__anext__()).step_id]
        await first.aclose()                         # the site drops
        second = hub.stream("mtf-alpha")             # and comes back
        got.append((await second.__anext__()).step_id)
        hub.forget(["s1"])
        assert hub.connected() == {"mtf-alpha"}
        await second.aclose()
        assert hub.connected() == set()
        return got

    assert asyncio.run(scenario()) == ["s1", "s1"]


def test_models_start_when_every_site_submitted_or_half_way_to_the_deadline() -> None:
    kw = {"has_models": True, "started": False, "allowed": 4, "opened_at": T0,
          "deadline": T0 + dt.timedelta(minutes=10)}
    assert models_due(n_submitted=4, now=T0 + dt.timedelta(seconds=5), **kw)
    assert not models_due(n_submitted=3, now=T0 + dt.timedelta(minutes=4), **kw)
    assert models_due(n_submitted=3, now=T0 + dt.timedelta(minutes=5), **kw)
    assert not models_due(n_submitted=0, now=T0 + dt.timedelta(minutes=6), **kw)
    assert not models_due(n_submitted=4, now=T0 + dt.timedelta(minutes=11), **kw)
    assert not models_due(**{**kw, "has_models": False}, n_submitted=4, now=T0)


def test_the_round_document_and_report_show_the_model(designs) -> None:
    model, ds = designs
    entry = _fit(FakeHub(ds), model, list(ds))
    flags = entry["heterogeneity"]
    assert set(flags) == set(model.coefficient_names)
    assert all(isinstance(f["flagged"], bool) for f in flags.values())
    doc = RoundDocument.from_dict({
        "schema_version": 3, "round": "r-20261125-0001", "status": "pooled",
        "spec": {"name": "trauma", "analyses": [], "models": [model.to_dict()]},
        "sites": [], "analyses": [], "models": [entry]})
    again = RoundDocument.from_dict(json.loads(json.dumps(doc.to_dict(), allow_nan=False)))
    assert again.models[0].one_stage == doc.models[0].one_stage
    html = render_round_html(doc)
    assert "<h2>Models</h2>" in html and "Model tbi_mortality" in html
    for name in model.coefficient_names:
        assert f"coefficient {name}:" in html or name == "intercept"
    assert html.count("<figure><svg") == len(model.coefficient_names)
    assert "Two-stage pooled (95% CI)" in html and "site-specific" in html
    assert "Hierarchical (95% CI)" in html and "ICC (latent)" in html
    flagged = [n for n, f in flags.items() if f["flagged"]]
    assert html.count("<strong>Flagged:</strong>") == len(flagged)
