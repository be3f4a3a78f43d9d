"""The typed round document: built by the closer, validated once, JSON exactly as before."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import doctest
import functools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedsynth.round_document as round_document_module
from coordinator.rounds import close_if_due, open_round, round_document
from coordinator.store import Store
from fedsynth.cli import main
from fedsynth.errors import InputError
from fedsynth.round_document import (
    SCHEMA_VERSION,
    AnalysisResult,
    PooledEstimate,
    RoundDocument,
    SiteEstimate,
    schema_markdown,
)
from tests.unit.test_reports import make_round
from tests.unit.test_round_close import POOLING, SPEC, _round_data

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 11, 25, 14, 0, tzinfo=dt.UTC)


@functools.cache
def _made(round_id: str) -> str:
    return json.dumps(make_round(round_id, "2026-11-25T14:00:00Z"))


def made(round_id: str = "r-20261125-0001") -> dict:
    """A fresh copy of a hand-made round document (pooled once, by the project's code)."""
    return json.loads(_made(round_id))


def _closed(tmp_path: Path, *, quorum: int = 2) -> tuple[Path, str]:
    """A coordinator.toml and a closed round in its store (six analyses, seven sites)."""
    _, subs = _round_data()
    allowed = [s.site for s in subs]
    (tmp_path / "coordinator.toml").write_text(
        'listen = "127.0.0.1:0"\nstate = "state.db"\nreport_dir = "reports"\n'
        f'[sites]\nallow = {json.dumps(allowed)}\n')
    with Store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        record = open_round(store, spec_source=SPEC, deadline=dt.timedelta(minutes=1),
                            quorum=quorum, allowed=tuple(allowed), pooling=POOLING, now=NOW)
        for i, sub in enumerate(subs[:-1]):          # the last site never answers
            store.add_submission(round_id=record.id, site=sub.site, nonce=bytes([i]) * 16,
                                 signed_at=NOW, payload=sub.site.encode(), signature=b"s",
                                 results=sub.results, agent_version="t", now=NOW)
        assert close_if_due(store, record.id, NOW + dt.timedelta(minutes=2)) is not None
    return tmp_path / "coordinator.toml", record.id


def _show(capsys, config: Path, round_id: str) -> str:
    capsys.readouterr()
    assert main(["round", "show", round_id, "--config", str(config), "--format", "json"]) == 0
    return capsys.readouterr().out


def test_doctests() -> None:
    assert doctest.testmod(round_document_module).failed == 0


def test_round_show_prints_exactly_the_stored_document(tmp_path, capsys) -> None:
    """``round show --format json`` printed ``json.dumps(stored, indent=2)`` before the type
    existed; the typed path must print the very same text."""
    config, round_id = _closed(tmp_path)
    with Store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        stored = store.get_round(round_id).document
    assert _show(capsys, config, round_id) == json.dumps(stored, indent=2) + "\n"
    doc = RoundDocument.from_dict(stored)
    assert doc.status == "pooled" and doc.missing_sites == ("site-g",)
    assert [a.analysis for a in doc.analyses] == ["hetero", "homo", "gaps", "single", "none",
                                                  "outlier"]
    none = doc.analysis("none")
    assert none.pooled is None and none.k == 0 and "nothing was pooled" in none.notes[0]
    hetero = doc.analysis("hetero")
    assert hetero.pooled is not None and hetero.pooled.Q_df == hetero.k - 1
    assert hetero.heterogeneity is not None and hetero.heterogeneity.details is not None
    with pytest.raises(KeyError, match="no analysis 'nope'"):
        doc.analysis("nope")


def test_closed_document_keys_are_those_of_the_contract(tmp_path) -> None:
    _, round_id = _closed(tmp_path)
    with Store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        doc = round_document(store, store.get_round(round_id))
    data = doc.to_dict()
    # stored with sorted keys: read back in that layout
    assert list(data) == sorted(["round", "status", "spec", "opened_at", "deadline",
                                 "closed_at", "quorum", "failure_reason", "pooling", "sites",
                                 "missing_sites", "analyses", "schema_version"])
    hetero = data["analyses"][0]
    assert list(hetero) == sorted(hetero)           # stored (sorted) layout kept on reading
    assert set(hetero) == {
        "analysis", "estimator", "measure", "k", "method", "test", *PooledEstimate.KEYS,
        "heterogeneity", "site_estimates", "refused", "scale", "null_value", "estimand",
        "site_scale", "pi_df", "blups"}
    assert set(hetero["heterogeneity"]) == {"flagged", "level", "reasons", "sites", "drivers",
                                            "I2", "I2_ci", "i2_threshold", "null_value",
                                            "pi_crosses_null", "rules", "clinical_width",
                                            "pi_beyond_width"}
    assert set(hetero["site_estimates"][0]) == {"site", "yi", "vi", "se", "n"}
    assert data["schema_version"] == SCHEMA_VERSION == 4     # the current version's number
    assert "models" not in data                      # written only for specs with models
    assert data["opened_at"] == "2026-11-25T14:00:00.000Z"


def test_closer_builds_the_canonical_order(tmp_path) -> None:
    from coordinator.rounds import pool_round

    _, subs = _round_data()
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        record = open_round(store, spec_source=SPEC, deadline=dt.timedelta(minutes=1),
                            quorum=2, allowed=tuple(s.site for s in subs), pooling=POOLING,
                            now=NOW)
        outcome = pool_round(store.get_round(record.id), subs, NOW + dt.timedelta(minutes=2))
    entry = outcome.document.analyses[0].to_dict()
    v2 = ["scale", "null_value", "estimand", "site_scale", "pi_df"]
    assert list(entry) == ["analysis", "estimator", "measure", "k", "method", "test", *v2,
                           *PooledEstimate.KEYS, "heterogeneity", "site_estimates", "refused",
                           "blups"]
    none = outcome.document.analysis("none").to_dict()
    assert list(none) == ["analysis", "estimator", "measure", "k", "method", "test", *v2,
                          "heterogeneity", "notes", "site_estimates", "refused", "blups"]
    assert list(none["heterogeneity"]) == ["flagged", "level", "reasons", "sites"]
    # JSON text -> type -> JSON text is the identity, in the closer's order too
    text = json.dumps(outcome.document.to_dict())
    assert json.dumps(RoundDocument.from_dict(json.loads(text)).to_dict()) == text


def test_open_round_document(tmp_path, capsys) -> None:
    _, subs = _round_data()
    allowed = [s.site for s in subs]
    (tmp_path / "coordinator.toml").write_text(
        'listen = "127.0.0.1:0"\nstate = "state.db"\nreport_dir = "reports"\n'
        f'[sites]\nallow = {json.dumps(allowed)}\n')
    with Store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        record = open_round(store, spec_source=SPEC, deadline=dt.timedelta(days=3650),
                            quorum=2, allowed=tuple(allowed), pooling=POOLING, now=NOW)
        store.add_submission(round_id=record.id, site=subs[0].site, nonce=b"n" * 16,
                             signed_at=NOW, payload=b"p", signature=b"s",
                             results=subs[0].results, agent_version="t", now=NOW)
    data = json.loads(_show(capsys, tmp_path / "coordinator.toml", record.id))
    assert list(data) == ["schema_version", "round", "status", "spec", "opened_at",
                          "deadline", "closed_at", "quorum", "failure_reason", "pooling",
                          "sites", "analyses"]
    assert data["status"] == "open" and data["closed_at"] is None and data["analyses"] == []
    assert data["pooling"] == POOLING
    assert data["sites"][0] == {"site": "site-a", "status": "submitted",
                                "submitted_at": "2026-11-25T14:00:00.000Z",
                                "refusals": {"gaps": "fewer than 5 events",
                                             "single": "too few", "none": "no such column"}}
    assert data["sites"][1]["status"] == "missing"


def test_hand_made_documents_round_trip_exactly() -> None:
    """Optional keys a document lacks stay absent; unknown keys are kept, in place."""
    doc = made()
    doc["annotation"] = {"by": "analyst", "note": "re-run after the data fix"}
    doc["analyses"][0]["model"] = {"kind": "a later section"}
    doc["sites"][0]["agent"] = "0.1.0"
    typed = RoundDocument.from_dict(copy.deepcopy(doc))
    assert typed.extra == {"annotation": doc["annotation"]}
    assert typed.analyses[0].extra == {"model": {"kind": "a later section"}}
    out = typed.to_dict()
    assert out == doc and json.dumps(out) == json.dumps(doc)
    assert "stat" not in out["analyses"][0] and "pooling" not in out


def test_from_dict_does_not_alias_its_input() -> None:
    doc = made("r-1")
    typed = RoundDocument.from_dict(doc)
    doc["analyses"][0]["refused"]["x"] = "y"
    doc["sites"][0]["refusals"]["x"] = "y"
    assert "x" not in typed.analyses[0].refused and "x" not in typed.sites[0].refusals
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.status = "failed"  # type: ignore[misc]


def test_replaced_fields_are_written() -> None:
    typed = RoundDocument.from_dict(made("r-1"))
    entry = dataclasses.replace(typed.analyses[0], notes=("re-pooled offline",))
    assert entry.to_dict()["notes"] == ["re-pooled offline"]


def test_non_finite_numbers_are_read_as_null() -> None:
    doc = made("r-1")
    doc["analyses"][0]["tau2"] = float("nan")
    doc["analyses"][0]["tau2_ci"] = [0.0, float("inf")]
    doc["analyses"][0]["site_estimates"][0]["yi"] = float("-inf")
    out = RoundDocument.from_dict(doc).to_dict()
    json.dumps(out, allow_nan=False)
    assert out["analyses"][0]["tau2"] is None and out["analyses"][0]["tau2_ci"] == [0.0, None]
    assert out["analyses"][0]["site_estimates"][0]["yi"] is None


@pytest.mark.parametrize("mutate, field, value", [
    (lambda d: d.pop("round"), "round", "None"),
    (lambda d: d.update(round="../x"), "round", "'../x'"),
    (lambda d: d.update(status=None), "status", "None"),
    (lambda d: d.update(quorum=0), "quorum", "0"),
    (lambda d: d.update(quorum=True), "quorum", "True"),
    (lambda d: d.update(spec=[1]), "spec", "[1]"),
    (lambda d: d.update(closed_at="2026-11-25 14:00"), "closed_at", "'2026-11-25 14:00'"),
    (lambda d: d.update(sites="mtf-alpha"), "sites", "'mtf-alpha'"),
    (lambda d: d["sites"].append("mtf-x"), "sites[7]", "'mtf-x'"),
    (lambda d: d["sites"][1].update(refusals={"a": 3}), "sites[1].refusals", "{'a': 3}"),
    (lambda d: d["analyses"][1].update(k=-1), "analyses[1].k", "-1"),
    (lambda d: d["analyses"][1].update(tau2_ci=[1.0]), "analyses[1].tau2_ci", "[1.0]"),
    (lambda d: d["analyses"][1].update(I2_ci=["a", 2]), "analyses[1].I2_ci.lower", "'a'"),
    (lambda d: d["analyses"][2]["heterogeneity"].update(flagged="yes"),
     "analyses[2].heterogeneity.flagged", "'yes'"),
    (lambda d: d["analyses"][2]["heterogeneity"].update(level="high"),
     "analyses[2].heterogeneity.level", "'high'"),
    (lambda d: d["analyses"][2]["heterogeneity"].update(reasons="many"),
     "analyses[2].heterogeneity.reasons", "'many'"),
    (lambda d: d["analyses"][0]["site_estimates"][3].update(vi=[0.1]),
     "analyses[0].site_estimates[3].vi", "[0.1]"),
    (lambda d: d["analyses"][0]["site_estimates"][3].update(n=12.5),
     "analyses[0].site_estimates[3].n", "12.5"),
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "schema_version",
     str(SCHEMA_VERSION + 1)),
])
def test_errors_name_the_field_and_the_value(mutate, field, value) -> None:
    doc = made()
    mutate(doc)
    with pytest.raises(InputError) as info:
        RoundDocument.from_dict(doc, where="reports/x.json")
    message = str(info.value)
    assert message.startswith("reports/x.json") and f"field '{field}'" in message, message
    assert f"got {value}" in message, message


