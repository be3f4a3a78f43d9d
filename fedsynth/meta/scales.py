"""Pooling on a measure's own scale, tested against its own null.

Why
---
A federated evaluation round pools measures of a risk model's performance next to effect
measures, and each has its own null and its own scale (``fedsynth.vocabulary``): an AUC
is tested against 0.5 and pooled as a logit, a calibration slope is tested against 1,
O:E is pooled as log O:E and tested against 1, and the Brier score has no null. The
batch engine (:func:`fedsynth.meta.pool`, metafor's ``rma``) tests every estimate
against 0 on the scale it is given; this module moves site estimates to the pooling
scale, re-tests the pooled estimates against the measure's null, and gives performance
measures the prediction interval of the prediction-model literature.

* :func:`to_pooling_scale`: the delta method, ``var(g(x)) = g'(x)² var(x)``, e.g. an
  AUC sent raw becomes ``logit(AUC)`` with variance ``var / (AUC (1 - AUC))²`` (Debray et
  al. 2017, BMJ 356:i6460, Table 2; Snell et al. 2018, Stat. Methods Med. Res.
  27:3505-3522, who show the logit c-statistic is closer to normal across studies).
* :func:`performance_inference`: the z or Knapp-Hartung t statistic and p-value against
  the null on the pooling scale (none when the measure has no null), and for performance
  measures the prediction interval ``mu ± t(k-2) sqrt(tau² + se²)`` (Riley, Higgins &
  Deeks 2011, BMJ 342:d549; Debray et al. 2017; metamisc's ``valmeta``, as
  :mod:`fedsynth.meta.valmeta` computes it for one analysis), here for a whole batch.

Pure statistics: vectorised numpy, no I/O.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from fedsynth.errors import InputError
from fedsynth.vocabulary import SCALES

__all__ = ["to_pooling_scale", "performance_inference", "with_inference", "Inference", "PI_DF",
           "TRANSFORMS", "get_transform"]

#: How the prediction interval's t quantile counts degrees of freedom: metafor's ``k - 1``
#: under Knapp-Hartung (normal under z), or ``k - 2`` as the prediction-model literature.
PI_DF = ("k-1", "k-2")


def _ztor(z: np.ndarray) -> np.ndarray:
    """Fisher's z back to a correlation (metafor's ``transf.ztor``)."""
    return np.tanh(z)


def _ilogit(x: np.ndarray) -> np.ndarray:
    """Logit back to a proportion (metafor's ``transf.ilogit``)."""
    return special.expit(x)


#: Back-transformations by metafor's names (``transf = exp``, ``transf.ilogit``,
#: ``transf.ztor``, ...), vectorised; the short names are accepted too.
TRANSFORMS: dict[str, Any] = {
    "exp": np.exp, "transf.exp.int": np.exp,
    "transf.ilogit": _ilogit, "ilogit": _ilogit, "plogis": _ilogit,
    "transf.ztor": _ztor, "ztor": _ztor, "tanh": _ztor,
    "transf.logit": special.logit, "transf.rtoz": np.arctanh,
    "log": np.log, "identity": lambda x: np.asarray(x, dtype=float),
}


def get_transform(transf: Any) -> Any:
    """A back-transformation from its metafor name (see :data:`TRANSFORMS`) or a callable."""
    if transf is None or callable(transf):
        return transf
    key = str(transf).strip()
    if key not in TRANSFORMS:
        raise InputError(f"transf: {transf!r} is not one of {', '.join(TRANSFORMS)} (or pass "
                         "a function)")
    return TRANSFORMS[key]


def _check_scale(name: str, value: str) -> None:
    if value not in SCALES:
        raise InputError(f"{name}: {value!r} is not one of {', '.join(SCALES)}")


def to_pooling_scale(yi: Any, vi: Any, site_scale: str,
                     scale: str) -> tuple[np.ndarray, np.ndarray]:
    """Site estimates and variances moved from the scale the sites sent to the pooling scale.

    Parameters
    ----------
    yi, vi
        Estimates and sampling variances on ``site_scale``.
    site_scale, scale
        ``identity``, ``log`` or ``logit``. Only moves out of ``identity`` are defined
        (what a site may send raw); equal scales return the input.

    Returns
    -------
    (yi, vi) on ``scale``; NaN where the value lies outside the scale's domain (an AUC of
    exactly 0 or 1 has no logit), so the caller leaves that site out with a note.

    Examples
    --------
    >>> y, v = to_pooling_scale([0.75], [0.0004], "identity", "logit")
    >>> round(float(y[0]), 6), round(float(v[0]), 6)
    (1.098612, 0.011378)
    """
    _check_scale("site_scale", site_scale)
    _check_scale("scale", scale)
    y = np.asarray(yi, dtype=float)
    v = np.asarray(vi, dtype=float)
    if site_scale == scale:
        return y, v
    if site_scale != "identity":
        raise InputError(f"site_scale: cannot move estimates from the {site_scale} scale to "
                         f"the {scale} scale")
    with np.errstate(divide="ignore", invalid="ignore"):
        if scale == "logit":
            ok = (y > 0) & (y < 1)
            g = np.log(y / (1.0 - y))
            dg = 1.0 / (y * (1.0 - y))
        else:                                       # log
            ok = y > 0
            g = np.log(y)
            dg = 1.0 / y
    return np.where(ok, g, np.nan), np.where(ok, v * dg * dg, np.nan)


@dataclass(frozen=True)
class Inference:
    """Tests against the null and prediction intervals of a batch of pooled estimates.

    Attributes
    ----------
    stat, pval
        z (or Knapp-Hartung t with ``k - 1`` df) statistic of ``estimate - null`` and its
        two-sided p-value; NaN where the measure has no null.
    pi_lb, pi_ub
        The prediction interval for a new site (NaN for fixed-effect fits, for ``k < 2``
        and, with ``k - 2`` df, for ``k < 3``).
    """

    stat: np.ndarray
    pval: np.ndarray
    pi_lb: np.ndarray
    pi_ub: np.ndarray


def performance_inference(estimate: Any, se: Any, tau2: Any, k: Any, *,
                          null: float | None, test: str = "z", level: float = 95.0,
                          pi_df: str = "k-1", random_effects: bool = True) -> Inference:
    """Statistic, p-value against ``null`` and prediction interval of pooled estimates.

    Parameters
    ----------
    estimate, se, tau2, k
        The pooled fits (arrays of one batch; ``se`` as the fit reports it, Knapp-Hartung
        scaled under ``knha``).
    null
        The null on the pooling scale; None: no test (the Brier score).
    test
        ``z`` or ``knha`` (t with ``k - 1`` df; one site falls back to z, as ``pool``).
    level
        Confidence level in percent.
    pi_df
        ``"k-1"``: metafor's prediction interval (t with ``k - 1`` df under knha, normal
        under z). ``"k-2"``: ``t(k - 2)`` whatever the test, as Riley et al. (2011) and
        metamisc's ``valmeta`` (NaN for ``k < 3``).
    random_effects
        False for a fixed-effect fit, which has no prediction interval.

    Examples
    --------
    >>> inf = performance_inference([0.2], [0.05], [0.01], [5], null=0.0, pi_df="k-2")
    >>> round(float(inf.pval[0]), 6), round(float(inf.pi_ub[0]), 4)
    (6.3e-05, 0.5558)
    """
    if pi_df not in PI_DF:
        raise InputError(f"pi_df: {pi_df!r} is not one of {', '.join(PI_DF)}")
    mu = np.asarray(estimate, dtype=float)
    s = np.asarray(se, dtype=float)
    t2 = np.asarray(tau2, dtype=float)
    kk = np.asarray(k, dtype=int)
    q = 0.5 + float(level) / 200.0
    knha = (test == "knha") & (kk >= 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        if null is None:
            stat = np.full(mu.shape, np.nan)
            pval = np.full(mu.shape, np.nan)
        else:
            stat = (mu - float(null)) / s
            pval = np.where(knha, 2.0 * special.stdtr(np.maximum(kk - 1, 1), -np.abs(stat)),
                            2.0 * special.ndtr(-np.abs(stat)))
        if pi_df == "k-2":
            df = kk - 2
            crit = np.where(df >= 1, special.stdtrit(np.maximum(df, 1), q), np.nan)
        else:
            crit = np.where(knha, special.stdtrit(np.maximum(kk - 1, 1), q), special.ndtri(q))
        half = crit * np.sqrt(t2 + s * s)
        ok = (kk >= 2) & bool(random_effects)
        pi_lb = np.where(ok, mu - half, np.nan)
        pi_ub = np.where(ok, mu + half, np.nan)
    return Inference(stat=stat, pval=pval, pi_lb=pi_lb, pi_ub=pi_ub)


def with_inference(batch: Any, inference: Inference) -> Any:
    """A copy of a batch result carrying ``inference``'s numbers.

    The :class:`~fedsynth.meta.BatchPoolingResult` with ``inference``'s statistic,
    p-value and prediction interval (everything else unchanged).
    """
    return dataclasses.replace(batch, stat=inference.stat, pval=inference.pval,
                               pi_lb=inference.pi_lb, pi_ub=inference.pi_ub)
