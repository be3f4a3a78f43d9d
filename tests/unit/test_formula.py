import numpy as np
import pandas as pd
import pytest

from fedsynth.errors import InputError
from fedsynth.meta.formula import formula_variables, is_formula, model_matrix

D = pd.DataFrame({"year": [1948, 1949, 1960, 1977, 1980],
                  "alloc": ["random", "alternate", "random", "systematic", "random"],
                  "ablat": [44.0, 55.0, 42.0, 52.0, 13.0]})


def test_r_order_names_and_treatment_contrasts():
    mm = model_matrix("~ year + factor(alloc)", D)
    assert mm.names == ("intrcpt", "year", "factor(alloc)random", "factor(alloc)systematic")
    assert mm.intercept
    assert dict(mm.terms) == {"intrcpt": (0,), "year": (1,), "factor(alloc)": (2, 3)}
    np.testing.assert_array_equal(mm.X[:, 2], [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(mm.X[:, 3], [0, 0, 0, 1, 0])


def test_interaction_and_no_intercept():
    mm = model_matrix("~ ablat * factor(alloc)", D)
    assert mm.names[-2:] == ("ablat:factor(alloc)random", "ablat:factor(alloc)systematic")
    np.testing.assert_array_equal(mm.X[:, 4], D["ablat"] * (D["alloc"] == "random"))
    for f in ("~ 0 + factor(alloc)", "~ factor(alloc) - 1", "~ -1 + factor(alloc)"):
        mm = model_matrix(f, D)
        assert not mm.intercept
        assert mm.names == ("factor(alloc)alternate", "factor(alloc)random",
                            "factor(alloc)systematic")


def test_r_spellings():
    assert model_matrix("~ I(year^2)", D).names == ("intrcpt", "I(year^2)")
    np.testing.assert_allclose(model_matrix("~ I(year^2)", D).X[:, 1], D["year"] ** 2)
    mm = model_matrix("~ relevel(factor(alloc), ref = 'random')", D)
    assert [n[-9:] for n in mm.names[1:]] == ["alternate", "ystematic"]
    assert model_matrix("~ factor(year)", D).names[1] == "factor(year)1949"


def test_missing_rows_are_reported_in_keep():
    d = D.copy()
    d.loc[2, "alloc"] = None
    d.loc[4, "year"] = np.nan
    mm = model_matrix("~ year + alloc", d)
    np.testing.assert_array_equal(mm.keep, [True, True, False, True, False])
    assert mm.X.shape == (3, 4)
    with pytest.raises(InputError, match="single level"):
        model_matrix("~ alloc", d.iloc[[0, 2]])
    # a column the formula does not use does not drop rows
    assert model_matrix("~ ablat", d).keep.all()


def test_variables_and_is_formula():
    assert formula_variables("~ year * factor(alloc)", D.columns) == ("year", "alloc")
    assert is_formula(" ~ x") and not is_formula("x") and not is_formula(None)


@pytest.mark.parametrize("bad, words", [("y ~ x", "starts with '~'"),
                                        ("~ nope", "'nope'"),
                                        ("~ (", "cannot read"),
                                        ("~ relevel(alloc, ref = 'zzz')", "'zzz'")])
def test_bad_formulas_name_the_problem(bad, words):
    with pytest.raises(InputError, match="mods") as err:
        model_matrix(bad, D)
    assert words in str(err.value)
