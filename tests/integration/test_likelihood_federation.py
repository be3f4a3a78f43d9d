"""A site with no events in the treated arm contributes its likelihood over mutual TLS.

Real processes: a coordinator and five site agents on 127.0.0.1 (port 0, mTLS, SQLite
state). The spec asks for the likelihood of the exposure's log hazard ratio of a Cox model
adjusted for age (``release = "likelihood"``). mtf-delta has no events among its treated
patients: no estimate of its own, so the normal approximation drops it, but its policy
explicitly allows an adjusted likelihood with a small cell
(``allow_small_cell_likelihood``), so it sends its (monotone) likelihood. mtf-echo has the
same kind of data and the default policy: it refuses (disclosure control). A second
analysis asks for an unadjusted likelihood, which no site's default policy releases.

The pooled result must equal the phase-1 pooling (:mod:`fedsynth.meta.likelihood`) of the
same likelihoods computed here from the same rows, and delta's likelihood must move it as
expected: towards a protective effect, beyond the normal approximation of the others.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fedsynth.effects.likelihood import approximation_from_dict
from fedsynth.meta.likelihood import pool_likelihoods, pool_likelihoods_random
from fedsynth.spec import parse_spec
from site_agent.likelihood import LikelihoodRelease, likelihood

pytestmark = pytest.mark.integration

SITES = ("mtf-alpha", "mtf-bravo", "mtf-charlie", "mtf-delta", "mtf-echo")
ZERO_TREATED_EVENTS = ("mtf-delta", "mtf-echo")
SPEC = """name = "rare-mortality"
[[analysis]]
name = "mortality"
estimator = "cox"
time = "time"
event = "died"
exposure = "treated"
covariates = ["age"]
release = "likelihood"
prior = "half_normal:0.5"

