"""The text table of ``round show`` / ``demo`` / ``simulate`` on the scale people read.

Issue 12 follow-up: a version-2 round document prints each analysis' estimate, CI and PI
back-transformed (a c-statistic, an O:E ratio), states the pooling scale and tests the
measure's own null (none for the Brier score); a version-1 document prints as before.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from coordinator.commands.round import NO_NULL, _fmt, render_table
from coordinator.rounds import pool_analyses
from coordinator.store import SubmissionRecord
from fedsynth.datasets import generate_trauma, trauma_spec_path
from fedsynth.models.coding import build_design
from fedsynth.models.fit import fit_model
from fedsynth.round_document import ModelResult, RoundDocument
from fedsynth.spec import load_spec
from fedsynth.vocabulary import from_scale

SITES = [f"mtf-{n}" for n in ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")]
AUC = [0.62, 0.78, 0.70, 0.81, 0.66, 0.74]
OE = [0.92, 1.10, 1.01, 0.85, 1.20, 0.97]
V2_KEYS = ("scale", "null_value", "estimand", "site_scale", "pi_df", "blups")


def _doc() -> RoundDocument:
    subs = []
    for j, site in enumerate(SITES):
        results = {
            "auc": {"yi": AUC[j], "vi": 0.0003, "se": 0.0003 ** 0.5, "n": 900},
            "oe": {"yi": math.log(OE[j]), "vi": 0.004, "se": 0.004 ** 0.5, "n": 900},
            "brier": {"yi": 0.15 + 0.001 * j, "vi": 1e-5, "se": 1e-5 ** 0.5, "n": 900},
            "or": {"yi": 0.4 + 0.05 * j, "vi": 0.02, "se": 0.02 ** 0.5, "n": 900}}
        subs.append(SubmissionRecord("r", site, site, "", "", b"", b"", "", results, None))
    analyses = [{"name": "auc", "estimator": "auc", "scale": "raw"},
                {"name": "oe", "estimator": "oe_ratio"},
                {"name": "brier", "estimator": "brier"},
                {"name": "or", "estimator": "logistic"}]
    entries = pool_analyses(analyses, subs, {"method": "REML", "test": "z", "level": 95.0,
                                             "i2_threshold": 50.0})
    return RoundDocument(round="r-20261127-0001", status="pooled", analyses=tuple(entries),
                         quorum=6)


def _rows(text: str) -> dict[str, dict[str, str]]:
    """The analysis table as {analysis: {column: cell}}.

    The measure may hold spaces ("Brier score"), so each row is read from its scale cell
    on: the numbers that follow, then the flag if any.
    """
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("analysis"))
    names = lines[start].split()
    after = names[names.index("scale"):]
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = line.split()
        at = next(i for i in range(4, len(cells)) if cells[i] in ("identity", "log", "logit"))
        tail = cells[at:] + [""] * (len(after) - len(cells[at:]))
        rows[cells[0]] = dict(zip(after, tail))
    return rows


@pytest.fixture(scope="module")
def doc() -> RoundDocument:
    return _doc()


def test_estimates_are_back_transformed_with_scale_and_null(doc):
    text = render_table(doc)
    rows = _rows(text)
    for name in ("auc", "oe", "or"):
        a = doc.analysis(name)
        p = a.pooled
        row = rows[name]
        assert a.scale in ("logit", "log")
        assert row["scale"] == a.scale
        for col in ("estimate", "ci_lb", "ci_ub", "pi_lb", "pi_ub"):
            assert row[col] == f"{from_scale(getattr(p, col), a.scale):.3f}", (name, col)
        assert row["pval"] == ("<0.0001" if p.pval < 1e-4 else f"{p.pval:.4f}")
        assert row["H0"] == f"{a.null_value:g}"
    # a c-statistic near 0.72, not its logit near 0.95; an O:E near 1, not its log near 0
    c = float(rows["auc"]["estimate"])
    assert 0.6 < c < 0.85 and rows["auc"]["H0"] == "0.5"
    assert 0.85 < float(rows["oe"]["estimate"]) < 1.2 and rows["oe"]["H0"] == "1"
    assert "pooled on the logit scale: c-statistic" in text
    assert "pooled on the log scale: O:E, OR" in text
    # the method and test each analysis was pooled with (performance measures: their own)
    for a in doc.analyses:
        line = next(x for x in text.splitlines() if x.startswith(f"{a.analysis} "))
        assert line.split()[2] == f"{a.method}/{a.test}"


def test_brier_has_no_pvalue_and_no_null(doc):
    rows = _rows(render_table(doc))
    brier = rows["brier"]
    assert brier["scale"] == "identity"
    assert brier["pval"] == NO_NULL and brier["H0"] == NO_NULL
    assert f"{doc.analysis('brier').pooled.estimate:.3f}" == brier["estimate"]
    assert "identity scale" not in render_table(doc)


def test_version_1_document_prints_as_before(doc):
    data = doc.to_dict()
    data.pop("schema_version", None)
    for entry in data["analyses"]:
        for key in V2_KEYS:
            entry.pop(key, None)
        entry.get("heterogeneity", {}).pop("rules", None)
    old = RoundDocument.from_dict(data)
    assert old.schema_version == 1
    text = render_table(old)
    header = next(line for line in text.splitlines() if line.startswith("analysis"))
    assert header.split() == ["analysis", "k", "method", "estimate", "ci_lb", "ci_ub",
                              "tau2", "I2", "flag"]
    auc = old.analysis("auc").pooled
    line = next(line for line in text.splitlines() if line.startswith("auc "))
    assert line.split()[3] == f"{auc.estimate:.4f}"        # the logit, as before
    assert "pooled on the" not in text and "H0" not in text


def test_a_value_that_rounds_to_zero_prints_without_a_sign():
    """``-0.0000`` reads as a negative estimate: the table prints ``0.0000`` (HTML does too)."""
    assert _fmt(-1e-9) == "0.0000" and _fmt(-4e-5, 4) == "0.0000"
    assert _fmt(-0.00006, 4) == "-0.0001" and _fmt(0.0, 2) == "0.00"


def test_models_table_shows_each_model_with_its_fits(doc):
    """``round show`` text: per model the header, coefficients in the spec's order with
    the one-stage and hierarchical numbers and the heterogeneity flag, tau and ICC."""
    model = load_spec(trauma_spec_path()).model("tbi_mortality")
    frames = generate_trauma(3, seed=2, rows=300)
    fit = fit_model({s: build_design(f, model) for s, f in frames.items()})
    entry = fit.to_dict()
    entry.update(status="fitted", round_trips=26, seconds=6.5,
                 heterogeneity={"hypots": {"flagged": True, "level": "strong",
                                           "reasons": ["I2 high"]}},
                 refused={}, dropped={"mtf-delta": "did not answer <b>\x1b[31m"})
    result = ModelResult.from_dict(entry)
    with_models = dataclasses.replace(doc, models=(result,),
                                      spec={"models": [model.to_dict()]})
    text = render_table(with_models)
    assert text.startswith(render_table(doc))          # the analyses come first, unchanged
    lines = text.splitlines()
    head = next(line for line in lines if line.startswith("model tbi_mortality"))
    assert ("family binomial  status fitted  sites 3  n 900  iterations "
            f"{entry['one_stage']['iterations']}  round trips 26  seconds 6.5") in head
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("coefficient"))
    names = [lines[start + 1 + i].split()[0] for i in range(len(model.coefficient_names))]
    assert names == list(model.coefficient_names)
    age = lines[start + 1 + names.index("age")].split()
    one, hier = entry["one_stage"], entry["hierarchical"]
    assert age[1:7] == [_fmt(one[k]["age"]) for k in ("coefficients", "se", "ci_lb", "ci_ub")] \
        + [_fmt(hier[k]["age"]) for k in ("coefficients", "se")]
    assert lines[start + 1 + names.index("hypots")].split()[-1] == "strong"
    assert f"hierarchical: tau {_fmt(hier['tau'])}  tau2 {_fmt(hier['tau2'])}  ICC (latent) " \
           f"{_fmt(hier['icc'])}" in text
    assert "95% CI" in text
    # a reason from a site is shown, not executed by the terminal
    assert "dropped mtf-delta: did not answer <b>\\x1b[31m" in text
    assert "\x1b" not in text
