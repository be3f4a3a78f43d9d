"""Pure statistics of the coordinator: pooling, heterogeneity, diagnostics.

The pooling engine (:mod:`coordinator.synthesis.pooling`, built on the vectorised
functions of :mod:`coordinator.synthesis.stats`) is re-exported here::

    from coordinator.synthesis import pool, meta_analysis
    batch = pool(yi, vi, mask=mask, method="REML", test="z", level=95.0)
    res = meta_analysis(yi, vi, labels=labels, method="REML")

No module of this package does I/O or imports grpc.
"""

from coordinator.synthesis.pooling import (
    REFERENCE_KEYS,
    BatchPoolingResult,
    ConfidenceInterval,
    PoolingResult,
    meta_analysis,
    pool,
)
from coordinator.synthesis.stats import METHODS, RE_METHODS, TESTS

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