[[analysis]]
name = "crude"
estimator = "logistic"
outcome = "died"
exposure = "treated"
release = "likelihood"
"""


def _site_rows(index: int, zero_treated: bool) -> pd.DataFrame:
    rng = np.random.default_rng(100 + index)
    n = 300
    treated = rng.integers(0, 2, n)
    age = rng.normal(0.0, 1.0, n)
    hazard = 0.04 * np.exp(-0.4 * treated + 0.3 * age)
    t_event = rng.exponential(1.0 / hazard)
    t_censor = rng.uniform(2.0, 10.0, n)
    died = (t_event <= t_censor).astype(int)
    time = np.minimum(t_event, t_censor)
    if zero_treated:
        died[treated == 1] = 0
        time[treated == 1] = t_censor[treated == 1]
    return pd.DataFrame({"time": np.round(time, 6), "died": died, "treated": treated,
                         "age": np.round(age, 6)})


def test_zero_event_site_contributes_its_likelihood(federation, tmp_path):
    data = {}
    for i, site in enumerate(SITES):
        frame = _site_rows(i, site in ZERO_TREATED_EVENTS)
        path = tmp_path / f"{site}.csv"
        frame.to_csv(path, index=False)
        data[site] = (path, pd.read_csv(path))
    treated_events = {s: int(f.loc[f.treated == 1, "died"].sum()) for s, (_, f) in data.items()}
    assert treated_events["mtf-delta"] == treated_events["mtf-echo"] == 0
    assert min(v for s, v in treated_events.items() if s not in ZERO_TREATED_EVENTS) >= 5
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(SPEC)
    policy = tmp_path / "delta-policy.toml"
    policy.write_text("[policy]\nallow_small_cell_likelihood = true\n")

    federation.start_coordinator(allow=SITES)
    round_id = federation.start_round(spec_path, deadline="5m")
    for site in SITES:
        extra = f'policy = "{policy}"' if site == "mtf-delta" else ""
        federation.start_site(site, data[site][0], extra=extra)
    doc = federation.wait_round(round_id, timeout=300)
    assert doc["status"] == "pooled", doc.get("failure_reason")
    assert doc["schema_version"] == 4
    by = {a["analysis"]: a for a in doc["analyses"]}
    mort = by["mortality"]
    lik = mort["likelihood"]

    # who contributed what
    assert [s["site"] for s in lik["sites"]] == ["mtf-alpha", "mtf-bravo", "mtf-charlie",
                                                 "mtf-delta"]
    assert (lik["k"], lik["k_without_estimate"], lik["normal_k"]) == (4, 1, 3)
    assert lik["parameter"] == "log HR" and lik["estimand"] == "HR"
    delta = lik["sites"][3]
    assert delta["estimate"] is None and delta["form"] == "grid_with_gradients"
    assert all(d < 0 for d in delta["likelihood"]["derivatives"])   # monotone, downwards
    assert "disclosure control" in mort["refused"]["mtf-echo"]
    assert [e["site"] for e in mort["site_estimates"]] == ["mtf-alpha", "mtf-bravo",
                                                            "mtf-charlie"]

    # the same likelihoods computed here from the same rows, pooled by phase 1's code
    analysis = parse_spec(SPEC).analyses[0]
    local = {}
    for site in SITES[:4]:
        released = likelihood(data[site][1], analysis)
        assert isinstance(released, LikelihoodRelease)
        local[site] = released.approximation
        sent = approximation_from_dict(lik["sites"][SITES.index(site)]["likelihood"])
        assert np.array_equal(sent.points, released.approximation.points)
        assert np.allclose(sent.values, released.approximation.values, rtol=0, atol=1e-12)
        assert np.allclose(sent.derivatives, released.approximation.derivatives, rtol=0,
                           atol=1e-12)
    fe = pool_likelihoods(list(local.values()), level=95.0)
    re = pool_likelihoods_random(list(local.values()), prior="half_normal", scale=0.5)
    for key, want in (("estimate", fe.estimate), ("ci_lb", fe.ci_lb), ("ci_ub", fe.ci_ub),
                      ("normal_estimate", fe.normal_estimate),
                      ("difference", fe.difference), ("mu_median", re.mu_median),
                      ("tau_median", re.tau_median)):
        assert lik[key] == pytest.approx(want, rel=1e-9, abs=1e-9), key
    assert lik["mu_ci"] == pytest.approx([re.mu_ci_lb, re.mu_ci_ub], rel=1e-9)

    # what delta's likelihood changes: without it (the normal approximation's sites only)
    # the likelihood pooling is close to the normal approximation; with it the pooled log
    # HR moves down (its treated arm had no events) and the upper bound with it
    without = pool_likelihoods([local[s] for s in SITES[:3]])
    assert lik["estimate"] < without.estimate - 0.02
    assert lik["ci_ub"] < without.ci_ub
    assert abs(without.estimate - lik["normal_estimate"]) < abs(lik["difference"])
    assert lik["difference"] < 0 and lik["estimate"] < lik["normal_estimate"]
    assert "1 without an estimate of their own" in lik["statement"]

    # the unadjusted likelihood left no site (default policy), whatever its counts
    crude = by["crude"]
    assert set(crude["refused"]) == set(SITES)
    assert all("policy" in r or "disclosure" in r for r in crude["refused"].values())
    assert crude["likelihood"]["k"] == 0

    # delta's audit log records exactly what it sent; the report shows the section
    entries = [json.loads(line) for line in
               (federation.root / "sites" / "mtf-delta-audit.jsonl").read_text().splitlines()]
    signed = [e for e in entries if e.get("event") == "submission.signed"]
    assert signed, entries[-3:]
    sent = signed[-1]["data"]["sent"]["mortality"]
    assert sent["likelihood"]["derivatives"] == delta["likelihood"]["derivatives"]
    html = federation.root / "reports" / f"{round_id}.html"
    federation.wait_for(html.exists, 60, what="the round's HTML report")
    assert "Likelihood pooling" in html.read_text()
