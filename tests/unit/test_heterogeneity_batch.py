"""The batch heterogeneity flag equals the per-analysis one (``analyse``) everywhere.

``assess_heterogeneity_batch`` computes the site drivers of all analyses with one masked
refit; these tests compare it, flag by flag (verdict, level, sites, reasons text, drivers,
numbers to 1e-9), with ``fedsynth.meta.analysis.analyse`` run per analysis: on the
real metafor data sets of tests/data (BCG and the seed example among them), on seeded
random batches with varying k and holes in the mask, on hypothesis-drawn batches, and
through ``fedsynth meta --by`` (fast path against the per-analysis path).
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.errors import InputError
from fedsynth.meta import pool
from fedsynth.meta.analysis import analyse
from fedsynth.meta.heterogeneity import assess_heterogeneity_batch
from tests.conftest import load_json

REF = load_json("metafor_public.json")
DATASETS = REF["influence"]
METHODS = ("FE", "DL", "HE", "HS", "SJ", "ML", "REML", "EB", "PM")
SEED_YI = [0.22, 0.35, 0.10, 0.41, 0.28, 0.18, 0.50, 0.26]
SEED_SEI = [0.12, 0.15, 0.10, 0.18, 0.11, 0.14, 0.20, 0.13]


def assert_same(a, b, path="flag"):
    """Equal structure, equal strings/bools/None, floats within 1e-9 (relative above 1)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= 1e-9 * max(1.0, abs(a)), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def per_analysis_flags(yi, vi, mask, labels, batch, **kw):
    """The reference: ``analyse`` on each analysis alone (its own k, no padding)."""
    out = []
    for i in range(len(batch)):
        sel = mask[i]
        labs = None if labels is None else list(labels[i][sel])
        res = analyse(yi[i][sel], vi[i][sel], labels=labs, method=batch.method,
                      test=batch.test, level=batch.level, diagnostics=False, pooled=batch[i],
                      **kw)
        out.append(res.heterogeneity)
    return out


def check_batch(yi, vi, mask, labels=None, *, method="REML", test="z", level=95.0,
                i2_threshold=50.0, null_value=0.0):
    batch = pool(yi, vi, mask=mask, method=method, test=test, level=level, labels=labels)
    got = assess_heterogeneity_batch(batch, i2_threshold=i2_threshold, null_value=null_value)
    want = per_analysis_flags(yi, vi, mask, labels, batch, i2_threshold=i2_threshold,
                              null_value=null_value)
    assert len(got) == len(want) == len(batch)
    for i, (g, w) in enumerate(zip(got.flags, want)):
        assert_same(w.to_dict(), g.to_dict(), f"{method}/{test} analysis {i}")
        assert g.reasons == w.reasons and g.sites == w.sites
    assert got.flagged.tolist() == [w.flagged for w in want]
    # the CSV/table mode: same verdict, sites and reasons; drivers only where flagged
    part = assess_heterogeneity_batch(batch, i2_threshold=i2_threshold, null_value=null_value,
                                      drivers_of="flagged")
    for g, w in zip(part.flags, want):
        assert (g.flagged, g.level, g.sites, g.reasons) == (w.flagged, w.level, w.sites, w.reasons)
        assert_same([d.to_dict() for d in w.drivers] if w.flagged else [],
                    [d.to_dict() for d in g.drivers])
    return got, want


def padded_datasets():
    """The metafor data sets of tests/data as one (m, K) batch with a mask."""
    K = max(len(c["yi"]) for c in DATASETS)
    m = len(DATASETS)
    yi = np.full((m, K), np.nan)
    vi = np.full((m, K), np.nan)
    mask = np.zeros((m, K), dtype=bool)
    labels = np.full((m, K), "", dtype=object)
    for i, c in enumerate(DATASETS):
        k = len(c["yi"])
        yi[i, :k], vi[i, :k], mask[i, :k] = c["yi"], c["vi"], True
        labels[i, :k] = c["labels"]
    return yi, vi, mask, labels


