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

__all__ += ["escalc", "ESCALC_MEASURES", "estimate", "estimate_all"]

#: Names of the computing modules, imported on first use (PEP 562): importing
#: ``fedsynth.effects.results`` (the result types) or ``effect_sizes`` must not pull
#: ``patient_level`` with pandas, statsmodels and cryptography (``fedsynth meta`` start-up,
#: docs/decisions/startup.md).
_LAZY = {"escalc": "effect_sizes", "ESCALC_MEASURES": "effect_sizes",
         "estimate": "patient_level", "estimate_all": "patient_level"}


def __getattr__(name: str):
    """The computing entry points of the package, imported when first used."""
    if name not in _LAZY:
        raise AttributeError(f"module 'fedsynth.effects' has no attribute {name!r}")
    # lazy: the result types must not import the estimators (start-up, see _LAZY)
    from importlib import import_module

    value = getattr(import_module(f"fedsynth.effects.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
