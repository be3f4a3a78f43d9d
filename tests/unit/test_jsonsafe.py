"""fedsynth.jsonsafe: the one "finite float or None" rule and strict JSON."""

from __future__ import annotations

import doctest
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fedsynth.jsonsafe as jsonsafe
from fedsynth.jsonsafe import finite_or_none, strict_json

ROOT = Path(__file__).resolve().parents[2]


def test_doctests() -> None:
    assert doctest.testmod(jsonsafe).failed == 0


@pytest.mark.parametrize("value, expected", [
    (0.25, 0.25), (3, 3.0), ("1.5", 1.5), (np.float64(-2.0), -2.0), (np.int64(7), 7.0),
    (float("nan"), None), (float("inf"), None), (-math.inf, None), (np.nan, None),
    ("inf", None), (None, None), ([], None), ((), None), (True, None), (False, None),
    ("abc", None), ({}, None), (object(), None),
])
def test_finite_or_none(value, expected) -> None:
    result = finite_or_none(value)
    assert result == expected and (result is None or type(result) is float)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                    max_leaves=20))
def test_strict_json_is_always_strict(value) -> None:
    json.dumps(strict_json(value), allow_nan=False)


def test_one_definition_in_the_code() -> None:
    """No module defines its own copy of the rule again (the seven copies this replaced)."""
    copies = []
    pattern = re.compile(r"return \w+ if (math|np)\.isfinite\(\w+\) else None"
                         r"|def (\w*finite\w*|_num|_finite)\(")
    for path in [*ROOT.glob("fedsynth/**/*.py"), *ROOT.glob("coordinator/**/*.py"),
                 *ROOT.glob("site_agent/**/*.py")]:
        if path.name == "jsonsafe.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                copies.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not copies, "use fedsynth.jsonsafe.finite_or_none:\n" + "\n".join(copies)
