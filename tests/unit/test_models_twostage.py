"""Two-stage: each site's own fit (separation, failures), pooling, the multivariate model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fedsynth.errors import InputError
from fedsynth.meta import meta_analysis
from fedsynth.models import parse_model
from fedsynth.models.coding import build_design
from fedsynth.models.mvmeta import mv_meta
from fedsynth.models.twostage import SiteFit, fit_site, pool_site_fits, separation_direction

MODEL = parse_model({"name": "m", "family": "binomial", "outcome": "y",
                     "covariates": ["age", "g"], "categorical": {"g": ["a", "b", "c"]}})


def site_frame(seed: int, n: int = 300, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.normal(50, 10, n).round()
    g = rng.choice(["a", "b", "c"], n)
    eta = -0.5 + shift + 0.03 * (age - 50) + 0.7 * (g == "b") - 0.5 * (g == "c")
    return pd.DataFrame({"y": rng.binomial(1, 1 / (1 + np.exp(-eta))), "age": age, "g": g})


def test_a_separated_site_is_listed_with_its_reason_and_not_pooled() -> None:
    frames = {f"s{i}": site_frame(i, shift=0.3 * i) for i in range(5)}
    bad = frames["s4"].copy()
    bad.loc[bad["g"] == "c", "y"] = 1          # every patient of level c died
    frames["s4"] = bad
    fits = {s: fit_site(build_design(f, MODEL)) for s, f in frames.items()}
    assert fits["s4"].status == "separation" and "g=c" in fits["s4"].reason
    assert np.all(np.isnan(fits["s4"].coefficients))
    assert "coefficients" not in fits["s4"].to_dict()
    two = pool_site_fits(fits)
    assert set(two.excluded) == {"s4"} and "separation" in two.excluded["s4"]
    assert two.pooled.k.tolist() == [4, 4, 4, 4]
    out = json.loads(json.dumps(two.to_dict()))
    assert set(out["per_site"]) == {"s0", "s1", "s2", "s3"}
    assert out["excluded"]["s4"]["status"] == "separation"
    assert set(out["pooled"]["age"]) >= {"k", "estimate", "se", "tau2", "I2", "Q", "pi_lb",
                                         "pi_ub"}
    assert out["multivariate"]["struct"] == "DIAG"


def test_separation_direction() -> None:
    x = np.column_stack([np.ones(6), [1, 2, 3, 4, 5, 6]])
    y = np.array([0, 0, 0, 1, 1, 1])
    b = separation_direction(x, y)
    assert b is not None and np.all((2 * y - 1) * (x @ b) >= -1e-12)
    assert separation_direction(x, np.array([0, 1, 0, 1, 0, 1])) is None
    # Quasi-complete: one level, all events; the rest overlaps.
    xq = np.column_stack([np.ones(8), [0, 0, 0, 0, 0, 0, 1, 1]])
    assert separation_direction(xq, np.array([0, 1, 0, 1, 1, 0, 1, 1])) is not None
    assert separation_direction(np.zeros((3, 2)), np.array([0, 1, 0])) is None


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 100_000), st.integers(8, 40))
@example(33191, 8)
def test_separation_check_agrees_with_the_fit(seed: int, n: int) -> None:
    """No separation found: the fit converges to finite estimates; found: it is real."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    y = rng.binomial(1, 1 / (1 + np.exp(-2 * x[:, 1])))
    if y.min() == y.max():
        return
    b = separation_direction(x, y)
    frame = pd.DataFrame({"y": y, "u": x[:, 1], "v": x[:, 2]})
    model = parse_model({"name": "m", "family": "binomial", "outcome": "y",
                         "covariates": ["u", "v"]})
    fit = fit_site(build_design(frame, model))
    if b is None:
        assert fit.status == "ok", fit.reason
        estimable = np.isfinite(fit.coefficients)      # a constant column is aliased
        # Finite, but not necessarily small: rows that overlap by a hair (seed 33191, n 8:
        # u = -0.613332 an event, -0.613328 not) are not separated, and their maximum
        # is finite though large, as glm() finds with its 'fitted probabilities
        # numerically 0 or 1' warning.
        assert estimable[:2].all() and np.all(np.isfinite(fit.coefficients[estimable]))
    else:
        s = 2 * y - 1
        assert np.all(s * (x @ b) >= -1e-9) and np.sum(s * (x @ b)) > 0
        assert fit.status == "separation"


def test_failed_and_aliased_site_fits() -> None:
    design = build_design(site_frame(1, n=40).assign(y=0).iloc[:0], MODEL)
    assert fit_site(design).status == "failed"
    lacking = site_frame(2)
    lacking = lacking[lacking["g"] != "c"]
    fit = fit_site(build_design(lacking, MODEL))
    assert fit.ok and "g=c" in fit.reason and np.isnan(fit.coefficients[3])
    assert fit.to_dict()["coefficients"]["g=c"] is None
    gauss = parse_model({"name": "m", "family": "gaussian", "outcome": "y",
                         "covariates": ["u"]})
    exact = fit_site(build_design(pd.DataFrame({"y": [1.0, 2.0], "u": [0.0, 1.0]}), gauss))
    assert exact.status == "failed" and "standard errors" in exact.reason


