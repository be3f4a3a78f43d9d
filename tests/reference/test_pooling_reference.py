"""Pooling reproduces metafor's ``rma.uni`` on every ``pooling`` case of metafor_public.json.

Reference: R 4.2.2, metafor 3.8-1 (see tests/data/README.md). Tolerances as the reference
README states: relative 1e-6 (absolute 1e-9 near zero) for closed-form and iterative
estimates, 1e-5 for Q-profile bounds (root finding). Every field of ``expected`` is
compared; a value metafor does not report (null, or an empty list for FE's prediction
interval) must be absent (None) in ours.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from fedsynth.meta import meta_analysis, pool
from tests.conftest import load_json

CASES = load_json("metafor_public.json")["pooling"]
QPROFILE_KEYS = {"tau2_ci", "I2_ci", "H2_ci"}
SCALAR_KEYS = ("k", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "tau2", "se_tau2",
               "Q", "Q_df", "Q_pval", "I2", "H2", "pi_lb", "pi_ub", "logLik")


def _close(got, expected, rel: float) -> bool:
    if expected is None:
        return got is None
    if got is None:
        return False
    if abs(got - expected) <= 1e-9:
        return True
    return abs(got - expected) <= rel * abs(expected)


def _mismatches(got: dict, expected: dict) -> list[str]:
    out = []
    for key, exp in expected.items():
        if isinstance(exp, list) and not exp:
            exp = None  # R's NULL serialised as []
        value = got[key]
        if key in QPROFILE_KEYS:
            if exp is None:
                if value is not None:
                    out.append(f"{key}: expected absent, got {value}")
                continue
            if value is None or not all(_close(g, e, 1e-5) for g, e in zip(value, exp)):
                out.append(f"{key}: got {value}, expected {exp}")
        elif not _close(value, exp, 1e-6):
            out.append(f"{key}: got {value!r}, expected {exp!r}")
    return out


def test_case_ids_are_unique_and_all_present():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)) == 255
    methods = {(c["method"], c["test"]) for c in CASES}
    assert len(methods) == 17  # FE (z only) + 8 estimators x 2 tests


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_pooling_matches_metafor(case):
    res = meta_analysis(case["yi"], case["vi"], labels=case["labels"], method=case["method"],
                        test=case["test"], level=case["level"])
    got = res.to_dict()
    # every field of the reference is one of ours
    assert set(case["expected"]) <= set(got)
    assert set(case["expected"]) >= set(SCALAR_KEYS)
    problems = _mismatches(got, case["expected"])
    assert not problems, "\n".join(problems)
    assert res.converged, res.message


def _groups():
    groups = defaultdict(list)
    for c in CASES:
        groups[(c["method"], c["test"], c["level"])].append(c)
    return sorted(groups.items())


@pytest.mark.parametrize("key,cases", _groups(), ids=[f"{m}-{t}" for (m, t, _), _ in _groups()])
def test_batch_path_matches_metafor(key, cases):
    """All cases of one method/test pooled in ONE call (ragged k through the mask)."""
    method, test, level = key
    kmax = max(len(c["yi"]) for c in cases)
    # shuffle the column position of each row so that masked cells sit anywhere
    rng = np.random.default_rng(7)
    yi = np.full((len(cases), kmax + 3), np.nan)
    vi = np.full_like(yi, np.nan)
    mask = np.zeros(yi.shape, dtype=bool)
    for i, c in enumerate(cases):
        cols = np.sort(rng.choice(kmax + 3, size=len(c["yi"]), replace=False))
        yi[i, cols] = c["yi"]
        vi[i, cols] = c["vi"]
        mask[i, cols] = True
    batch = pool(yi, vi, mask=mask, method=method, test=test, level=level,
                 names=[c["id"] for c in cases])
    assert len(batch) == len(cases)
    problems = []
    for i, c in enumerate(cases):
        for p in _mismatches(batch[i].to_dict(), c["expected"]):
            problems.append(f"{c['id']}: {p}")
    assert not problems, "\n".join(problems)
    # the column-wise record builder agrees with the per-result one
    for i, rec in enumerate(batch.to_dicts()):
        single = batch[i].to_dict()
        assert rec.keys() == single.keys()
        for k, v in rec.items():
            w = single[k]
            assert v == w or (isinstance(v, float) and math.isclose(v, w))


def test_seed_example():
    """The bundled seed example: FE 0.2458 (se 0.0465, CI 0.155 to 0.337), DL tau2 0,
    Q 5.43 on 7 df, I2 0."""
    yi = [0.22, 0.35, 0.10, 0.41, 0.28, 0.18, 0.50, 0.26]
    sei = [0.12, 0.15, 0.10, 0.18, 0.11, 0.14, 0.20, 0.13]
    vi = [s * s for s in sei]
    fe = meta_analysis(yi, vi, method="FE")
    assert fe.estimate == pytest.approx(0.2458, abs=5e-5)
    assert fe.se == pytest.approx(0.0465, abs=5e-5)
    assert fe.ci_lb == pytest.approx(0.155, abs=5e-4)
    assert fe.ci_ub == pytest.approx(0.337, abs=5e-4)
    dl = meta_analysis(yi, vi, method="DL")
    assert dl.tau2 == 0.0
    assert dl.Q == pytest.approx(5.43, abs=5e-3)
    assert dl.Q_df == 7
    assert dl.I2 == 0.0
    assert dl.estimate == pytest.approx(fe.estimate, rel=1e-12)
    # the seed case of the reference agrees too
    ref = next(c for c in CASES if c["id"] == "seed8/FE/z")
    assert ref["yi"] == pytest.approx(yi)
    assert fe.estimate == pytest.approx(ref["expected"]["estimate"], rel=1e-9)


@pytest.mark.parametrize("method", ["ML", "REML", "EB", "PM"])
def test_both_solvers_reproduce_metafor_tau2(method):
    """Newton (default) and metafor's own Fisher scoring land on the same tau² as R."""
    from fedsynth.meta import stats as st

    cases = [c for c in CASES if c["method"] == method and c["test"] == "z"]
    kmax = max(len(c["yi"]) for c in cases)
    yi = np.full((len(cases), kmax), np.nan)
    vi = np.full_like(yi, np.nan)
    for i, c in enumerate(cases):
        yi[i, : len(c["yi"])], vi[i, : len(c["vi"])] = c["yi"], c["vi"]
    mask = ~np.isnan(yi)
    expected = np.array([c["expected"]["tau2"] for c in cases])
    for solver in st.SOLVERS:
        fit = st.tau2_estimate(yi, vi, mask, method, solver=solver)
        assert fit.converged.all()
        assert np.allclose(fit.tau2, expected, rtol=1e-6, atol=1e-9), solver