def test_schema_version_one_is_accepted_and_a_newer_one_explained() -> None:
    doc = made("r-1")
    assert RoundDocument.from_dict({**doc, "schema_version": 1}).schema_version == 1
    assert RoundDocument.from_dict(doc).schema_version == 1       # no key: version 1
    assert RoundDocument.from_dict({**doc, "schema_version": 2}).schema_version == 2
    assert RoundDocument.from_dict({**doc, "schema_version": 3}).schema_version == 3
    assert RoundDocument.from_dict({**doc, "schema_version": 4}).schema_version == 4
    with pytest.raises(InputError, match="newer than this fedsynth reads"):
        RoundDocument.from_dict({**doc, "schema_version": 5})
    # a later version writes its key
    later = dataclasses.replace(RoundDocument.from_dict(doc), schema_version=2, _layout=None)
    assert later.to_dict()["schema_version"] == 2


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5)
                     | st.floats(allow_nan=False),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from([
    ("quorum",), ("status",), ("opened_at",), ("pooling",), ("sites", 0, "site"),
    ("sites", 0, "status"), ("sites", 0, "refusals"), ("analyses", 0, "k"),
    ("analyses", 0, "estimate"), ("analyses", 0, "I2_ci"), ("analyses", 0, "heterogeneity"),
    ("analyses", 1, "site_estimates", 0, "n"), ("analyses", 1, "refused"),
    ("analyses", 2, "heterogeneity", "sites")]), value=_json)