def test_site_fit_round_trip_and_validation() -> None:
    fit = fit_site(build_design(site_frame(3), MODEL))
    back = SiteFit.from_dict(json.loads(json.dumps(fit.to_dict())))
    np.testing.assert_array_equal(back.coefficients, fit.coefficients)
    np.testing.assert_array_equal(back.cov, fit.cov)
    body = fit.to_dict()
    for change, words in [({"status": "great"}, ["'status'", "'great'"]),
                          ({"n": "many"}, ["'n'"]),
                          ({"vcov": [[1.0]]}, ["'vcov'", "shape"]),
                          ({"coefficients": {"age": 1}}, ["'coefficients'"])]:
        with pytest.raises(InputError) as info:
            SiteFit.from_dict({**body, **change})
        for word in words:
            assert word in str(info.value)


def test_per_coefficient_pooling_is_the_meta_engine() -> None:
    frames = {f"s{i}": site_frame(10 + i, shift=0.4 * i) for i in range(6)}
    frames["s5"] = frames["s5"][frames["s5"]["g"] != "c"]      # lacks level c
    fits = {s: fit_site(build_design(f, MODEL)) for s, f in frames.items()}
    two = pool_site_fits(fits, method="REML", test="knha")
    for j, name in enumerate(MODEL.coefficient_names):
        sites = [s for s in fits if np.isfinite(fits[s].coefficients[j])]
        ref = meta_analysis([fits[s].coefficients[j] for s in sites],
                            [fits[s].se[j] ** 2 for s in sites], labels=sites,
                            method="REML", test="knha")
        got = two.pooled_dict()[name]
        assert got["k"] == len(sites) == (5 if name == "g=c" else 6)
        for key in ("estimate", "se", "tau2", "I2", "Q", "pi_lb", "pi_ub"):
            assert got[key] == pytest.approx(getattr(ref, key), rel=1e-12, abs=1e-15)
    assert two.multivariate is not None and two.multivariate.k_per.tolist() == [6, 6, 6, 5]


def test_pooling_edge_cases() -> None:
    fits = {"a": fit_site(build_design(site_frame(1), MODEL))}
    one = pool_site_fits(fits)
    assert one.multivariate is None and "at least two" in one.notes[0]
    assert one.pooled.k.tolist() == [1, 1, 1, 1]
    bad = SiteFit.from_dict({"status": "failed", "reason": "x", "n": 10,
                             "names": list(MODEL.coefficient_names)})
    none = pool_site_fits({"a": bad})
    assert "no site fit could be pooled" in none.notes and none.excluded == {"a": "x"}
    with pytest.raises(InputError, match="struct"):
        pool_site_fits(fits, struct="AR")
    with pytest.raises(InputError, match="no site fits"):
        pool_site_fits({})


# ---------------------------------------------------------------- multivariate model

def test_one_outcome_is_the_univariate_reml_fit() -> None:
    rng = np.random.default_rng(0)
    yi = rng.normal(0.3, 0.3, 9)
    vi = rng.uniform(0.02, 0.2, 9)
    uni = meta_analysis(yi, vi, method="REML")
    for method, ref_ll in (("REML", uni.logLik), ("ML", None)):
        mv = mv_meta(yi[:, None], vi[:, None, None], struct="DIAG", method=method)
        if method == "REML":
            assert mv.tau2[0] == pytest.approx(uni.tau2, rel=1e-8)
            assert mv.estimate[0] == pytest.approx(uni.estimate, rel=1e-9)
            assert mv.se[0] == pytest.approx(uni.se, rel=1e-8)
            assert mv.logLik == pytest.approx(ref_ll, rel=1e-9)
            assert mv.QE == pytest.approx(uni.Q, rel=1e-12)
            assert mv.pi_lb[0] == pytest.approx(uni.pi_lb, rel=1e-8)
        else:
            assert mv.tau2[0] == pytest.approx(
                meta_analysis(yi, vi, method="ML").tau2, rel=1e-8)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_diag_with_independent_outcomes_is_one_reml_fit_per_outcome(seed: int) -> None:
    """With diagonal within-site covariances, DIAG decouples into univariate fits."""
    rng = np.random.default_rng(seed)
    k, p = 8, 3
    y = rng.normal(0, 0.5, (k, p))
    v = rng.uniform(0.01, 0.3, (k, p))
    y[0, 2] = np.nan
    mv = mv_meta(y, np.stack([np.diag(r) for r in v]), struct="DIAG")
    assert mv.converged
    for j in range(p):
        ok = np.isfinite(y[:, j])
        uni = meta_analysis(y[ok, j], v[ok, j], method="REML")
        assert mv.estimate[j] == pytest.approx(uni.estimate, rel=1e-7, abs=1e-9)
        assert mv.tau2[j] == pytest.approx(uni.tau2, rel=1e-6, abs=1e-9)


def test_mv_meta_validation() -> None:
    y = np.zeros((3, 2))
    S = np.stack([np.eye(2)] * 3)
    with pytest.raises(InputError, match="struct"):
        mv_meta(y, S, struct="CS")
    with pytest.raises(InputError, match="method"):
        mv_meta(y, S, method="DL")
    with pytest.raises(InputError, match="shape"):
        mv_meta(y, S[:2])
    bad = S.copy()
    bad[1] = [[1, 2], [2, 1]]
    with pytest.raises(InputError, match="site '2'.*positive definite"):
        mv_meta(y, bad)
    few = y.copy()
    few[1:, 1] = np.nan
    with pytest.raises(InputError, match="'y2' is estimated by fewer than two sites"):
        mv_meta(few, S)
