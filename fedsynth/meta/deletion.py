"""Leave-one-out refits of intercept-only models for every site of every analysis at once.

The k deleted fits of an analysis of k sites share all but one term of every sum their
estimating equations need. Refitting each one from scratch (what metafor's ``rstudent`` and
``influence`` do, and what :func:`fedsynth.meta.metareg.fit_batch` does on a masked grid)
costs O(k) per fit, O(k²) per analysis: at 1,000 sites the heterogeneity flag of a round
spent minutes there.

Here the random-effects weights of the deleted fit of site i at ``tau2 = tau0 + d`` are
expanded around the full fit's ``tau0``::

    1 / (v_j + tau0 + d) = u_j / (1 + d u_j) = sum_n (-d)^n u_j^(n+1),   u_j = 1/(v_j + tau0)

so every sum the ML/REML score, its slope and the log-likelihood need,
``sum_{j != i} w_j^a y_j^b``, is a polynomial in ``d`` whose coefficients are the
*exclusive* power sums ``sum_{j != i} u_j^p y_j^b``. Those are computed for every i at once
from prefix and suffix sums (no cancellation when one site dominates,
:func:`fedsynth.meta.stats.exclusive_sum`), so a Newton iteration of all k deleted fits costs
O(k x terms) instead of O(k²). Deleting one of many sites moves tau² little (``d`` is
O(tau0/k)), so a handful of terms reproduces the sums to rounding; the number of terms is
chosen from the largest ``|d| u_max`` so that the truncated tail is below 1e-17 of the
sum, and the series is used only while ``|d| u_max <= 1/4``.

Every deleted fit the series cannot settle exactly as the engine would is handed to the
engine (:func:`fedsynth.meta.metareg.fit_batch`): a full fit at tau² = 0 with a deleted
fit above it, a score at zero that is not positive while the HE estimate is (the engine's
interior-maximum probe), a likelihood at zero above the root (rma.uni's check), Newton
not settling, or the deleted tau² too far from the full one. FE and DL deleted fits are
closed forms of the same exclusive sums. Other tau² methods go to the engine whole.

References
----------
Viechtbauer, W., & Cheung, M. W.-L. (2010). Outlier and influence diagnostics for
meta-analysis. Research Synthesis Methods, 1, 112-125 (the deleted fits).
Harville, D. A. (1977). Maximum likelihood approaches to variance component estimation.
JASA, 72, 320-338 (the ML/REML score and its derivative).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np

from fedsynth.meta import stats as st

#: methods whose deleted fits are computed here (others go to the engine whole)
SERIES_METHODS = ("FE", "DL", "ML", "REML")
#: largest |d| u_max for which the series is used (beyond it the sums are direct, O(k))
_E_MAX = 0.05
#: truncation: terms are added until C(n + 3, 3) |e|^(n + 1) < _TAIL (the tail bound of
#: the cubic weights' series relative to the sum)
_TAIL = 1e-17
_N_MAX = 40
#: Newton stops when the step is below this fraction of tau² (quadratic convergence: the
#: error after that step is ~ its square), as the engine's ``newton_rtol``
_RTOL = 1e-9
_MAX_STEPS = 30


@dataclass(frozen=True)
class DeletedFits:
    """The leave-one-out fits of the cells ``(cell_a[c], cell_j[c])``.

    Attributes
    ----------
    estimate, se, tau2 : ndarray, shape (n,)
        The pooled estimate, its standard error and tau² of the analysis without the site.
    k : ndarray of int, shape (n,)
        Sites in the deleted fit.
    rss : ndarray, shape (n,)
        ``sum_{j != i} w_j (y_j - estimate)^2`` with the deleted fit's weights (the
        Knapp-Hartung factor is ``rss / (k - 1)``).
    sw_all : ndarray, shape (n,)
        ``sum_j 1 / (v_j + tau2)`` over *all* sites of the analysis at the deleted tau².
    engine : int
        How many of the cells were refitted by the engine instead of the series.
    """

    estimate: np.ndarray
    se: np.ndarray
    tau2: np.ndarray
    k: np.ndarray
    rss: np.ndarray
    sw_all: np.ndarray
    engine: int


#: the term counts a cell may get (cells are grouped by them: few terms for most), and
#: the largest |e| each serves: C(n + 3, 3) |e|^(n + 1) = _TAIL solved for |e| (0.999 of
#: it, so the bound holds strictly)
_TERM_STEPS = np.array([2, 4, 6, 9, 12, 16, 24, 32, _N_MAX])
_TERM_LIMITS = np.array([0.999 * (_TAIL / comb(int(n) + 3, 3)) ** (1.0 / (int(n) + 1))
                         for n in _TERM_STEPS])


def _terms_each(e: np.ndarray) -> np.ndarray:
    """Terms for each cell's ``|e|``, rounded up to one of ``_TERM_STEPS``."""
    pos = np.searchsorted(_TERM_LIMITS, e, side="left")
    return _TERM_STEPS[np.minimum(pos, _TERM_STEPS.size - 1)]


