"""Pure statistics of the coordinator: pooling, heterogeneity, diagnostics.

The pooling engine (:mod:`fedsynth.meta.pooling`, built on the vectorised
functions of :mod:`fedsynth.meta.stats`) is re-exported here::

    from fedsynth.meta import pool, meta_analysis
    batch = pool(yi, vi, mask=mask, method="REML", test="z", level=95.0)
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

__all__ = [
    "pool",
    "meta_analysis",
    "PoolingResult",
    "BatchPoolingResult",
    "ConfidenceInterval",
    "REFERENCE_KEYS",
    "METHODS",
    "RE_METHODS",
    "TESTS",
]
