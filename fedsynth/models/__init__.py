"""Federated model development: regression models fitted across sites.

Pure statistics (numpy/scipy; no I/O, no grpc), in the order a round uses them:

* :mod:`.spec` -- the ``[[model]]`` table (:class:`ModelSpec`), categorical levels, names;
* :mod:`.coding` -- a site's design matrix (:func:`build_design`);
* :mod:`.disclosure` -- what a site may release for a model (:class:`ModelLimits`);
* :mod:`.glm` -- federated IRLS: the site step (:func:`site_step`), the coordinator step
  (:func:`advance`), the one-stage and stratified fits;
* :mod:`.twostage` -- each site's own fit (:func:`fit_site`) and their pooling
  (:func:`pool_site_fits`): per coefficient with :func:`fedsynth.meta.pool` and
  multivariate (:mod:`.mvmeta`, metafor's ``rma.mv``);
* :mod:`.fit` -- the three fits of one model together (:func:`fit_model`), as a round and
  ``fedsynth model fit`` report them;
* :mod:`.hierarchical` -- the exact random-intercept GLM (binomial, poisson, gaussian) by
  maximum marginal likelihood: each site integrates over its own random intercept by
  adaptive Gauss-Hermite quadrature (:func:`~.hierarchical.site_contribution`), the
  coordinator maximises the sum (:func:`~.hierarchical.fit_random_intercept`); and a random
  slope for one covariate (:func:`~.hierarchical.fit_random_slope`).

Example::

    from fedsynth.models import build_design, fit_one_stage, fit_site, pool_site_fits
    designs = {site: build_design(frame, model) for site, frame in frames.items()}
    one_stage = fit_one_stage(designs)
    two_stage = pool_site_fits({site: fit_site(d) for site, d in designs.items()})
"""

from __future__ import annotations

import importlib
from typing import Any

from fedsynth.models.spec import (
    FAMILIES,
    INTERCEPT,
    ModelSpec,
    coefficient_names,
    parse_categorical,
    parse_model,
    parse_models,
)

#: Public names of the numeric modules, loaded on first use (PEP 562). fedsynth.spec
#: imports fedsynth.models.spec (this package) for every spec it loads; importing numpy,
#: pandas and scipy here would cost every command that reads a spec without fitting a model
#: (measured CPU time of `python -c "import fedsynth.spec"`: 0.1-0.2 s with this lazy
#: table, 3.0-3.1 s with the numeric modules imported eagerly, on the 2-core dev machine).
_LAZY = {
    "CodingError": "coding", "Design": "coding", "build_design": "coding",
    "level_codes": "coding",
    "ModelLimits": "disclosure", "check_design": "disclosure", "check_request": "disclosure",
    "check_release": "disclosure",
    "IrlsControl": "glm", "StepRequest": "glm", "SiteStep": "glm", "Layout": "glm",
    "IrlsState": "glm", "GlmFit": "glm", "StratifiedFit": "glm", "site_step": "glm",
    "start": "glm", "requests": "glm", "advance": "glm", "result": "glm",
    "run_irls": "glm", "fit_one_stage": "glm", "fit_stratified": "glm",
    "SiteFit": "twostage", "fit_site": "twostage", "TwoStageResult": "twostage",
    "pool_site_fits": "twostage",
    "MvMetaResult": "mvmeta", "mv_meta": "mvmeta",
    "ModelFit": "fit", "fit_model": "fit",
}

__all__ = ["ModelSpec", "FAMILIES", "INTERCEPT", "coefficient_names", "parse_categorical",
           "parse_model", "parse_models", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedsynth.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fedsynth.models.{module}"), name)
    globals()[name] = value
    return value