@pytest.mark.parametrize("test", ["z", "knha"])
@pytest.mark.parametrize("method", METHODS)
def test_metafor_datasets_in_one_batch(method, test):
    yi, vi, mask, labels = padded_datasets()
    got, want = check_batch(yi, vi, mask, labels, method=method, test=test)
    if method == "REML" and test == "z":
        # the comparison is not vacuous: drivers of every kind occur
        kinds = {k for w in want for d in w.drivers for k in d.kinds}
        assert kinds == {"outlying_blup", "studentized_residual", "influential"}
        assert sum(w.flagged for w in want) >= 5


def test_bcg_in_a_batch_is_strong_with_sites():
    case = next(c for c in DATASETS if c["id"] == "bcg/OR")
    yi, vi, mask, labels = padded_datasets()
    got, _ = check_batch(yi, vi, mask, labels)
    flag = got[[c["id"] for c in DATASETS].index("bcg/OR")]
    assert flag.flagged and flag.level == "strong" and flag.sites
    assert set(flag.sites) <= set(case["labels"])
    assert "I² = 92.07%" in " ".join(flag.reasons)
    json.dumps(flag.to_dict())


def test_seed_example_batch_not_flagged():
    y = np.array([SEED_YI, SEED_YI[::-1]])
    v = np.square([SEED_SEI, SEED_SEI[::-1]])
    mask = np.ones_like(y, dtype=bool)
    labels = np.array([[f"site{j}" for j in range(8)]] * 2, dtype=object)
    got, _ = check_batch(y, v, mask, labels)
    assert not got.flagged.any()
    assert all((f.level, f.reasons, f.sites) == (None, (), ()) for f in got.flags)


def random_batch(rng, m, K, kmin=1):
    tau = rng.uniform(0.0, 0.5, m)
    vi = rng.uniform(0.005, 0.3, (m, K))
    yi = rng.normal(0.2, 0.3, (m, 1)) + rng.normal(size=(m, K)) * np.sqrt(vi + tau[:, None] ** 2)
    mask = np.zeros((m, K), dtype=bool)
    for i in range(m):            # k from kmin to K, at random columns (holes in the mask)
        k = rng.integers(kmin, K + 1)
        mask[i, rng.choice(K, size=k, replace=False)] = True
    out = rng.random((m, K)) < 0.05                  # a few gross outliers
    yi = np.where(out, yi + rng.choice([-2.0, 2.0], size=(m, K)), yi)
    yi[~mask] = np.nan
    vi[~mask] = np.nan
    labels = np.array([[f"a{i}s{j}" for j in range(K)] for i in range(m)], dtype=object)
    return yi, vi, mask, labels


@pytest.mark.parametrize("seed,method,test,level,thr,null", [
    (1, "REML", "z", 95.0, 50.0, 0.0),
    (2, "REML", "knha", 90.0, 40.0, 0.1),
    (3, "ML", "z", 99.0, 25.0, 0.0),
    (4, "DL", "knha", 95.0, 50.0, -0.1),
    (5, "FE", "z", 95.0, 50.0, 0.0),
    (6, "FE", "knha", 80.0, 30.0, 0.2),
    (7, "PM", "z", 95.0, 60.0, 0.0),
    (8, "SJ", "knha", 95.0, 50.0, 0.0),
])
def test_random_batches_varying_k_and_masks(seed, method, test, level, thr, null):
    rng = np.random.default_rng(seed)
    yi, vi, mask, labels = random_batch(rng, 40, 10)
    got, want = check_batch(yi, vi, mask, labels, method=method, test=test, level=level,
                            i2_threshold=thr, null_value=null)
    assert any(w.flagged for w in want) and any(w.drivers for w in want)


