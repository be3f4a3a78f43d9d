"""Conventions every result object of the library follows.

Why
---
A statistician meets many result types (a pooled analysis, a batch of them, a
meta-regression, subgroups, case diagnostics, a Bayesian posterior). They all behave the
same way, as scipy.stats and statsmodels results do:

* intervals are one type, :class:`Interval`, with named ``low`` and ``high`` (scipy's
  ``ConfidenceInterval`` convention), its level as a fraction and its kind (a
  ``"confidence"``, ``"prediction"`` or ``"credible"`` interval), never a tuple read by
  position;
* ``confidence_interval(confidence_level=0.95)`` returns a confidence interval and nothing
  else; prediction intervals come from ``prediction_interval()``, Bayesian ones from
  ``credible_interval()``;
* every result has ``summary()`` (text in the spirit of metafor's ``print``),
  ``to_dict()`` (JSON-ready, the keys of the command line's JSON), ``to_frame()`` (a
  :class:`pandas.DataFrame`) and, for notebooks, ``_repr_html_()``;
* levels are fractions in the Python API (``0.95``); results keep metafor's percentage in
  their ``level`` field and JSON (``"level": 95.0``) and offer the fraction as
  ``confidence_level``.

This module holds only the shared pieces (no statistics); it imports numpy and, lazily,
pandas (only ``to_frame`` needs it).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Interval", "ResultMixin", "check_fraction"]

#: Kinds of :class:`Interval`.
INTERVAL_KINDS = ("confidence", "prediction", "credible")


@dataclass(frozen=True, eq=False)
class Interval:
    """A two-sided interval with named bounds.

    Attributes
    ----------
    low, high
        The bounds: floats, or arrays of the same shape (one interval per coefficient,
        site or analysis).
    level
        Coverage as a fraction (``0.95``); None when not known.
    kind
        ``"confidence"``, ``"prediction"`` or ``"credible"``.

    Examples
    --------
    >>> ci = Interval(0.1547, 0.3369, level=0.95)
    >>> ci.low, ci.high
    (0.1547, 0.3369)
    >>> ci
    Interval(low=0.1547, high=0.3369, level=0.95, kind='confidence')
    """

    low: Any
    high: Any
    level: float | None = None
    kind: str = "confidence"

    def __post_init__(self) -> None:
        if self.kind not in INTERVAL_KINDS:
            raise InputError(f"kind: {self.kind!r} is not one of {', '.join(INTERVAL_KINDS)}")

    def __iter__(self):
        """``low, high = interval`` (unpacking; read the fields by name elsewhere)."""
        return iter((self.low, self.high))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Interval):
            return NotImplemented
        return (self.kind == other.kind and self.level == other.level
                and _same_values(self.low, other.low) and _same_values(self.high, other.high))

    __hash__ = None  # type: ignore[assignment]

    @property
    def width(self) -> Any:
        """``high - low``."""
        return np.subtract(self.high, self.low)

    def contains(self, value: float) -> Any:
        """Whether ``value`` lies inside (bounds included)."""
        return np.logical_and(np.less_equal(self.low, value), np.less_equal(value, self.high))

    def to_list(self) -> list[Any]:
        """``[low, high]`` for JSON (NaN becomes None; arrays become lists)."""
        return [_jsonable(self.low), _jsonable(self.high)]

    def to_dict(self) -> dict[str, Any]:
        """``{"low", "high", "level", "kind"}``, JSON-ready."""
        return {"low": _jsonable(self.low), "high": _jsonable(self.high),
                "level": self.level, "kind": self.kind}


def _same_values(a: Any, b: Any) -> bool:
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a_arr.shape == b_arr.shape and bool(np.array_equal(a_arr, b_arr, equal_nan=True))


def _jsonable(value: Any) -> Any:
    if np.ndim(value) == 0:
        return finite_or_none(value)
    return [finite_or_none(x) for x in np.asarray(value, dtype=float).ravel()]


def check_fraction(value: Any, name: str = "confidence_level") -> float:
    """A level as a fraction in (0, 1) (a value above 1 is read as a percentage)."""
    try:
        level = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: {value!r} is not a number (use e.g. 0.95)") from None
    if level > 1:
        level /= 100.0
    if not (0 < level < 1):
        raise InputError(f"{name}: {value!r} must lie strictly between 0 and 1 (e.g. 0.95)")
    return level


class ResultMixin:
    """``_repr_html_``, ``__str__``, ``confidence_level`` and a default ``to_frame``.

    A result class supplies ``summary()`` and ``to_dict()``; ``to_frame()`` defaults to one
    row of the scalar entries of ``to_dict()`` (classes with per-site or per-coefficient
    rows override it).
    """

    def summary(self) -> str:  # pragma: no cover - every result overrides it
        """Human-readable text of the result (each result type defines it)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every result overrides it
        """JSON-ready form of the result (each result type defines it)."""
        raise NotImplementedError

    def to_frame(self) -> pd.DataFrame:
        """A one-row :class:`pandas.DataFrame` of the scalar fields of :meth:`to_dict`.

        A one-row :class:`pandas.DataFrame` of the scalar fields of :meth:`to_dict`
        (intervals as ``NAME_lb`` / ``NAME_ub`` columns).
        """
        # lazy: pandas costs about as much again as numpy and scipy.special together
        # (measured: ~1 s of 2 s), and the coordinator pools without ever building a frame
        import pandas as pd

        row: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, (list, tuple)) and len(value) == 2 and key.endswith("_ci"):
                row[f"{key}_lb"], row[f"{key}_ub"] = value
            elif value is None or isinstance(value, (str, bool, int, float)):
                row[key] = value
        return pd.DataFrame([row])

    @property
    def confidence_level(self) -> float:
        """The level of the fit's intervals as a fraction (``level`` is in percent)."""
        return float(getattr(self, "level")) / 100.0

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        """Notebook display: the summary as preformatted text."""
        return ('<pre style="white-space: pre; font-family: monospace">'
                f"{html.escape(self.summary())}</pre>")


