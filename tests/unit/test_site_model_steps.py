"""A site answering model steps (site_agent/steps.py): policy, disclosure rules, refusals.

Each rule is attacked through the step a coordinator would send: coefficients chosen to
isolate patients, more steps than the cap (also across an agent restart), a model on a
few more patients than last round's (differencing), a column the policy forbids, a spec
awaiting approval, a value outside the declared levels. The refusal that leaves is a fixed
sentence: the spec's column names and the site's limits, never a data value or a count.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.cli import main
from fedsynth.config import DataConfig, PrivacyConfig, SiteConfig, load_site_config
from fedsynth.datasets import generate_trauma, trauma_spec_path
from fedsynth.errors import ConfigError
from fedsynth.models import build_design
from fedsynth.models.glm import site_step
from fedsynth.serde import (
    ModelStepOrder,
    WireAggregates,
    WireContribution,
    WireRefusal,
    WireSiteFit,
)
from fedsynth.spec import parse_spec
from site_agent.policy import ApprovalStore
from site_agent.steps import ModelSteps

T0 = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)
SPEC = trauma_spec_path().read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_trauma(3, seed=5)["mtf-alpha"]


def _config(tmp_path: Path, frame: pd.DataFrame, *, policy: str | None = None,
            rows: int | None = None) -> SiteConfig:
    data = tmp_path / "site.csv"
    (frame if rows is None else frame.iloc[:rows]).to_csv(data, index=False)
    policy_path = None
    if policy is not None:
        policy_path = tmp_path / "policy.toml"
        policy_path.write_text(policy, encoding="utf-8")
    return SiteConfig(name="mtf-alpha", coordinator="127.0.0.1:1", tls=None,
                      data=DataConfig(path=data), privacy=PrivacyConfig(),
                      state_file=tmp_path / "site.state.json", policy=policy_path,
                      config_path=tmp_path / "site.toml")


def _order(round_id: str = "r-1", *, model: str = "tbi_mortality", kind: str = "irls",
           coefficients=None, spec: str = SPEC, step: int = 0) -> ModelStepOrder:
    return ModelStepOrder(round_id=round_id, step_id=f"s{step}", model=model, kind=kind,
                          fit="one_stage" if kind == "irls" else "site", sequence=step,
                          spec_toml=spec, deadline=T0, coefficients=coefficients)


def _zero(names) -> dict[str, float]:
    return {n: 0.0 for n in names}


def test_sums_and_a_site_fit_are_answered(tmp_path: Path, frame) -> None:
    steps = ModelSteps(_config(tmp_path, frame))
    start = steps.answer(_order())
    assert isinstance(start, WireAggregates) and start.n == len(frame)
    again = steps.answer(_order(coefficients=_zero(start.names), step=1))
    assert isinstance(again, WireAggregates) and again.names == start.names
    fit = steps.answer(_order(kind="site_fit"))
    assert isinstance(fit, WireSiteFit) and fit.status == "ok"
    # the cap counts each fit of the model apart
    assert steps.counts.get("r-1", "tbi_mortality/one_stage") == 2
    assert steps.counts.get("r-1", "tbi_mortality/site") == 1


def test_coefficients_that_isolate_patients_are_refused(tmp_path: Path, frame) -> None:
    steps = ModelSteps(_config(tmp_path, frame))
    names = steps.answer(_order()).names
    # β_age = 40 per year puts all the weight on patients of one exact age
    probe = {**_zero(names), "age": 40.0}
    refused = steps.answer(_order(coefficients=probe, step=1))
    assert isinstance(refused, WireRefusal) and refused.code == "disclosure_coefficients"
    assert "40" not in refused.reason
    not_finite = {**_zero(names), "age": float("inf")}
    assert steps.answer(_order(coefficients=not_finite, step=2)).code == \
        "disclosure_coefficients"


def test_the_step_cap_holds_across_an_agent_restart(tmp_path: Path, frame) -> None:
    config = _config(tmp_path, frame)
    steps = ModelSteps(config)
    names = steps.answer(_order()).names
    for i in range(1, 30):
        assert isinstance(steps.answer(_order(coefficients=_zero(names), step=i)),
                          WireAggregates)
    restarted = ModelSteps(config)           # a new process: the count is on disk
    refused = restarted.answer(_order(coefficients=_zero(names), step=30))
    assert isinstance(refused, WireRefusal) and refused.code == "disclosure_iterations"
    # a new round starts a new allowance
    assert isinstance(restarted.answer(_order("r-2")), WireAggregates)


def test_a_few_more_patients_than_last_round_are_refused(tmp_path: Path, frame) -> None:
    first = ModelSteps(_config(tmp_path, frame, rows=400))
    assert isinstance(first.answer(_order("r-1")), WireAggregates)
    # next round: two more patients; the start steps would differ by exactly them
    second = ModelSteps(_config(tmp_path, frame, rows=402))
    refused = second.answer(_order("r-2"))
    assert isinstance(refused, WireRefusal) and refused.code == "disclosure_differencing"
    # the same patients again, or many more, are fine
    assert isinstance(ModelSteps(_config(tmp_path, frame, rows=400)).answer(_order("r-3")),
                      WireAggregates)
    assert isinstance(ModelSteps(_config(tmp_path, frame, rows=500)).answer(_order("r-4")),
                      WireAggregates)


def test_small_sites_and_small_levels_are_refused(tmp_path: Path, frame) -> None:
    small = ModelSteps(_config(tmp_path, frame, rows=15))
    assert small.answer(_order()).code in ("disclosure_min_n", "disclosure_parameters",
                                           "disclosure_min_cell")
    few = frame.copy()
    few.loc[few.index[:2], "pupil"] = "None"
    few.loc[few.index[2:], "pupil"] = few.loc[few.index[2:], "pupil"].replace("None", "One")
    (tmp_path / "b").mkdir()
    refused = ModelSteps(_config(tmp_path / "b", few)).answer(_order())
    assert refused.code == "disclosure_min_cell" and "'pupil'" in refused.reason


def test_policy_and_approval_decide_before_anything_is_computed(tmp_path: Path,
                                                                frame) -> None:
    forbidden = ModelSteps(_config(tmp_path, frame, policy='[policy]\n'
                                   'covariates = ["age", "motor_score", "pupil", "ct"]\n'))
    refused = forbidden.answer(_order())
    assert isinstance(refused, WireRefusal) and refused.code == "policy"
    assert "hypox" in refused.reason
    assert forbidden.counts.get("r-1", "tbi_mortality/one_stage") == 0
    waiting = ModelSteps(_config(tmp_path, frame, policy="[policy]\nrequire_approval = "
                                 "true\n"))
    assert waiting.answer(_order()).code == "policy"
    ApprovalStore(tmp_path / "approvals").record_pending("r-1", parse_spec(SPEC), {})
    ApprovalStore(tmp_path / "approvals").approve("r-1", by="steward")
    assert isinstance(waiting.answer(_order()), WireAggregates)


def test_undeclared_levels_and_unknown_models_are_refused_in_fixed_words(
        tmp_path: Path, frame) -> None:
    bad = frame.copy()
    bad.loc[bad.index[0], "ct"] = "VI-secret"
    refused = ModelSteps(_config(tmp_path, bad)).answer(_order())
    assert isinstance(refused, WireRefusal) and refused.code == "invalid_values"
    assert "'ct'" in refused.reason and "VI-secret" not in refused.reason
    unknown = ModelSteps(_config(tmp_path, frame)).answer(_order(model="nope"))
    assert unknown.code == "invalid_request"


def test_site_estimate_shows_what_each_model_step_sends(tmp_path: Path, frame,
                                                        capsys) -> None:
    data = tmp_path / "site.csv"
    frame.to_csv(data, index=False)
    assert main(["site", "estimate", "--data", str(data), "--spec", str(trauma_spec_path()),
                 "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    preview = doc["models"]["tbi_mortality"]
    first, second = preview["steps"][0], preview["steps"][1]
    model = next(m for m in parse_spec(SPEC).models if m.name == "tbi_mortality")
    design = build_design(frame, model)
    want = site_step(design, None).to_dict()
    assert first["coefficients"] is None and first["sends"]["n"] == len(frame)
    np.testing.assert_allclose(first["sends"]["xtwx"], want["xtwx"], rtol=1e-12)
    np.testing.assert_allclose(first["sends"]["score"], want["score"], rtol=1e-12)
    later = site_step(design, second["coefficients"]).to_dict()
    np.testing.assert_allclose(second["sends"]["score"], later["score"], rtol=1e-9,
                               atol=1e-9)
    assert preview["site_fit"]["status"] == "ok" and preview["refused"] is None
    # a small site: refused before any step, in fixed words
    data.write_text(frame.iloc[:15].to_csv(index=False))
    assert main(["site", "estimate", "--data", str(data), "--spec", str(trauma_spec_path())
                 ]) == 0
    out = capsys.readouterr().out
    assert "model tbi_mortality (binomial): what each step sends" in out
    assert "refused: suppressed by the site's disclosure control" in out


def test_a_hierarchical_proposal_is_answered_within_the_same_bounds(tmp_path: Path,
                                                                    frame) -> None:
    steps = ModelSteps(_config(tmp_path, frame))
    model = next(m for m in parse_spec(SPEC).models if m.name == "tbi_mortality")
    p = len(model.coefficient_names)
    order = _order(kind="hierarchical")

    def ask(beta, log_tau=-1.0, family="binomial"):
        proposal = {"family": family, "beta": beta, "log_tau": log_tau, "log_sigma": None,
                    "nodes": None, "tol": 1e-9, "iteration": 0}
        return steps.answer(dataclasses.replace(order, fit="hierarchical",
                                                proposal=proposal))

    answer = ask([-3.0] + [0.0] * (p - 1))
    assert isinstance(answer, WireContribution) and answer.defined
    assert answer.n == len(frame) and len(answer.gradient) == p + 1
    # coefficients that isolate patients are refused here too
    probe = [0.0] * p
    probe[model.coefficient_names.index("age")] = 40.0
    assert ask(probe).code == "disclosure_coefficients"
    assert ask([0.0] * (p - 1)).code == "invalid_request"             # wrong length
    assert ask([0.0] * p, family="poisson").code == "invalid_request"  # wrong family
    assert steps.counts.get("r-1", "tbi_mortality/hierarchical") == 1


def _site_toml(tmp_path: Path, frame: pd.DataFrame, privacy: str) -> Path:
    frame.to_csv(tmp_path / "site.csv", index=False)
    path = tmp_path / "site.toml"
    path.write_text(f'name = "mtf-alpha"\ncoordinator = "127.0.0.1:1"\n'
                    f'[data]\npath = "site.csv"\n[privacy]\nmin_n = 25\n{privacy}',
                    encoding="utf-8")
    return path


def test_privacy_models_of_site_toml_set_the_step_limits(tmp_path: Path, frame) -> None:
    config = load_site_config(_site_toml(tmp_path, frame, "[privacy.models]\n"
                                         "max_iterations = 3\n"), insecure=True)
    steps = ModelSteps(config)
    assert steps.limits.max_iterations == 3
    assert steps.limits.min_rows == 25          # [privacy] min_n where models is silent
    names = steps.answer(_order()).names
    for i in (1, 2):
        assert isinstance(steps.answer(_order(coefficients=_zero(names), step=i)),
                          WireAggregates)
    refused = steps.answer(_order(coefficients=_zero(names), step=3))
    assert isinstance(refused, WireRefusal) and refused.code == "disclosure_iterations"


@pytest.mark.parametrize(("table", "named"), [
    ("max_iterations = 0\n", "privacy.models.max_iterations"),
    ("max_parameter_fraction = 2.0\n", "privacy.models.max_parameter_fraction"),
    ("max_itterations = 5\n", "'max_itterations'"),
])
def test_bad_privacy_models_stop_the_site_naming_the_key(tmp_path: Path, frame, table,
                                                         named) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_site_config(_site_toml(tmp_path, frame, "[privacy.models]\n" + table),
                         insecure=True)