@pytest.mark.parametrize("test", ["z", "knha"])
@pytest.mark.parametrize("method", METHODS)
def test_edge_cases(method, test):
    """Identical effects (tau² = 0, zero residuals), all vi equal, variance ratios of
    1e-8 vs 1e4, one far outlier, k = 2 (knha: deleted fits of one site) and k = 1."""
    nan = np.nan
    yi = np.array([[0.1] * 6,
                   [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                   [0.1, 0.5, -0.2, 0.3, 0.0, 2.0],
                   [0.2, 0.2, 0.2, 0.2, 5.0, nan],
                   [0.3, 0.1, nan, nan, nan, nan],
                   [0.3, nan, nan, nan, nan, nan]])
    vi = np.array([[0.01] * 6, [0.04] * 6, [1e-8, 1e4, 1e-8, 1e4, 0.1, 1e-8],
                   [0.01, 0.02, 0.03, 0.04, 0.05, nan], [0.01, 0.02] + [nan] * 4,
                   [0.01] + [nan] * 5])
    got, _ = check_batch(yi, vi, np.isfinite(yi), None, method=method, test=test)
    assert got[5].drivers == () and not got[5].flagged     # k = 1: nothing to judge


def test_without_labels_sites_are_column_numbers():
    rng = np.random.default_rng(11)
    yi, vi, mask, _ = random_batch(rng, 30, 8, kmin=3)
    got, want = check_batch(yi, vi, mask, None)
    named = [d.site for f in got.flags for d in f.drivers]
    assert named and set(named) <= {str(j + 1) for j in range(8)}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 6), K=st.integers(1, 7),
       method=st.sampled_from(METHODS), test=st.sampled_from(["z", "knha"]))
def test_property_batch_equals_per_analysis(seed, m, K, method, test):
    rng = np.random.default_rng(seed)
    yi, vi, mask, labels = random_batch(rng, m, K)
    check_batch(yi, vi, mask, labels, method=method, test=test)


def test_bad_settings_are_input_errors():
    rng = np.random.default_rng(0)
    yi, vi, mask, labels = random_batch(rng, 3, 4, kmin=2)
    batch = pool(yi, vi, mask=mask, labels=labels)
    with pytest.raises(InputError, match="drivers_of"):
        assess_heterogeneity_batch(batch, drivers_of="some")
    with pytest.raises(InputError, match="i2_threshold"):
        assess_heterogeneity_batch(batch, i2_threshold=120)
    with pytest.raises(InputError, match="null_value"):
        assess_heterogeneity_batch(batch, null_value=float("nan"))
    with pytest.raises(InputError, match="labels"):
        assess_heterogeneity_batch(batch, labels=labels[:, :2])


# ---------------------------------------------------------------------------------------
# fedsynth meta --by: the batch path against the per-analysis path
# ---------------------------------------------------------------------------------------


def _cli(argv):
    from fedsynth.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def grouped_csv(tmp_path_factory):
    rng = np.random.default_rng(42)
    yi, vi, mask, labels = random_batch(rng, 25, 9)
    rows = ["analysis,study,yi,vi"]
    for i in range(25):
        for j in np.flatnonzero(mask[i]):
            rows.append(f"g{i},{labels[i, j]},{float(yi[i, j])!r},{float(vi[i, j])!r}")
    rows.append("single,only,0.3,0.02")         # a group of one site
    path = tmp_path_factory.mktemp("het") / "grouped.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("extra", [
    ["--format", "csv"], ["--format", "json"], ["--format", "table"],
    ["--format", "csv", "--method", "FE", "--i2-threshold", "30"],
    ["--format", "json", "--method", "DL", "--test", "knha", "--null-value", "0.1"],
])
def test_cli_batch_path_equals_per_analysis_path(grouped_csv, monkeypatch, extra):
    from fedsynth.cli.commands import meta

    argv = ["meta", str(grouped_csv), "--by", "analysis", *extra]
    calls = []
    real = meta._batch_flags

    def spy(*a, **kw):
        out = real(*a, **kw)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(meta, "_batch_flags", spy)
    fast = _cli(argv)
    assert calls and all(calls)              # the batch path was taken
    monkeypatch.setattr(meta, "_batch_flags", lambda *a, **kw: None)
    slow = _cli(argv)
    if "json" in extra:
        assert_same(json.loads(slow), json.loads(fast), "cli")
    else:
        assert fast == slow
