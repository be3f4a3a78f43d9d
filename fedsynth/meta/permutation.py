"""Permutation tests of meta-regression coefficients (metafor's ``permutest``).

Why
---
With few studies, the Wald z (and even the Knapp-Hartung t) test of a moderator can be
too liberal; Higgins & Thompson (2004), "Controlling the risk of spurious findings from
meta-regression", Stat. Med. 23:1663-1682, propose permutation tests instead. As
metafor's ``permutest.rma.uni`` (Viechtbauer et al. 2015, "A comparison of procedures to
test for moderators in mixed-effects meta-regression models", Psychol. Methods
20:360-374):

- a model **with moderators** is refitted with the rows of its design matrix permuted
  over the studies (the effects and variances stay), so the moderators lose any link
  with the effects; the p-value of a coefficient is the share of permutations whose
  ``|z|`` (or ``|t|``) reaches the observed one, that of the omnibus test the share whose
  ``QM`` reaches it;
- an **intercept-only** model is refitted with the signs of the effects flipped.

The test is **exact** (every distinct permutation of the design matrix's rows, or all
``2^k`` sign vectors) when ``exact=True`` or when the number of distinct permutations is
at most ``iter``, as metafor decides; otherwise ``iter`` random permutations from a
seeded generator (the first one is the observed data, as metafor). The random draws
cannot be those of R's generator, so only exact tests reproduce metafor digit for digit.

All refits are ONE call of the project's tau² engine on an ``(iter, k, p)`` batch of
design matrices (:func:`fedsynth.meta.stats.tau2_estimate`), not a Python loop of fits.

Pure statistics: no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.meta import stats as st
from fedsynth.meta._format import f, grid, p
from fedsynth.meta.metareg import MetaRegressionResult
from fedsynth.results import ResultMixin

__all__ = ["PermutationTestResult", "permutest", "exact_permutation_count"]

#: metafor's ``comptol``: a permuted statistic within this of the observed one counts
_COMPTOL = float(np.finfo(float).eps ** 0.5)
#: the largest exact test computed (metafor stops at its own memory limits)
_MAX_EXACT = 2_000_000
#: permutations refitted per engine call (keeps the (rows, k, p) temporaries small)
_CHUNK = 4096


@dataclass(frozen=True)
class PermutationTestResult(ResultMixin):
    """A permutation test of a meta-regression (metafor's ``permutest``).

    Attributes
    ----------
    names, coef, se, zval
        The observed fit's coefficients, standard errors and statistics (z, or t under
        ``t``/``knha``/``adhoc``).
    pval
        Permutation p-values of the coefficients (two-sided: ``|zval|``).
    QM, QMp
        The observed omnibus statistic (of ``btt``) and its permutation p-value.
    exact
        Whether every distinct permutation was used.
    iter
        Number of permutations (including the observed arrangement).
    zval_perm, beta_perm, QM_perm
        The statistics of every permutation (rows), as metafor's ``zval.perm``,
        ``beta.perm`` and ``QM.perm``.
    seed
        The generator's seed of an approximate test (None when exact).
    """

    names: tuple[str, ...]
    coef: np.ndarray
    se: np.ndarray
    zval: np.ndarray
    pval: np.ndarray
    QM: float
    QMp: float
    exact: bool
    iter: int
    test: str
    btt: tuple[int, ...]
    zval_perm: np.ndarray = field(repr=False)
    beta_perm: np.ndarray = field(repr=False)
    QM_perm: np.ndarray = field(repr=False)
    seed: int | None = None

    def summary(self, digits: int = 4) -> str:
        """The coefficient table with permutation p-values, as metafor prints it."""
        d = digits
        kind = "exact" if self.exact else f"approximate ({self.iter} permutations)"
        stat = "zval" if self.test == "z" else "tval"
        omni = "QM" if self.test == "z" else "F"
        cols = ", ".join(str(i + 1) for i in self.btt)
        rows = [[nm, f(self.coef[i], d), f(self.se[i], d), f(self.zval[i], d),
                 p(self.pval[i], d)] for i, nm in enumerate(self.names)]
        return "\n".join([
            f"Permutation test, {kind}:",
            f"Test of Moderators (coefficients {cols}): {omni} = {f(self.QM, d)}, "
            f"p-val* = {p(self.QMp, d)}",
            *grid(["", "estimate", "se", stat, "pval*"], rows)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (metafor's names; the permutation distributions left out)."""
        return {"names": list(self.names), "coef": [finite_or_none(x) for x in self.coef],
                "se": [finite_or_none(x) for x in self.se],
                "zval": [finite_or_none(x) for x in self.zval],
                "pval": [finite_or_none(x) for x in self.pval],
                "QM": finite_or_none(self.QM), "QMp": finite_or_none(self.QMp),
                "exact": self.exact, "iter": self.iter, "test": self.test,
                "btt": [i + 1 for i in self.btt], "seed": self.seed}