def frame_html(frame: Any, title: str) -> str:
    """A titled HTML table (batch results' notebook display)."""
    return f"<div><p><b>{html.escape(title)}</b></p>{frame.to_html(max_rows=30)}</div>"


class PlotMixin:
    """``plot_*`` methods of fitted models: metafor's plot functions on an ``rma`` object.

    Each method draws with the one implementation in :mod:`fedsynth.plots` (no second
    copy), saves the figure when ``path`` is given (PNG, SVG or PDF by its suffix) and
    returns it. A plot that does not apply to the model (a bubble plot without moderators)
    raises the plotting function's :class:`fedsynth.errors.InputError`.
    """

    def _draw(self, function: str, path: Any, *args: Any, **options: Any) -> Any:
        # lazy: import cycle (fedsynth.plots imports the result classes of fedsynth.meta)
        from fedsynth import plots

        fig = getattr(plots, function)(*args, **options)
        if path is not None:
            plots.save_figure(fig, path)
        return fig

    def plot_forest(self, path: Any = None, **options: Any) -> Any:
        """Forest plot (metafor ``forest``; :func:`fedsynth.plots.forest_plot`)."""
        return self._draw("forest_plot", path, self, **options)

    def plot_funnel(self, path: Any = None, **options: Any) -> Any:
        """Funnel plot (metafor ``funnel``; :func:`fedsynth.plots.funnel_plot`)."""
        return self._draw("funnel_plot", path, self, **options)

    def plot_radial(self, path: Any = None, **options: Any) -> Any:
        """Radial (Galbraith) plot (metafor ``radial``; :func:`fedsynth.plots.radial_plot`)."""
        return self._draw("radial_plot", path, self, **options)

    def plot_qq(self, path: Any = None, **options: Any) -> Any:
        """Normal QQ plot with metafor's seeded envelope (``qqnorm.rma.uni``).

        Options (``envelope``, ``reps``, ``seed``, ``bonferroni``, ``level``, ``title``)
        are those of :func:`fedsynth.plots.qqnorm_plot`.
        """
        return self._draw("qqnorm_plot", path, self, **options)

    def plot_baujat(self, path: Any = None, **options: Any) -> Any:
        """Baujat plot (metafor ``baujat``; :func:`fedsynth.plots.baujat_plot`)."""
        return self._draw("baujat_plot", path, self, **options)

    def plot_gosh(self, path: Any = None, **options: Any) -> Any:
        """GOSH plot of the model's studies (metafor ``gosh``; :func:`fedsynth.plots.gosh_plot`).

        The subsets are fitted with the model's method unless ``method=`` is given.
        """
        options.setdefault("method", getattr(self, "method", "FE"))
        return self._draw("gosh_plot", path, getattr(self, "yi"), getattr(self, "vi"),
                          **options)

    def plot_bubble(self, path: Any = None, moderator: str | None = None,
                    **options: Any) -> Any:
        """Bubble plot of a meta-regression (metafor ``regplot``)."""
        return self._draw("bubble_plot", path, self, moderator, **options)
