"""Federated model development: regression models fitted across sites.

Pure statistics (numpy/scipy; no I/O, no grpc). Modules:

* :mod:`.hierarchical` -- the exact random-intercept GLM (binomial, poisson, gaussian) by
  maximum marginal likelihood: each site integrates over its own random intercept by
  adaptive Gauss-Hermite quadrature (:func:`~.hierarchical.site_contribution`), the
  coordinator maximises the sum (:func:`~.hierarchical.fit_random_intercept`); and a random
  slope for one covariate (:func:`~.hierarchical.fit_random_slope`).
"""