def _terms(e_max: float) -> int:
    """Terms of the series needed for every ``|e| <= e_max``."""
    return int(_terms_each(np.array([e_max]))[0])


_COEF = np.array([[0.0] * (_N_MAX + 1)] + [
    [(-1.0) ** n * comb(a + n - 1, n) for n in range(_N_MAX + 1)] for a in (1, 2, 3)])
#: below this many sites the engine refits every deleted fit: deleting one of few sites
#: moves tau² far (up to ~32 terms of the series), and the engine's O(k) refit is then
#: as fast (measured: 20 sites, 20,000 analyses)
SERIES_MIN_SITES = 48


class _Series:
    """Exclusive power sums of a block of cells, and the weight sums they give at any tau².

    ``sums(t, idx)`` and ``log_v(t, idx)`` cost O(terms) per cell; ``reach(t, idx)`` says
    where the series may be used (``|tau2 - tau0| u_max <= _E_MAX``).
    """

    def __init__(self, yc: np.ndarray, v: np.ndarray, msk: np.ndarray,
                 tau2_full: np.ndarray, cells: tuple[np.ndarray, np.ndarray]) -> None:
        u = np.where(msk, 1.0 / (v + tau2_full[:, None]), 0.0)
        scale = u.max(axis=1)                           # u_max per analysis
        x = u / scale[:, None]
        p_max = _terms(_E_MAX) + 3
        # moments[p, b, c] = sum_{j != i} x_j^p y_j^b for the cell c = (a, i): the
        # powers of all p and b stacked, one exclusive sum over them all
        powers = np.cumprod(np.broadcast_to(x, (p_max,) + x.shape), axis=0)
        terms = np.stack([powers, powers * yc, powers * (yc * yc)], axis=1)
        self.moments = np.empty((p_max + 1, 3, cells[0].size))
        self.moments[1:] = st.exclusive_sum(terms)[:, :, cells[0], cells[1]]
        self.scale = scale[cells[0]]
        self.t0 = tau2_full[cells[0]]
        self.log_v0 = st.exclusive_sum(np.where(msk, np.log(v + tau2_full[:, None]), 0.0))[
            cells]

    def _e(self, t: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return (t - self.t0[idx]) * self.scale[idx]

    def reach(self, t: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.abs(self._e(t, idx)) <= _E_MAX

    def sums(self, t: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """``out[a - 1, b] = sum_{j != i} w_j^a y_j^b`` at ``t`` for the cells idx."""
        e = self._e(t, idx)
        need = _terms_each(np.abs(e))
        out = np.empty((3, 3, e.size))
        for n in np.unique(need):
            sel = np.flatnonzero(need == n)
            es = e[sel]
            moments = self.moments[:n + 4, :, idx[sel]]     # one gather per group
            s = self.scale[idx[sel]]
            for a in (1, 2, 3):
                # Horner: sum_k c_k e^k M_{a+k}
                acc = _COEF[a, n] * moments[a + n]
                for k in range(n - 1, -1, -1):
                    acc *= es
                    acc += _COEF[a, k] * moments[a + k]
                out[a - 1][:, sel] = acc * s ** a
        return out

    def log_v(self, t: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """``sum_{j != i} log(v_j + t)``: ``log(v_j + tau0) + log(1 + e x_j)`` summed."""
        e = self._e(t, idx)
        n = _terms(float(np.max(np.abs(e), initial=0.0)))
        acc = self.moments[n + 1, 0, idx] * ((-1.0) ** n / (n + 1))
        for p in range(n, 0, -1):
            acc = acc * e + self.moments[p, 0, idx] * ((-1.0) ** (p + 1) / p)
        return self.log_v0[idx] + acc * e


class _Direct:
    """The same sums as :class:`_Series`, summed over the sites directly (few sites)."""

    def __init__(self, yc: np.ndarray, v: np.ndarray, msk: np.ndarray,
                 cells: tuple[np.ndarray, np.ndarray]) -> None:
        self.rows, self.sites = cells
        self.msk = msk
        self.y = yc
        self.v = v

    def _mask(self, idx: np.ndarray) -> np.ndarray:
        mask = self.msk[self.rows[idx]]
        mask[np.arange(idx.size), self.sites[idx]] = False
        return mask

    def sums(self, t: np.ndarray, idx: np.ndarray) -> np.ndarray:
        rows = self.rows[idx]
        w = np.where(self._mask(idx), 1.0 / (self.v[rows] + t[:, None]), 0.0)
        y = self.y[rows]
        out = np.empty((3, 3, idx.size))
        wa = np.ones_like(w)
        for a in range(3):
            wa = wa * w
            wy = wa * y
            out[a] = (wa.sum(axis=1), wy.sum(axis=1), (wy * y).sum(axis=1))
        return out

    def log_v(self, t: np.ndarray, idx: np.ndarray) -> np.ndarray:
        rows = self.rows[idx]
        return np.where(self._mask(idx), np.log(self.v[rows] + t[:, None]), 0.0).sum(axis=1)


def _score(sums: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ML/REML score (x 2), its derivative and the weighted mean from the weight sums."""
    (sw, swy, _), (sw2, sw2y, sw2yy), (sw3, sw3y, sw3yy) = sums
    mu = swy / sw
    uu = sw2yy - 2 * mu * sw2y + mu * mu * sw2          # y'PPy
    wu = sw2y - mu * sw2                                # sum w u, u = w (y - mu)
    wuu = sw3yy - 2 * mu * sw3y + mu * mu * sw3         # sum w u^2
    upu = wuu - wu * wu / sw                            # y'PPPy
    if method == "ML":
        num, info = uu - sw, sw2
    else:
        num = uu - (sw - sw2 / sw)                      # y'PPy - tr(P)
        info = sw2 - 2 * sw3 / sw + (sw2 / sw) ** 2     # tr(PP)
    return num, info - 2 * upu, mu


def deleted_fits(y: np.ndarray, v: np.ndarray, msk: np.ndarray, tau2_full: np.ndarray,
                 method: str, cells: tuple[np.ndarray, np.ndarray]) -> DeletedFits:
    """The fits of every analysis without each of its sites, in O(k) per analysis.

    Parameters
    ----------
    y, v : ndarray, shape (m, K)
        Effect sizes and sampling variances, sanitised (0 and 1 outside the mask).
    msk : ndarray of bool, shape (m, K)
    tau2_full : ndarray, shape (m,)
        tau² of each full analysis by ``method`` (the expansion point).
    method : str
        tau² estimator; FE, DL, ML and REML are computed here, others by the engine.
    cells : (ndarray, ndarray)
        ``(analysis, site)`` indices of the deleted fits wanted (sites inside the mask).

    Returns
    -------
    DeletedFits
        Equal to :func:`fedsynth.meta.metareg.fit_batch` on the masked grid without each
        site, to the engine's root tolerance.
    """
    cell_a, cell_j = cells
    n = cell_a.size
    kk = msk.sum(axis=1)
    kd = kk[cell_a] - 1
    out_t = np.zeros(n)
    out_sums = np.full((3, n), np.nan)       # sum w, sum w y, sum w y^2 (centred y)
    engine = np.zeros(n, dtype=bool)
    if method not in SERIES_METHODS or msk.shape[1] < SERIES_MIN_SITES:
        engine[:] = True
        return _finish(y, v, msk, cells, out_t, out_sums, engine, method, None)
    # Sums of w^a (y - c)^b are combined into sum w^a (y - mu)^2 in one pass, which
    # cancels unless c is close to mu: a site whose weight dominates would leave noise.
    # So the sums at zero are centred on each analysis's fixed-effect mean, the sums
    # near the full fit's tau² on its random-effects mean (the deleted fits' means are
    # close to those unless the deleted site dominated, and then the rest do not).
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a0 = np.where(msk, 1.0 / v, 0.0)
        centre = (a0 * y).sum(axis=1) / a0.sum(axis=1)
        yc = np.where(msk, y - centre[:, None], 0.0)
        u0 = np.where(msk, 1.0 / (v + tau2_full[:, None]), 0.0)
        centre_re = (u0 * y).sum(axis=1) / u0.sum(axis=1)
        yc_re = np.where(msk, y - centre_re[:, None], 0.0)
        zero = np.empty((3, 3, n))            # sums at tau² = 0 over j != i
        ap = np.ones_like(a0)
        for a in range(3):
            ap = ap * a0
            for b, term in enumerate((ap, ap * yc, ap * yc * yc)):
                zero[a, b] = st.exclusive_sum(term)[cells]
        multi = kd >= 2
        start: _Start | None = None
        if method == "DL":
            sw, swy, swyy = zero[0]
            q = swyy - swy * swy / sw
            trp = sw - zero[1, 0] / sw
            t_del = np.where(multi, np.maximum((q - (kd - 1)) / trp, 0.0), 0.0)
        elif method in ("ML", "REML"):
            num0, _, _ = _score(zero, method)
            start = _start(yc, v, msk, cells, zero, num0)
            t_del = np.full(n, np.nan)
            t_del[~multi] = 0.0
            # score not positive at zero: tau² = 0 unless the HE estimate is positive
            # (then the engine probes for an interior maximum)
            flat = multi & ~(num0 > 0)
            t_del[flat & ~(start.he > 0)] = 0.0
            probe = np.flatnonzero(flat & (start.he > 0))
            if probe.size:
                found = _probe(yc, v, msk, cells, probe, start, zero, method)
                t_del[probe[~found]] = 0.0
                engine[probe[found]] = True
        else:  # FE
            t_del = np.zeros(n)
    at_zero = t_del == 0.0
    out_t[at_zero] = 0.0
    out_sums[:, at_zero] = zero[0][:, at_zero]
    # the rest: a positive deleted tau²
    rest = np.flatnonzero(~at_zero & ~engine)
    out_centre = centre[cell_a]
    if rest.size:
        _from_full_fit(yc_re, v, msk, tau2_full, method, cells, rest, t_del, out_t,
                       out_sums, engine, zero, start)
        out_centre[rest] = centre_re[cell_a[rest]]
    fits = _finish(y, v, msk, cells, out_t, out_sums, engine, method, out_centre)
    return fits


#: the engine's probe of a flat start: the score at HE, HE/2, ..., HE/2^12
_PROBES = 13


def _probe(yc: np.ndarray, v: np.ndarray, msk: np.ndarray,
           cells: tuple[np.ndarray, np.ndarray], probe: np.ndarray, start: _Start,
           zero: np.ndarray, method: str) -> np.ndarray:
    """The engine's interior-maximum probe for the cells ``probe``.

    Where the score at zero is not positive but the HE estimate is, the engine
    (``stats._newton_score``) looks for a positive score at ``HE / 2^j``, j = 0..12: a
    hit brackets an interior maximum, none leaves tau² = 0. The scores are taken from
    series expanded at the full analyses' ``HE / 2^j`` (a deleted fit's HE is close to
    its analysis's). Returns, per cell, whether any probe point has a positive score
    (those cells go to the engine).
    """
    rows, inverse = np.unique(cells[0][probe], return_inverse=True)
    sub = (inverse.ravel(), cells[1][probe])
    ys, vs, ms = yc[rows], v[rows], msk[rows]
    he_full = np.maximum(start.he_full[rows], 0.0)
    he = start.he[probe]
    zero_p = zero[:, :, probe]
    logv0 = np.zeros(probe.size)       # the probe needs no likelihood
    direct = _Direct(ys, vs, ms, sub)
    every = np.arange(probe.size)
    found = np.zeros(probe.size, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # the small probe points are in reach of one expansion at zero
        near_zero = _Series(ys, vs, ms, np.zeros(rows.size), sub)
        for j in range(_PROBES):
            look = every[~found]
            if look.size == 0:
                break
            point = he[look] / 2.0**j
            expansions = [near_zero]
            if not near_zero.reach(point, look).all():
                expansions.append(_Series(ys, vs, ms, he_full / 2.0**j, sub))
            src = _Near(expansions, zero_p, logv0, direct)
            num, _, _ = _score(src.sums(point, look), method)
            found[look[num > 0]] = True
    return found


def _exclusive_max(x: np.ndarray) -> np.ndarray:
    """``out[..., i] = max_{j != i} x[..., j]`` (-inf for a single column)."""
    prefix = np.maximum.accumulate(x, axis=-1)
    suffix = np.maximum.accumulate(x[..., ::-1], axis=-1)[..., ::-1]
    out = np.full_like(x, -np.inf)
    out[..., 1:] = prefix[..., :-1]
    out[..., :-1] = np.maximum(out[..., :-1], suffix[..., 1:])
    return out


def _start(yc: np.ndarray, v: np.ndarray, msk: np.ndarray,
           cells: tuple[np.ndarray, np.ndarray], zero: np.ndarray,
           s0: np.ndarray) -> _Start:
    """The engine's starting point, bracket, transformation and tolerance per cell.

    As :func:`fedsynth.meta.stats._newton_score` computes them for the deleted fit, from
    exclusive sums: the HE estimate (Hedges 1983) ``(RSS - sum v (k-1)/k) / (k-1)``, the
    bracket ``2 SS/(k-1) k + 2 max v`` (``_score_bracket``), ``vt = (k-1)/tr(P)`` and
    the tolerance ``1e-15 mean(v)``.
    """
    kk = msk.sum(axis=1)
    kd = kk[cells[0]] - 1.0
    vm = np.where(msk, v, 0.0)
    sy = st.exclusive_sum(yc)[cells]
    syy = st.exclusive_sum(yc * yc)[cells]
    sv = st.exclusive_sum(vm)[cells]
    ss = syy - sy * sy / kd
    he = (ss - sv * (kd - 1) / kd) / (kd - 1)
    hub = 2.0 * ss / np.maximum(kd - 1, 1.0)
    hub = np.where(np.isfinite(hub) & (hub > 0), hub, 1.0) + 1e-300
    vmax = _exclusive_max(np.where(msk, v, -np.inf))[cells]
    hi = hub * kd + 2 * vmax
    trp = zero[0, 0] - zero[1, 0] / zero[0, 0]
    scale = sv / kd
    xtol = 1e-15 * np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    # the full analyses' own HE estimates (the second expansion point of the series)
    k_full = kk.astype(float)
    dev = np.where(msk, yc - ((yc * msk).sum(axis=1) / k_full)[:, None], 0.0)
    he_full = ((dev * dev).sum(axis=1) - vm.sum(axis=1) * (k_full - 1) / k_full) / (k_full - 1)
    return _Start(he=he, hi=hi, vt=(kd - 1) / trp, xtol=xtol, s0=s0,
                  he_full=np.where(np.isfinite(he_full), he_full, 0.0))


class _Near:
    """Sums at tau² = 0 exactly, elsewhere from the first expansion in reach.

    A point out of every expansion's reach (an early Newton step that overshoots) is
    summed directly, O(k) for that cell only.
    """

    def __init__(self, expansions: list[_Series], zero: np.ndarray,
                 log_v_zero: np.ndarray, direct: _Direct) -> None:
        self.expansions = expansions
        self.zero = zero
        self.log_v_zero = log_v_zero
        self.direct = direct

    def _pick(self, t: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Which expansion serves each cell.

        -1 at zero, ``len(expansions)`` (summed directly) out of every reach, else the
        nearest expansion (the fewest terms).
        """
        dist = np.stack([np.abs(ex._e(t, idx)) for ex in self.expansions])
        pick = np.argmin(dist, axis=0)
        pick[np.min(dist, axis=0) > _E_MAX] = len(self.expansions)
        pick[t == 0] = -1
        return pick

    def sums(self, t: np.ndarray, idx: np.ndarray) -> np.ndarray:
        pick = self._pick(t, idx)
        out = np.empty((3, 3, t.size))
        at0 = pick == -1
        out[:, :, at0] = self.zero[:, :, idx[at0]]
        for i, ex in enumerate(self.expansions + [self.direct]):
            sel = pick == i
            if sel.any():
                out[:, :, sel] = ex.sums(t[sel], idx[sel])
        return out

    def log_v(self, t: np.ndarray, idx: np.ndarray) -> np.ndarray:
        pick = self._pick(t, idx)
        out = np.empty(t.size)
        at0 = pick == -1
        out[at0] = self.log_v_zero[idx[at0]]
        for i, ex in enumerate(self.expansions + [self.direct]):
            sel = pick == i
            if sel.any():
                out[sel] = ex.log_v(t[sel], idx[sel])
        return out


def _from_full_fit(yc: np.ndarray, v: np.ndarray, msk: np.ndarray,
                   tau2_full: np.ndarray, method: str, cells: tuple[np.ndarray, np.ndarray],
                   rest: np.ndarray, t_del: np.ndarray, out_t: np.ndarray,
                   out_sums: np.ndarray, engine: np.ndarray, zero: np.ndarray,
                   start: _Start | None) -> None:
    """Deleted fits of the cells ``rest`` whose tau² is positive.

    DL: the closed-form deleted tau² is known; only the weight sums at it are needed.
    ML and REML: the engine's own iteration (:func:`fedsynth.meta.stats._newton_score`):
    Newton on ``score (vt + tau2)^2`` from the HE estimate inside the bracket
    ``(0, hi)``, the bracket narrowed by the sign of every iterate, stopped by the same
    rules; only the sums come from the exclusive power sums (a point out of every
    expansion's reach is summed directly). A step that leaves the bracket (where the
    engine bisects) hands the cell to the engine. Then rma.uni's check of the
    likelihood at zero.
    """
    sub = (cells[0][rest], cells[1][rest])
    zero_rest = zero[:, :, rest]
    points = [tau2_full] if method == "DL" or start is None else [tau2_full, start.he_full]
    src = _Near([_Series(yc, v, msk, np.maximum(pt, 0.0), sub) for pt in points],
                zero_rest, _log_excl_zero(v, msk, sub), _Direct(yc, v, msk, sub))
    every = np.arange(rest.size)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if method == "DL" or start is None:
            t = t_del[rest]
            done = np.ones(rest.size, dtype=bool)
            sums = src.sums(t, every)
        else:
            done, t = _engine_newton(src, method, zero_rest, start.take(rest))
            idx = np.flatnonzero(done)
            sums = np.full((3, 3, rest.size), np.nan)
            sums[:, :, idx] = src.sums(t[idx], idx)
            # rma.uni's check: zero instead where the likelihood is larger there
            ll1 = _loglik(sums[0][:, idx], src.log_v(t[idx], idx), method)
            ll0 = _loglik(zero_rest[0][:, idx], src.log_v(np.zeros(idx.size), idx), method)
            done[idx[ll0 - ll1 > st._EPS ** 0.25]] = False
    keep = rest[done]
    out_t[keep] = t[done]
    out_sums[:, keep] = sums[0][:, done]
    engine[rest[~done]] = True


@dataclass(frozen=True)
class _Start:
    """What the engine's ML/REML iteration of each deleted fit starts from."""

    he: np.ndarray          # HE estimate of the deleted fit (untruncated)
    hi: np.ndarray          # upper end of the engine's bracket
    vt: np.ndarray          # typical within-site variance (the transformation)
    xtol: np.ndarray        # the engine's root tolerance
    s0: np.ndarray          # score at zero (positive here)
    he_full: np.ndarray     # HE estimate of each full analysis, shape (m,)

    def take(self, idx: np.ndarray) -> _Start:
        return _Start(self.he[idx], self.hi[idx], self.vt[idx], self.xtol[idx],
                      self.s0[idx], self.he_full)


def _engine_newton(src: _Near, method: str, zero: np.ndarray,
                   start: _Start) -> tuple[np.ndarray, np.ndarray]:
    """``(settled, tau2)``: the engine's bracketed Newton, step for step."""
    n = start.he.size
    lo = np.zeros(n)
    hi = start.hi.copy()
    x = np.clip(np.where(np.isfinite(start.he), start.he, 0.0), lo, hi)
    root = np.full(n, np.nan)
    settled = np.zeros(n, dtype=bool)
    live = np.arange(n)
    for _ in range(200):
        if live.size == 0:
            break
        xa = x[live]
        s, ds, _ = _score(src.sums(xa, live), method)
        c = start.vt[live] + xa
        fx = s * c * c
        dfx = (ds * c + 2 * s) * c
        same_lo = np.sign(fx) == np.sign(start.s0[live])
        lo[live] = np.where(same_lo, xa, lo[live])
        hi[live] = np.where(same_lo, hi[live], xa)
        tol = start.xtol[live] + 4 * st._EPS * np.abs(xa)
        finished = (fx == 0) | (np.abs(hi[live] - lo[live]) <= tol)
        root[live] = xa
        step = fx / dfx
        tiny = (np.isfinite(step) & (np.abs(step) <= np.maximum(tol, _RTOL * np.abs(xa)))
                & ~finished)
        root[live[tiny]] = xa[tiny] - step[tiny]
        finished |= tiny
        settled[live[finished]] = True
        cand = xa - step
        ok = np.isfinite(cand) & (cand > np.minimum(lo[live], hi[live])) & (
            cand < np.maximum(lo[live], hi[live]))
        x[live] = cand
        # where the engine would bisect, the engine decides
        live = live[~finished & ok]
    return settled & (root > 0), root


def _log_excl_zero(v: np.ndarray, msk: np.ndarray,
                   cells: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``sum_{j != i} log(v_j)`` for the cells."""
    return st.exclusive_sum(np.where(msk, np.log(v), 0.0))[cells]


def _loglik(sums: np.ndarray, logv: np.ndarray, method: str) -> np.ndarray:
    """ML/REML log-likelihood without its constants.

    From ``sum w, sum w y, sum w y^2`` and ``sum log(v + tau2)`` of the deleted fit (the
    constants are equal at zero and at the root, so the difference is rma.uni's).
    """
    sw, swy, swyy = sums
    rss = swyy - swy * swy / sw
    ll = -0.5 * logv - 0.5 * rss
    if method == "REML":
        ll = ll - 0.5 * np.log(sw)
    return ll


def _finish(y: np.ndarray, v: np.ndarray, msk: np.ndarray,
            cells: tuple[np.ndarray, np.ndarray], out_t: np.ndarray, out_sums: np.ndarray,
            engine: np.ndarray, method: str, centre: np.ndarray | None) -> DeletedFits:
    """Estimates from the sums, and the engine's refits of the cells it must do."""
    # lazy: import cycle (fedsynth.meta.metareg imports fedsynth.meta.heterogeneity)
    from fedsynth.meta.metareg import fit_batch

    cell_a, cell_j = cells
    n = cell_a.size
    kd = msk.sum(axis=1)[cell_a] - 1
    est = np.full(n, np.nan)
    se = np.full(n, np.nan)
    rss = np.full(n, np.nan)
    own = ~engine
    with np.errstate(divide="ignore", invalid="ignore"):
        if own.any() and centre is not None:
            sw, swy, swyy = out_sums[:, own]
            mu_c = swy / sw
            est[own] = mu_c + centre[own]
            se[own] = np.sqrt(1.0 / sw)
            rss[own] = swyy - 2 * mu_c * swy + mu_c * mu_c * sw
        tau2 = out_t.copy()
        fb = np.flatnonzero(engine)
        if fb.size:
            eye = np.eye(msk.shape[1], dtype=bool)
            rows, sites = cell_a[fb], cell_j[fb]
            del_mask = msk[rows] & ~eye[sites]
            fit = fit_batch(y[rows], v[rows], del_mask, method=method)
            est[fb], se[fb], tau2[fb] = fit.estimate, fit.se, fit.tau2
            w = np.where(del_mask, 1.0 / (v[rows] + fit.tau2[:, None]), 0.0)
            r = np.where(del_mask, y[rows] - fit.estimate[:, None], 0.0)
            rss[fb] = (w * r * r).sum(axis=1)
        # all sites at the deleted tau²: the deleted sum plus the site's own weight
        vi = v[cell_a, cell_j]
        sw_all = np.full(n, np.nan)
        if own.any():
            sw_all[own] = out_sums[0, own] + 1.0 / (vi[own] + tau2[own])
        if fb.size:
            sw_all[fb] = np.where(msk[cell_a[fb]],
                                  1.0 / (v[cell_a[fb]] + tau2[fb][:, None]), 0.0).sum(axis=1)
    return DeletedFits(estimate=est, se=se, tau2=tau2, k=kd, rss=rss, sw_all=sw_all,
                       engine=int(fb.size))
