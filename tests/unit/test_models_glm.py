"""Federated IRLS: the site step, the coordinator's state machine, messages, edge cases."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.errors import InputError
from fedsynth.models import parse_model
from fedsynth.models.coding import build_design
from fedsynth.models.glm import (
    IrlsControl,
    Layout,
    SiteStep,
    StepRequest,
    advance,
    fit_one_stage,
    fit_stratified,
    requests,
    result,
    run_irls,
    site_step,
    start,
)

MODEL = parse_model({"name": "m", "family": "binomial", "outcome": "y",
                     "covariates": ["age", "g"], "categorical": {"g": ["a", "b", "c"]}})


def make_sites(seed: int = 0, sites: int = 3, family: str = "binomial",
               levels=("a", "b", "c")) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out = {}
    for s in range(sites):
        n = int(rng.integers(60, 200))
        age = rng.normal(50, 12, n).round()
        g = rng.choice(list(levels), n)
        eta = -0.5 + 0.03 * (age - 50) + 0.6 * (g == "b") - 0.4 * (g == "c") + 0.2 * s
        if family == "binomial":
            y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
        elif family == "poisson":
            y = rng.poisson(np.exp(eta + 1))
        else:
            y = 3 * eta + rng.normal(size=n)
        out[f"site{s}"] = pd.DataFrame({"y": y, "age": age, "g": g})
    return out


def designs_for(frames, model=MODEL):
    return {s: build_design(f, model) for s, f in frames.items()}


def pooled(designs):
    x = np.concatenate([d.x for d in designs.values()])
    y = np.concatenate([d.y for d in designs.values()])
    return x, y


def test_site_step_is_the_weighted_sums_of_the_rows() -> None:
    design = designs_for(make_sites())["site0"]
    beta = {"intercept": -0.3, "age": 0.02, "g=b": 0.5, "g=c": -0.1}
    step = site_step(design, beta)
    eta = design.x @ np.array(list(beta.values()))
    mu = 1 / (1 + np.exp(-eta))
    w = mu * (1 - mu)
    np.testing.assert_allclose(step.xtwx, design.x.T @ (design.x * w[:, None]), rtol=1e-13)
    np.testing.assert_allclose(step.score, design.x.T @ (design.y - mu), rtol=1e-12,
                               atol=1e-12)
    dev = -2 * np.sum(design.y * np.log(mu) + (1 - design.y) * np.log(1 - mu))
    assert step.deviance == pytest.approx(dev, rel=1e-13)
    assert step.n == design.n and step.names == design.names and not step.boundary
    # The start step: R's mustart (y + 1/2)/2, beta taken as 0, so score = XᵀWz.
    start_step = site_step(design, None)
    mu0 = (design.y + 0.5) / 2
    z = np.log(mu0 / (1 - mu0)) + (design.y - mu0) / (mu0 * (1 - mu0))
    np.testing.assert_allclose(start_step.score, design.x.T @ (mu0 * (1 - mu0) * z),
                               rtol=1e-12)


def test_site_step_rejects_wrong_coefficients() -> None:
    design = designs_for(make_sites())["site0"]
    with pytest.raises(InputError, match="no value for 'g=c'"):
        site_step(design, {"intercept": 0, "age": 0, "g=b": 0})
    with pytest.raises(InputError, match="'bogus' is not a coefficient"):
        site_step(design, {"intercept": 0, "age": 0, "g=b": 0, "g=c": 0, "bogus": 1})


def test_messages_round_trip_through_json() -> None:
    design = designs_for(make_sites())["site1"]
    step = site_step(design, None)
    back = SiteStep.from_dict(json.loads(json.dumps(step.to_dict())))
    np.testing.assert_array_equal(back.xtwx, step.xtwx)
    np.testing.assert_array_equal(back.score, step.score)
    assert back.deviance == step.deviance and back.names == step.names
    request = StepRequest("m", "stratified", 3, {"intercept": 0.5, "age": 1})
    assert StepRequest.from_dict(json.loads(json.dumps(request.to_dict()))) == request
    assert StepRequest.from_dict({"model": "m", "fit": "one_stage", "step": 0,
                                  "coefficients": None}).coefficients is None
    inf_step = replace(step, deviance=float("inf"))
    assert inf_step.to_dict()["deviance"] is None
    assert np.isnan(SiteStep.from_dict(inf_step.to_dict()).deviance)


@pytest.mark.parametrize("data,words", [
    ({"model": "m", "fit": "two_stage", "step": 0}, ["'fit'", "'two_stage'"]),
    ({"model": "m", "fit": "site", "step": -1}, ["'step'", "-1"]),
    ({"model": "", "fit": "site", "step": 0}, ["'model'"]),
    ({"model": "m", "fit": "site", "step": 0, "coefficients": {"a": "x"}}, ["'a'", "'x'"]),
    ({"model": "m", "fit": "site", "step": 0, "extra": 1}, ["unknown field 'extra'"]),
])
def test_request_validation(data, words) -> None:
    with pytest.raises(InputError) as info:
        StepRequest.from_dict(data)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("change,words", [
    ({"names": []}, ["'names'"]), ({"n": -2}, ["'n'", "-2"]),
    ({"xtwx": [[1.0]]}, ["'xtwx'", "shape"]), ({"score": ["a", "b", "c", "d"]}, ["'score'"]),
    ({"deviance": "big"}, ["'deviance'", "'big'"]),
])
def test_step_validation(change, words) -> None:
    body = site_step(designs_for(make_sites())["site0"], None).to_dict()
    body.update(change)
    with pytest.raises(InputError) as info:
        SiteStep.from_dict(body)
    for word in words:
        assert word in str(info.value)
    with pytest.raises(InputError, match="missing field 'score'"):
        SiteStep.from_dict({k: v for k, v in body.items() if k != "score"})


def test_the_coordinator_loop_step_by_step() -> None:
    designs = designs_for(make_sites())
    layout = Layout("one_stage", MODEL.coefficient_names, tuple(designs))
    state = start(layout, "binomial", model="m")
    reqs = requests(state)
    assert set(reqs) == set(designs) and all(r.coefficients is None for r in reqs.values())
    assert all(r.fit == "one_stage" and r.step == 0 for r in reqs.values())
    with pytest.raises(InputError, match="no step from site 'site2'"):
        advance(state, {s: site_step(designs[s], None) for s in ("site0", "site1")})
    with pytest.raises(InputError, match="not finished"):
        result(state)
    while not state.done:
        reqs = requests(state)
        state = advance(state, {s: site_step(designs[s], r.coefficients)
                                for s, r in reqs.items()})
    assert state.status == "converged" and requests(state) == {}
    with pytest.raises(InputError, match="already finished"):
        advance(state, {})
    fit = result(state)
    assert fit.round_trips == fit.iterations + 1 and fit.converged
    assert fit.to_dict()["round_trips"] == fit.round_trips


def test_stratified_layout_places_each_site_intercept() -> None:
    layout = Layout("stratified", ("intercept", "x", "z"), ("a", "b", "c"))
    assert layout.names == ("intercept[a]", "intercept[b]", "intercept[c]", "x", "z")
    np.testing.assert_array_equal(layout.index("b"), [1, 3, 4])
    with pytest.raises(InputError, match="needs an intercept"):
        Layout("stratified", ("x",), ("a",))
    with pytest.raises(InputError, match="listed twice"):
        Layout("one_stage", ("x",), ("a", "a"))
    assert Layout.from_dict(layout.to_dict()) == layout


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
def test_one_stage_equals_the_pooled_fit(family: str) -> None:
    model = replace(MODEL, family=family)
    designs = designs_for(make_sites(seed=4, family=family), model)
    fit = fit_one_stage(designs)
    x, y = pooled(designs)
    fam = {"binomial": sm.families.Binomial(), "poisson": sm.families.Poisson(),
           "gaussian": sm.families.Gaussian()}[family]
    ref = sm.GLM(y, x, family=fam).fit(tol=1e-14, maxiter=100)
    np.testing.assert_allclose(fit.coefficients, ref.params, rtol=1e-8)
    np.testing.assert_allclose(fit.se, ref.bse, rtol=1e-8)
    assert fit.deviance == pytest.approx(ref.deviance, rel=1e-10)
    assert fit.test == ("t" if family == "gaussian" else "z")
    assert fit.df_residual == len(y) - 4 and fit.n == len(y)
    if family == "gaussian":
        assert fit.dispersion == pytest.approx(ref.scale, rel=1e-10)
        assert fit.iterations == 2  # as R: the second iteration confirms the exact first
    else:
        assert fit.dispersion == 1.0


def test_a_level_no_site_has_is_aliased_as_r_does() -> None:
    frames = make_sites(seed=2, levels=("a", "b"))   # nobody has level c
    designs = designs_for(frames)
    fit = fit_one_stage(designs)
    assert fit.aliased == ("g=c",) and fit.rank == 3
    assert np.isnan(fit.coefficients[3]) and np.isnan(fit.se[3])
    x, y = pooled(designs)
    ref = sm.GLM(y, x[:, :3], family=sm.families.Binomial()).fit(tol=1e-14)
    np.testing.assert_allclose(fit.coefficients[:3], ref.params, rtol=1e-8)
    assert fit.to_dict()["coefficients"]["g=c"] is None


def test_a_level_one_site_lacks_is_fine() -> None:
    frames = make_sites(seed=3)
    frames["site1"] = frames["site1"][frames["site1"]["g"] != "c"]
    designs = designs_for(frames)
    assert not designs["site1"].x[:, 3].any()
    fit = fit_one_stage(designs)
    x, y = pooled(designs)
    ref = sm.GLM(y, x, family=sm.families.Binomial()).fit(tol=1e-14)
    np.testing.assert_allclose(fit.coefficients, ref.params, rtol=1e-8)
    assert fit.aliased == ()
    strat = fit_stratified(designs)
    assert strat.fit.aliased == () and set(strat.site_intercepts) == set(frames)


def _exchange(designs, tamper=None):
    calls = {"n": 0}

    def exchange(reqs):
        calls["n"] += 1
        steps = {s: site_step(designs[s], r.coefficients) for s, r in reqs.items()}
        if tamper is not None:
            steps = tamper(calls["n"], steps)
        return steps
    return exchange


def test_step_halving_on_a_non_finite_deviance() -> None:
    designs = designs_for(make_sites(seed=5))
    layout = Layout("one_stage", MODEL.coefficient_names, tuple(designs))
    clean = run_irls(layout, "binomial", _exchange(designs))

    def tamper(call, steps):
        if call == 3:  # the step to iteration 2 "diverges" once
            first = next(iter(steps))
            steps[first] = replace(steps[first], deviance=float("inf"))
        return steps
    fit = run_irls(layout, "binomial", _exchange(designs, tamper))
    assert fit.halvings == 1 and "halved" in fit.message and fit.converged
    np.testing.assert_allclose(fit.coefficients, clean.coefficients, rtol=1e-9)
    assert fit.round_trips > clean.round_trips


def test_step_halving_on_a_deviance_increase() -> None:
    designs = designs_for(make_sites(seed=6))
    layout = Layout("one_stage", MODEL.coefficient_names, tuple(designs))

    def tamper(call, steps):
        if call == 4:
            first = next(iter(steps))
            steps[first] = replace(steps[first], deviance=steps[first].deviance + 50)
        return steps
    fit = run_irls(layout, "binomial", _exchange(designs, tamper))
    assert fit.halvings >= 1 and fit.converged


def test_failures_are_reported_not_raised() -> None:
    designs = designs_for(make_sites(seed=7))
    layout = Layout("one_stage", MODEL.coefficient_names, tuple(designs))

    def at_first_step(call, steps):
        if call == 2:
            return {s: replace(st_, deviance=float("nan")) for s, st_ in steps.items()}
        return steps
    fit = run_irls(layout, "binomial", _exchange(designs, at_first_step))
    assert fit.status == "failed" and not fit.converged and "no valid set" in fit.message
    assert np.all(np.isnan(fit.coefficients))
    slow = run_irls(layout, "binomial", _exchange(designs), control=IrlsControl(maxit=1))
    assert slow.status == "not_converged" and not slow.converged
    assert np.all(np.isfinite(slow.coefficients))
    with pytest.raises(InputError, match="maxit"):
        IrlsControl(maxit=0)
    with pytest.raises(InputError, match="epsilon"):
        IrlsControl(epsilon=2)


def test_designs_of_different_models_are_refused() -> None:
    frames = make_sites()
    other = parse_model({"name": "m", "family": "binomial", "outcome": "y",
                         "covariates": ["age"]})
    designs = {"a": build_design(frames["site0"], MODEL),
               "b": build_design(frames["site1"], other)}
    with pytest.raises(InputError, match="site 'b' codes a different model"):
        fit_one_stage(designs)
    with pytest.raises(InputError, match="no sites"):
        fit_one_stage({})


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4))
def test_site_sums_add_up_to_the_pooled_rows(seed: int, sites: int) -> None:
    """The one-stage property: the sums of the sites equal the sums of all rows."""
    frames = make_sites(seed=seed, sites=sites)
    designs = designs_for(frames)
    everything = build_design(pd.concat(frames.values(), ignore_index=True), MODEL)
    rng = np.random.default_rng(seed)
    beta = dict(zip(MODEL.coefficient_names, rng.normal(0, 0.3, 4)))
    for coefficients in (None, beta):
        parts = [site_step(d, coefficients) for d in designs.values()]
        whole = site_step(everything, coefficients)
        np.testing.assert_allclose(sum(p.xtwx for p in parts), whole.xtwx, rtol=1e-10)
        np.testing.assert_allclose(sum(p.score for p in parts), whole.score, rtol=1e-9,
                                   atol=1e-9)
        assert sum(p.deviance for p in parts) == pytest.approx(whole.deviance, rel=1e-12)
    assert fit_one_stage(designs).coef() == pytest.approx(
        fit_one_stage({"all": everything}).coef(), rel=1e-9, abs=1e-12)
