"""The round benchmark at a tiny size, so that it cannot rot (real coordinator, real mTLS)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_round_benchmark_smoke(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "round.py"), "--sites", "3",
         "--analyses", "5", "--poll", "0.1", "--json", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["sites"] == 3 and result["analyses"] == 5
    # the benchmark itself checks that every analysis was pooled with k = 3
    assert 0 < result["open_to_pooled_s"] and result["submissions_per_s"] > 0
    assert result["coordinator_peak_rss_mib"] > 0
    assert result["report"] and Path(result["report"]["html"]).exists()
    document = json.loads(Path(result["report"]["json"]).read_text())
    assert document["status"] == "pooled"
    assert [a["k"] for a in document["analyses"]] == [3] * 5
    assert {s["site"] for s in document["sites"]} == {"site-000", "site-001", "site-002"}
