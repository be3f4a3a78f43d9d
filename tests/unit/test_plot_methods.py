"""``result.plot_*`` methods: one implementation (fedsynth.plots), files written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fedsynth
from fedsynth import plots
from fedsynth.errors import InputError
from fedsynth.meta.metareg import fit_rma

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bcg():
    dat = fedsynth.escalc("RR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
                          ci="cpos", di="cneg")
    return dat


def test_pooled_result_plots_itself(bcg, tmp_path: Path) -> None:
    res = fedsynth.meta_analysis(bcg)
    for name in ("forest", "funnel", "radial", "qq", "baujat", "gosh"):
        path = tmp_path / f"{name}.png"
        fig = getattr(res, f"plot_{name}")(path)
        assert path.read_bytes()[:8] == PNG, name
        assert fig.axes, name
    svg = tmp_path / "qq.svg"
    res.plot_qq(svg, envelope=False, title="QQ")
    assert b"<svg" in svg.read_bytes()[:500]


def test_methods_draw_what_the_functions_draw(bcg) -> None:
    res = fedsynth.meta_analysis(bcg)

    def ydata(fig, gid):
        return [ln.get_ydata() for ln in fig.axes[0].get_lines() if ln.get_gid() == gid][0]

    np.testing.assert_array_equal(ydata(res.plot_qq(seed=7), "envelope_upper"),
                                  ydata(plots.qqnorm_plot(res, seed=7), "envelope_upper"))
    np.testing.assert_array_equal(ydata(res.plot_radial(), "points"),
                                  ydata(plots.radial_plot(res), "points"))


def test_meta_regression_bubble_and_errors(bcg, tmp_path: Path) -> None:
    X = np.column_stack([np.ones(len(bcg)), fedsynth.example_data("bcg")["ablat"]])
    reg = fit_rma(bcg["yi"].to_numpy(), bcg["vi"].to_numpy(), X, names=["intrcpt", "ablat"])
    reg.plot_bubble(tmp_path / "bubble.png")
    assert (tmp_path / "bubble.png").read_bytes()[:8] == PNG
    reg.plot_funnel(tmp_path / "funnel.png")
    with pytest.raises(InputError):
        fedsynth.meta_analysis(bcg).plot_bubble()
    with pytest.raises(InputError, match="must end in|suffix|png"):
        reg.plot_funnel(tmp_path / "funnel.txt")
