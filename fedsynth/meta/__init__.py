"""Pure statistics of meta-analysis.

Pure statistics of meta-analysis: pooling, heterogeneity, diagnostics, subgroups,
meta-regression, Bayes.

The array API of the pooling engine (:mod:`fedsynth.meta.pooling`, built on the one tau²
engine :mod:`fedsynth.meta.stats`) is re-exported here; the data-frame API for users is
``fedsynth.meta_analysis`` (:mod:`fedsynth.api`)::

    from fedsynth.meta import pool, meta_analysis
    batch = pool(yi, vi, mask=mask, method="REML", test="z", level=0.95)
    res = meta_analysis(yi, vi, labels=labels, method="REML")

No module of this package does I/O or imports grpc.
"""

from fedsynth.meta.pooling import (
    REFERENCE_KEYS,
    BatchPoolingResult,
    ConfidenceInterval,
    PoolingResult,
    meta_analysis,
    pool,
)
from fedsynth.meta.stats import METHODS, RE_METHODS, TESTS
from fedsynth.results import Interval

__all__ = [
    "pool",
    "meta_analysis",
    "PoolingResult",
    "BatchPoolingResult",
    "ConfidenceInterval",
    "Interval",
    "REFERENCE_KEYS",
    "METHODS",
    "RE_METHODS",
    "TESTS",
]
