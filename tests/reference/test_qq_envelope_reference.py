"""The QQ plot's envelope against metafor's qqnorm.rma.uni(envelope = TRUE), and supsmu.

tests/data/metafor/qq_envelope.R captures the two envelope lines metafor draws (seeded;
smoothed by stats::supsmu as metafor's default, and unsmoothed), for REML, FE and a
meta-regression of dat.bcg; fedsynth reproduces R's normal draws for the seed
(``fedsynth.plots.r_rnorm``) and Friedman's super smoother (``fedsynth.plots.supsmu``), so
the lines agree to rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedsynth import plots
from fedsynth.meta.metareg import fit_rma
from fedsynth.meta.pooling import meta_analysis

REF = json.loads((Path(__file__).parents[1] / "data" / "metafor" / "qq_envelope.json")
                 .read_text())
D = {k: np.array(v, dtype=float) for k, v in
     ((k, [row[k] for row in REF["data"]]) for k in ("yi", "vi", "ablat"))}


def _fit(name: str):
    if name == "ablat":
        X = np.column_stack([np.ones(len(D["yi"])), D["ablat"]])
        return fit_rma(D["yi"], D["vi"], X, method="REML")
    return meta_analysis(D["yi"], D["vi"], method=name)


def test_r_rnorm_is_rs_generator() -> None:
    # set.seed(1234); rnorm(5) and set.seed(42); rnorm(3) in R 4.2.2
    np.testing.assert_allclose(plots.r_rnorm(5, 1234), [
        -1.20706574938542088, 0.27742924211066000, 1.08444117668305595,
        -2.34569770262934929, 0.42912468881104998], rtol=1e-14)
    np.testing.assert_allclose(plots.r_rnorm(3, 42), [
        1.37095844714666848, -0.56469817139608869, 0.36312841133733920], rtol=1e-14)


@pytest.mark.parametrize("case", REF["supsmu"], ids=lambda c: f"n{len(c['x'])}-{c['bass']}")
def test_supsmu_equals_r(case) -> None:
    x, y = plots.supsmu(case["x"], case["y"], bass=case["bass"])
    np.testing.assert_allclose(x, case["sx"], rtol=0, atol=0)
    np.testing.assert_allclose(y, case["sy"], rtol=1e-10, atol=1e-12)


def _case_id(case) -> str:
    return f"{case['fit']}-{case['seed']}-{'smooth' if case['smooth'] else 'raw'}"


@pytest.mark.parametrize("case", REF["cases"], ids=_case_id)
def test_qq_envelope_equals_metafor(case) -> None:
    fit = _fit(case["fit"])
    assert fit.tau2 == pytest.approx(case["tau2"], rel=1e-8, abs=1e-12)
    env = plots.qq_envelope(fit, reps=case["reps"], seed=case["seed"],
                            bonferroni=case["bonferroni"], smooth=case["smooth"])
    np.testing.assert_allclose(env.x, case["lower"]["x"], rtol=1e-12)
    np.testing.assert_allclose(env.lower, case["lower"]["y"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(env.upper, case["upper"]["y"], rtol=1e-6, atol=1e-9)


def test_the_plot_draws_the_envelope() -> None:
    fig = plots.qqnorm_plot(_fit("REML"), seed=1234)
    lines = {ln.get_gid(): ln for ln in fig.axes[0].get_lines() if ln.get_gid()}
    env = plots.qq_envelope(_fit("REML"), seed=1234)
    np.testing.assert_allclose(lines["envelope_lower"].get_ydata(), env.lower)
    np.testing.assert_allclose(lines["envelope_upper"].get_ydata(), env.upper)
    fig = plots.qqnorm_plot(_fit("REML"), envelope=False)
    assert "envelope_lower" not in {ln.get_gid() for ln in fig.axes[0].get_lines()}
