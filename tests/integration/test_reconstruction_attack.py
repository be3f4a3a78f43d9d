"""Issue 10, item 1, end to end: the reconstruction attack against what a real site sends.

A real coordinator and a real site agent (processes, mutual TLS on 127.0.0.1) run a round
whose spec asks for AUCs with a 0/1 score (``sex``: the 2x2 table 2, 28, 58, 112 of the
issue) and a 3-level score (``grade``: events 3, 20, 37, non-events 60, 50, 30), raw and
on the logit scale, next to an ordinary continuous score. The attacker is the coordinator:
it reads every submission it stored (the signed bytes, decoded) and runs the integer search
of ``tests/reconstruction.py`` on every AUC it received.

* With the site's default disclosure control (minimum cell count 5) the attack finds no
  table: the small-table AUCs are refused (with a reason that carries no count) and the
  search over the AUC that is released finds nothing.
* The same site with the limit lowered to 1 releases the small-table AUCs, and the same
  search recovers the 2x2 and the 2x3 tables exactly: the attack works, so the first half
  can fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedsynth.config import load_coordinator_config
from fedsynth.serde import WireEstimate, decode_submission
from tests.reconstruction import attack_site, three_level_tables, true_table, two_level_tables

pytestmark = pytest.mark.integration

SPEC = """
[[analysis]]
name = "auc_sex"
estimator = "auc"
outcome = "outcome"
score = "sex"

[[analysis]]
name = "auc_sex_logit"
estimator = "auc"
outcome = "outcome"
score = "sex"
scale = "logit"

[[analysis]]
name = "auc_grade"
estimator = "auc"
outcome = "outcome"
score = "grade"

[[analysis]]
name = "auc_grade_logit"
estimator = "auc"
outcome = "outcome"
score = "grade"
scale = "logit"

[[analysis]]
name = "auc_risk"
estimator = "auc"
outcome = "outcome"
score = "risk_score"
"""
SCALES = {"auc_sex": "raw", "auc_sex_logit": "logit", "auc_grade": "raw",
          "auc_grade_logit": "logit", "auc_risk": "raw"}
SITE = "mtf-foxtrot"          # the session PKI's certificate; the data is the attack site


def _received(federation, round_id: str) -> dict:
    """Everything the coordinator stored from the site for a round (decoded signed bytes)."""
    from coordinator.store import Store

    config = load_coordinator_config(federation.coordinator_config_path, insecure=True)
    with Store(config.state) as store:
        (submission,) = [s for s in store.submissions(round_id) if s.site == SITE]
    return decode_submission(submission.payload).results


def _attack(results: dict) -> dict[str, tuple[list, list]]:
    """The integer search on every AUC received: per analysis, the 2x2 tables and the
    2x3 tables that reproduce its numbers."""
    found = {}
    for name, result in results.items():
        if isinstance(result, WireEstimate):
            scale = SCALES[name]
            found[name] = (two_level_tables(result.yi, result.vi, result.n, scale),
                           three_level_tables(result.yi, result.vi, result.n, scale))
    return found


def _round(federation, data: Path, spec: Path, min_cell_count: int) -> dict:
    round_id = federation.start_round(spec, deadline="90s", quorum=1)
    site = federation.start_site(SITE, data, once=True, min_cell_count=min_cell_count)
    assert site.wait(timeout=180) == 0, federation.log(SITE)
    federation.wait_round(round_id, timeout=120)
    return _received(federation, round_id)


def test_reconstruction_attack_finds_no_table_in_what_the_site_sends(federation,
                                                                     tmp_path: Path) -> None:
    frame = attack_site()
    data = tmp_path / "attack-site.csv"
    frame.to_csv(data, index=False)
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC, encoding="utf-8")
    sex, grade = true_table(frame, "sex", (0, 1)), true_table(frame, "grade", (0, 1, 2))
    assert (sex.smallest(), grade.smallest()) == (2, 3)
    federation.start_coordinator(allow=[SITE])

    # 1. The site as deployed (minimum cell count 5): nothing to reconstruct.
    protected = _round(federation, data, spec, min_cell_count=5)
    for name in ("auc_sex", "auc_sex_logit", "auc_grade", "auc_grade_logit"):
        refusal = protected[name]
        assert not isinstance(refusal, WireEstimate), name
        assert refusal.code == "disclosure_min_cell", (name, refusal)
        assert set(re.findall(r"\d+", refusal.reason)) <= {"5"}, refusal.reason
    attacked = _attack(protected)
    assert set(attacked) == {"auc_risk"}             # the continuous score is released...
    assert attacked == {"auc_risk": ([], [])}        # ...and determines no table

    # 2. The same site with the limit lowered to 1 (no protection for these tables): the
    #    same search recovers both tables from the released numbers.
    unprotected = _round(federation, data, spec, min_cell_count=1)
    attacked = _attack(unprotected)
    for name in ("auc_sex", "auc_sex_logit"):
        two, _ = attacked[name]
        assert sex in two and all(t.smallest() == 2 for t in two), (name, two)
    for name in ("auc_grade", "auc_grade_logit"):
        _, three = attacked[name]
        assert grade in three and all(t.smallest() == 3 for t in three), (name, three)
    assert attacked["auc_risk"] == ([], [])
