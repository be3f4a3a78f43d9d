"""escalc: impossible rows, corrections, column sets and algebraic properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.effects import ESCALC_MEASURES, escalc
from fedsynth.effects.effect_sizes import hedges_correction
from fedsynth.errors import InputError


def test_measures() -> None:
    assert set(ESCALC_MEASURES) == {
        "OR", "RR", "RD", "AS", "PHI", "OR2D", "MD", "SMD", "SMDH", "ROM", "CVR", "VR", "MN",
        "MC", "SMCC", "SMCR", "COR", "UCOR", "ZCOR", "IRR", "IRD", "IRSD", "PR", "PLN",
        "PLO", "PFT"}


def test_2x2_from_group_sizes_equals_cells() -> None:
    a = escalc("OR", ai=[10, 3], bi=[40, 20], ci=[15, 7], di=[35, 30])
    b = escalc("OR", ai=[10, 3], n1i=[50, 23], ci=[15, 7], n2i=[50, 37])
    np.testing.assert_allclose(a.yi, b.yi)
    np.testing.assert_allclose(a.vi, b.vi)


def test_hand_computed_values() -> None:
    r = escalc("OR", ai=[10], bi=[40], ci=[15], di=[35])
    assert r.yi[0] == pytest.approx(np.log(10 * 35 / (40 * 15)))
    assert r.vi[0] == pytest.approx(1 / 10 + 1 / 40 + 1 / 15 + 1 / 35)
    r = escalc("ZCOR", ri=[0.5], ni=[23])
    assert r.yi[0] == pytest.approx(np.arctanh(0.5)) and r.vi[0] == pytest.approx(1 / 20)
    r = escalc("MD", m1i=[5], sd1i=[2], n1i=[10], m2i=[3], sd2i=[1], n2i=[20])
    assert r.yi[0] == 2 and r.vi[0] == pytest.approx(4 / 10 + 1 / 20)


def test_hedges_correction_exact_and_approximation() -> None:
    # c(m) -> 1 and agrees with the familiar 1 - 3/(4m - 1) approximation to O(m^-2).
    m = np.array([10.0, 100.0, 1e4])
    assert np.all(np.abs(hedges_correction(m) - (1 - 3 / (4 * m - 1))) < 1 / m ** 2)
    # Exact value for m = 2: Gamma(1) / (1 * Gamma(1/2)) = 1/sqrt(pi).
    assert hedges_correction(2.0) == pytest.approx(1 / np.sqrt(np.pi), rel=1e-14)
    assert np.isfinite(hedges_correction(1e8))


def test_only0_correction_affects_only_zero_rows() -> None:
    r = escalc("OR", ai=[0, 5], bi=[10, 10], ci=[3, 5], di=[10, 10])
    assert r.corrected.tolist() == [True, False]
    assert r.yi[0] == pytest.approx(np.log(0.5 * 10.5 / (10.5 * 3.5)))
    assert r.yi[1] == pytest.approx(0.0)


def test_other_corrections() -> None:
    data = dict(ai=[0, 5], bi=[10, 10], ci=[3, 5], di=[10, 10])
    every = escalc("OR", to="all", **data)
    assert every.corrected.tolist() == [True, True]
    assert every.vi[1] == pytest.approx(2 / 5.5 + 2 / 10.5)
    if0all = escalc("OR", to="if0all", **data)
    assert if0all.corrected.tolist() == [True, True]
    custom = escalc("OR", add=1.0, **data)
    assert custom.yi[0] == pytest.approx(np.log(1 * 11 / (11 * 4)))
    with pytest.raises(InputError, match=r"row 1.*undefined.*to='none'"):
        escalc("OR", to="none", **data)
    with pytest.raises(InputError, match="'to'"):
        escalc("OR", to="some", **data)
    with pytest.raises(InputError, match="'add'"):
        escalc("OR", add=-1, **data)


def test_proportion_and_rate_corrections() -> None:
    r = escalc("PLO", xi=[0, 10, 5], ni=[10, 10, 10])
    assert r.corrected.tolist() == [True, True, False]
    assert r.yi[0] == pytest.approx(np.log(0.5 / 10.5))
    assert escalc("PR", xi=[10], ni=[10]).yi[0] == pytest.approx(10.5 / 11)
    r = escalc("IRR", x1i=[0], t1i=[100], x2i=[4], t2i=[50])
    assert r.yi[0] == pytest.approx(np.log((0.5 / 100) / (4.5 / 50)))
    assert r.vi[0] == pytest.approx(1 / 0.5 + 1 / 4.5)


@pytest.mark.parametrize("measure,columns,words", [
    ("OR", dict(ai=[1, -1], bi=[2, 2], ci=[3, 3], di=[4, 4]), ["row 2", "'ai'", "negative"]),
    ("RR", dict(ai=[1.5], bi=[2], ci=[3], di=[4]), ["row 1", "'ai'", "whole number"]),
    ("RD", dict(ai=[6], n1i=[5], ci=[1], n2i=[5]), ["row 1", "'ai'", "more events"]),
    ("OR", dict(ai=[0], bi=[0], ci=[1], di=[1]), ["row 1", "first group is empty"]),
    ("OR", dict(ai=[1], n1i=[0], ci=[1], n2i=[3]), ["row 1", "'n1i'", "group size"]),
    ("OR", dict(ai=[1, np.nan], bi=[2, 2], ci=[3, 3], di=[4, 4]), ["row 2", "'ai'",
                                                                    "missing"]),
    ("MD", dict(m1i=[1], sd1i=[0], n1i=[5], m2i=[1], sd2i=[1], n2i=[5]),
     ["row 1", "'sd1i'", "standard deviation"]),
    ("SMD", dict(m1i=[1], sd1i=[1], n1i=[5], m2i=[1], sd2i=[-1], n2i=[5]),
     ["row 1", "'sd2i'"]),
    ("SMD", dict(m1i=[1], sd1i=[1], n1i=[1], m2i=[1], sd2i=[1], n2i=[5]),
     ["row 1", "'n1i'"]),
    ("ROM", dict(m1i=[-1], sd1i=[1], n1i=[5], m2i=[1], sd2i=[1], n2i=[5]),
     ["row 1", "'m1i'", "positive means"]),
    ("ZCOR", dict(ri=[0.2, 1.0], ni=[10, 10]), ["row 2", "'ri'", "between -1 and 1"]),
    ("ZCOR", dict(ri=[0.2, -0.3], ni=[10, 3]), ["row 2", "'ni'", "n > 3"]),
    ("IRR", dict(x1i=[1], t1i=[0], x2i=[1], t2i=[1]), ["row 1", "'t1i'", "person-time"]),
    ("IRR", dict(x1i=[-1], t1i=[1], x2i=[1], t2i=[1]), ["row 1", "'x1i'", "negative"]),
    ("PLO", dict(xi=[11], ni=[10]), ["row 1", "'xi'", "more events"]),
    ("PR", dict(xi=[1], ni=[0]), ["row 1", "'ni'"]),
])
def test_impossible_rows_name_the_row(measure, columns, words) -> None:
    with pytest.raises(InputError) as info:
        escalc(measure, **columns)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_labels_in_errors() -> None:
    with pytest.raises(InputError, match=r"row 2 \(Smith 2001\)"):
        escalc("ZCOR", ri=[0.1, 2], ni=[10, 10], labels=["Doe 1999", "Smith 2001"])


@pytest.mark.parametrize("call,words", [
    (lambda: escalc("XX", ai=[1]), ["unknown measure 'XX'"]),
    (lambda: escalc("OR", ai=[1], bi=[1], ci=[1]), ["needs columns", "'di'"]),
    (lambda: escalc("OR", ai=[1], bi=[1], ci=[1], di=[1], m1i=[1]), ["'m1i'", "not used"]),
    (lambda: escalc("OR", ai=[1, 2], bi=[1], ci=[1], di=[1]), ["different lengths"]),
    (lambda: escalc("OR", ai=[], bi=[], ci=[], di=[]), ["no rows"]),
    (lambda: escalc("OR", ai=["a"], bi=[1], ci=[1], di=[1]), ["'ai'", "numeric"]),
    (lambda: escalc("ZCOR", ri=[0.1], ni=[10], labels=["a", "b"]), ["labels"]),
])
def test_bad_calls(call, words) -> None:
    with pytest.raises(InputError) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_measure_is_case_insensitive() -> None:
    assert escalc("or", ai=[1], bi=[2], ci=[3], di=[4]).measure == "OR"


counts = st.integers(min_value=1, max_value=500)


@settings(max_examples=60, deadline=None)
@given(counts, counts, counts, counts)
def test_swapping_groups_negates_ratio_measures(a, b, c, d) -> None:
    for measure in ("OR", "RR", "RD"):
        forward = escalc(measure, ai=[a], bi=[b], ci=[c], di=[d])
        backward = escalc(measure, ai=[c], bi=[d], ci=[a], di=[b])
        assert forward.yi[0] == pytest.approx(-backward.yi[0], abs=1e-12)
        assert forward.vi[0] == pytest.approx(backward.vi[0], rel=1e-12)
        assert forward.vi[0] > 0


@settings(max_examples=40, deadline=None)
@given(st.floats(-50, 50), st.floats(0.1, 20), st.integers(2, 500),
       st.floats(-50, 50), st.floats(0.1, 20), st.integers(2, 500))
def test_smd_is_scale_free_and_shrunk(m1, s1, n1, m2, s2, n2) -> None:
    a = escalc("SMD", m1i=[m1], sd1i=[s1], n1i=[n1], m2i=[m2], sd2i=[s2], n2i=[n2])
    b = escalc("SMD", m1i=[3 * m1 + 7], sd1i=[3 * s1], n1i=[n1], m2i=[3 * m2 + 7],
               sd2i=[3 * s2], n2i=[n2])
    assert a.yi[0] == pytest.approx(b.yi[0], rel=1e-9, abs=1e-12)
    sdp = np.sqrt(((n1 - 1) * s1 ** 2 + (n2 - 1) * s2 ** 2) / (n1 + n2 - 2))
    assert abs(a.yi[0]) <= abs((m1 - m2) / sdp) + 1e-12
