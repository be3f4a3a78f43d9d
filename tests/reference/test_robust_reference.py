"""robust() against metafor's robust() and clubSandwich (tests/data/metafor/rma_mv.R).

Default (CR1 with metafor's n / (n - p) adjustment) and clubSandwich = TRUE (CR2,
Satterthwaite df, HTZ omnibus test), on rma.mv fits (konstantopoulos2011 by district,
assink2016 by study, berkey1998 by trial) and rma.uni fits (bcg with moderators, REML and
DL, and intercept-only). The rma.mv fits are the ones of test_rma_mv_reference (R fitted
at rel.tol 1e-12, so the model agrees to ~1e-8; the sandwich is compared at 1e-6).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.meta.metareg import fit_rma
from fedsynth.meta.pooling import meta_analysis
from fedsynth.meta.robust import robust

from .test_rma_mv_reference import arr, fit_of

REF = json.loads((Path(__file__).parents[1] / "data" / "metafor" / "rma_mv.json").read_text())
CASES = {f"{c['name']}-{'CR2' if c['clubSandwich'] else 'CR1'}": c for c in REF["robust"]}


def model_of(case):
    name = case["fit"]
    if name in REF["fits"]:
        f = REF["fits"][name]
        return fit_of(name), pd.DataFrame(REF["data"][f["dataset"]])
    bcg = pd.DataFrame(REF["data"]["bcg"])
    u = REF["uni"][name.removeprefix("bcg_")]
    method = u["args"]["method"]
    if name == "bcg_intercept":
        fit = meta_analysis(bcg["yi"].to_numpy(), bcg["vi"].to_numpy(), method=method)
    else:
        fit = fit_rma(bcg["yi"].to_numpy(), bcg["vi"].to_numpy(), np.array(u["X"]),
                      method=method, names=["intrcpt", "ablat", "year"])
    return fit, bcg


@pytest.mark.parametrize("key", sorted(CASES))
def test_robust_equals_metafor(key: str) -> None:
    case = CASES[key]
    fit, data = model_of(case)
    r = case["values"]
    ours = robust(fit, data[case["cluster"]].tolist(), clubSandwich=case["clubSandwich"])
    assert ours.n == r["n"]
    rtol = 1e-6
    np.testing.assert_allclose(ours.vb, np.array(r["vb"]).reshape(ours.vb.shape), rtol=rtol,
                               atol=1e-12)
    for key_ in ("se", "zval", "ci_lb", "ci_ub"):
        np.testing.assert_allclose(getattr(ours, key_), arr(r[key_]), rtol=rtol, atol=1e-10,
                                   err_msg=key_)
    np.testing.assert_allclose(ours.pval, arr(r["pval"]), rtol=10 * rtol, atol=1e-12)
    np.testing.assert_allclose(ours.dfs, np.broadcast_to(arr(r["dfs"]), ours.dfs.shape),
                               rtol=rtol)
    assert ours.QM == pytest.approx(r["QM"], rel=rtol)
    np.testing.assert_allclose(ours.QM_df, arr(r["QMdf"]), rtol=rtol)
    assert ours.QMp == pytest.approx(r["QMp"], rel=10 * rtol)
    assert ours.vbest == ("CR2" if case["clubSandwich"] else "CR1")
