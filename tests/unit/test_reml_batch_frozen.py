"""The batch ML/REML solver against its own answers frozen before issue 17's fast path.

tests/data/reml_batch/frozen.npz was written once by make_frozen.py with the solver of
main 44f9de0 (see tests/data/README.md); the fast intercept-only path must give the same
tau², SE of tau², convergence flags, estimates and SEs to 1e-10 relative, on a stress set
(k = 2, tau² = 0, huge and tiny variances, dominated weights, interior maxima found by the
HE probe and probes that find none, with and without a dominant site) and on the
benchmark's 200,000 x 20 arrays.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fedsynth.meta import pool
from fedsynth.meta.stats import tau2_estimate
from tests._data_builders import pooling_benchmark_data, reml_answers

DATA = Path(__file__).resolve().parents[1] / "data" / "reml_batch" / "frozen.npz"
RTOL = 1e-10
ATOL = 1e-300  # exact zeros must stay exact zeros (relative agreement elsewhere)


@pytest.fixture(scope="module")
def frozen():
    with np.load(DATA) as z:
        return {key: z[key] for key in z.files}



def _close(got, want, what):
    if want.dtype == bool:
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True,
                                   err_msg=what)


def test_frozen_set_covers_the_hard_cases(frozen):
    groups = frozen["groups"]
    k = frozen["mask"].sum(axis=1)
    assert (k == 2).sum() >= 300
    assert (groups == "interior").sum() == 200
    assert (frozen["REML_tau2"][groups == "interior"] > 0).all()
    assert (frozen["REML_tau2"][groups == "probe_miss"] == 0).all()
    assert (frozen["REML_tau2"][groups == "interior_even"] > 0).all()
    assert (frozen["REML_tau2"][groups == "probe_miss_even"] == 0).all()
    w = np.where(frozen["mask"], 1.0 / frozen["vi"], 0.0)
    even = groups == "interior_even"
    assert even.sum() == 100 and (w.max(axis=1) <= 0.5 * w.sum(axis=1))[even].all()
    assert (frozen["REML_tau2"] == 0).sum() > 500
    v = np.where(frozen["mask"], frozen["vi"], np.nan)
    assert np.nanmax(v) / np.nanmin(v) > 1e16


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_stress_set_unchanged(frozen, method):
    got = reml_answers(frozen["yi"], frozen["vi"], frozen["mask"], method)
    for key, val in got.items():
        for group in np.unique(frozen["groups"]):
            rows = frozen["groups"] == group
            _close(val[rows], frozen[f"{method}_{key}"][rows], f"{method} {key} {group}")


def test_stress_set_rows_alone_unchanged(frozen):
    """One analysis at a time (1-D input) gives the frozen batch answers too."""
    rows = np.concatenate([np.flatnonzero(frozen["groups"] == g)[:5]
                           for g in np.unique(frozen["groups"])])
    for i in rows:
        msk = frozen["mask"][i]
        fit = tau2_estimate(frozen["yi"][i][msk], frozen["vi"][i][msk], method="REML")
        _close(fit.tau2, frozen["REML_tau2"][i:i + 1], f"tau2 row {i}")
        _close(fit.se_tau2, frozen["REML_se_tau2"][i:i + 1], f"se_tau2 row {i}")


def test_pool_reml_unchanged(frozen):
    res = pool(frozen["yi"], frozen["vi"], mask=frozen["mask"], method="REML")
    for key in ("estimate", "se", "tau2", "se_tau2", "ci_lb", "ci_ub", "pval", "I2", "H2",
                "pi_lb", "pi_ub", "logLik", "tau2_ci_lb", "tau2_ci_ub", "converged"):
        _close(np.asarray(getattr(res, key)), frozen[f"pool_{key}"], f"pool {key}")



def test_benchmark_arrays_unchanged(frozen):
    yi, vi = pooling_benchmark_data(200_000, 20, 2026)
    h = hashlib.sha256()
    for a in (yi, vi):
        h.update(np.ascontiguousarray(a).tobytes())
    assert h.hexdigest() == str(frozen["bench_digest"]), (
        "numpy's random stream changed: the benchmark arrays differ from the frozen ones")
    got = reml_answers(yi, vi, None, "REML")
    rows = frozen["bench_rows"]
    for key, val in got.items():
        _close(val[rows], frozen[f"bench_{key}"], f"benchmark {key}")
        if key != "converged":
            _close(np.array(val.sum()), frozen[f"bench_sum_{key}"], f"benchmark sum {key}")
    assert (got["tau2"] == 0).sum() == int(frozen["bench_zero_count"])
    assert got["converged"].sum() == int(frozen["bench_converged_count"])
