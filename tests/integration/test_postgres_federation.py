"""A round with PostgreSQL everywhere: the coordinator's state and a site's data.

mtf-alpha reads its CSV file; mtf-bravo reads the same patients from a PostgreSQL table
(``[data] url`` + ``table``, aggregates pushed down, regression columns streamed). Every
estimate mtf-bravo sends equals R's reference value for that site, and the pooled round
is the same as when both sites read CSV files (test_federation.py checks the latter).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests._data_builders import INT_TYPES, copy_frame
from tests.integration.conftest import DEMO_SPEC
from tests.integration.pg_server import fresh_database

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

EXPECTED = json.loads((Path(__file__).resolve().parents[1] / "data" / "sites_public" /
                       "expected.json").read_text())["sites"]


def test_site_reading_postgres_joins_a_postgres_coordinator(federation, site_data) -> None:
    federation.state_backend = "postgresql"
    data_url = fresh_database("site")
    copy_frame(data_url, "cohort", pd.read_csv(site_data / "mtf-bravo.csv"),
               {**INT_TYPES, "patient_id": "text"})

    federation.start_coordinator(allow=["mtf-alpha", "mtf-bravo"])
    assert federation.state_url().startswith("postgresql")
    round_id = federation.start_round(DEMO_SPEC, deadline="120s", quorum=2)
    federation.start_site("mtf-alpha", site_data / "mtf-alpha.csv", once=True)
    config = federation.write_site_config("mtf-bravo", site_data / "mtf-bravo.csv")
    text = config.read_text()
    path_line = next(line for line in text.splitlines() if line.startswith("path = "))
    config.write_text(text.replace(path_line, f'url = "{data_url}"\ntable = "cohort"'))
    federation._spawn("mtf-bravo", "site", "run", "--config", str(config), "--once")

    doc = federation.wait_round(round_id, timeout=240)
    assert doc["status"] == "pooled", doc
    assert {s["site"] for s in doc["sites"] if s["status"] == "submitted"} == \
        {"mtf-alpha", "mtf-bravo"}
    checked = 0
    for analysis in doc["analyses"]:
        name = analysis["analysis"]
        bravo = [s for s in analysis.get("site_estimates", []) if s["site"] == "mtf-bravo"]
        if name in EXPECTED["mtf-bravo"] and bravo:
            expected = EXPECTED["mtf-bravo"][name]
            assert bravo[0]["yi"] == pytest.approx(expected["yi"], rel=1e-6, abs=1e-9), name
            assert bravo[0]["vi"] == pytest.approx(expected["vi"], rel=1e-6, abs=1e-9), name
            checked += 1
    assert checked >= 10, doc["analyses"]
