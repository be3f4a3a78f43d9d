"""The coordinates of the issue-16 plots against metafor's radial, qqnorm, baujat, labbe
and gosh (tests/data/metafor/plots.json, written once by tests/data/metafor/plots.R), and
the readability checks of tests/unit/test_plots.py on every new plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedsynth import plots
from fedsynth.meta.metareg import meta_regression
from fedsynth.meta.pooling import meta_analysis
from tests.unit.test_plots import layout_problems

REF = json.loads((Path(__file__).resolve().parents[1] / "data" / "metafor" /
                  "plots.json").read_text())
D = {k: np.asarray(v, dtype=float) for k, v in REF["data"].items()}
LABELS = [f"Study {i + 1}" for i in range(D["yi"].size)]


def _points(fig) -> tuple[np.ndarray, np.ndarray]:
    ax = fig.axes[0]
    for line in ax.lines:
        if line.get_gid() == "points":
            return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    for coll in ax.collections:
        if coll.get_gid() == "points":
            off = np.asarray(coll.get_offsets(), float)
            return off[:, 0], off[:, 1]
    raise AssertionError("no points")


def _fit(method: str):
    res = meta_analysis(D["yi"], D["vi"], method=method, labels=LABELS)
    ref = REF[method]
    assert res.estimate == pytest.approx(ref["estimate"], rel=1e-6)
    return res, ref


@pytest.mark.parametrize("method", ["REML", "FE"])
def test_radial_matches_metafor(method: str) -> None:
    res, ref = _fit(method)
    x, y = _points(plots.radial_plot(res))
    np.testing.assert_allclose(x, ref["radial"]["x"], rtol=1e-6)
    np.testing.assert_allclose(y, ref["radial"]["y"], rtol=1e-6)


@pytest.mark.parametrize("method", ["REML", "FE"])
def test_qqnorm_matches_metafor(method: str) -> None:
    res, ref = _fit(method)
    x, y = _points(plots.qqnorm_plot(res))
    order = np.argsort(ref["qqnorm"]["y"], kind="stable")
    np.testing.assert_allclose(x, np.asarray(ref["qqnorm"]["x"])[order], rtol=1e-6)
    np.testing.assert_allclose(y, np.asarray(ref["qqnorm"]["y"])[order], rtol=1e-6)


@pytest.mark.parametrize("method", ["REML", "FE"])
def test_baujat_matches_metafor(method: str) -> None:
    res, ref = _fit(method)
    x, y = _points(plots.baujat_plot(res))
    np.testing.assert_allclose(x, ref["baujat"]["x"], rtol=1e-6)
    np.testing.assert_allclose(y, ref["baujat"]["y"], rtol=1e-5)


def test_labbe_matches_metafor() -> None:
    ref = REF["REML"]
    x, y = _points(plots.labbe_plot(D["ai"], D["ci"], bi=D["bi"], di=D["di"],
                                    estimate=ref["estimate"]))
    np.testing.assert_allclose(x, ref["labbe"]["x"], rtol=1e-9)
    np.testing.assert_allclose(y, ref["labbe"]["y"], rtol=1e-9)


def test_gosh_all_subsets_match_metafor() -> None:
    fig = plots.gosh_plot(D["yi"][:6], D["vi"][:6], method="FE")
    codes = fig.gosh_incl.astype(int) @ (2 ** np.arange(6))
    order = np.argsort(codes)
    g = REF["gosh"]
    np.testing.assert_array_equal(codes[order], g["code"])
    np.testing.assert_array_equal(fig.gosh.k[order], g["k"])
    np.testing.assert_allclose(fig.gosh.estimate[order], g["estimate"], rtol=1e-9)
    np.testing.assert_allclose(fig.gosh.I2[order], g["I2"], rtol=1e-6, atol=1e-9)


def test_gosh_sampled_subsets_are_seeded() -> None:
    a = plots.gosh_plot(D["yi"], D["vi"], subsets=200, seed=7)
    b = plots.gosh_plot(D["yi"], D["vi"], subsets=200, seed=7)
    c = plots.gosh_plot(D["yi"], D["vi"], subsets=200, seed=8)
    assert a.gosh_incl.shape == (200, 13) and a.gosh_incl.any(axis=1).all()
    np.testing.assert_array_equal(a.gosh_incl, b.gosh_incl)
    assert not np.array_equal(a.gosh_incl, c.gosh_incl)


def test_bubble_line_is_the_meta_regression_fit() -> None:
    mods = {"x": np.linspace(10, 55, D["yi"].size)}
    mr = meta_regression(D["yi"], D["vi"], mods)
    fig = plots.bubble_plot(mr)
    line = next(li for li in fig.axes[0].lines if li.get_gid() == "fit")
    xs, ys = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    np.testing.assert_allclose(ys, mr.coef[0] + mr.coef[1] * xs, rtol=1e-12)
    x, y = _points(fig)
    np.testing.assert_allclose(y, D["yi"])


@pytest.mark.parametrize("kind", plots.PLOT_KINDS)
def test_every_new_plot_is_readable(kind: str) -> None:
    res = meta_analysis(D["yi"], D["vi"], labels=[f"Trial with a long name {i}" for i in
                                                  range(D["yi"].size)])
    fig = {"radial": lambda: plots.radial_plot(res, title="Radial plot"),
           "qqnorm": lambda: plots.qqnorm_plot(res, title="Normal QQ plot"),
           "baujat": lambda: plots.baujat_plot(res, title="Baujat plot"),
           "gosh": lambda: plots.gosh_plot(D["yi"], D["vi"], subsets=300),
           "labbe": lambda: plots.labbe_plot(D["ai"], D["ci"], bi=D["bi"], di=D["di"],
                                             estimate=res.estimate),
           "bubble": lambda: plots.bubble_plot(meta_regression(
               D["yi"], D["vi"], {"x": np.arange(D["yi"].size, dtype=float)}))}[kind]()
    assert layout_problems(fig) == []
