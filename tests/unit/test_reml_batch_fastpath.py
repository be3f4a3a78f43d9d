"""The intercept-only ML/REML fast path against the general solver it replaces.

``tau2_estimate(method="ML"/"REML")`` without moderators runs the fused, blocked copy of
the solver (``stats._ml_reml_intercept``); the general path (``_newton_score``, the
likelihood check ``_ll0_check`` and the SE formula) is still the one used with a design
matrix and for the rows the fast path hands back. Both must agree on every row: the same
bracket, start and Newton steps give the same root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_

from fedsynth.meta import stats as st


def _general(yi, vi, mask, method):
    """tau², converged, SE of tau² by the general path (as tau2_estimate did before)."""
    b = st.as_batch(yi, vi, mask)
    tau2 = np.zeros(b.yi.shape[0])
    ok = np.ones(b.yi.shape[0], dtype=bool)
    se = np.full(b.yi.shape[0], np.nan)
    rows = np.flatnonzero(b.k > 1)
    c = st._centered(b.take(rows))
    with np.errstate(all="ignore"):
        t, o = st._newton_score(c, method)
        t = st._ll0_check(c, t, o, method, 0.0)
        w = st.re_weights(c, t)
        s = np.sqrt(2 / (st._rdot(w, w) if method == "ML" else st._sum_p2(w)))
    tau2[rows], ok[rows], se[rows] = t, o, s
    return tau2, ok, se


def _agree(yi, vi, mask, method):
    fit = st.tau2_estimate(yi, vi, mask, method=method)
    tau2, ok, se = _general(yi, vi, mask, method)
    np.testing.assert_array_equal(fit.converged, ok)
    np.testing.assert_array_equal(fit.tau2 == 0, tau2 == 0)
    np.testing.assert_allclose(fit.tau2, tau2, rtol=1e-10, atol=0)
    np.testing.assert_allclose(fit.se_tau2, se, rtol=1e-10, atol=0, equal_nan=True)


@st_.composite
def batches(draw):
    m = draw(st_.integers(1, 6))
    K = draw(st_.integers(2, 9))
    seed = draw(st_.integers(0, 2**32 - 1))
    spread = draw(st_.floats(0.0, 8.0))      # decades of variance within an analysis
    scale = draw(st_.floats(-10.0, 10.0))    # decades of the whole analysis
    het = draw(st_.sampled_from([0.0, 1e-3, 0.1, 1.0, 10.0]))
    rng = np.random.default_rng(seed)
    vi = 10.0 ** (scale + rng.uniform(-spread / 2, spread / 2, (m, K)))
    yi = rng.normal(0, 1, (m, 1)) * 10 ** (scale / 2) + rng.normal(size=(m, K)) * np.sqrt(
        vi + het * 10.0**scale)
    mask = rng.random((m, K)) < draw(st_.floats(0.4, 1.0))
    mask[:, :2] = True
    return yi, vi, mask


@pytest.mark.parametrize("method", ["REML", "ML"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=batches())
def test_fast_path_equals_general_path(method, data):
    _agree(*data, method)


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_many_rows_of_every_kind(method):
    """Blocks, compaction of finished rows and the probe, on 20,000 mixed analyses."""
    rng = np.random.default_rng(4)
    m, K = 20_000, 12
    k = rng.integers(2, K + 1, m)
    mask = np.arange(K)[None, :] < k[:, None]
    vi = 10.0 ** rng.uniform(-4, 1, (m, K))
    tau2 = np.where(rng.random(m) < 0.3, 0.0, 10.0 ** rng.uniform(-3, 0, m))
    yi = rng.normal(size=(m, 1)) + rng.normal(size=(m, K)) * np.sqrt(vi + tau2[:, None])
    _agree(yi, vi, mask, method)


def test_fast_path_is_taken(monkeypatch):
    """Rows without a hard case never reach the general solver."""
    rng = np.random.default_rng(1)
    vi = rng.uniform(0.01, 0.1, (50, 10))
    yi = rng.normal(size=(50, 10)) * np.sqrt(vi + 0.05)
    monkeypatch.setattr(st, "_newton_score", lambda *a, **k: pytest.fail("general path"))
    fit = st.tau2_estimate(yi, vi, method="REML")
    assert fit.converged.all() and (fit.tau2 > 0).any()


def test_dominated_rows_take_the_general_path(monkeypatch):
    """A weight above half the total hands the row to the general solver, same answer."""
    vi = np.array([[1e-8, 1.0, 2.0, 0.5], [0.1, 0.2, 0.3, 0.4]])
    yi = np.array([[0.1, 2.0, -1.5, 0.7], [0.1, 2.0, -1.5, 0.7]])
    calls = []
    general = st._newton_score

    def spy(b, method, **kw):
        calls.append(b.yi.shape[0])
        return general(b, method, **kw)

    monkeypatch.setattr(st, "_newton_score", spy)
    fit = st.tau2_estimate(yi, vi, method="REML")
    assert calls == [1]
    monkeypatch.setattr(st, "_newton_score", general)
    tau2, ok, se = _general(yi, vi, None, "REML")
    np.testing.assert_allclose(fit.tau2, tau2, rtol=1e-12)
    np.testing.assert_allclose(fit.se_tau2, se, rtol=1e-12)


def test_interior_maximum_found_by_the_probe(monkeypatch):
    """Score <= 0 at zero, HE > 0 and a higher likelihood inside: the fast probe's root."""
    with np.load(Path(__file__).resolve().parents[1] / "data" / "reml_batch"
                 / "frozen.npz") as z:
        rows = z["groups"] == "interior_even"
        yi, vi, mask, want = z["yi"][rows], z["vi"][rows], z["mask"][rows], z["REML_tau2"][rows]
    b = st._centered(st.as_batch(yi, vi, mask))
    s0, _ = st._score(b.yi, b.vw, np.zeros(len(yi)), "REML", slope=False)
    assert (s0 <= 0).all() and (want > 0).all()
    monkeypatch.setattr(st, "_newton_score", lambda *a, **k: pytest.fail("general path"))
    fit = st.tau2_estimate(yi, vi, mask, method="REML")
    monkeypatch.undo()
    np.testing.assert_allclose(fit.tau2, want, rtol=1e-10)
    ll = st.log_likelihood(b, fit.tau2, reml=True)
    ll0 = st.log_likelihood(b, np.zeros(len(yi)), reml=True)
    assert (ll >= ll0 - np.finfo(float).eps ** 0.25).all()