def _row_labels(X: np.ndarray) -> np.ndarray:
    """Integer label per row of ``X``: identical rows share a label."""
    _, labels = np.unique(X, axis=0, return_inverse=True)
    return labels.reshape(-1)


def exact_permutation_count(fit: MetaRegressionResult) -> int:
    """Distinct permutations of an exact test: ``2^k`` sign flips, else k!/prod(n_j!)."""
    if fit.X is None:
        raise InputError("fit: carries no design matrix")
    if _intercept_only(fit):
        return 2 ** fit.k
    counts = Counter(_row_labels(fit.X).tolist())
    total = math.factorial(fit.k)
    for c in counts.values():
        total //= math.factorial(c)
    return total


def _intercept_only(fit: MetaRegressionResult) -> bool:
    return fit.p == 1 and fit.intercept


def _multiset_permutations(labels: np.ndarray) -> np.ndarray:
    """Every distinct arrangement of ``labels`` (lexicographic next-permutation)."""
    a = np.sort(labels).tolist()
    out = [list(a)]
    n = len(a)
    while True:
        i = n - 2
        while i >= 0 and a[i] >= a[i + 1]:
            i -= 1
        if i < 0:
            break
        j = n - 1
        while a[j] <= a[i]:
            j -= 1
        a[i], a[j] = a[j], a[i]
        a[i + 1:] = reversed(a[i + 1:])
        out.append(list(a))
    return np.asarray(out, dtype=int)


