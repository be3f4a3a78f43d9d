"""Model formulas to design matrices, as R's ``model.matrix`` builds them for metafor.

Why
---
metafor users write moderators as a one-sided formula, ``mods = ~ year + factor(alloc)``,
with interactions (``~ ablat * factor(alloc)``), no intercept (``~ 0 + factor(alloc)``
or ``~ factor(alloc) - 1``) and R's treatment contrasts. Rather than parse formulas by
hand, the formula goes through `formulaic <https://matthewwardrop.github.io/formulaic/>`_
(Wardrop 2024), which implements Wilkinson & Rogers (1973) notation, "Symbolic
description of factorial models for analysis of variance", J. R. Stat. Soc. C 22:392-399,
with R's term ordering (by degree, then as written) and treatment contrasts against the
first level in sorted order, so column positions match R's and therefore metafor's
``btt`` indices (docs/decisions/metareg.md says why formulaic rather than patsy).

This module adds what R users type but Python's formula libraries spell differently:

- ``factor(x)``: a categorical variable (formulaic's ``C(x)``); text columns are
  categorical anyway, as in R.
- ``relevel(factor(x), ref = "b")`` / ``relevel(x, "b")``: treatment contrasts against
  level ``b``.
- ``I(x^2)``: ``^`` inside ``I()`` is R's power (``**`` in Python).
- Column names as R prints them: ``intrcpt`` (metafor's name for the intercept),
  ``factor(alloc)random`` and ``ablat:factor(alloc)random`` (formulaic writes
  ``[T.random]``).

Missing values follow metafor's ``na.action = "na.omit"``: the caller gets the mask of
complete rows (every variable the formula uses is present) and drops the others.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from formulaic import Formula
from formulaic import model_matrix as _formulaic_model_matrix
from formulaic.errors import FormulaicError
from formulaic.transforms import C
from formulaic.transforms.contrasts import TreatmentContrasts

from fedsynth.errors import InputError

__all__ = ["ModelMatrix", "model_matrix", "formula_variables", "is_formula",
           "INTERCEPT_NAME"]

#: metafor's name of the intercept coefficient
INTERCEPT_NAME = "intrcpt"

_TREATMENT = re.compile(r"\[T\.(.*?)\]")
_FULL = re.compile(r"\[(.*?)\]")


def is_formula(text: Any) -> bool:
    """Whether ``text`` is a one-sided formula string (starts with ``~``)."""
    return isinstance(text, str) and text.strip().startswith("~")


def _relevel(x: Any, ref: Any = None) -> Any:
    """R's ``relevel``: treatment contrasts against the level ``ref``."""
    if ref is None:
        raise InputError('mods: relevel() needs the reference level, relevel(x, ref = "b")')
    values = np.asarray(getattr(x, "__wrapped__", x), dtype=object)  # factor(x) wraps x
    levels = sorted({str(v) for v in values})
    if str(ref) not in levels:
        raise InputError(f"mods: relevel(): reference level {ref!r} is not one of "
                         f"{', '.join(map(repr, levels))}")
    return C(pd.Series(values.astype(str)), TreatmentContrasts(base=str(ref)))


def _r_to_python(formula: str) -> str:
    """R spellings that formulaic reads differently, rewritten (``^`` inside ``I()``)."""
    text = formula.strip()
    out: list[str] = []
    depth_in_i: list[int] = []  # paren depths at which an I( ... ) call opened
    depth = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
            if re.search(r"(?:^|[^\w.])I\s*$", text[:i]):
                depth_in_i.append(depth)
        elif ch == ")":
            if depth_in_i and depth_in_i[-1] == depth:
                depth_in_i.pop()
            depth -= 1
        out.append("**" if ch == "^" and depth_in_i else ch)
    text = "".join(out)
    # R's named argument spelling `ref = "b"` is Python's too; TRUE/FALSE are not
    text = re.sub(r"\bTRUE\b", "True", re.sub(r"\bFALSE\b", "False", text))
    return text


def _r_name(column: str) -> str:
    """A formulaic column name as R's ``model.matrix`` (and so metafor) prints it."""
    if column == "Intercept":
        return INTERCEPT_NAME
    name = _TREATMENT.sub(lambda m: m.group(1), column)
    return _FULL.sub(lambda m: m.group(1), name).replace(" ** ", "^")


@dataclass(frozen=True)
class ModelMatrix:
    """The design matrix of a moderator formula.

    Attributes
    ----------
    formula
        The formula as given.
    X
        Design matrix, shape (rows kept, p), columns in R's order.
    names
        Column names as R's ``model.matrix`` names them (``intrcpt`` for the intercept).
    intercept
        Whether the model has an intercept (``~ 0 + ...`` and ``~ ... - 1`` remove it).
    terms
        ``{term: column positions}`` (0-based), e.g. ``{"factor(alloc)": (2, 3)}``:
        the ``btt`` of a term's omnibus test.
    keep
        Boolean mask over the input rows: rows with every variable present.
    variables
        The data columns the formula uses.
    """

    formula: str
    X: np.ndarray = field(repr=False)
    names: tuple[str, ...]
    intercept: bool
    terms: Mapping[str, tuple[int, ...]]
    keep: np.ndarray = field(repr=False)
    variables: tuple[str, ...]

    @property
    def p(self) -> int:
        """Number of coefficients."""
        return int(self.X.shape[1])