def test_any_corruption_is_read_or_refused_by_name(path, value) -> None:
    """Whatever JSON value lands in a field, from_dict either accepts it (and the result
    writes strict JSON) or raises an InputError naming that field; nothing else escapes."""
    doc = made()
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    try:
        typed = RoundDocument.from_dict(doc)
    except InputError as error:
        name = ".".join(str(p) for p in path).replace(".0", "[0]").replace(".1", "[1]") \
            .replace(".2", "[2]")
        assert name.split(".")[0].split("[")[0] in str(error)
        return
    json.dumps(typed.to_dict(), allow_nan=False)


def test_unknown_keys_with_infinities_still_write_strict_json() -> None:
    """A key this version does not know keeps its value, but NaN and infinity (found by
    the property test above in ``pooling``) become null so that the document stays
    strict JSON."""
    doc = made()
    doc["pooling"] = {"method": "REML", "future_key": {"a": float("inf"), "b": [1.0, float("nan")]}}
    typed = RoundDocument.from_dict(doc)
    written = json.loads(json.dumps(typed.to_dict(), allow_nan=False))
    assert written["pooling"]["future_key"] == {"a": None, "b": [1.0, None]}


def test_sections_are_typed_values() -> None:
    e = SiteEstimate("mtf-alpha", yi=0.1, vi=0.01, se=0.1, n=500)
    assert e.to_dict() == {"site": "mtf-alpha", "yi": 0.1, "vi": 0.01, "se": 0.1, "n": 500}
    a = AnalysisResult("x", k=1, method="REML", test="z", site_estimates=(e,))
    assert a.to_dict()["site_estimates"] == [e.to_dict()]
    assert SiteEstimate.from_dict({"site": "s", "yi": 1}) == SiteEstimate("s", yi=1)


