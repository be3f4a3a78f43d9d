"""Fixed- and random-effects pooling: the estimator API and its result classes.

:func:`pool` pools a whole batch of analyses (arrays of shape ``(analyses, sites)`` with a
mask for missing sites) in one vectorised call; :func:`meta_analysis` is the one-analysis
convenience wrapper with site labels. Results reproduce ``metafor::rma.uni`` (Viechtbauer
2010, J. Stat. Softw. 36(3)) field by field, including its conventions:

* I² and H² of random-effects fits come from tau² and the "typical" within-study variance
  (Higgins & Thompson 2002, Stat. Med. 21:1539-1558); the fixed-effect fit reports them
  from Q, ``I2 = max(0, 100 (Q - df) / Q)``, ``H2 = Q / df``.
* Knapp-Hartung inference (Knapp & Hartung 2003, Stat. Med. 22:2693-2710) scales the
  variance of the estimate by ``RSS / (k - 1)`` and uses t with ``k - 1`` df, also for
  the prediction interval ``estimate ± crit sqrt(se² + tau²)`` (Riley et al. 2011, BMJ
  342:d549).
* Q-profile intervals for tau², I² and H² (Viechtbauer 2007, Stat. Med. 26:37-52) are
  reported for random-effects fits and do not depend on the tau² estimator.

Pure statistics: no I/O, no grpc.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.meta import stats as st
from fedsynth.meta._format import format_batch_summary, format_summary
from fedsynth.results import Interval, PlotMixin, ResultMixin, check_fraction, frame_html
from fedsynth.vocabulary import check_level, check_method, check_rma_test

if TYPE_CHECKING:  # pragma: no cover
    from fedsynth.meta.analysis import AnalysisResult
    from fedsynth.meta.diagnostics import (
        BlupResult,
        InfluenceResult,
        LeaveOneOutResult,
        PublicationBiasResult,
    )
    from fedsynth.meta.heterogeneity import HeterogeneityFlag

__all__ = [
    "ConfidenceInterval",
    "PoolingResult",
    "BatchPoolingResult",
    "pool",
    "meta_analysis",
    "REFERENCE_KEYS",
]

#: Keys of :meth:`PoolingResult.to_dict`, in order (the reference README's, then the
#: model settings).
REFERENCE_KEYS = ("k", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "tau2", "se_tau2",
                  "Q", "Q_df", "Q_pval", "I2", "H2", "pi_lb", "pi_ub", "logLik", "tau2_ci",
                  "I2_ci", "H2_ci", "method", "test", "level")


#: The former name of :class:`fedsynth.results.Interval` (kept so older imports work).
ConfidenceInterval = Interval


def _crit(confidence_level: float, test: str, k: int) -> float:
    """Two-sided critical value of the pooled estimate's test.

    Two-sided critical value of the pooled estimate's test: t with k - 1 df under
    Knapp-Hartung (k >= 2; one site falls back to z, as :func:`pool` does), else normal.
    """
    alpha = 1.0 - confidence_level
    if test != "z" and k >= 2:
        return float(st.t_isf(alpha / 2, k - 1))
    return float(st.norm_isf(alpha / 2))


@dataclass(frozen=True)
class PoolingResult(PlotMixin, ResultMixin):
    """One pooled analysis, field for field as metafor's ``rma.uni`` reports it.

    Attributes
    ----------
    method, test : str
        tau² estimator (``FE`` for the fixed/common-effect model) and inference
        (``z`` or ``knha``).
    level : float
        Confidence level in percent (metafor's convention and the JSON's; the fraction is
        :attr:`confidence_level`).
    k : int
        Number of sites (studies).
    estimate, se, stat, pval, ci_lb, ci_ub : float
        Pooled effect, its standard error, z (or t) statistic, two-sided p-value and
        confidence bounds.
    tau2, se_tau2 : float
        Between-site variance and its standard error (``se_tau2`` NaN where metafor
        reports none: FE, k = 1).
    Q, Q_df, Q_pval : float, int, float
        Cochran's heterogeneity test.
    I2, H2 : float
        Heterogeneity indices (I² in percent).
    pi_lb, pi_ub : float
        Prediction interval for the effect in a new site (NaN for FE and k = 1).
    logLik : float
        Log-likelihood (restricted for REML, as metafor's ``logLik``).
    tau2_ci, I2_ci, H2_ci : Interval or None
        Q-profile confidence intervals (random-effects fits with k >= 2).
    converged : bool
        ``False`` when an iterative step (tau² or a Q-profile bound) did not reach its
        tolerance; ``message`` then says which.
    message : str
        Notes on the fit (k = 1, non-convergence, Knapp-Hartung caveats); empty if none.
    yi, vi : tuple of float
        The sites' effect sizes and sampling variances.
    labels : tuple of str
        Site labels.
    weights : tuple of float
        Weight of each site in percent (as metafor's ``weights()``).
    name : str or None
        Analysis name (from ``pool(names=...)`` or ``--by``).
    """

    method: str
    test: str
    level: float
    k: int
    estimate: float
    se: float
    stat: float
    pval: float
    ci_lb: float
    ci_ub: float
    tau2: float
    se_tau2: float
    Q: float
    Q_df: int
    Q_pval: float
    I2: float
    H2: float
    pi_lb: float
    pi_ub: float
    logLik: float
    tau2_ci: Interval | None
    I2_ci: Interval | None
    H2_ci: Interval | None
    converged: bool
    message: str
    yi: tuple[float, ...] = field(repr=False)
    vi: tuple[float, ...] = field(repr=False)
    labels: tuple[str, ...] = field(repr=False)
    weights: tuple[float, ...] = field(repr=False)
    name: str | None = None

    @property
    def tau(self) -> float:
        """Square root of tau²."""
        return float(np.sqrt(self.tau2))

    @property
    def is_random_effects(self) -> bool:
        """Whether tau² was estimated (a random-effects model with k >= 2)."""
        return self.method != "FE" and self.k >= 2

    def confidence_interval(self, confidence_level: float = 0.95) -> Interval:
        """Confidence interval of the pooled estimate.

        ``estimate ± crit se`` with the fit's test (normal, or t with k - 1 df under
        Knapp-Hartung); at the fit's own level it is exactly ``(ci_lb, ci_ub)``.

        Examples
        --------
        >>> res = meta_analysis([0.2, 0.5, 0.1, 0.4], [0.04, 0.05, 0.03, 0.06])
        >>> ci = res.confidence_interval()
        >>> round(ci.low, 4), round(ci.high, 4), ci.level
        (0.0621, 0.4642, 0.95)
        >>> round(res.confidence_interval(0.9).low, 4)
        0.0944
        """
        level = check_fraction(confidence_level)
        if abs(level * 100.0 - self.level) < 1e-9:
            return Interval(self.ci_lb, self.ci_ub, level=level)
        half = _crit(level, self.test, self.k) * self.se
        return Interval(self.estimate - half, self.estimate + half, level=level)

    def prediction_interval(self, confidence_level: float = 0.95) -> Interval | None:
        """Prediction interval for a new site's true effect (None for FE and k = 1).

        ``estimate ± crit sqrt(se² + tau²)`` (Riley et al. 2011, BMJ 342:d549), with the
        fit's test, as metafor's ``predict()``.
        """
        level = check_fraction(confidence_level)
        if np.isnan(self.pi_lb):
            return None
        if abs(level * 100.0 - self.level) < 1e-9:
            return Interval(self.pi_lb, self.pi_ub, level=level, kind="prediction")
        half = _crit(level, self.test, self.k) * float(np.sqrt(self.se**2 + self.tau2))
        return Interval(self.estimate - half, self.estimate + half, level=level,
                        kind="prediction")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the reference README's keys (NaN and absent -> ``None``)."""
        out: dict[str, Any] = {}
        for key in REFERENCE_KEYS:
            value = getattr(self, key)
            if isinstance(value, Interval):
                out[key] = value.to_list()
            elif value is None or isinstance(value, str):
                out[key] = value
            elif key in ("k", "Q_df"):
                out[key] = int(value)
            else:
                out[key] = finite_or_none(value)
        return out

    def to_frame(self):
        """One row (index: the analysis name) with the keys of :meth:`to_dict`.

        One row (index: the analysis name) with the keys of :meth:`to_dict`, intervals
        as ``tau2_ci_lb``, ``tau2_ci_ub``, ...
        """
        frame = super().to_frame()
        frame.index = [self.name if self.name is not None else 0]
        return frame

    def sites_frame(self):
        """One row per site: label, ``yi``, ``vi``, ``sei`` and weight (percent)."""
        # lazy: pandas (~1 s) only for to_frame(); `import fedsynth.meta` stays without it
        import pandas as pd

        return pd.DataFrame({"label": list(self.labels), "yi": list(self.yi),
                             "vi": list(self.vi), "sei": np.sqrt(self.vi),
                             "weight": list(self.weights)})

    def summary(self) -> str:
        """A readable report in the spirit of metafor's ``print.rma.uni``."""
        return format_summary(self)

    # --- plots and diagnostics of the fitted model --------------------------------------

    def forest(self, **options: Any):
        """Forest plot of this analysis (:func:`fedsynth.plots.forest_plot`)."""
        # lazy: import cycle: fedsynth.plots imports fedsynth.meta at top
        from fedsynth.plots import forest_plot

        return forest_plot(self, **options)

    def funnel(self, **options: Any):
        """Funnel plot of this analysis (:func:`fedsynth.plots.funnel_plot`)."""
        # lazy: import cycle: fedsynth.plots imports fedsynth.meta at top
        from fedsynth.plots import funnel_plot

        return funnel_plot(self, **options)

    def _diagnostics(self):
        # scipy.stats (imported by the diagnostics) costs more start-up than pooling
        # thousands of analyses (benchmarks/README.md): only when a diagnostic is asked for
        # lazy: import cycle: fedsynth.meta.diagnostics imports this module
        from fedsynth.meta import diagnostics

        if self.k < 2:
            raise InputError(f"diagnostics need at least 2 sites; this analysis has k = {self.k}")
        return diagnostics

    def leave_one_out(self) -> LeaveOneOutResult:
        """The analysis refitted without each site (metafor's ``leave1out``)."""
        return self._diagnostics().leave_one_out(self.yi, self.vi, labels=self.labels,
                                                 method=self.method, test=self.test,
                                                 level=self.level)

    def influence(self) -> InfluenceResult:
        """Outlier and influence diagnostics per site (metafor's ``influence``)."""
        return self._diagnostics().influence(self.yi, self.vi, labels=self.labels,
                                             method=self.method, test=self.test)

    def blup(self) -> BlupResult:
        """Each site's shrunken estimate with a prediction interval.

        Each site's shrunken estimate with a prediction interval (metafor's ``blup``),
        from this fit's tau².
        """
        diagnostics = self._diagnostics()
        # lazy: import cycle: fedsynth.meta.metareg imports this module
        from fedsynth.meta.metareg import fit_rma

        # the fit at this result's own tau² (fixed), for every method
        fit = fit_rma(self.yi, self.vi, None, method=self.method, test=self.test,
                      level=self.level, tau2=None if self.method == "FE" else self.tau2,
                      compute_r2=False)
        return diagnostics.blup(self.yi, self.vi, labels=self.labels, level=self.level,
                                fit=fit)

    def publication_bias(self) -> PublicationBiasResult:
        """Egger's and Begg's tests and trim-and-fill.

        Egger's and Begg's tests and trim-and-fill (metafor's ``regtest``,
        ``ranktest``, ``trimfill``); needs k >= 3.
        """
        return self._diagnostics().publication_bias(self.yi, self.vi, method=self.method,
                                                    test=self.test)

    def heterogeneity(self, *, i2_threshold: float = 50.0,
                      null_value: float = 0.0) -> HeterogeneityFlag:
        """The heterogeneity flag of this analysis.

        The heterogeneity flag of this analysis (the rule in docs/architecture.md; see
        :func:`fedsynth.meta.heterogeneity.assess_heterogeneity`).
        """
        return self.analyse(i2_threshold=i2_threshold, null_value=null_value,
                            diagnostics=False).heterogeneity

    def analyse(self, **options: Any) -> AnalysisResult:
        """Everything ``fedsynth meta`` reports about this analysis.

        Everything ``fedsynth meta`` reports about this analysis: the flag and the
        requested diagnostics (:func:`fedsynth.meta.analysis.analyse` on this fit).
        """
        # lazy: import cycle: fedsynth.meta.analysis imports this module
        from fedsynth.meta.analysis import analyse

        return analyse(self.yi, self.vi, labels=self.labels, method=self.method,
                       test=self.test, level=self.level, pooled=self, **options)


#: Per-analysis array fields of :class:`BatchPoolingResult`.
_ARRAY_FIELDS = ("k", "estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "tau2", "se_tau2",
                 "Q", "Q_df", "Q_pval", "I2", "H2", "pi_lb", "pi_ub", "logLik",
                 "tau2_ci_lb", "tau2_ci_ub", "I2_ci_lb", "I2_ci_ub", "H2_ci_lb", "H2_ci_ub",
                 "converged", "iterations")


@dataclass(frozen=True)
class BatchPoolingResult(ResultMixin):
    """Results of many analyses pooled in one call; every field is an array of shape (m,).

    ``batch[i]`` (or ``batch["name"]``) is the :class:`PoolingResult` of analysis ``i``;
    iterating yields them all; :meth:`to_frame` gives one row per analysis and
    :meth:`to_dicts` the JSON-ready records of all analyses. ``tau2_ci`` etc. are also
    available as ``(m, 2)`` arrays through the properties of the same name. ``yi``,
    ``vi`` and ``weights`` (percent) are ``(m, K)`` grids, NaN outside ``mask``;
    ``site_labels`` is the ``(m, K)`` label grid given to :func:`pool` (or None), and
    :meth:`labels_of` gives one analysis' labels.
    """

    method: str
    test: str
    level: float
    names: tuple[str, ...]
    k: np.ndarray
    estimate: np.ndarray
    se: np.ndarray
    stat: np.ndarray
    pval: np.ndarray
    ci_lb: np.ndarray
    ci_ub: np.ndarray
    tau2: np.ndarray
    se_tau2: np.ndarray
    Q: np.ndarray
    Q_df: np.ndarray
    Q_pval: np.ndarray
    I2: np.ndarray
    H2: np.ndarray
    pi_lb: np.ndarray
    pi_ub: np.ndarray
    logLik: np.ndarray
    tau2_ci_lb: np.ndarray
    tau2_ci_ub: np.ndarray
    I2_ci_lb: np.ndarray
    I2_ci_ub: np.ndarray
    H2_ci_lb: np.ndarray
    H2_ci_ub: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    messages: tuple[str, ...]
    yi: np.ndarray = field(repr=False)
    vi: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    weights: np.ndarray = field(repr=False)
    site_labels: np.ndarray | None = field(repr=False, default=None)

    def labels_of(self, i: int) -> tuple[str, ...]:
        """Labels of the sites of analysis ``i`` (column numbers 1..K when none given)."""
        cols = np.flatnonzero(self.mask[i])
        if self.site_labels is None:
            return tuple(str(j + 1) for j in cols)
        return tuple(str(x) for x in self.site_labels[i, cols])

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[PoolingResult]:
        for i in range(len(self)):
            yield self[i]

    @property
    def tau2_ci(self) -> np.ndarray:
        """Q-profile bounds for tau², shape (m, 2)."""
        return np.column_stack([self.tau2_ci_lb, self.tau2_ci_ub])

    @property
    def I2_ci(self) -> np.ndarray:
        """Bounds for I², shape (m, 2)."""
        return np.column_stack([self.I2_ci_lb, self.I2_ci_ub])

    @property
    def H2_ci(self) -> np.ndarray:
        """Bounds for H², shape (m, 2)."""
        return np.column_stack([self.H2_ci_lb, self.H2_ci_ub])

    def index_of(self, name: str) -> int:
        """Position of the analysis called ``name``."""
        try:
            return self.names.index(str(name))
        except ValueError:
            shown = ", ".join(repr(n) for n in self.names[:10])
            more = f" (and {len(self.names) - 10} more)" if len(self.names) > 10 else ""
            raise KeyError(f"analysis {name!r} is not in this batch; analyses: "
                           f"{shown}{more}") from None

    def __getitem__(self, i: int | str) -> PoolingResult:
        if isinstance(i, str):
            i = self.index_of(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"analysis index {i} out of range for {n} analyses")
        i = i % n
        row = self.mask[i]

        level = self.level / 100.0

        def ci(lo: np.ndarray, hi: np.ndarray) -> Interval | None:
            if np.isnan(lo[i]):
                return None
            return Interval(float(lo[i]), float(hi[i]), level=level)

        return PoolingResult(
            method=self.method, test=self.test, level=self.level, k=int(self.k[i]),
            estimate=float(self.estimate[i]), se=float(self.se[i]), stat=float(self.stat[i]),
            pval=float(self.pval[i]), ci_lb=float(self.ci_lb[i]), ci_ub=float(self.ci_ub[i]),
            tau2=float(self.tau2[i]), se_tau2=float(self.se_tau2[i]), Q=float(self.Q[i]),
            Q_df=int(self.Q_df[i]), Q_pval=float(self.Q_pval[i]), I2=float(self.I2[i]),
            H2=float(self.H2[i]), pi_lb=float(self.pi_lb[i]), pi_ub=float(self.pi_ub[i]),
            logLik=float(self.logLik[i]),
            tau2_ci=ci(self.tau2_ci_lb, self.tau2_ci_ub), I2_ci=ci(self.I2_ci_lb, self.I2_ci_ub),
            H2_ci=ci(self.H2_ci_lb, self.H2_ci_ub), converged=bool(self.converged[i]),
            message=self.messages[i],
            yi=tuple(float(x) for x in self.yi[i][row]),
            vi=tuple(float(x) for x in self.vi[i][row]),
            labels=self.labels_of(i),
            weights=tuple(float(x) for x in self.weights[i][row]),
            name=self.names[i],
        )

    def to_frame(self):
        """A :class:`pandas.DataFrame` with one row per analysis (index: analysis names)."""
        # lazy: pandas (~1 s) only for to_frame(); `import fedsynth.meta` stays without it
        import pandas as pd

        data = {"analysis": list(self.names)}
        data.update({name: getattr(self, name) for name in _ARRAY_FIELDS})
        data["message"] = list(self.messages)
        frame = pd.DataFrame(data).set_index("analysis")
        frame.insert(0, "method", self.method)
        frame.insert(1, "test", self.test)
        frame.insert(2, "level", self.level)
        return frame

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the batch, as the command line's ``--by`` JSON.

        ``{"method", "test", "level", "analyses": [record, ...]}``; each record is
        :meth:`PoolingResult.to_dict` with ``analysis`` (its name) first, as the command
        line's ``--by`` JSON.
        """
        records = [{"analysis": name, **rec} for name, rec in zip(self.names, self.to_dicts())]
        return {"method": self.method, "test": self.test, "level": self.level,
                "analyses": records}

    def summary(self) -> str:
        """One line per analysis (the first 20 and how many more).

        One line per analysis (the first 20 and how many more): k, estimate, se,
        confidence bounds, tau², I² and the heterogeneity test's p-value.
        """
        return format_batch_summary(self)

    def _repr_html_(self) -> str:
        return frame_html(self.to_frame(), f"{len(self)} analyses pooled ({self.method}, "
                                           f"{self.test}, {self.level:g}%)")

    def confidence_interval(self, confidence_level: float = 0.95) -> Interval:
        """Confidence intervals of every analysis' pooled estimate (arrays of shape (m,))."""
        level = check_fraction(confidence_level)
        if abs(level * 100.0 - self.level) < 1e-9:
            return Interval(self.ci_lb, self.ci_ub, level=level)
        half = self._crit(level) * self.se
        return Interval(self.estimate - half, self.estimate + half, level=level)

    def prediction_interval(self, confidence_level: float = 0.95) -> Interval:
        """Prediction intervals of every analysis (NaN for FE and k = 1)."""
        level = check_fraction(confidence_level)
        if abs(level * 100.0 - self.level) < 1e-9:
            return Interval(self.pi_lb, self.pi_ub, level=level, kind="prediction")
        half = self._crit(level) * np.sqrt(self.se**2 + self.tau2)
        nan = np.isnan(self.pi_lb)
        return Interval(np.where(nan, np.nan, self.estimate - half),
                        np.where(nan, np.nan, self.estimate + half), level=level,
                        kind="prediction")

    def _crit(self, level: float) -> np.ndarray:
        alpha = 1.0 - level
        z = float(st.norm_isf(alpha / 2))
        if self.test == "z":
            return np.full(len(self), z)
        with np.errstate(invalid="ignore"):
            t = st.per_distinct(lambda d: st.t_isf(alpha / 2, d), np.maximum(self.k - 1, 1))
        return np.where(self.k >= 2, t, z)

    def forest(self, analysis: int | str = 0, **options: Any):
        """Forest plot of one analysis of the batch (by position or name)."""
        return self[analysis].forest(**options)

    def to_dicts(self) -> list[dict[str, Any]]:
        """``[batch[i].to_dict() for i ...]`` computed column-wise (fast for large batches)."""
        columns: dict[str, list] = {}
        for key in ("estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "tau2", "se_tau2",
                    "Q", "Q_pval", "I2", "H2", "pi_lb", "pi_ub", "logLik"):
            arr = getattr(self, key).astype(object)
            arr[~np.isfinite(getattr(self, key))] = None
            columns[key] = arr.tolist()

        def interval(lo: np.ndarray, hi: np.ndarray) -> list:
            out = np.column_stack([lo, hi]).astype(object)
            out[~np.isfinite(np.column_stack([lo, hi]))] = None
            return [None if r[0] is None else r for r in out.tolist()]

        cis = {"tau2_ci": interval(self.tau2_ci_lb, self.tau2_ci_ub),
               "I2_ci": interval(self.I2_ci_lb, self.I2_ci_ub),
               "H2_ci": interval(self.H2_ci_lb, self.H2_ci_ub)}
        n = len(self)
        columns["k"] = self.k.tolist()
        columns["Q_df"] = self.Q_df.tolist()
        columns.update(cis)
        for key, value in (("method", self.method), ("test", self.test), ("level", self.level)):
            columns[key] = [value] * n
        keys = list(REFERENCE_KEYS)
        result = [dict(zip(keys, row)) for row in zip(*(columns[key] for key in keys))]
        return result


# ---------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------

def _check_options(method: str, test: str, level: float) -> tuple[str, str, float]:
    """Validated method, test and level (percent; a fraction such as 0.95 is accepted)."""
    return check_method(method), check_rma_test(test), check_level(level)


def _as_2d(name: str, values: Any) -> np.ndarray:
    try:
        arr = np.array(values, dtype=float, ndmin=1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: values are not numeric ({exc})") from exc
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a 1-D or 2-D array, got {arr.ndim} dimensions")
    return arr


def _validate(yi, vi, mask, names, labels):
    y = _as_2d("yi", yi)
    v = _as_2d("vi", vi)
    if y.shape != v.shape:
        raise InputError(f"yi and vi: shapes differ ({y.shape} vs {v.shape})")
    msk = st.as_mask(mask, y.shape)
    if msk.shape != y.shape:
        raise InputError(f"mask: shape {msk.shape} does not match yi {y.shape}")
    m, kmax = y.shape
    if names is None:
        name_t = tuple(map(str, range(m))) if m > 1 else ("",)
    else:
        name_t = tuple(str(n) for n in names)
        if len(name_t) != m:
            raise InputError(f"names: {len(name_t)} names given for {m} analyses")
    if labels is None:
        label_grid = None
    else:
        label_grid = np.array(labels, dtype=object, ndmin=1)
        if label_grid.ndim == 1:
            label_grid = np.broadcast_to(label_grid, (m, label_grid.size))
        if label_grid.shape != y.shape:
            raise InputError(f"labels: shape {label_grid.shape} does not match yi {y.shape}")

    def where(i: int, j: int) -> str:
        site = label_grid[i, j] if label_grid is not None else f"site {j + 1}"
        place = f"study {site!r}" if label_grid is not None else site
        named = (m > 1 or names is not None) and name_t[i] != ""
        return f"{place} of analysis {name_t[i]!r}" if named else place

    bad = msk & ~np.isfinite(y)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise InputError(f"yi: {where(i, j)} has a non-finite effect size ({float(y[i, j])!r})")
    bad = msk & ~(np.isfinite(v) & (v > 0))
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise InputError(f"vi: {where(i, j)} has sampling variance {float(v[i, j])!r}; "
                         "it must be finite and > 0")
    return y, v, msk, name_t, label_grid


# ---------------------------------------------------------------------------------------
# the estimator
# ---------------------------------------------------------------------------------------

def pool(yi, vi, *, mask=None, method: str = "REML", test: str = "z", level: float = 0.95,
         names: Sequence[str] | None = None, labels=None, tau2=None, weights=None,
         weighted: bool = True) -> BatchPoolingResult:
    """Pool a batch of meta-analyses in one vectorised call.

    Parameters
    ----------
    yi, vi : array_like, shape (m, K) or (K,)
        Effect sizes and sampling variances; a 1-D array is one analysis. Cells outside
        ``mask`` may hold anything (NaN placeholders for missing sites).
    mask : array_like of bool, shape (m, K), optional
        ``True`` where a site contributed (default: every cell), so ``k`` varies per row.
    method : {"FE", "DL", "HE", "HS", "SJ", "ML", "REML", "EB", "PM"}
        ``FE`` is the fixed (common) effect model; the others estimate tau².
    test : {"z", "t", "knha", "adhoc"}
        Wald z; t with ``k - 1`` df (unscaled variance); Knapp-Hartung t (Knapp &
        Hartung 2003, Stat. Med. 22:2693-2710); ``adhoc``: Knapp-Hartung with its
        scale factor floored at 1 (Jackson et al. 2017, Stat. Med. 36:3923-3934), as
        metafor's ``test``.
    level : float
        Confidence level as a fraction (default 0.95); a value above 1 is read as a
        percentage (95), as metafor's ``level``. Results report it in percent.
    names : sequence of str, optional
        Analysis names (carried into the results and error messages).
    labels : array_like of str, shape (K,) or (m, K), optional
        Site labels (used in results and error messages).
    tau2 : float or array_like of shape (m,), optional
        tau² fixed by the user (metafor's ``tau2 =``): not estimated, no standard error
        (the Q-profile interval is still reported, as metafor's ``confint``); not with
        ``FE``.
    weights : array_like, shape (m, K) or (K,), optional
        User weights of the estimate (metafor's ``weights``): ``sum(a y) / sum(a)`` with
        variance ``sum(a² (v + tau²)) / sum(a)²``; tau² is estimated as without them.
    weighted : bool
        ``False``: the unweighted mean (metafor's ``weighted = FALSE``), variance as for
        user weights of 1.

    Returns
    -------
    BatchPoolingResult

    Raises
    ------
    fedsynth.errors.InputError
        Bad option, mismatched shapes, or a site inside the mask with a non-finite
        effect size or a variance that is not finite and positive (the message names the
        analysis, the site and the value).

    Notes
    -----
    Analyses with a single site get the fixed-effect result (tau² = 0, z test, no
    heterogeneity statistics or prediction interval) and a message saying so; analyses
    with no site at all get NaN results and ``converged = False``. Non-convergence of an
    iterative step is reported per analysis (``converged`` and ``messages``), never by
    failing the batch.
    """
    method, test, level = _check_options(method, test, level)
    y, v, msk, name_t, label_grid = _validate(yi, vi, mask, names, labels)
    m = y.shape[0]
    fixed = _fixed_tau2(tau2, m, method)
    a_user = _user_weights(weights, weighted, y.shape, msk)
    # Blocks of rows keep the (rows, sites) temporaries in cache: about twice as fast as
    # one pass over 20,000 analyses, and the results are identical (rows are independent).
    blocks = [_pool_block(y[s:s + _BLOCK], v[s:s + _BLOCK], msk[s:s + _BLOCK], method, test,
                          level, None if fixed is None else fixed[s:s + _BLOCK],
                          None if a_user is None else a_user[s:s + _BLOCK])
              for s in range(0, max(m, 1), _BLOCK)]
    res = {key: np.concatenate([blk[key] for blk in blocks]) for key in blocks[0]}
    k = res["k"]
    multi = k >= 2
    empty = k == 0
    is_re = method != "FE"
    fit_ok, qp_ok, rss = res["fit_converged"], res["qp_converged"], res["rss"]

    messages = [""] * m
    identical = (test == "knha") & multi & (rss <= st._EPS)
    noted = empty | (k == 1) | ~fit_ok | ~qp_ok | identical
    for i in np.flatnonzero(noted | ((test in ("knha", "adhoc")) & (not is_re) & multi)):
        notes = []
        if empty[i]:
            notes.append("k = 0: no site contributed; nothing to pool")
        elif k[i] == 1:
            notes.append("k = 1: a single site, so tau² cannot be estimated; this is the "
                         "fixed-effect result (tau² = 0, z test, no heterogeneity "
                         "statistics or prediction interval)")
        if not fit_ok[i] and not empty[i]:
            notes.append(f"the {method} estimate of tau² did not converge")
        if not qp_ok[i]:
            notes.append("a Q-profile bound for tau² did not converge")
        if test in ("knha", "adhoc") and not is_re and multi[i]:
            notes.append("Knapp-Hartung inference is meant for random-effects models")
        if identical[i]:
            notes.append("the effect sizes are identical, so the Knapp-Hartung scale "
                         "factor is 0 and se = 0 (as metafor)")
        messages[i] = "; ".join(notes)

    nan_if_empty = lambda a: np.where(empty, np.nan, a)  # noqa: E731
    return BatchPoolingResult(
        method=method, test=test, level=level, names=name_t, k=k,
        estimate=nan_if_empty(res["estimate"]), se=nan_if_empty(res["se"]),
        stat=nan_if_empty(res["stat"]), pval=nan_if_empty(res["pval"]),
        ci_lb=nan_if_empty(res["ci_lb"]), ci_ub=nan_if_empty(res["ci_ub"]),
        tau2=res["tau2"], se_tau2=res["se_tau2"], Q=nan_if_empty(res["Q"]),
        Q_df=np.maximum(k - 1, 0), Q_pval=nan_if_empty(res["Q_pval"]),
        I2=nan_if_empty(res["I2"]), H2=nan_if_empty(res["H2"]),
        pi_lb=res["pi_lb"], pi_ub=res["pi_ub"], logLik=nan_if_empty(res["logLik"]),
        tau2_ci_lb=res["tau2_ci_lb"], tau2_ci_ub=res["tau2_ci_ub"],
        I2_ci_lb=res["I2_ci_lb"], I2_ci_ub=res["I2_ci_ub"],
        H2_ci_lb=res["H2_ci_lb"], H2_ci_ub=res["H2_ci_ub"],
        converged=fit_ok & qp_ok & ~empty, iterations=res["iterations"],
        messages=tuple(messages), yi=np.where(msk, y, np.nan), vi=np.where(msk, v, np.nan),
        mask=msk, weights=np.where(msk, res["weights"], np.nan), site_labels=label_grid,
    )


#: Rows per block of the vectorised computation (see :func:`pool`).
_BLOCK = 4096


def _fixed_tau2(tau2: Any, m: int, method: str) -> np.ndarray | None:
    """User-fixed tau² per analysis (metafor's ``tau2 =``), checked; None to estimate it."""
    if tau2 is None:
        return None
    try:
        t = np.broadcast_to(np.asarray(tau2, dtype=float).reshape(-1), (m,)).copy()
    except (TypeError, ValueError):
        raise InputError(f"tau2: expected a number or one per analysis, got {tau2!r}") from None
    bad = np.flatnonzero(~np.isfinite(t) | (t < 0))
    if bad.size:
        raise InputError(f"tau2: must be finite and >= 0, got {float(t[bad[0]])!r}")
    if method == "FE" and np.any(t != 0):
        raise InputError(f"tau2: a fixed tau^2 ({float(t[t != 0][0])!r}) contradicts method "
                         "FE (tau^2 = 0); use a random-effects method such as REML")
    return None if method == "FE" else t


def _user_weights(weights: Any, weighted: bool, shape: tuple[int, ...],
                  msk: np.ndarray) -> np.ndarray | None:
    """User weights (metafor's ``weights``), ones for ``weighted=False``, else None."""
    if weights is None:
        return None if weighted else np.where(msk, 1.0, 0.0)
    if not weighted:
        raise InputError("weights: user weights and weighted=False exclude each other")
    try:
        a = np.broadcast_to(_as_2d("weights", weights), shape).copy()
    except ValueError:
        raise InputError(f"weights: shape {np.shape(weights)} does not match the effects "
                         f"{shape}") from None
    bad = msk & ~(np.isfinite(a) & (a >= 0))
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise InputError(f"weights: analysis {i + 1}, site {j + 1} has weight "
                         f"{float(a[i, j])!r}; weights must be finite and >= 0")
    if np.any((np.where(msk, a, 0.0).sum(axis=1) <= 0) & msk.any(axis=1)):
        raise InputError("weights: every analysis needs a positive weight sum")
    return np.where(msk, a, 0.0)


def _pool_block(y: np.ndarray, v: np.ndarray, msk: np.ndarray, method: str, test: str,
                level: float, fixed: np.ndarray | None = None,
                a_user: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The numbers of :func:`pool` for one block of validated rows."""
    b = st.as_batch(y, v, msk)
    m = y.shape[0]
    k = b.k
    alpha = st._alpha(level)
    multi = k >= 2
    empty = k == 0
    is_re = method != "FE"

    with np.errstate(invalid="ignore", divide="ignore"):
        if fixed is None:
            fit = st.tau2_estimate(b, None, None, method)
        else:
            # tau² fixed by the user: nothing estimated, no standard error
            fit = st.Tau2Fit(tau2=np.where(multi, fixed, 0.0), se_tau2=np.full(m, np.nan),
                             converged=np.ones(m, dtype=bool),
                             iterations=np.zeros(m, dtype=int))
        tau2 = np.where(empty, np.nan, fit.tau2)
        w = st.re_weights(b, np.where(empty, 0.0, tau2))
        sw = st._rsum(w)
        estimate = st._rdot(w, b.yi) / sw
        resid = b.yi - estimate[:, None]
        rss = st._rdot(w * resid, resid)
        var_est = 1.0 / sw
        rss_fit = rss
        if a_user is not None:
            # user weights (or unweighted): sum(a y)/sum(a), variance sum(a² (v + tau²))
            # / sum(a)²; the Knapp-Hartung factor stays that of the inverse-variance fit
            sa = st._rsum(a_user)
            estimate = st._rdot(a_user, b.yi) / sa
            var_est = st._rdot(a_user * a_user, np.where(msk, 1.0 / w, 0.0)) / sa**2
            ra = b.yi - estimate[:, None]
            rss_fit = st._rdot(w * ra, ra)
        df = k - 1
        # the t-type tests need k >= 2; one site falls back to the z test (see message)
        tdist = (test != "z") & multi
        if test in ("knha", "adhoc"):
            # metafor sets the scale to 0 when RSS is numerically zero (all yi equal)
            s2w = np.where(rss <= st._EPS, 0.0, rss / df)
            if test == "adhoc":
                s2w = np.maximum(s2w, 1.0)
            var_est = np.where(tdist, s2w * var_est, var_est)
        se = np.sqrt(var_est)
        stat = estimate / se
        crit = st.critical_value(alpha, df, "z")
        pval = st.two_sided_p(stat, df, "z")
        knha = tdist
        if test != "z":
            t_df = np.maximum(df, 1)
            # the t quantile depends on df only: evaluate it once per distinct k
            t_crit = st.per_distinct(lambda d: st.critical_value(alpha, d, "knha"), t_df)
            crit = np.where(knha, t_crit, crit)
            pval = np.where(knha, st.two_sided_p(stat, t_df, "knha"), pval)
        ci_lb = estimate - crit * se
        ci_ub = estimate + crit * se

        q = np.where(multi, st.q_statistic(b), 0.0)
        q_p = np.where(multi, st.chi2_sf(q, np.maximum(df, 1)), 1.0)
        vt = np.where(multi, st.typical_variance(b), 0.0)
        if is_re:
            i2, h2 = st.heterogeneity_indices(tau2, vt)
        else:
            i2 = np.where(q > 0, np.maximum(0.0, 100.0 * (q - df) / q), 0.0)
            h2 = q / df
        i2 = np.where(multi, i2, 0.0)
        h2 = np.where(multi, h2, 1.0)

        if is_re:
            half = crit * np.sqrt(se**2 + tau2)
            pi_lb = np.where(multi, estimate - half, np.nan)
            pi_ub = np.where(multi, estimate + half, np.nan)
            qp = st.qprofile_tau2_ci(b, level=level)
            # also for a tau² the user fixed: the Q-profile bounds do not depend on the
            # estimate (metafor's confint() gives them for a fixed tau² too)
            t_lo, t_hi = np.where(multi, qp.low, np.nan), np.where(multi, qp.high, np.nan)
            i2_lo, h2_lo = st.heterogeneity_indices(t_lo, vt)
            i2_hi, h2_hi = st.heterogeneity_indices(t_hi, vt)
            qp_ok = qp.converged
        else:
            pi_lb = pi_ub = t_lo = t_hi = i2_lo = i2_hi = h2_lo = h2_hi = np.full(m, np.nan)
            qp_ok = np.ones(m, dtype=bool)
        loglik = st.log_likelihood(b, np.where(empty, 0.0, tau2), reml=method == "REML")
        # metafor's log-likelihood takes the residuals of the fitted (weighted) estimate
        loglik = loglik - 0.5 * (rss_fit - rss)
        weights = (100.0 * w / sw[:, None] if a_user is None
                   else 100.0 * a_user / st._rsum(a_user)[:, None])
    se_tau2 = np.where(multi & is_re, fit.se_tau2, np.nan)

    return {"k": k, "estimate": estimate, "se": se, "stat": stat, "pval": pval,
            "ci_lb": ci_lb, "ci_ub": ci_ub, "tau2": tau2, "se_tau2": se_tau2, "Q": q,
            "Q_pval": q_p, "I2": i2, "H2": h2, "pi_lb": pi_lb, "pi_ub": pi_ub,
            "logLik": loglik, "tau2_ci_lb": t_lo, "tau2_ci_ub": t_hi, "I2_ci_lb": i2_lo,
            "I2_ci_ub": i2_hi, "H2_ci_lb": h2_lo, "H2_ci_ub": h2_hi,
            "fit_converged": fit.converged, "qp_converged": qp_ok,
            "iterations": fit.iterations, "rss": rss, "weights": weights}


def meta_analysis(yi, vi, *, labels: Sequence[str] | None = None, method: str = "REML",
                  test: str = "z", level: float = 0.95,
                  name: str | None = None) -> PoolingResult:
    """Pool one meta-analysis (metafor's ``rma(yi, vi, method=, test=, level=)``).

    Parameters
    ----------
    yi, vi : sequence of float
        Effect sizes and sampling variances of the k sites (k >= 1).
    labels : sequence of str, optional
        Site labels, used in the result and in error messages.
    method, test, level
        As :func:`pool`.
    name : str, optional
        Analysis name carried into the result.

    Raises
    ------
    fedsynth.errors.InputError
        No sites, lengths that differ, a non-finite effect size or a variance that is not
        finite and positive (naming the site label and the value).
    """
    y = np.array(yi, dtype=object, ndmin=1)
    v = np.array(vi, dtype=object, ndmin=1)
    if y.ndim != 1 or v.ndim != 1:
        raise InputError("yi, vi: meta_analysis takes one analysis (1-D); use pool() for a batch")
    if y.size == 0:
        raise InputError("yi: no sites given (k = 0)")
    if y.size != v.size:
        raise InputError(f"yi and vi: lengths differ ({y.size} vs {v.size})")
    if labels is not None:
        labels = [str(x) for x in labels]
        if len(labels) != y.size:
            raise InputError(f"labels: {len(labels)} labels for {y.size} studies")
    for arr, key in ((y, "yi"), (v, "vi")):
        for j, value in enumerate(arr):
            try:
                float(value)
            except (TypeError, ValueError):
                who = f"study {labels[j]!r}" if labels is not None else f"site {j + 1}"
                raise InputError(f"{key}: {who} has a non-numeric value ({value!r})") from None
    batch = pool(y.astype(float), v.astype(float), method=method, test=test, level=level,
                 names=None if name is None else [name], labels=labels)
    result = batch[0]
    if name is None:
        result = _replace(result, name=None)
    return result


def _replace(result: PoolingResult, **changes: Any) -> PoolingResult:
    values = {f.name: getattr(result, f.name) for f in fields(result)}
    values.update(changes)
    return PoolingResult(**values)