def _refit(fit: MetaRegressionResult, y: np.ndarray, X: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coefficients, statistics and omnibus QM of every row of a batch (as ``fit_rma``)."""
    assert fit.vi is not None
    m, k = y.shape
    p_ = X.shape[2]
    v = np.broadcast_to(fit.vi, (m, k))
    if fit.tau2_fixed or fit.method == "FE":
        t2 = np.full(m, fit.tau2 if fit.tau2_fixed else 0.0)
    else:
        t2 = st.tau2_estimate(y, v, None, fit.method, X=X).tau2
    w = 1.0 / (v + t2[:, None])
    # coefficients from the centred effects (as fit_rma): the intercept gets the mean back
    ones = np.flatnonzero(np.all(X[0] == 1.0, axis=0))
    centre = y.mean(axis=1) if ones.size else np.zeros(m)
    yc = y - centre[:, None]
    A, beta, resid = st.wls(X, w, yc)
    if fit.weights is None and fit.weighted:
        vb = A
    else:
        a = np.broadcast_to(fit.weights if fit.weights is not None else np.ones(k), (m, k))
        Aa, beta, _ = st.wls(X, a, yc)
        bread = np.einsum("mpq,mkq->mpk", Aa, X * a[:, :, None])
        vb = np.einsum("mpk,mk,mqk->mpq", bread, v + t2[:, None], bread)
    if ones.size:
        beta[:, ones[0]] += centre
    df = k - p_
    if fit.test in ("knha", "adhoc"):
        rss = np.sum(w * resid * resid, axis=1)
        s2w = np.where(rss <= st._EPS, 0.0, rss / df)
        if fit.test == "adhoc":
            s2w = np.maximum(s2w, 1.0)
        vb = vb * s2w[:, None, None]
    se = np.sqrt(np.einsum("mii->mi", vb))
    with np.errstate(divide="ignore", invalid="ignore"):
        zval = beta / se
        idx = list(fit.btt)
        b = beta[:, idx]
        sub = vb[:, idx][:, :, idx]
        QM = np.einsum("mi,mi->m", b, np.linalg.solve(sub, b[:, :, None])[:, :, 0])
        if fit.test != "z":
            QM = QM / len(idx)
    return beta, zval, QM


def _seed(seed: int | None) -> int:
    """The given seed, or a fresh one (reported in the result so a run can be repeated)."""
    if seed is not None:
        return int(seed)
    return int(np.random.default_rng().integers(0, 2**31 - 1))


def permutest(fit: MetaRegressionResult, *, exact: bool = False, iter: int = 1000,
              seed: int | None = None) -> PermutationTestResult:
    """Permutation test of a meta-regression or of the intercept (metafor's ``permutest``).

    Parameters
    ----------
    fit
        A fit of :func:`fedsynth.meta.metareg.fit_rma` / :func:`fedsynth.meta_regression`
        (its method, test, weights, fixed tau² and ``btt`` are kept in the refits).
    exact
        Use every distinct permutation. Also chosen when their number is at most
        ``iter``, as metafor.
    iter
        Number of random permutations of an approximate test (at least 2; the first is
        the observed arrangement).
    seed
        Seed of the random generator (numpy's PCG64) of an approximate test: the same
        seed gives the same p-values. ``None`` draws one, reported in the result.

    Returns
    -------
    PermutationTestResult

    Examples
    --------
    >>> import numpy as np
    >>> from fedsynth.meta.metareg import fit_rma
    >>> y = np.array([0.1, 0.3, 0.35, 0.65, 0.45, 0.15]); v = np.full(6, 0.02)
    >>> X = np.column_stack([np.ones(6), [1.0, 2, 3, 4, 5, 6]])
    >>> res = permutest(fit_rma(y, v, X))
    >>> res.exact, res.iter, round(float(res.pval[1]), 4)
    (True, 720, 0.6139)
    """
    if fit.yi is None or fit.vi is None or fit.X is None:
        raise InputError("fit: carries no data to permute")
    try:
        iters = int(round(float(iter)))
    except (TypeError, ValueError):
        raise InputError(f"iter: expected a whole number >= 2, got {iter!r}") from None
    if iters < 2:
        raise InputError(f"iter: must be >= 2, got {iter!r}")
    count = exact_permutation_count(fit)
    use_exact = bool(exact) or count <= iters
    if use_exact and count > _MAX_EXACT:
        raise InputError(f"exact: {count} permutations are too many for an exact test; use "
                         f"exact=False with iter (e.g. 10000)")
    y0, X0 = fit.yi, fit.X
    k = fit.k
    used_seed: int | None = None
    if _intercept_only(fit):
        if use_exact:
            signs = 1.0 - 2.0 * ((np.arange(count)[:, None] >> np.arange(k)[None, :]) & 1)
        else:
            used_seed = _seed(seed)
            rng = np.random.default_rng(used_seed)
            signs = rng.choice([-1.0, 1.0], size=(iters, k))
            signs[0] = 1.0
        ys = signs * y0[None, :]
        Xs = np.broadcast_to(X0, (ys.shape[0],) + X0.shape)
    else:
        if use_exact:
            labels = _row_labels(X0)
            order = np.argsort(labels, kind="stable")
            unique_rows = X0[order][np.unique(labels[order], return_index=True)[1]]
            Xs = unique_rows[_multiset_permutations(labels)]
        else:
            used_seed = _seed(seed)
            rng = np.random.default_rng(used_seed)
            perms = rng.permuted(np.broadcast_to(np.arange(k), (iters, k)), axis=1)
            perms[0] = np.arange(k)
            Xs = X0[perms]
        ys = np.broadcast_to(y0, (Xs.shape[0], k))
    parts = [_refit(fit, np.ascontiguousarray(ys[i:i + _CHUNK]),
                    np.ascontiguousarray(Xs[i:i + _CHUNK]))
             for i in range(0, Xs.shape[0], _CHUNK)]
    beta_perm = np.concatenate([b for b, _, _ in parts])
    zval_perm = np.concatenate([z for _, z, _ in parts])
    QM_perm = np.concatenate([q for _, _, q in parts])
    om = fit.omnibus
    QM = float(om.QM) if om is not None else float("nan")
    with np.errstate(invalid="ignore"):
        pval = np.nanmean(np.abs(zval_perm) >= np.abs(fit.stat)[None, :] - _COMPTOL, axis=0)
        QMp = float(np.nanmean(QM_perm >= QM - _COMPTOL))
    return PermutationTestResult(
        names=fit.names, coef=fit.coef, se=fit.se, zval=fit.stat,
        pval=np.minimum(pval, 1.0), QM=QM, QMp=QMp, exact=use_exact,
        iter=int(Xs.shape[0]), test=fit.test, btt=fit.btt, zval_perm=zval_perm,
        beta_perm=beta_perm, QM_perm=QM_perm, seed=used_seed)

