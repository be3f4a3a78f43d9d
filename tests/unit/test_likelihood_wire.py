"""A released likelihood on the wire: spec key, serde round trip, coordinator validation."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.validation import MAX_LIKELIHOOD_POINTS, check_submission
from fedsynth.effects.likelihood import (
    FORMS,
    approximate,
    approximation_from_dict,
    profiler,
)
from fedsynth.errors import ConfigError, InputError
from fedsynth.serde import (
    LIKELIHOOD_FORMS,
    SubmissionContent,
    WireEstimate,
    WireLikelihood,
    WireRefusal,
    decode_submission,
    encode_submission,
)
from fedsynth.spec import DEFAULT_LIKELIHOOD_PRIOR, parse_spec

NOW = dt.datetime(2026, 11, 25, 14, 0, 0, tzinfo=dt.UTC)


def _content(results: dict) -> SubmissionContent:
    return SubmissionContent(round_id="r-20261125-0001", site="mtf-alpha", nonce=b"n" * 16,
                             timestamp=NOW, results=results)


def _released(form: str, cells=(0, 40, 6, 34)) -> WireLikelihood:
    approx = approximate(profiler("two_by_two", ai=cells[0], bi=cells[1], ci=cells[2],
                                  di=cells[3]), form)
    return WireLikelihood.from_likelihood("lik", approx.to_dict(), sum(cells))


# --- spec -----------------------------------------------------------------------------------

def _spec(extra: str, estimator: str = 'estimator = "two_by_two"\noutcome = "y"\n'
          'exposure = "x"\n') -> str:
    return f'[[analysis]]\nname = "a"\n{estimator}{extra}'


def test_spec_release_likelihood_fills_defaults_and_round_trips():
    spec = parse_spec(_spec('release = "likelihood"\n'))
    a = spec.analyses[0]
    assert (a.release, a.likelihood_form, a.prior) == ("likelihood", "grid_with_gradients",
                                                       DEFAULT_LIKELIHOOD_PRIOR)
    assert a.wants_likelihood and a.prior_setting == ("half_normal", 0.5)
    assert parse_spec(spec.to_toml()) == spec
    assert parse_spec(spec.to_dict()) == spec


def test_spec_without_release_keeps_its_form():
    spec = parse_spec(_spec(""))
    assert "release" not in spec.analyses[0].to_dict()
    assert not spec.analyses[0].wants_likelihood


@pytest.mark.parametrize("extra, words", [
    ('release = "profile"\n', "key 'release' has value 'profile'"),
    ('release = "likelihood"\nmeasure = "RR"\n', 'needs measure "OR"'),
    ('likelihood_form = "custom"\n', "applies only with release"),
    ('release = "likelihood"\nlikelihood_form = "spline"\n', "'likelihood_form' has value"),
    ('release = "likelihood"\nprior = "uniform:1"\n', "unknown prior 'uniform'"),
    ('release = "likelihood"\nprior = "half_normal"\n', "NAME:SCALE"),
    ('release = "likelihood"\nprior = "half_normal:0"\n', "NAME:SCALE"),
])
def test_spec_release_errors_name_the_key_and_value(extra, words):
    with pytest.raises(ConfigError, match="analysis 'a'") as error:
        parse_spec(_spec(extra))
    assert words in str(error.value)


def test_spec_release_only_for_one_parameter_estimators():
    with pytest.raises(ConfigError, match="key 'release' does not apply to estimator 'auc'"):
        parse_spec(_spec('release = "likelihood"\n',
                         'estimator = "auc"\noutcome = "y"\nscore = "s"\n'))
    for estimator in ('estimator = "logistic"\noutcome = "y"\nexposure = "x"\n',
                      'estimator = "cox"\ntime = "t"\nevent = "e"\nexposure = "x"\n'):
        assert parse_spec(_spec('release = "likelihood"\n', estimator)).analyses[0].release


# --- serde ----------------------------------------------------------------------------------

def test_forms_agree_with_the_likelihood_module():
    assert LIKELIHOOD_FORMS == FORMS


@pytest.mark.parametrize("form", ["grid_with_gradients", "custom"])
def test_likelihood_round_trip_keeps_every_number(form):
    wire = _released(form)
    content = _content({"lik": wire, "est": WireEstimate("est", 0.1, 0.04, 0.2, 80),
                        "no": WireRefusal("no", "policy", "refused by site policy")})
    back = decode_submission(encode_submission(content))
    assert back == content
    assert back.likelihoods() == {"lik": wire}
    # the stored dict is what the coordinator's pooling reads back
    again = approximation_from_dict(back.results["lik"].to_dict()["likelihood"])
    original = approximation_from_dict(wire.likelihood)
    assert type(again) is type(original)
    assert again(0.3) == pytest.approx(original(0.3), abs=0)


def test_monotone_likelihood_has_no_estimate_on_the_wire():
    wire = _released("grid_with_gradients")
    assert wire.estimate is None and wire.se is None
    assert decode_submission(encode_submission(_content({"lik": wire}))).results["lik"] \
        .estimate is None


def test_normal_form_round_trip():
    wire = _released("normal", cells=(8, 40, 16, 34))
    back = decode_submission(encode_submission(_content({"lik": wire}))).results["lik"]
    assert back == wire and back.estimate == pytest.approx(math.log(8 * 34 / (40 * 16)))


def test_unknown_form_is_refused_by_the_decoder():
    wire = dataclasses.replace(_released("custom"), form="spline")
    with pytest.raises(InputError, match="likelihood form 'spline'"):
        decode_submission(encode_submission(_content({"lik": wire})))


# --- coordinator validation -----------------------------------------------------------------

def _check(wire: WireLikelihood, *, wanted: bool = True) -> None:
    check_submission(_content({"lik": wire}), ["lik"],
                     likelihood_analyses=["lik"] if wanted else [])


def test_valid_likelihoods_pass():
    for form in FORMS:
        _check(_released(form, cells=(8, 40, 16, 34)))
    _check(_released("grid_with_gradients"))


def test_likelihood_for_an_analysis_that_did_not_ask_is_refused():
    with pytest.raises(InputError, match="the spec does not ask for one"):
        _check(_released("custom"), wanted=False)


GRID = _released("grid_with_gradients")


@pytest.mark.parametrize("change, words", [
    ({"points": GRID.points[:-1]}, "one each per point"),
    ({"points": GRID.points[::-1], "values": GRID.values[::-1],
      "derivatives": GRID.derivatives[::-1]}, "strictly increasing"),
    ({"values": (math.nan,) + GRID.values[1:]}, "values[0] = nan is not a finite"),
    ({"derivatives": GRID.derivatives[:-1] + (math.inf,)}, "derivatives[7] = inf"),
    ({"points": (-1e3,) + GRID.points[1:]}, "points[0] = -1000.0 is outside"),
    ({"values": tuple(v + 5 for v in GRID.values)}, "shifted so that their maximum is 0"),
    ({"points": tuple(float(i) / 100 for i in range(MAX_LIKELIHOOD_POINTS + 1)),
      "values": (0.0,) * (MAX_LIKELIHOOD_POINTS + 1),
      "derivatives": (0.0,) * (MAX_LIKELIHOOD_POINTS + 1)}, "points (between 2 and 64)"),
    ({"n": 0}, "n = 0 must be a positive number"),
    ({"estimate": 0.1}, "estimate and se come together"),
    ({"estimate": 0.1, "se": -1.0}, "se = -1.0 must be positive"),
])
def test_bad_grid_is_refused_naming_the_field(change, words):
    with pytest.raises(InputError, match="analysis 'lik': likelihood") as error:
        _check(dataclasses.replace(GRID, **change))
    assert words in str(error.value)


CUSTOM = _released("custom", cells=(8, 40, 16, 34))


@pytest.mark.parametrize("change, words", [
    ({"mu": math.nan}, "mu = nan"), ({"gamma": 1e9}, "gamma = 1000000000.0 is outside"),
    ({"sigma": 0.0}, "sigma = 0.0 is outside"), ({"sigma": math.inf}, "sigma = inf"),
])
def test_bad_custom_form_is_refused(change, words):
    with pytest.raises(InputError, match=words):
        _check(dataclasses.replace(CUSTOM, **change))


def test_normal_form_needs_an_estimate():
    with pytest.raises(InputError, match="form 'normal' needs estimate and se"):
        _check(dataclasses.replace(CUSTOM, form="normal", estimate=None, se=None))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=0,
                max_size=10), st.integers(-5, 10**10))
def test_random_grids_are_either_valid_or_refused_cleanly(values, n):
    size = len(values)
    wire = WireLikelihood("lik", "grid_with_gradients", n,
                          points=tuple(float(i) for i in range(size)),
                          values=tuple(values), derivatives=tuple(values))
    try:
        _check(wire)
    except InputError:
        return
    # accepted: the coordinator's reader takes it without another error
    approximation_from_dict(wire.likelihood)


# --- reading a monotone grid beyond its points ------------------------------------------------

def test_grid_extrapolates_flat_where_a_line_would_rise():
    """A zero-event arm's likelihood rises towards -infinity: read flat beyond the grid
    there (a log-likelihood is bounded above), linear on the falling side."""
    from fedsynth.meta.likelihood import pool_likelihoods_random

    grid = approximate(profiler("two_by_two", ai=0, bi=80, ci=6, di=74))
    lo, hi = grid.points[0], grid.points[-1]
    assert grid.derivatives[0] < 0                       # would rise to the left
    value, slope, curve = grid.evaluate([lo - 5.0, hi + 5.0])
    assert value[0] == pytest.approx(grid.values[0]) and slope[0] == 0 and curve[0] == 0
    assert value[1] == pytest.approx(grid.values[-1] + 5.0 * grid.derivatives[-1])
    # with a heavy-tailed prior on tau the posterior stays proper: tau is not pushed to the
    # edge of the integration grid and mu stays near the other sites' evidence
    others = [approximate(profiler("two_by_two", ai=a, bi=b, ci=c, di=d))
              for a, b, c, d in ((4, 96, 9, 91), (3, 120, 6, 110), (5, 60, 8, 57))]
    r = pool_likelihoods_random([*others, grid], prior="half_cauchy", scale=0.5)
    assert -3 < r.mu_median < 0 and r.tau_ci_ub < 5
