"""fedsynth.meta.zeroin.uniroot repeats R's uniroot step for step.

The expected roots, iteration counts and final bracket widths were printed by R 4.2.2:
``uniroot(f, c(0, 3))`` at the default tol (eps^0.25) with ``sprintf("%.17g")``.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import norm

from fedsynth.errors import FedsynthError
from fedsynth.meta.zeroin import uniroot

R_CASES = [
    (lambda x: x**3 - x - 1, 1.324740732260107, 8, 6.1035156250666134e-05),
    (lambda x: math.cos(x) - x, 0.73908040140497955, 5, 6.1035156250333067e-05),
    (lambda x: math.exp(x) - 5, 1.6094374430867704, 6, 8.398695544697965e-05),
    (lambda x: norm.cdf(x) - 0.975, 1.9599632707161945, 8, 6.1035156250888178e-05),
]


@pytest.mark.parametrize(("f", "root", "iterations", "prec"), R_CASES)
def test_same_root_steps_and_bracket_as_r(f, root, iterations, prec) -> None:
    r = uniroot(f, 0.0, 3.0)
    assert r.root == pytest.approx(root, rel=1e-15)
    assert r.iter == iterations
    assert r.estim_prec == pytest.approx(prec, rel=1e-12)


@given(st.floats(0.05, 2.95), st.sampled_from([1e-4, 1e-8, 1e-12]))
def test_root_within_tolerance(target: float, tol: float) -> None:
    r = uniroot(lambda x: math.atan(x - target), 0.0, 3.0, tol=tol)
    assert abs(r.root - target) <= tol + 4 * 2.3e-16 * abs(target)


def test_bad_brackets_are_refused() -> None:
    with pytest.raises(FedsynthError, match="same sign"):
        uniroot(lambda x: x + 1, 0.0, 3.0)
    with pytest.raises(FedsynthError, match="below upper"):
        uniroot(lambda x: x, 3.0, 0.0)
    with pytest.raises(FedsynthError, match="no convergence"):
        uniroot(lambda x: math.exp(x) - 5, 0.0, 3.0, tol=1e-14, maxiter=2)
