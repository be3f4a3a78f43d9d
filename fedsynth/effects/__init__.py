"""Site estimators: effect sizes from summary data and from patient-level data.

Pure statistics: no grpc, no database, no file I/O. See :mod:`.effect_sizes` (metafor's
``escalc``) and :mod:`.patient_level` (2x2, two-group, regression, Cox, model evaluation).
"""

from fedsynth.effects.results import (
    REFUSAL_CODES,
    ConfidenceInterval,
    EffectSizes,
    Estimate,
    Refusal,
)

__all__ = ["Estimate", "Refusal", "EffectSizes", "ConfidenceInterval", "REFUSAL_CODES"]

try:  # the computing modules; the result types above never depend on them
    from fedsynth.effects.effect_sizes import ESCALC_MEASURES, escalc  # noqa: F401
    __all__ += ["escalc", "ESCALC_MEASURES"]
except ImportError:  # pragma: no cover - during development only
    pass
try:
    from fedsynth.effects.patient_level import estimate, estimate_all  # noqa: F401
    __all__ += ["estimate", "estimate_all"]
except ImportError:  # pragma: no cover
    pass
