"""fedsynth: federated multisite evidence synthesis, and a metafor-grade meta-analysis library.

Sites compute effect estimates from private data and send only summary statistics over
mutual-TLS gRPC; a coordinator pools them (``fedsynth.meta``) with metafor-grade
fixed- and random-effects meta-analysis and flags heterogeneity that a single pooled model
would hide.

For ordinary meta-analysis of published effect sizes the library is used directly, with
metafor's argument names, pandas in and results out:

>>> import fedsynth
>>> dat = fedsynth.escalc("OR", fedsynth.example_data("bcg"), ai="tpos", bi="tneg",
...                       ci="cpos", di="cneg")
>>> res = fedsynth.meta_analysis(dat, method="REML")
>>> round(res.estimate, 4), round(res.I2, 2)
(-0.7452, 92.07)

The public functions: :func:`meta_analysis` (``by=`` pools many analyses in one call),
:func:`escalc`, :func:`meta_regression`, :func:`subgroups`, :func:`bayes_meta_analysis`,
:func:`forest_plot`, :func:`funnel_plot`, :func:`save_figure`, :func:`example_data`; the
result types share :class:`Interval` and the conventions of :mod:`fedsynth.results`.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedsynth._version import __version__

#: Wire-protocol version spoken by this release (see proto/fedsynth/v1).
PROTOCOL_VERSION = "fedsynth.v1"

# The public API is loaded on first use (PEP 562): ``import fedsynth`` stays a few
# milliseconds, where importing numpy, pandas and scipy up front costs about 2 s on this
# machine (measured), which every command of the command line and every site agent would
# otherwise pay.
_LAZY: dict[str, tuple[str, str]] = {
    "meta_analysis": ("fedsynth.api", "meta_analysis"),
    "escalc": ("fedsynth.api", "escalc"),
    "meta_regression": ("fedsynth.api", "meta_regression"),
    "subgroups": ("fedsynth.api", "subgroups"),
    "bayes_meta_analysis": ("fedsynth.api", "bayes_meta_analysis"),
    "example_data": ("fedsynth.api", "example_data"),
    "anova": ("fedsynth.api", "anova"),
    "permutest": ("fedsynth.api", "permutest"),
    "predict": ("fedsynth.api", "predict"),
    "rma_mv": ("fedsynth.meta.mv", "rma_mv"),
    "bldiag": ("fedsynth.meta.mv", "bldiag"),
    "vcalc": ("fedsynth.meta.mv", "vcalc"),
    "robust": ("fedsynth.meta.robust", "robust"),
    "forest_plot": ("fedsynth.plots", "forest_plot"),
    "funnel_plot": ("fedsynth.plots", "funnel_plot"),
    "save_figure": ("fedsynth.plots", "save_figure"),
    "Interval": ("fedsynth.results", "Interval"),
}

__all__ = ["__version__", "PROTOCOL_VERSION", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'fedsynth' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value          # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
