"""The site's released likelihoods: computation, disclosure control (rule 7), what leaves."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from fedsynth.effects.likelihood import approximation_from_dict, profile_logistic
from fedsynth.effects.results import REFUSAL_VOCABULARY
from fedsynth.errors import ConfigError
from fedsynth.serde import SubmissionContent, decode_submission, encode_submission
from fedsynth.spec import parse_spec
from site_agent.agent import SiteAgent, describe_results, submission_audit
from site_agent.likelihood import LikelihoodRelease, likelihood, likelihoods_from_data
from site_agent.policy import Policy
from site_agent.privacy import PrivacyLimits, guard, release
from tests.unit.test_rare_events import _consistent_tables

LIMITS = PrivacyLimits(min_cell_count=5, min_n=20)


def _table_frame(ai: int, bi: int, ci: int, di: int) -> pd.DataFrame:
    rows = ([(1, 1)] * ai + [(1, 0)] * bi + [(0, 1)] * ci + [(0, 0)] * di)
    return pd.DataFrame(rows, columns=["treated", "died"])


def _spec(estimator: str, extra: str = "") -> str:
    return (f'[[analysis]]\nname = "lik"\nestimator = "{estimator}"\nexposure = "treated"\n'
            f'release = "likelihood"\n{extra}')


TWO_BY_TWO = parse_spec(_spec("two_by_two", 'outcome = "died"\n'))


def _adjusted_frame(seed: int = 3, zero_treated_events: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 400
    x = rng.integers(0, 2, n)
    age = rng.normal(0, 1, n)
    p = 1 / (1 + np.exp(-(-2.0 + 0.5 * age)))
    y = (rng.random(n) < p).astype(int)
    if zero_treated_events:
        y[x == 1] = 0
    t = rng.exponential(1 / (0.1 + 0.2 * y), n)
    return pd.DataFrame({"treated": x, "died": y, "age": age, "time": t})


ADJUSTED = parse_spec(_spec("logistic", 'outcome = "died"\ncovariates = ["age"]\n'))
COX = parse_spec(_spec("cox", 'time = "time"\nevent = "died"\ncovariates = ["age"]\n'))


def test_logistic_likelihood_is_the_profile_of_the_rows():
    df = _adjusted_frame(zero_treated_events=False)
    out = likelihood(df, ADJUSTED.analyses[0])
    assert isinstance(out, LikelihoodRelease) and out.adjusted and out.kind == "logistic"
    assert out.n == 400 and out.cells["ai"] + out.cells["ci"] == int(df["died"].sum())
    grid = out.approximation
    prof = profile_logistic(df["died"], df["treated"], df[["age"]].to_numpy(),
                            points=grid.points)
    assert np.allclose(grid.values, prof.values - prof.values.max(), atol=1e-8)
    assert np.allclose(grid.derivatives, prof.derivatives, atol=1e-8)
    assert math.isfinite(out.estimate)
    assert set(out.to_dict()) == {"likelihood", "n"}          # never the cells


def test_zero_events_in_the_treated_arm_give_a_monotone_likelihood():
    out = likelihood(_adjusted_frame(), COX.analyses[0])
    assert isinstance(out, LikelihoodRelease) and out.cells["ai"] == 0
    assert math.isnan(out.estimate)
    d = np.asarray(out.approximation.derivatives)
    assert np.all(d < 0)                  # falls towards larger hazard ratios


def test_flat_likelihood_and_missing_column_are_refusals_with_their_counts():
    df = _adjusted_frame()
    df["died"] = 0
    refused = likelihood(df, COX.analyses[0])
    assert refused.refused and refused.code == "no_events" and refused.cells["events"] == 0
    missing = likelihood(df.drop(columns="age"), COX.analyses[0])
    assert missing.refused and missing.code == "missing_column"
    # the guard rewords the count-caused refusal as a suppression (no count revealed)
    guarded = guard({"lik": refused}, LIMITS, spec=COX)["lik"]
    assert guarded.code == "disclosure_min_cell"


@pytest.mark.parametrize("small, unadjusted, expected", [
    (False, False, "disclosure_min_cell"), (True, False, None),
])
def test_adjusted_zero_cell_needs_the_explicit_policy(small, unadjusted, expected):
    out = likelihood(_adjusted_frame(), COX.analyses[0])
    guarded = guard({"lik": out}, LIMITS, spec=COX, allow_small_cell_likelihood=small,
                    allow_unadjusted_likelihood=unadjusted)["lik"]
    if expected is None:
        assert guarded is out
    else:
        assert guarded.refused and guarded.code == expected
        assert guarded.reason == REFUSAL_VOCABULARY["disclosure_likelihood"][1].format(
            min_cell_count=5)


def test_permitted_small_cell_likelihood_still_suppresses_sibling_estimates():
    spec = parse_spec(_spec("cox", 'time = "time"\nevent = "died"\ncovariates = ["age"]\n')
                      + '[[analysis]]\nname = "crude"\nestimator = "two_by_two"\n'
                        'outcome = "died"\nexposure = "treated"\n')
    from fedsynth.effects import estimate_all

    df = _adjusted_frame()
    results = {"lik": likelihood(df, spec.analyses[0]),
               **estimate_all(df, parse_spec(spec.to_dict() | {
                   "analyses": [spec.analyses[1].to_dict()]}))}
    out = guard(results, LIMITS, spec=spec, allow_small_cell_likelihood=True)
    assert isinstance(out["lik"], LikelihoodRelease)
    assert out["crude"].refused and out["crude"].code.startswith("disclosure_")


def test_unadjusted_likelihood_is_refused_by_default_whatever_its_counts():
    out = likelihood(_table_frame(30, 70, 40, 60), TWO_BY_TWO.analyses[0])
    guarded = guard({"lik": out}, LIMITS, spec=TWO_BY_TWO)["lik"]
    assert guarded.refused and guarded.code == "policy"
    assert "does not allow releasing it" in guarded.reason
    allowed = guard({"lik": out}, LIMITS, spec=TWO_BY_TWO,
                    allow_unadjusted_likelihood=True)["lik"]
    assert allowed is out


def _leaves(frame: pd.DataFrame, *, small: bool, unadjusted: bool):
    """What the coordinator receives for the likelihood analysis, through the real path:
    site likelihood -> guard -> release -> signed bytes -> decoded -> stored dict."""
    out = likelihood(frame, TWO_BY_TWO.analyses[0])
    guarded = guard({"lik": out}, LIMITS, spec=TWO_BY_TWO,
                    allow_small_cell_likelihood=small,
                    allow_unadjusted_likelihood=unadjusted)
    sent = release(guarded, TWO_BY_TWO)
    content = SubmissionContent(
        round_id="r-1", site="mtf-alpha", nonce=b"n" * 16,
        timestamp=dt.datetime(2026, 11, 25, tzinfo=dt.UTC),
        results={"lik": SiteAgent._wire("lik", sent["lik"])})
    received = decode_submission(encode_submission(content)).results["lik"]
    stored = received.to_dict()
    return stored, out


def test_released_form_never_inverts_to_a_sub_limit_count():
    """For every policy, a sweep of small tables: whatever leaves the site is inverted by
    the attacker's integer search (knowing the group sizes); every table consistent with
    it has all counts at or above the limit, and sub-limit tables never leave."""
    n1, n2 = 14, 12
    left = refused_small = 0
    for (small, unadjusted), a, c in itertools.product(
            itertools.product((False, True), repeat=2), range(0, n1 + 1, 3),
            range(1, n2, 4)):
        cells = (a, n1 - a, c, n2 - c)
        stored, _ = _leaves(_table_frame(*cells), small=small, unadjusted=unadjusted)
        if "refused" in stored:
            refused_small += min(cells) < 5
            continue
        left += 1
        approx = approximation_from_dict(stored["likelihood"])
        tables = _consistent_tables(approx, n1, n2)
        assert cells in tables
        assert all(min(t) >= 5 for t in tables), (cells, tables)
    assert left > 0 and refused_small > 0


def test_policy_keys_are_read_and_checked(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text("allow_small_cell_likelihood = true\n")
    policy = Policy.load(path)
    assert policy.allow_small_cell_likelihood and not policy.allow_unadjusted_likelihood
    path.write_text('allow_unadjusted_likelihood = "yes"\n')
    with pytest.raises(ConfigError, match="policy.allow_unadjusted_likelihood must be true"):
        Policy.load(path)


def test_audit_and_description_say_what_leaves(tmp_path):
    out = likelihood(_adjusted_frame(), COX.analyses[0])
    results = {"lik": out}
    lines = describe_results("mtf-alpha", "r-1", results)
    assert "1 likelihood(s)" in lines[0]
    assert "does not exist (monotone likelihood)" in lines[1]
    entry = submission_audit("r-1", b"payload", results)
    assert entry["sent"]["lik"] == {"likelihood": out.likelihood, "n": 400}
    assert "cells" not in str(entry["sent"])


def test_likelihoods_from_a_file(tmp_path):
    path = tmp_path / "site.csv"
    _adjusted_frame().to_csv(path, index=False)
    out = likelihoods_from_data({"path": str(path)}, list(COX.analyses))
    assert isinstance(out["lik"], LikelihoodRelease) and out["lik"].n == 400


def test_site_estimate_prints_the_likelihood_it_would_send(tmp_path, capsys):
    from fedsynth.cli import main

    data = tmp_path / "site.csv"
    _adjusted_frame(zero_treated_events=False).to_csv(data, index=False)
    spec = tmp_path / "spec.toml"
    spec.write_text(_spec("cox", 'time = "time"\nevent = "died"\ncovariates = ["age"]\n'))
    assert main(["site", "estimate", "--spec", str(spec), "--data", str(data),
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)["analyses"]["lik"]
    assert set(out) == {"likelihood", "n"} and out["n"] == 400
    assert out["likelihood"]["form"] == "grid_with_gradients"
    assert main(["site", "estimate", "--spec", str(spec), "--data", str(data)]) == 0
    text = capsys.readouterr().out
    assert "likelihood sent (grid_with_gradients, 9 points)" in text and "HR" in text
    # with zero treated events and no permission: the default refuses it
    _adjusted_frame().to_csv(data, index=False)
    assert main(["site", "estimate", "--spec", str(spec), "--data", str(data),
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)["analyses"]["lik"]
    assert "refused" in out and "likelihood would reveal it" in out["refused"]


def test_likelihoods_from_a_sql_source_equal_the_file(tmp_path):
    import sqlalchemy as sa

    frame = _adjusted_frame(zero_treated_events=False)
    path = tmp_path / "site.csv"
    frame.to_csv(path, index=False)
    db = tmp_path / "site.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        pd.read_csv(path).to_sql("patients", conn, index=False)
    engine.dispose()
    analyses = list(COX.analyses)
    from_sql = likelihoods_from_data({"url": f"sqlite:///{db}", "table": "patients"},
                                     analyses)["lik"]
    from_file = likelihoods_from_data({"path": str(path)}, analyses)["lik"]
    assert isinstance(from_sql, LikelihoodRelease)
    assert from_sql.likelihood == from_file.likelihood and from_sql.n == from_file.n
