"""Numbers as strict JSON: the one "finite float or None" rule.

Why
---
Results travel as JSON (round documents, ``--format json``, reports) and JSON has no NaN or
infinity (RFC 8259; Python's ``json`` writes them as invalid tokens unless
``allow_nan=False`` refuses them). A statistic that does not exist (tau² of one study, the
prediction interval of a common-effect model) is therefore written as ``null``, as
metafor's results become ``NA`` and then ``null`` in R's ``jsonlite``. Seven copies of that
rule had grown apart (one accepted ``True`` as 1.0, one kept infinities, one raised on
text); :func:`finite_or_none` is the single definition and :func:`strict_json` applies it
to a whole nested value.

Examples
--------
>>> finite_or_none(0.25), finite_or_none(float("nan")), finite_or_none("inf")
(0.25, None, None)
>>> finite_or_none(None), finite_or_none([]), finite_or_none(True)
(None, None, None)
>>> strict_json({"tau2": float("nan"), "ci": (0.1, float("inf")), "k": 3})
{'tau2': None, 'ci': [0.1, None], 'k': 3}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["finite_or_none", "strict_json"]


def finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is missing or not a finite number.

    Missing means None or an empty list/tuple (R's ``NULL``/``numeric(0)`` after
    ``jsonlite``); not a number means anything ``float()`` refuses, and booleans (a flag
    is not a statistic, although Python would read ``True`` as 1.0); NaN and infinities
    have no JSON form.

    Parameters
    ----------
    value
        A number (Python, numpy scalar or numeric text) or anything else.

    Returns
    -------
    float or None
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (list, tuple)) and len(value) == 0:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def strict_json(value: Any) -> Any:
    """A copy of ``value`` with every non-finite float replaced by None (strict JSON).

    Mappings become dicts with text keys, lists and tuples become lists; other values are
    returned as they are (so integers, text, booleans and None are kept).
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value
