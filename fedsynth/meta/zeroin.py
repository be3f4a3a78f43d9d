"""R's ``uniroot``: Brent's (1973) root search, step for step.

metafor finds several roots (the Henmi-Copas half-width, Q-profile bounds) with R's
``uniroot`` at a loose default tolerance (``.Machine$double.eps^0.25``, about 1.2e-4). At
that tolerance the root returned depends on the exact sequence of Brent steps, so a
different root finder (``scipy.optimize.brentq`` interpolates slightly differently) stops at
another point of the tolerance band and disagrees with metafor in the fifth digit. This
module follows the classical ``zeroin`` algorithm as R runs it (the same start, bracket
bookkeeping, interpolation/bisection choice and stopping rule), so that with the same
function values it returns R's root.

References
----------
Brent, R. P. (1973). *Algorithms for Minimization without Derivatives*, ch. 4.
Prentice-Hall.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedsynth.errors import FedsynthError

__all__ = ["UnirootResult", "uniroot", "R_DEFAULT_TOL"]

#: R's default ``tol`` of ``uniroot`` (``.Machine$double.eps^0.25``).
R_DEFAULT_TOL: float = float(np.finfo(float).eps ** 0.25)
_EPS = float(np.finfo(float).eps)


@dataclass(frozen=True)
class UnirootResult:
    """A root found by :func:`uniroot` (R's ``uniroot`` list).

    Attributes
    ----------
    root
        The root's location (R's ``root``).
    f_root
        The function at ``root`` (``f.root``).
    iter
        Function evaluations after the two at the ends (``iter``).
    estim_prec
        Width of the last bracket (``estim.prec``).
    """

    root: float
    f_root: float
    iter: int
    estim_prec: float


def uniroot(f: Callable[[float], float], lower: float, upper: float, *,
            tol: float = R_DEFAULT_TOL, maxiter: int = 1000) -> UnirootResult:
    """Find a root of ``f`` in ``[lower, upper]`` exactly as R's ``uniroot`` does.

    Parameters
    ----------
    f
        A continuous function whose values at ``lower`` and ``upper`` differ in sign.
    lower, upper
        The bracket.
    tol
        Absolute tolerance (R's ``tol``); each step's tolerance is ``2 eps |b| + tol / 2``.
    maxiter
        Most steps (R's ``maxiter``).

    Returns
    -------
    UnirootResult

    Raises
    ------
    FedsynthError
        When the ends do not bracket a root, a value is not finite, or the search does not
        converge in ``maxiter`` steps (R stops with an error or a warning there).
    """
    if not lower < upper:
        raise FedsynthError(f"uniroot: lower ({lower}) must be below upper ({upper})")
    fa, fb = float(f(lower)), float(f(upper))
    if not (np.isfinite(fa) and np.isfinite(fb)):
        raise FedsynthError(f"uniroot: f is not finite at an end (f({lower}) = {fa}, "
                            f"f({upper}) = {fb})")
    if fa * fb > 0:
        raise FedsynthError(f"uniroot: f({lower}) = {fa} and f({upper}) = {fb} have the "
                            "same sign")
    a, b = float(lower), float(upper)
    if fa == 0.0:
        return UnirootResult(a, fa, 0, 0.0)
    if fb == 0.0:
        return UnirootResult(b, fb, 0, 0.0)
    c, fc = a, fa
    for step in range(maxiter + 1):
        prev_step = b - a
        if abs(fc) < abs(fb):           # b must be the best approximation so far
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol_act = 2 * _EPS * abs(b) + tol / 2
        new_step = (c - b) / 2
        if abs(new_step) <= tol_act or fb == 0.0:
            return UnirootResult(b, fb, step, abs(c - b))
        # interpolation when the last step was large enough and moved towards the root
        if abs(prev_step) >= tol_act and abs(fa) > abs(fb):
            cb = c - b
            if a == c:                  # two points: linear (secant) interpolation
                t1 = fb / fa
                p = cb * t1
                q = 1.0 - t1
            else:                       # three points: inverse quadratic interpolation
                q, t1, t2 = fa / fc, fb / fc, fb / fa
                p = t2 * (cb * q * (q - t1) - (b - a) * (t1 - 1.0))
                q = (q - 1.0) * (t1 - 1.0) * (t2 - 1.0)
            if p > 0:
                q = -q
            else:
                p = -p
            # accept the interpolated step only inside the bracket and when it shrinks fast
            if p < 0.75 * cb * q - abs(tol_act * q) / 2 and p < abs(prev_step * q / 2):
                new_step = p / q
        if abs(new_step) < tol_act:     # never a step below the tolerance
            new_step = tol_act if new_step > 0 else -tol_act
        a, fa = b, fb
        b += new_step
        fb = float(f(b))
        if not np.isfinite(fb):
            raise FedsynthError(f"uniroot: f({b}) = {fb} is not finite")
        if (fb > 0 and fc > 0) or (fb < 0 and fc < 0):
            c, fc = a, fa               # keep the root bracketed by [b, c]
    raise FedsynthError(f"uniroot: no convergence in {maxiter} steps (last bracket "
                        f"[{min(b, c)}, {max(b, c)}])")