def test_documentation_schema_is_generated_from_the_type() -> None:
    text = (ROOT / "docs" / "round-document.md").read_text()
    begin = text.index("-->\n", text.index("<!-- BEGIN GENERATED")) + len("-->\n")
    end = text.index("<!-- END GENERATED -->")
    assert text[begin:end] == schema_markdown(), \
        "docs/round-document.md is stale: run python -m fedsynth.round_document"
    # every field of every section is documented
    for cls in (RoundDocument, AnalysisResult, PooledEstimate, SiteEstimate):
        for f in dataclasses.fields(cls):
            if f.name not in ("extra", "_layout"):
                assert f.metadata.get("doc"), (cls.__name__, f.name)


def test_report_and_cli_read_through_the_type(tmp_path, capsys) -> None:
    """``report round --rounds-dir`` refuses a malformed saved document by field name."""
    folder = tmp_path / "rounds"
    folder.mkdir()
    doc = made()
    doc["analyses"][0]["site_estimates"][0]["yi"] = "0.1"
    (folder / "r-20261125-0001.json").write_text(json.dumps(doc))
    code = main(["report", "round", "r-20261125-0001", "--rounds-dir", str(folder),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "analyses[0].site_estimates[0].yi" in err
    assert not (tmp_path / "out").exists()
