"""The hierarchical (random-intercept) fit as the fourth variant of fit_model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedsynth.datasets import generate_trauma, trauma_spec_path
from fedsynth.models import build_design
from fedsynth.models.fit import fit_hierarchical, fit_model
from fedsynth.models.hierarchical import fit_sites, latent_icc, site_data
from fedsynth.spec import load_spec

SPEC = load_spec(trauma_spec_path())
FRAMES = generate_trauma(5, seed=9, rows=260)
KEYS = {"coefficients", "se", "tau", "tau2", "logLik", "site_intercepts",
        "site_intercepts_se", "icc"}


@pytest.mark.parametrize("name", ["tbi_mortality", "length_of_stay", "complications"])
def test_every_family_has_the_issue_keys_and_equals_fit_sites(name: str) -> None:
    model = SPEC.model(name)
    designs = {s: build_design(f, model) for s, f in FRAMES.items()}
    fit = fit_model(designs, limits=None, multivariate=False)
    out = json.loads(json.dumps(fit.to_dict(), allow_nan=False))["hierarchical"]
    assert KEYS <= set(out)
    assert list(out["coefficients"]) == list(model.coefficient_names)
    assert set(out["site_intercepts"]) == set(FRAMES)
    direct = fit_sites({s: site_data(d.x, d.y, family=model.family, offset=d.offset)
                        for s, d in designs.items()}, names=list(model.coefficient_names))
    np.testing.assert_allclose([out["coefficients"][n] for n in model.coefficient_names],
                               direct.coefficients, rtol=1e-12)
    assert out["logLik"] == pytest.approx(direct.loglik, rel=1e-12)
    h = fit.hierarchical
    assert h is not None and h.tau2 == pytest.approx(h.tau ** 2)
    if model.family == "binomial":
        assert out["icc"] == pytest.approx(latent_icc("binomial", h.tau2), rel=1e-12)
    assert "hierarchical" in fit.summary()


def test_a_level_no_site_has_is_aliased_as_in_the_one_stage_fit() -> None:
    model = SPEC.model("complications")
    frames = {s: f[f["ct"] != "IV/V"].reset_index(drop=True) for s, f in FRAMES.items()}
    designs = {s: build_design(f, model) for s, f in frames.items()}
    fit = fit_model(designs, limits=None, multivariate=False)
    assert fit.one_stage is not None and "ct=IV/V" in fit.one_stage.aliased
    out = fit.to_dict()["hierarchical"]
    assert out["coefficients"]["ct=IV/V"] is None
    assert all(v is not None and math.isfinite(v) for k, v in out["coefficients"].items()
               if k != "ct=IV/V")


def test_skipped_when_asked_or_with_one_site() -> None:
    model = SPEC.model("tbi_mortality")
    designs = {s: build_design(f, model) for s, f in FRAMES.items()}
    assert fit_model(designs, hierarchical=False, multivariate=False).hierarchical is None
    one = fit_model(dict(list(designs.items())[:1]), limits=None, multivariate=False)
    assert one.hierarchical is None
    assert any("hierarchical model needs at least two sites" in n for n in one.notes)
    assert fit_hierarchical(designs).k == len(designs)
