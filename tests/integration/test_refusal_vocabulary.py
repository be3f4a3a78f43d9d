"""Issue 10, item 2: refusal reasons that leave a site come from a fixed vocabulary.

A site's data holds a patient's name and MRN in text columns; the spec asks every
estimator for an analysis on such a column and one on a column the data lacks. The site
agent computes the round exactly as in production (:meth:`SiteAgent.compute`, then
:meth:`SiteAgent.sign_results`) from a CSV file, a Parquet file, a SQLite table and query,
and a PostgreSQL table and query (whose cast error quotes the patient's name, and whose
"missing column" error used to quote the operator's query and the table's column list).
The signed submission is decoded and every refusal checked: its code is a public code,
its reason is a sentence of the vocabulary, every quoted word in it is a column the spec
names for that analysis, and no name, MRN, SQL or database message is in it. The full
error stays at the site: in the refusal's detail, the audit entry and the log lines.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

import site_agent.agent as agent_module
from fedsynth.config import load_site_config
from fedsynth.effects import results as vocabulary
from fedsynth.serde import WireRefusal, WorkItem, decode_submission
from fedsynth.spec import ESTIMATORS, parse_spec
from site_agent.agent import SiteAgent, describe_results
from tests.reconstruction import attack_site

pytestmark = pytest.mark.integration

SECRETS = ("Alice", "Smith", "MRN-", "SELECT", "secret_filter", "invalid input",
           "double precision", "operator does not exist", "patient_id", "full_name, ",
           "columns:")
#: the role each estimator's main column plays, to put the text column there
MAIN = {"two_by_two": "outcome", "two_group": "outcome", "logistic": "outcome",
        "linear": "outcome", "cox": "time", "auc": "score",
        "calibration_slope": "score", "calibration_in_the_large": "score",
        "oe_ratio": "score", "brier": "score"}
BASE = {"two_by_two": {"outcome": "outcome", "exposure": "treated"},
        "two_group": {"outcome": "los_days", "exposure": "treated"},
        "logistic": {"outcome": "outcome", "exposure": "treated", "covariates": ["age"]},
        "linear": {"outcome": "los_days", "exposure": "treated"},
        "cox": {"time": "los_days", "event": "outcome", "exposure": "treated"},
        "auc": {"outcome": "outcome", "score": "risk_score"},
        "calibration_slope": {"outcome": "outcome", "score": "risk_score"},
        "calibration_in_the_large": {"outcome": "outcome", "score": "risk_score"},
        "oe_ratio": {"outcome": "outcome", "score": "risk_score"},
        "brier": {"outcome": "outcome", "score": "risk_score"}}


def _spec():
    analyses = []
    for estimator in ESTIMATORS:
        role = MAIN[estimator]
        for tag, column in (("text", "full_name"), ("mrn", "mrn"), ("missing", "bmi")):
            analyses.append({"name": f"{estimator}_{tag}", "estimator": estimator,
                             **{**BASE[estimator], role: column}})
    analyses.append({"name": "auc_ok", "estimator": "auc", "outcome": "outcome",
                     "score": "risk_score"})
    return parse_spec({"analysis": analyses})


def _frame() -> pd.DataFrame:
    frame = attack_site()
    frame["full_name"] = [f"Alice Smith #{i}" for i in range(len(frame))]
    frame["mrn"] = [f"MRN-{100000 + i}" for i in range(len(frame))]
    return frame


_PLACEHOLDER = re.compile(r"\\\{(\w+)\\\}")


def _sentence_patterns() -> list[re.Pattern]:
    """Every sentence of the vocabulary as a pattern (placeholders: a quoted name, a word,
    a number, a role)."""
    texts = ([t for _, t in vocabulary.REFUSAL_VOCABULARY.values()]
             + list(vocabulary._GENERIC.values()))
    return [re.compile("^" + _PLACEHOLDER.sub(r"('[^']*'|\"[^\"]*\"|[a-z_]+|\\d+|an? \\w+)",
                                              re.escape(t)) + "$") for t in texts]


def _check_public(name: str, refusal: WireRefusal, spec) -> None:
    for secret in SECRETS:
        assert secret not in refusal.reason, (name, refusal.reason)
    columns = set(spec[name].columns)
    for quoted in re.findall(r"'([^']*)'", refusal.reason):
        assert quoted in columns, (name, quoted, refusal.reason)
    assert refusal.code in vocabulary.PUBLIC_CODES, (name, refusal)
    assert any(p.match(refusal.reason) for p in _sentence_patterns()), (name, refusal.reason)


def _csv(tmp_path: Path, frame: pd.DataFrame) -> str:
    path = tmp_path / "site.csv"
    frame.to_csv(path, index=False)
    return f"[data]\npath = {str(path)!r}\n"


def _parquet(tmp_path: Path, frame: pd.DataFrame) -> str:
    path = tmp_path / "site.parquet"
    frame.to_parquet(path, index=False)
    return f"[data]\npath = {str(path)!r}\n"


def _load(url: str, frame: pd.DataFrame) -> None:
    engine = sa.create_engine(url)
    try:
        frame.to_sql("patients", engine, index=False)
    finally:
        engine.dispose()


QUERY = ("SELECT * FROM patients WHERE full_name <> 'secret_filter' "
         "AND mrn <> 'MRN-secret'")


def _sqlite(tmp_path: Path, frame: pd.DataFrame, query: bool = False) -> str:
    url = f"sqlite:///{tmp_path / 'site.db'}"
    _load(url, frame)
    where = f"query = {QUERY!r}" if query else 'table = "patients"'
    return f"[data]\nurl = {url!r}\n{where}\n"


def _postgres(tmp_path: Path, frame: pd.DataFrame, query: bool = False) -> str:
    from tests.integration.pg_server import fresh_database

    url = fresh_database("vocab")
    _load(url, frame)
    where = f"query = {QUERY!r}" if query else 'table = "patients"'
    return f"[data]\nurl = {url!r}\n{where}\n"


SOURCES = [
    pytest.param(_csv, id="csv"),
    pytest.param(_parquet, id="parquet"),
    pytest.param(_sqlite, id="sqlite-table"),
    pytest.param(lambda p, f: _sqlite(p, f, query=True), id="sqlite-query"),
    pytest.param(_postgres, id="postgresql-table", marks=pytest.mark.postgres),
    pytest.param(lambda p, f: _postgres(p, f, query=True), id="postgresql-query",
                 marks=pytest.mark.postgres),
]


@pytest.mark.parametrize("source", SOURCES)
def test_refusals_sent_are_vocabulary_with_spec_columns_only(tmp_path: Path, source) -> None:
    frame = _frame()
    (tmp_path / "site.toml").write_text(
        'name = "mtf-alpha"\ncoordinator = "127.0.0.1:1"\ninsecure = true\n'
        f'state_file = "state.json"\n{source(tmp_path, frame)}'
        "[privacy]\nmin_cell_count = 5\nmin_n = 20\n", encoding="utf-8")
    config = load_site_config(tmp_path / "site.toml", insecure=True)
    spec = _spec()
    now = _dt.datetime.now(_dt.UTC)
    work = WorkItem("r-vocab", spec.to_toml(), now, now + _dt.timedelta(hours=1))
    agent = SiteAgent(config)
    results, pending = agent.compute(work)
    assert pending is None
    payload, _signature = agent.sign_results(work.round_id, results)
    sent = decode_submission(payload).results

    assert set(sent) == set(spec.names)
    assert not isinstance(sent["auc_ok"], WireRefusal)        # a good analysis still goes
    for name, result in sent.items():
        if name == "auc_ok":
            continue
        assert isinstance(result, WireRefusal), (name, result)
        _check_public(name, result, spec)
    # Nothing of the data, the query or the database left in the signed bytes at all.
    for secret in ("Alice", "MRN-1", "secret_filter", "MRN-secret", "invalid input"):
        assert secret.encode() not in payload
    # A missing column is named (from the spec), and only it.
    assert sent["two_by_two_missing"].reason == "the data has no column 'bmi'"

    # The full local errors stay at the site: refusal detail, audit entry, log lines.
    kept = agent_module.submission_audit(work.round_id, payload, results)["kept"]
    lines = "\n".join(describe_results("mtf-alpha", work.round_id, results))
    if "url" in (tmp_path / "site.toml").read_text():
        # The connector's message names the query (or table) and the table's columns.
        missing = results["auc_missing"]
        assert "patients" in missing.detail and "full_name" in missing.detail
        assert kept["auc_missing"]["detail"] == missing.detail
        assert missing.detail in lines and "kept at this site, not sent" in lines
    else:
        # A file: the DataFrame estimators' refusals name the spec's columns only anyway.
        assert results["auc_text"].reason == ("column 'full_name' holds values that are not "
                                              "numbers")


@pytest.mark.postgres
def test_postgresql_cast_error_stays_at_the_site(tmp_path: Path) -> None:
    # The example: a two-group mean of a text column makes PostgreSQL say
    # 'invalid input syntax for type double precision: "Alice Smith #0"'.
    frame = _frame()
    (tmp_path / "site.toml").write_text(
        'name = "mtf-alpha"\ncoordinator = "127.0.0.1:1"\ninsecure = true\n'
        f'state_file = "state.json"\n{_postgres(tmp_path, frame)}', encoding="utf-8")
    config = load_site_config(tmp_path / "site.toml", insecure=True)
    spec = parse_spec({"analysis": [{"name": "md_name", "estimator": "two_group",
                                     "outcome": "full_name", "exposure": "treated"}]})
    now = _dt.datetime.now(_dt.UTC)
    agent = SiteAgent(config)
    results, _ = agent.compute(WorkItem("r-cast", spec.to_toml(), now,
                                        now + _dt.timedelta(hours=1)))
    payload, _ = agent.sign_results("r-cast", results)
    assert b"Alice" not in payload and b"precision" not in payload
    refusal = results["md_name"]
    assert refusal.code == "invalid_values"
    assert "Alice Smith" in refusal.detail and "double precision" in refusal.detail
    audit = agent_module.submission_audit("r-cast", payload, results)
    assert "Alice Smith" in audit["kept"]["md_name"]["detail"]
    assert "Alice" not in str(audit["sent"])