def test_small_and_degenerate_analyses():
    """k = 2, identical effects, one analysis as 1-D input: the general path's answers."""
    cases = [([0.3, 0.3], [0.1, 0.2]), ([0.0, 1.0], [0.01, 0.01]), ([1.0, -1.0], [1e-12, 1e-12]),
             ([5.0, 5.0, 5.0], [1.0, 2.0, 3.0])]
    for y, v in cases:
        for method in ("REML", "ML"):
            _agree(np.array([y]), np.array([v]), None, method)
            one = st.tau2_estimate(y, v, method=method)
            np.testing.assert_allclose(one.tau2, _general(np.array([y]), np.array([v]), None,
                                                          method)[0], rtol=1e-12)


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_empty_batch_and_rows_without_degrees_of_freedom(method):
    empty = st.tau2_estimate(np.zeros((0, 3)), np.ones((0, 3)), method=method)
    assert empty.tau2.shape == (0,) and empty.converged.shape == (0,)
    mask = np.array([[True, False, False], [True, True, True]])
    yi = np.array([[0.2, np.nan, np.nan], [0.1, 0.9, -0.4]])
    vi = np.array([[0.1, np.nan, np.nan], [0.05, 0.02, 0.04]])
    fit = st.tau2_estimate(yi, vi, mask, method=method)
    assert fit.tau2[0] == 0 and np.isnan(fit.se_tau2[0]) and fit.converged.all()
    _agree(yi, vi, mask, method)
