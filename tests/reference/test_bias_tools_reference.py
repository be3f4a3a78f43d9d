"""fsn, regtest, trimfill, hc and selmodel against R's metafor 3.8-1.

Reference values: tests/data/metafor/bias_tools.json, written once by
tests/data/metafor/bias_tools.R. Tolerances: 1e-6 relative (1e-9 absolute) for the closed
forms and tau² roots; hc 1e-6 (an integral inside a root search on both sides; at
metafor's default control 1e-8 against tests/data/metafor/hc_default.json); selmodel
1e-7 for the log-likelihoods, 5e-5 for the ML estimates (two
optimisers meeting at one optimum of a flat likelihood) and
1e-3 for standard errors (numerical Hessians on both sides).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedsynth.errors import InputError
from fedsynth.meta import bias

DOC = json.loads((Path(__file__).resolve().parents[1] / "data" / "metafor" /
                  "bias_tools.json").read_text())


def _cases(kind: str) -> list[dict]:
    return [c for c in DOC["cases"] if c["kind"] == kind]


def _id(case: dict) -> str:
    args = case["args"] or {}     # R writes an empty list for no arguments
    return case["dataset"] + "/" + "/".join(f"{k}={v}" for k, v in args.items())


def _data(case: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=float) for k, v in DOC["data"][case["dataset"]].items()}


def _close(got: float, want: float | None, rtol: float = 1e-6, atol: float = 1e-9) -> None:
    if want is None:
        assert got is None or not np.isfinite(got), got
    else:
        assert got == pytest.approx(want, rel=rtol, abs=atol)


@pytest.mark.parametrize("case", _cases("fsn"), ids=_id)
def test_fsn(case: dict) -> None:
    d = _data(case)
    r = bias.fsn(d["yi"], d["vi"], **case["args"])
    for name in ("fsnum", "pval", "meanes", "target"):
        _close(getattr(r, name), case["values"][name])


@pytest.mark.parametrize("case", _cases("regtest"), ids=_id)
def test_regtest(case: dict) -> None:
    d = _data(case)
    r = bias.regtest(d["yi"], d["vi"], ni=d.get("ni"), **case["args"])
    want = case["values"]
    for name in ("zval", "pval", "est", "ci_lb", "ci_ub"):
        _close(getattr(r, name), want[name])
    assert (r.dfs is None) == (want["dfs"] is None)
    if want["dfs"] is not None:
        assert r.dfs == want["dfs"]


@pytest.mark.parametrize("case", _cases("trimfill"), ids=_id)
def test_trimfill(case: dict) -> None:
    d = _data(case)
    r = bias.trimfill(d["yi"], d["vi"], **case["args"])
    want = case["values"]
    assert r.k0 == want["k0"]
    assert r.side == want["side"]
    for name in ("se_k0", "p_k0", "estimate", "se", "zval", "pval", "ci_lb", "ci_ub",
                 "tau2"):
        _close(getattr(r, name), want[name])
    np.testing.assert_allclose(r.filled_yi, want["filled_yi"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(r.filled_vi, want["filled_vi"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", _cases("hc"), ids=_id)
def test_hc(case: dict) -> None:
    d = _data(case)
    r = bias.hc(d["yi"], d["vi"], tol=1e-12)     # the R script's control = list(tol = 1e-12)
    for name, value in case["values"].items():
        _close(getattr(r, name), value)


HC_DEFAULT = json.loads((Path(__file__).resolve().parents[1] / "data" / "metafor" /
                         "hc_default.json").read_text())


@pytest.mark.parametrize("case", HC_DEFAULT["cases"],
                         ids=lambda c: f"{c['dataset']}/level={c['level']}")
def test_hc_with_metafors_default_control_gives_metafors_numbers(case: dict) -> None:
    """metafor's default root tolerance (eps^0.25) stops ~1e-5 from the exact interval;
    repeating R's uniroot step for step gives the interval metafor prints, to 1e-8."""
    d = HC_DEFAULT["data"][case["dataset"]]
    r = bias.hc(d["yi"], d["vi"], level=case["level"])
    for name, value in case["values"].items():
        _close(getattr(r, name), value, rtol=1e-8)
    exact = bias.hc(d["yi"], d["vi"], level=case["level"], tol=1e-12)
    assert exact.ci_ub != pytest.approx(r.ci_ub, rel=1e-9, abs=0)   # the default is not exact


@pytest.mark.parametrize("case", _cases("selmodel"), ids=_id)
def test_selmodel(case: dict) -> None:
    d = _data(case)
    r = bias.selmodel(d["yi"], d["vi"], **case["args"])
    want = case["values"]
    # the log-likelihoods agree to 1e-10; the likelihood is flat in the selection
    # parameters, so they (from two optimisers) agree to 5e-5
    tol = 5e-5
    for name in ("ll", "ll0", "LRT", "LRTp"):
        _close(getattr(r, name), want[name], rtol=1e-7, atol=1e-9)
    for name in ("beta", "tau2"):
        _close(getattr(r, name), want[name], rtol=tol, atol=1e-7)
    np.testing.assert_allclose(r.delta, want["delta"], rtol=tol, atol=1e-7)
    _close(r.se, want["se"], rtol=1e-3)
    _close(r.se_tau2, want["se_tau2"], rtol=1e-3)
    np.testing.assert_allclose(np.nan_to_num(r.se_delta), np.nan_to_num(
        np.array(want["se_delta"], dtype=float)), rtol=1e-3)
    assert list(r.ptable) == list(want["ptable"])


def test_every_tool_and_option_is_covered() -> None:
    kinds = {c["kind"] for c in DOC["cases"]}
    assert kinds == {"fsn", "regtest", "trimfill", "hc", "selmodel"}
    assert {c["args"]["predictor"] for c in _cases("regtest")} == set(
        bias.REGTEST_PREDICTORS)
    assert {c["args"]["estimator"] for c in _cases("trimfill")} == {"L0", "R0", "Q0"}
    assert {c["args"]["type"] for c in _cases("selmodel")} == {"stepfun", "beta"}


def test_bad_input_names_the_argument() -> None:
    with pytest.raises(InputError, match="type: 'REM' is not one of"):
        bias.fsn([0.1, 0.2], [0.01, 0.02], type="REM")
    with pytest.raises(InputError, match="ni: predictor 'ninv' needs the sample sizes"):
        bias.regtest([0.1, 0.2, 0.3], [0.01, 0.02, 0.03], predictor="ninv")
    with pytest.raises(InputError, match="estimator: 'l1' is not one of"):
        bias.trimfill([0.1, 0.2, 0.3], [0.01, 0.02, 0.03], estimator="l1")
    with pytest.raises(InputError, match=r"steps: no study has a p-value in \(0, 0.05\]"):
        bias.selmodel([-0.1, -0.2, -0.3, -0.1], [0.01, 0.02, 0.03, 0.02], steps=[0.05])
