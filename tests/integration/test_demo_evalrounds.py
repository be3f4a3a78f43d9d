"""`fedsynth demo --heterogeneity high` end to end: a newcomer sees strong flags, each
measure tested against its own null, BLUPs and driving sites (issue 12, phase 2)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_high_heterogeneity(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedsynth", "demo", "--heterogeneity", "high",
         "--sites-count", "4", "--out", str(tmp_path / "demo"), "--deadline", "4m"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "(high heterogeneity)" in result.stdout
    # the progress counter prints each site once, counting 1..4
    answered = re.findall(r"(mtf-\w+) answered \((\d)/4\)", result.stdout)
    assert sorted(s for s, _ in answered) == ["mtf-alpha", "mtf-bravo", "mtf-charlie",
                                               "mtf-delta"]
    assert [int(n) for _, n in answered] == [1, 2, 3, 4]
    # the printed table reads like the report: back-transformed, scale and null stated
    table = result.stdout[result.stdout.index("\nanalysis "):]
    assert "pooled on the logit scale: c-statistic" in table
    lines = table.strip("\n").splitlines()
    names = lines[0].split()
    after = names[names.index("scale"):]
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = line.split()     # the measure may hold spaces: read on from the scale
        at = next(i for i in range(4, len(cells)) if cells[i] in ("identity", "log", "logit"))
        rows[cells[0]] = dict(zip(after, cells[at:]))

    (doc_path,) = (tmp_path / "demo" / "federation" / "reports").glob("*.json")
    doc = json.loads(doc_path.read_text())
    assert doc["schema_version"] == 4              # version 4: IECV of models (issue 14)
    by = {a["analysis"]: a for a in doc["analyses"]}
    auc, slope, brier = by["auc"], by["calibration_slope"], by["brier"]
    # AUC: pooled on the logit scale, p-value against 0.5 (logit 0), REML + Knapp-Hartung
    assert (auc["scale"], auc["null_value"], auc["method"], auc["test"], auc["pi_df"]) == (
        "logit", 0.5, "REML", "knha", "k-2")
    assert auc["stat"] == pytest.approx(auc["estimate"] / auc["se"])
    assert by["logit_auc"]["estimate"] == pytest.approx(auc["estimate"], rel=1e-9)
    # calibration slope against 1, Brier without a p-value
    assert slope["stat"] == pytest.approx((slope["estimate"] - 1.0) / slope["se"])
    assert brier["null_value"] is None and brier["pval"] is None
    c = 1 / (1 + math.exp(-auc["estimate"]))
    assert (rows["auc"]["scale"], rows["auc"]["estimate"], rows["auc"]["H0"]) == (
        "logit", f"{c:.3f}", "0.5")
    assert (rows["brier"]["pval"], rows["brier"]["H0"]) == ("\u2014", "\u2014")
    flagged = [a for a in doc["analyses"] if a["heterogeneity"]["flagged"]]
    assert any(a["heterogeneity"]["level"] == "strong" for a in flagged)
    assert all(a["blups"] for a in flagged)

    html = (doc_path.with_suffix(".html")).read_text()
    text = re.sub(r"<[^>]+>", " ", html)
    assert "H0: c-statistic = 0.5" in text and "H0: calibration slope = 1" in text
    assert "95% PI of the BLUP" in text
