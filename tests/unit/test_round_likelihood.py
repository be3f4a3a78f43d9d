"""The coordinator pools released likelihoods of a round (document version 3)."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from coordinator.reports import render_round_html as render_html
from coordinator.rounds import close_if_due, open_round, round_document
from coordinator.store import Store
from fedsynth.effects.likelihood import approximate, profiler
from fedsynth.meta.likelihood import pool_likelihoods, pool_likelihoods_random
from fedsynth.round_document import RoundDocument
from fedsynth.serde import WireLikelihood

NOW = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)
TABLES = {"site-a": (4, 96, 9, 91), "site-b": (3, 120, 6, 110), "site-c": (5, 60, 8, 57),
          "site-z": (0, 80, 6, 74)}           # site-z: no events in the treated arm
SPEC = ('[[analysis]]\nname = "mort"\nestimator = "logistic"\noutcome = "died"\n'
        'exposure = "treated"\ncovariates = ["age"]\nrelease = "likelihood"\n'
        'prior = "half_cauchy:0.5"\n'
        '[[analysis]]\nname = "plain"\nestimator = "two_by_two"\noutcome = "died"\n'
        'exposure = "treated"\n')


def _approx(site: str):
    a, b, c, d = TABLES[site]
    return approximate(profiler("two_by_two", ai=a, bi=b, ci=c, di=d))


def _closed(tmp_path, refuse: str | None = None):
    sites = tuple(TABLES)
    with Store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        record = open_round(store, spec_source=SPEC, deadline=dt.timedelta(minutes=1),
                            quorum=2, allowed=sites, pooling={"method": "REML"}, now=NOW)
        for i, site in enumerate(sites):
            wire = WireLikelihood.from_likelihood("mort", _approx(site).to_dict(),
                                                  sum(TABLES[site]))
            results = {"mort": ({"refused": "suppressed", "code": "disclosure_min_cell"}
                                if site == refuse else wire.to_dict()),
                       "plain": {"yi": 0.1 * i, "vi": 0.04, "se": 0.2, "n": 200}}
            store.add_submission(round_id=record.id, site=site, nonce=bytes([i]) * 16,
                                 signed_at=NOW, payload=site.encode(), signature=b"s",
                                 results=results, agent_version="t", now=NOW)
        assert close_if_due(store, record.id, NOW + dt.timedelta(minutes=2)) is not None
        return round_document(store, store.get_round(record.id))


def test_likelihood_section_equals_pooling_the_same_likelihoods(tmp_path):
    doc = _closed(tmp_path)
    entry = doc.analysis("mort")
    lik = entry.likelihood
    assert lik is not None and doc.analysis("plain").likelihood is None
    approx = [_approx(s) for s in TABLES]
    fe = pool_likelihoods(approx)
    re = pool_likelihoods_random(approx, prior="half_cauchy", scale=0.5)
    assert (lik.k, lik.k_without_estimate, lik.normal_k) == (4, 1, 3)
    assert (lik.parameter, lik.estimand, lik.form) == ("log OR", "OR", "grid_with_gradients")
    for got, want in ((lik.estimate, fe.estimate), (lik.ci_lb, fe.ci_lb),
                      (lik.ci_ub, fe.ci_ub), (lik.normal_estimate, fe.normal_estimate),
                      (lik.difference, fe.difference), (lik.mu_median, re.mu_median),
                      (lik.tau_median, re.tau_median)):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert lik.mu_ci == pytest.approx((re.mu_ci_lb, re.mu_ci_ub), rel=1e-12)
    assert lik.prior == "half_cauchy" and lik.tau_scale == 0.5
    # a proper posterior despite the monotone site under a heavy-tailed prior
    assert -3 < lik.mu_median < 0 and lik.tau_ci[1] < 5
    # the zero-event site pulls the pooled OR down, and it is not in the normal pooling
    assert lik.estimate < lik.normal_estimate and lik.difference < 0
    assert [s.site for s in entry.site_estimates] == ["site-a", "site-b", "site-c"]
    assert entry.k == 3 and any("site-z sent a likelihood without a finite" in n
                                for n in entry.notes)
    assert lik.difference_random == pytest.approx(lik.mu_median - entry.pooled.estimate)
    assert "1 without an estimate of their own" in lik.statement
    assert "Difference (likelihood - normal, fixed effect)" in lik.statement
    z = next(s for s in lik.sites if s.site == "site-z")
    assert z.estimate is None and z.likelihood["form"] == "grid_with_gradients"


def test_document_version_3_round_trips_as_strict_json(tmp_path):
    doc = _closed(tmp_path)
    data = doc.to_dict()
    assert data["schema_version"] == 4          # version 4: IECV of models
    text = json.dumps(data, allow_nan=False)
    again = RoundDocument.from_dict(json.loads(text))
    assert again.to_dict() == data
    assert again.analysis("mort").likelihood == doc.analysis("mort").likelihood


def test_refused_site_is_left_out_of_the_likelihood_pooling(tmp_path):
    doc = _closed(tmp_path, refuse="site-z")
    lik = doc.analysis("mort").likelihood
    assert lik.k == 3 and lik.k_without_estimate == 0
    assert doc.analysis("mort").refused == {"site-z": "suppressed"}
    # every pooled site has an estimate: the two poolings differ only by the skew of the
    # small sites' likelihoods (a few thousandths here), far less than with site-z
    with_z = _closed(tmp_path / "z").analysis("mort").likelihood
    assert abs(lik.difference) < 0.01 < abs(with_z.difference)


def test_no_finite_maximum_is_a_note_not_a_failure(tmp_path):
    global TABLES
    saved = TABLES
    TABLES = {"site-a": (0, 80, 6, 74), "site-b": (0, 90, 4, 86)}
    try:
        doc = _closed(tmp_path)
    finally:
        TABLES = saved
    lik = doc.analysis("mort").likelihood
    assert lik.estimate is None and any("no finite maximum" in n for n in lik.notes)
    assert lik.k == 2 and lik.k_without_estimate == 2
    assert doc.analysis("mort").pooled is None


def test_report_shows_the_likelihood_section(tmp_path):
    doc = _closed(tmp_path)
    html = render_html(doc.to_dict())
    assert "Likelihood pooling" in html
    lik = doc.analysis("mort").likelihood
    assert f"{math.exp(lik.estimate):.3g}" in html
    assert "site-z" in html and "no finite maximum" in html


def test_round_show_table_states_the_likelihood_pooling(tmp_path):
    from coordinator.commands.round import render_csv, render_table

    doc = _closed(tmp_path)
    text = render_table(doc)
    assert "mort: Likelihood pooling of 4 site(s) (1 without an estimate" in text
    assert "Difference (likelihood - normal, fixed effect)" in text
    assert "likelihood" not in render_csv(doc).splitlines()[0].split(",")
