"""Design matrices at a site: fixed columns from declared levels, clear errors."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.errors import InputError
from fedsynth.models import parse_model
from fedsynth.models.coding import (
    CSV_NA_VALUES,
    CodingError,
    build_design,
    canonical_text,
    level_codes,
)

MODEL = parse_model({"name": "m", "family": "binomial", "outcome": "y",
                     "covariates": ["age", "g", "flag"],
                     "categorical": {"g": ["lo", "mid", "hi"]}})


def frame(**columns) -> pd.DataFrame:
    base = {"y": [0, 1, 1, 0], "age": [30.0, 40.0, 50.0, 60.0], "g": ["lo", "mid", "hi", "mid"],
            "flag": [0, 1, 0, 1]}
    base.update(columns)
    return pd.DataFrame(base)


def test_columns_follow_the_declared_levels() -> None:
    design = build_design(frame(), MODEL)
    assert design.names == ("intercept", "age", "g=mid", "g=hi", "flag")
    np.testing.assert_array_equal(design.x, [[1, 30, 0, 0, 0], [1, 40, 1, 0, 1],
                                             [1, 50, 0, 1, 0], [1, 60, 1, 0, 1]])
    np.testing.assert_array_equal(design.y, [0, 1, 1, 0])
    np.testing.assert_array_equal(design.offset, np.zeros(4))
    assert design.n == 4 and design.p == 5 and design.n_dropped == 0
    assert design.level_counts["g"] == {"lo": 1, "mid": 2, "hi": 1}
    assert design.level_counts["flag"] == {"0": 2, "1": 2}
    assert design.level_counts["y"] == {"0": 2, "1": 2}
    assert "age" not in design.level_counts


def test_a_level_the_site_lacks_is_an_all_zero_column() -> None:
    design = build_design(frame(g=["lo", "mid", "lo", "mid"]), MODEL)
    assert design.names[3] == "g=hi" and not design.x[:, 3].any()
    assert design.level_counts["g"]["hi"] == 0


def test_a_value_outside_the_levels_is_an_error_naming_column_value_and_row() -> None:
    with pytest.raises(CodingError) as info:
        build_design(frame(g=["lo", "mid", "HIGH", "mid"]), MODEL)
    error = info.value
    assert isinstance(error, InputError)
    assert "'g'" in str(error) and "'HIGH'" in str(error) and "data row 3" in str(error)
    assert error.column == "g" and error.code == "invalid_values"
    # The reason may travel to the coordinator: it names the column, never the value.
    assert "HIGH" not in error.reason and "'g'" in error.reason


def test_missing_values_drop_the_row_and_are_counted() -> None:
    design = build_design(frame(g=["lo", None, "hi", "mid"], age=[30, 40, np.nan, 60]),
                          MODEL)
    assert design.n == 2 and design.n_dropped == 2
    np.testing.assert_array_equal(design.x[:, 1], [30, 60])


@pytest.mark.parametrize("values", [[1, 2, 3, 2], [1.0, 2.0, 3.0, 2.0], ["1", "2", "3", "2"],
                                    np.array([1, 2, 3, 2], dtype=np.int8)])
def test_levels_match_numbers_and_text_alike(values) -> None:
    model = parse_model({"name": "m", "family": "gaussian", "outcome": "y",
                         "covariates": ["g"], "categorical": {"g": [1, 2, 3]}})
    design = build_design(frame(g=values), model)
    np.testing.assert_array_equal(design.x[:, 1:], [[0, 0], [1, 0], [0, 1], [1, 0]])


def test_canonical_text() -> None:
    assert list(canonical_text(pd.Series([True, False, None], dtype=object))) == \
        ["true", "false", None]
    assert list(canonical_text(pd.Series([1.5, 2.0, np.nan]))) == ["1.5", "2", None]
    assert list(canonical_text(pd.Series(["a", 3, 4.0, None], dtype=object))) == \
        ["a", "3", "4", None]
    assert list(canonical_text(pd.Series([True, False]))) == ["true", "false"]


@pytest.mark.parametrize("family,column,values,words", [
    ("binomial", "y", [0, 1, 2, 0], ["'y'", "0/1"]),
    ("poisson", "y", [0, 1, -1, 0], ["'y'", "counts"]),
    ("poisson", "y", [0, 1, 1.5, 0], ["'y'", "counts"]),
    ("gaussian", "age", [1, "x", 2, 3], ["'age'", "'x'", "not a number"]),
    ("gaussian", "age", [1, np.inf, 2, 3], ["'age'", "infinite"]),
])
def test_outcome_and_numeric_errors(family, column, values, words) -> None:
    model = parse_model({"name": "m", "family": family, "outcome": "y",
                         "covariates": ["age"]})
    with pytest.raises(CodingError) as info:
        build_design(frame(**{column: values}), model)
    for word in words:
        assert word in str(info.value)
    assert info.value.column == column


def test_missing_column_and_bad_input() -> None:
    with pytest.raises(CodingError) as info:
        build_design(frame().drop(columns="flag"), MODEL)
    assert info.value.code == "missing_column" and "'flag'" in str(info.value)
    with pytest.raises(InputError, match="DataFrame"):
        build_design([[1, 2]], MODEL)  # type: ignore[arg-type]


def test_offset_and_poisson() -> None:
    model = parse_model({"name": "m", "family": "poisson", "outcome": "y",
                         "covariates": ["age"], "offset": "t"})
    design = build_design(frame(y=[0, 3, 1, 2], t=[0.1, 0.2, np.nan, 0.4]), model)
    np.testing.assert_array_equal(design.offset, [0.1, 0.2, 0.4])
    assert "y" not in design.level_counts  # more than two distinct counts


def test_csv_none_is_a_level_not_a_missing_value() -> None:
    text = "y,age,g,flag\n0,30,None,0\n1,40,Both,1\n1,50,One,0\n0,60,,1\n"
    # pandas' default treats "None" as missing: the row would silently vanish.
    assert pd.read_csv(io.StringIO(text))["g"].isna().sum() == 2
    data = pd.read_csv(io.StringIO(text), keep_default_na=False,
                       na_values=list(CSV_NA_VALUES))
    model = parse_model({"name": "m", "family": "binomial", "outcome": "y",
                         "covariates": ["g"], "categorical": {"g": ["Both", "One", "None"]}})
    design = build_design(data, model)
    assert design.n == 3 and design.n_dropped == 1
    assert design.level_counts["g"] == {"Both": 1, "One": 1, "None": 1}


def test_site_loader_reads_none_as_a_level(tmp_path) -> None:
    from site_agent.data import load_table

    path = tmp_path / "site.csv"
    path.write_text("y,g,x\n0,None,NA\n1,One,2\n")
    data = load_table(path)
    assert list(data["g"]) == ["None", "One"] and data["x"].isna().sum() == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d", None]), min_size=1, max_size=40),
       st.permutations(["a", "b", "c", "d"]))
def test_coding_equals_pandas_dummies_on_declared_categories(values, levels) -> None:
    codes = level_codes(pd.Series(values, dtype=object), levels, "g")
    present = ~np.isnan(codes)
    expected = pd.get_dummies(pd.Categorical([v for v in values if v is not None],
                                             categories=levels), drop_first=True)
    model = parse_model({"name": "m", "family": "gaussian", "outcome": "y",
                         "covariates": ["g"], "categorical": {"g": levels}})
    data = pd.DataFrame({"y": np.arange(len(values), dtype=float),
                         "g": pd.Series(values, dtype=object)})
    design = build_design(data, model)
    assert design.n == int(present.sum())
    np.testing.assert_array_equal(design.x[:, 1:], expected.to_numpy(dtype=float))
    assert sum(design.level_counts["g"].values()) == design.n
