"""Leave-one-out fits by exclusive power sums (fedsynth.meta.deletion) equal the engine's.

The engine (``fit_batch`` on the masked grid without each site) is the definition; the
series must reproduce it for every method it handles, on data where deleting a site
moves tau² a little (many sites) and a lot (outliers, dominant sites, few sites), and
must actually do the work itself on ordinary data (else the speed-up is gone silently).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from fedsynth.meta.deletion import SERIES_METHODS, SERIES_MIN_SITES, deleted_fits
from fedsynth.meta.diagnostics import influence
from fedsynth.meta.heterogeneity import site_diagnostics_batch
from fedsynth.meta.metareg import fit_batch
from fedsynth.meta.pooling import pool


def _engine(y, v, msk, method, cells):
    cell_a, cell_j = cells
    eye = np.eye(msk.shape[1], dtype=bool)
    del_mask = msk[cell_a] & ~eye[cell_j]
    fit = fit_batch(y[cell_a], v[cell_a], del_mask, method=method)
    w = np.where(del_mask, 1.0 / (v[cell_a] + fit.tau2[:, None]), 0.0)
    r = np.where(del_mask, y[cell_a] - fit.estimate[:, None], 0.0)
    sw_all = np.where(msk[cell_a], 1.0 / (v[cell_a] + fit.tau2[:, None]), 0.0).sum(axis=1)
    return fit, (w * r * r).sum(axis=1), sw_all


def _batch(rng, m, K, *, spread, tau2, scale, fill=1.0):
    msk = rng.random((m, K)) < fill
    msk[:, :2] = True
    v = np.exp(rng.normal(-3, spread, (m, K)))
    y = (rng.normal(0.3, np.sqrt(tau2), (m, K)) + rng.normal(0, np.sqrt(v))) * scale
    v = v * scale**2
    return np.where(msk, y, 0.0), np.where(msk, v, 1.0), msk


def _close(a, b, rel=1e-9, scale=None):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(b)
    ref = np.abs(b[ok]) if scale is None else np.maximum(np.abs(b[ok]), scale)
    assert np.all(np.abs(a[ok] - b[ok]) <= rel * ref + 1e-300), np.max(
        np.abs(a[ok] - b[ok]) / np.maximum(ref, 1e-300))


CASES = [  # (sites, variance spread (sd of log v), tau², fill)
    (60, 0.5, 0.02, 1.0), (200, 1.0, 0.0, 1.0), (120, 2.5, 0.5, 0.7),
    (400, 0.3, 0.05, 0.9), (80, 3.0, 1.0, 0.5), (SERIES_MIN_SITES, 1.0, 0.01, 1.0),
]


@pytest.mark.parametrize("method", SERIES_METHODS)
@pytest.mark.parametrize("K, spread, tau2, fill", CASES)
def test_equals_the_engine(method, K, spread, tau2, fill):
    rng = np.random.default_rng(K + int(100 * spread))
    y, v, msk = _batch(rng, 6, K, spread=spread, tau2=tau2, scale=1.0, fill=fill)
    full = fit_batch(y, v, msk, method=method)
    cells = np.nonzero(msk)
    got = deleted_fits(y, v, msk, full.tau2, method, cells)
    ref, rss, sw_all = _engine(y, v, msk, method, cells)
    ymag = float(np.abs(y[msk]).max())
    _close(got.estimate, ref.estimate, scale=1e-6 * ymag)
    _close(got.se, ref.se)
    _close(got.tau2, ref.tau2, scale=1e-9 * float(v[msk].mean()))
    _close(got.rss, rss, rel=1e-8, scale=1e-12)
    _close(got.sw_all, sw_all)
    assert np.array_equal(got.k, ref.k)


@pytest.mark.parametrize("method", ["REML", "ML", "DL"])
def test_the_series_does_the_work_on_ordinary_data(method):
    # 1,000 sites of a round: every deleted fit by the series, none by the engine
    rng = np.random.default_rng(3)
    v = rng.uniform(0.01, 0.2, (4, 1000))
    y = rng.normal(0.2, 0.15, (4, 1000)) + rng.normal(0, np.sqrt(v))
    msk = np.ones_like(y, dtype=bool)
    full = fit_batch(y, v, msk, method=method)
    got = deleted_fits(y, v, msk, full.tau2, method, np.nonzero(msk))
    assert got.engine == 0
    ref, _, _ = _engine(y, v, msk, method, np.nonzero(msk))
    _close(got.tau2, ref.tau2, rel=1e-9)


def test_a_dominant_site_loses_no_digits():
    # one site with a variance 1e-10 of the others': sum - term would cancel
    rng = np.random.default_rng(5)
    y, v, msk = _batch(rng, 3, 100, spread=0.2, tau2=0.01, scale=1.0)
    v[:, 7] = 1e-12
    full = fit_batch(y, v, msk, method="REML")
    cells = np.nonzero(msk)
    got = deleted_fits(y, v, msk, full.tau2, "REML", cells)
    ref, _, _ = _engine(y, v, msk, "REML", cells)
    _close(got.se, ref.se)
    _close(got.tau2, ref.tau2, scale=1e-12)


def test_other_methods_and_few_sites_go_to_the_engine():
    rng = np.random.default_rng(2)
    y, v, msk = _batch(rng, 3, 100, spread=1, tau2=0.05, scale=1.0)
    cells = np.nonzero(msk)
    for method in ("HE", "SJ", "PM", "EB", "HS"):
        got = deleted_fits(y, v, msk, fit_batch(y, v, msk, method=method).tau2, method,
                           cells)
        assert got.engine == cells[0].size
        _close(got.tau2, _engine(y, v, msk, method, cells)[0].tau2)
    y, v, msk = y[:, :20], v[:, :20], msk[:, :20]
    got = deleted_fits(y, v, msk, fit_batch(y, v, msk).tau2, "REML", np.nonzero(msk))
    assert got.engine == msk.sum()


@settings(max_examples=25, deadline=None)
@given(seed=hs.integers(0, 2**32 - 1), K=hs.integers(SERIES_MIN_SITES, 150),
       scale=hs.sampled_from([1e-3, 1.0, 1e3]), method=hs.sampled_from(["REML", "ML"]))
def test_scale_and_site_order_do_not_matter(seed, K, scale, method):
    """Equal to the engine at any scale of the effects, and permuting the sites permutes
    the deleted fits."""
    rng = np.random.default_rng(seed)
    y, v, msk = _batch(rng, 2, K, spread=1.0, tau2=0.05, scale=scale)
    full = fit_batch(y, v, msk, method=method)
    cells = np.nonzero(msk)
    got = deleted_fits(y, v, msk, full.tau2, method, cells)
    ref, _, _ = _engine(y, v, msk, method, cells)
    _close(got.tau2, ref.tau2, rel=1e-8, scale=1e-9 * float(v[msk].mean()))
    perm = rng.permutation(K)
    yp, vp, mp = y[:, perm], v[:, perm], msk[:, perm]
    gp = deleted_fits(yp, vp, mp, full.tau2, method, np.nonzero(mp))
    back = np.full(msk.shape, np.nan)
    back[np.nonzero(mp)] = gp.tau2
    orig = np.full(msk.shape, np.nan)
    orig[cells] = got.tau2
    _close(back[:, np.argsort(perm)], orig, rel=1e-8, scale=1e-9 * float(v[msk].mean()))


@pytest.mark.parametrize("test", ["z", "knha"])
def test_batch_diagnostics_of_many_sites_equal_per_analysis_influence(test):
    rng = np.random.default_rng(11)
    y, v, msk = _batch(rng, 3, 90, spread=1.0, tau2=0.1, scale=1.0)
    y[1, 4] += 3.0                                  # an outlier
    batch = pool(y, v, mask=msk, method="REML", test=test)
    diag = site_diagnostics_batch(batch)
    for a in range(3):
        inf = influence(y[a][msk[a]], v[a][msk[a]], method="REML", test=test)
        _close(diag.rstudent[a][msk[a]], inf.rstudent, rel=1e-8)
        assert np.array_equal(diag.influential[a][msk[a]], inf.influential)
    assert diag.influential[1, 4]