def _parse(formula: str) -> Any:
    if not is_formula(formula):
        raise InputError(f"mods: a formula starts with '~', got {formula!r}")
    try:
        return Formula(_r_to_python(formula))
    except (FormulaicError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"mods: cannot read formula {formula!r}: {reason}") from None


def _context() -> dict[str, Any]:
    """Names a formula may call besides the data's columns (R's spellings)."""
    return {"factor": C, "relevel": _relevel, "np": np, "log": np.log, "exp": np.exp,
            "sqrt": np.sqrt, "abs": np.abs}


def formula_variables(formula: str, columns: Any = None) -> tuple[str, ...]:
    """The data columns a formula uses (those of ``columns``, when given, in its order)."""
    names = {str(v) for v in _parse(formula).required_variables} - set(_context())
    if columns is None:
        return tuple(sorted(names))
    return tuple(str(c) for c in columns if str(c) in names)


def _missing_cells(series: pd.Series) -> np.ndarray:
    values = series.to_numpy(dtype=object)
    return np.array([x is None or (isinstance(x, float) and np.isnan(x))
                     or (isinstance(x, str) and not x.strip()) for x in values], dtype=bool)


def model_matrix(formula: str, data: pd.DataFrame | Mapping[str, Any], *,
                 keep: np.ndarray | None = None) -> ModelMatrix:
    """The design matrix of a one-sided formula on ``data``, as R's ``model.matrix``.

    Parameters
    ----------
    formula
        ``"~ year + factor(alloc)"``, ``"~ ablat * factor(alloc)"``, ``"~ 0 + factor(g)"``,
        ``"~ I(year^2)"``, ``"~ relevel(factor(alloc), ref = 'random')"``, ...
    data
        The studies, one row each (a DataFrame or a mapping of columns).
    keep
        Rows to use besides the formula's own completeness (e.g. rows with an effect
        size); default all.

    Returns
    -------
    ModelMatrix
        The matrix of the complete rows (``keep``), columns in R's order and names.

    Raises
    ------
    fedsynth.errors.InputError
        A formula that cannot be read, an unknown column (named), a left-hand side, no
        column left, or a factor with a single level.

    Examples
    --------
    >>> import pandas as pd
    >>> d = pd.DataFrame({"year": [1948, 1949, 1960, 1977], "alloc": ["random",
    ...                   "alternate", "random", "systematic"]})
    >>> model_matrix("~ year + factor(alloc)", d).names
    ('intrcpt', 'year', 'factor(alloc)random', 'factor(alloc)systematic')
    >>> model_matrix("~ 0 + alloc", d).names
    ('allocalternate', 'allocrandom', 'allocsystematic')
    """
    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
    parsed = _parse(formula)
    if hasattr(parsed, "lhs") or not hasattr(parsed, "__iter__"):
        raise InputError(f"mods: the formula is one-sided (no response), got {formula!r}")
    needed = {str(v) for v in parsed.required_variables}
    context = _context()
    unknown = sorted(needed - set(map(str, frame.columns)) - set(context))
    if unknown:
        raise InputError(f"mods: column {unknown[0]!r} of formula {formula!r} not found; "
                         f"available columns: {', '.join(map(repr, frame.columns))}")
    variables = tuple(str(c) for c in frame.columns if str(c) in needed)
    rows = np.ones(len(frame), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    for name in variables:
        rows &= ~_missing_cells(frame[name])
    if not rows.any():
        raise InputError(f"mods: no study has every variable of {formula!r}")
    sub = frame.loc[rows, list(variables)].reset_index(drop=True)
    try:
        mm = _formulaic_model_matrix(parsed, sub, context=context, na_action="raise")
    except InputError:
        raise
    except Exception as exc:  # formulaic raises many types; each one is bad input here
        raise InputError(f"mods: cannot build the design matrix of {formula!r}: "
                         f"{type(exc).__name__}: {exc}") from None
    columns = [str(c) for c in mm.columns]
    if not columns:
        raise InputError(f"mods: formula {formula!r} gives no column")
    X = np.asarray(mm.to_numpy(dtype=float), dtype=float)
    names = tuple(_r_name(c) for c in columns)
    intercept = "Intercept" in columns
    terms: dict[str, tuple[int, ...]] = {}
    for term, idx in mm.model_spec.term_indices.items():
        label = str(term).replace(" ** ", "^")
        if label == "1":
            label = INTERCEPT_NAME
        terms[label] = tuple(int(i) for i in idx)
        if not terms[label]:
            # R: "contrasts can be applied only to factors with 2 or more levels"
            raise InputError(f"mods: term {label!r} of {formula!r} has a single level in "
                             f"the {int(rows.sum())} studies used, so it has no column")
    return ModelMatrix(formula=formula, X=X, names=names, intercept=intercept,
                       terms=terms, keep=rows, variables=variables)
