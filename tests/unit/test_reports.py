"""Round and trend reports: content, escaping of untrusted text, strict JSON, divergence."""

from __future__ import annotations

import copy
import json
import math
import re
from html.parser import HTMLParser

import pytest

from coordinator.reports import (
    DIVERGENCE_Z,
    deleted_residuals,
    render_round_html,
    sanitize_svg,
    trend_summary,
    write_round_report,
    write_trend_report,
)
from fedsynth.cli import main
from fedsynth.errors import InputError
from tests.conftest import load_json

EXPECTED = load_json("sites_public/expected.json")
SITES = list(EXPECTED["sites"])
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>$\\frac{1}{2}$ & "q"'

ANALYSES = (("adjusted_logOR", "logistic", "OR"), ("los_MD", "two_group", "MD"),
            ("logHR_efron", "cox", None))


def make_round(round_id: str, opened_at: str, *, shift: dict[str, float] | None = None,
               extra_site: tuple[str, float, float] | None = None,
               refuse: dict[str, str] | None = None) -> dict:
    """A round document pooled by the project's own synthesis from the R site estimates."""
    from fedsynth.meta.analysis import analyse

    refuse = refuse or {}
    analyses = []
    for name, estimator, measure in ANALYSES:
        rows = [{"site": s, "yi": EXPECTED["sites"][s][name]["yi"] + (shift or {}).get(s, 0.0),
                 "vi": EXPECTED["sites"][s][name]["vi"], "se": EXPECTED["sites"][s][name]["se"],
                 "n": EXPECTED["sites"][s]["n"]} for s in SITES if s not in refuse]
        if extra_site:
            rows.append({"site": extra_site[0], "yi": extra_site[1], "vi": extra_site[2],
                         "se": math.sqrt(extra_site[2]), "n": 100})
        result = analyse([r["yi"] for r in rows], [r["vi"] for r in rows],
                         labels=[r["site"] for r in rows]).to_dict()
        pooled = {k: result[k] for k in ("k", "method", "test", "estimate", "se", "ci_lb",
                                         "ci_ub", "pval", "tau2", "tau2_ci", "Q", "Q_pval",
                                         "I2", "I2_ci", "H2", "pi_lb", "pi_ub")}
        het = result["heterogeneity"]
        analyses.append({"analysis": name, "estimator": estimator, "measure": measure, **pooled,
                         "heterogeneity": {k: het[k] for k in ("flagged", "level", "reasons",
                                                               "sites")},
                         "site_estimates": rows, "refused": dict(refuse)})
    sites = [{"site": s, "status": "submitted", "submitted_at": opened_at,
              "refusals": {a[0]: refuse[s] for a in ANALYSES} if s in refuse else {}}
             for s in SITES]
    sites.append({"site": "mtf-golf", "status": "missing", "submitted_at": None,
                  "refusals": {}})
    return {"round": round_id, "status": "pooled",
            "spec": {"name": "monthly-evaluation", "analyses": []},
            "opened_at": opened_at, "deadline": opened_at, "closed_at": opened_at,
            "quorum": 3, "failure_reason": None, "sites": sites, "analyses": analyses}


class _Tags(HTMLParser):
    """Collect every start tag and attribute, so tests see what a browser would parse."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(html_text: str) -> _Tags:
    parser = _Tags()
    parser.feed(html_text)
    return parser


@pytest.fixture(scope="module")
def round_doc() -> dict:
    return make_round("r-20261125-0001", "2026-11-25T14:00:00Z",
                      refuse={"mtf-foxtrot": "disclosure limit: a cell of 4 is below 5"})


# ---- round report -------------------------------------------------------------------------

def test_round_report_files_and_json_roundtrip(tmp_path, round_doc):
    paths = write_round_report(round_doc, tmp_path / "reports")
    assert paths.html == tmp_path / "reports" / "r-20261125-0001.html"
    assert json.loads(paths.json.read_text()) == round_doc
    assert not list((tmp_path / "reports").glob(".*tmp"))      # no temporary files left


def test_round_report_content(round_doc):
    html_text = render_round_html(round_doc)
    page = parse(html_text)
    text = " ".join(page.text)
    # one inline SVG forest plot per analysis, with the site names as searchable text
    svgs = re.findall(r"<svg\b.*?</svg>", html_text, flags=re.S)
    assert len(svgs) == len(ANALYSES)
    # HTML parsers know no XML prefixes: <ns0:svg> would not render
    assert not re.search(r"<\w+:\w+", html_text)
    for svg in svgs:
        # each site's interval and box (all of a kind in one path of the direct SVG writer,
        # issue 17), the pooled diamond and the axis are drawn
        k = len(SITES) - 1
        marks = dict((w, d) for d, w in re.findall(
            r'<path d="([^"]*)" stroke="#1f2a44" stroke-width="([\d.]+)"', svg))
        ci = marks.pop("0.9")                       # boxes: strokes as wide as long
        assert ci.count("M") == k and ci.count("H") == k
        assert sum(d.count(f"h{w}") for w, d in marks.items()) == k
        assert svg.count('fill="#1f4e79"') == 1 and svg.count("<text") > 3 * k
        assert all(f">{site}<" in svg for site in SITES if site != "mtf-foxtrot")
    for name, _, _ in ANALYSES:
        assert name in text
        analysis = next(a for a in round_doc["analyses"] if a["analysis"] == name)
        # ratios are shown back-transformed (OR, HR), with the pooling scale stated
        g = math.exp if analysis["estimator"] in ("logistic", "cox") else (lambda x: x)
        assert f"{g(analysis['estimate']):.3f}" in text
        assert f"{g(analysis['ci_lb']):.3f} to {g(analysis['ci_ub']):.3f}" in text
        if analysis["heterogeneity"]["reasons"]:
            assert " ".join(analysis["heterogeneity"]["reasons"]) in text
    assert "pooled on the log scale" in text and "H0: OR = 1" in text
    # participation, the missing site and the refusal with its reason
    assert "6 of 7 allowed sites submitted (quorum 3)" in text
    assert "mtf-golf" in text and "missing" in text
    assert text.count("disclosure limit: a cell of 4 is below 5") >= 3
    # self-contained: no external resource, and a CSP that forbids scripts
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            assert value is None or value.startswith("#"), (tag, attrs)
    assert any(tag == "meta" and "default-src 'none'" in (attrs.get("content") or "")
               for tag, attrs in page.tags)


def test_hostile_site_names_and_reasons_are_escaped(tmp_path, round_doc):
    doc = copy.deepcopy(round_doc)
    doc["spec"]["name"] = HOSTILE
    doc["sites"].append({"site": HOSTILE, "status": "submitted", "submitted_at": HOSTILE,
                         "refusals": {HOSTILE: HOSTILE}})
    doc["analyses"][0]["site_estimates"].append({"site": HOSTILE, "yi": 0.1, "vi": 0.05,
                                                 "n": 100})
    doc["analyses"][0]["refused"][HOSTILE] = HOSTILE
    doc["analyses"][0]["heterogeneity"]["reasons"].append(HOSTILE)
    doc["analyses"][0]["heterogeneity"]["sites"].append(HOSTILE)
    doc["failure_reason"] = HOSTILE
    html_text = write_round_report(doc, tmp_path).html.read_text()
    page = parse(html_text)
    assert not [t for t, _ in page.tags if t in ("script", "img", "iframe", "object")]
    assert not [(t, a) for t, a in page.tags if any(k.startswith("on") for k in a)]
    # the text survives, visibly, as text (in the forest plot too, escaped, no mathtext)
    assert sum(HOSTILE in chunk for chunk in page.text) >= 8
    svg = re.search(r"<svg\b.*?</svg>", html_text, flags=re.S).group(0)
    assert "&lt;script&gt;alert(" in svg and "\\$" not in svg


def test_ids_are_unique_across_inlined_figures(round_doc):
    ids = re.findall(r'\sid="([^"]+)"', render_round_html(round_doc))
    assert ids and len(ids) == len(set(ids))


def test_forest_plots_of_json_and_typed_analyses_are_equal(round_doc):
    """The plots are drawn in-process from typed analyses (no worker pool since issue 17);
    an analysis given as its JSON object draws the same SVG."""
    import coordinator.reports as reports
    from fedsynth.round_document import RoundDocument

    typed = RoundDocument.coerce(round_doc).analyses
    from_json = reports._forest_svgs(round_doc["analyses"])
    assert from_json == reports._forest_svgs(typed) and all(from_json)
    assert [s.count("<svg") for s in from_json] == [1] * len(typed)


def test_sanitize_svg_strips_active_content_and_prefixes_ids():
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
           'onload="alert(1)"><script>alert(2)</script><defs><path id="m" d="M0 0"/></defs>'
           '<use xlink:href="#m"/><use xlink:href="http://evil/x.svg#m"/>'
           '<g clip-path="url(#c1)"><a href="javascript:alert(3)"><text>hi</text></a></g>'
           '<foreignObject><div>x</div></foreignObject><image href="http://evil/p.png"/></svg>')
    out = sanitize_svg(svg, "f7-")
    assert "script" not in out and "onload" not in out and "evil" not in out
    assert "javascript" not in out and "foreignObject" not in out
    assert 'id="f7-m"' in out and 'href="#f7-m"' in out and "url(#f7-c1)" in out
    with pytest.raises(InputError, match="not valid SVG"):
        sanitize_svg("<svg><unclosed></svg>", "x")
    with pytest.raises(InputError, match="root element"):
        sanitize_svg('<html xmlns="http://www.w3.org/1999/xhtml"/>', "x")


def test_non_finite_numbers_become_null_and_dashes(tmp_path, round_doc):
    doc = copy.deepcopy(round_doc)
    doc["analyses"][1]["tau2"] = float("nan")
    doc["analyses"][1]["pi_lb"] = float("inf")
    doc["analyses"][1]["I2_ci"] = None
    paths = write_round_report(doc, tmp_path)
    data = json.loads(paths.json.read_text())        # strict JSON: json.loads would accept NaN
    assert data["analyses"][1]["tau2"] is None and data["analyses"][1]["pi_lb"] is None
    assert "NaN" not in paths.json.read_text() and "Infinity" not in paths.json.read_text()
    assert "nan" not in paths.html.read_text().lower().replace("nanum", "")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(round="../../etc/passwd"), "field 'round'"),
    (lambda d: d.update(round=17), "field 'round'"),
    (lambda d: d.update(analyses={"a": 1}), "field 'analyses' must be a list"),
    (lambda d: d["analyses"][0]["site_estimates"].append({"yi": 1}),
     r"analyses\[0\].site_estimates\[5\].site"),
    (lambda d: d["sites"][0].update(refusals=["x"]), r"sites\[0\].refusals"),
    (lambda d: d["analyses"][2].update(heterogeneity="high"), r"analyses\[2\].heterogeneity"),
    # enumerations and numbers are typed: hostile text there is refused, not rendered
    (lambda d: d["sites"][0].update(status=HOSTILE), r"sites\[0\].status"),
    (lambda d: d["analyses"][0]["site_estimates"][0].update(n=HOSTILE),
     r"analyses\[0\].site_estimates\[0\].n"),
    (lambda d: d["analyses"][1].update(estimate="0.3"), r"analyses\[1\].estimate"),
    (lambda d: d.update(status="closed"), "field 'status'"),
    (lambda d: d.update(opened_at="yesterday"), "field 'opened_at'"),
    (lambda d: d.update(schema_version=99), "schema_version"),
])
def test_bad_round_documents_name_the_field_and_write_nothing(tmp_path, round_doc, mutate,
                                                              message):
    doc = copy.deepcopy(round_doc)
    mutate(doc)
    with pytest.raises(InputError, match=message):
        write_round_report(doc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_round_without_analyses(tmp_path):
    doc = {"round": "r-1", "status": "failed", "failure_reason": "quorum 3 not reached: 1 site",
           "sites": [{"site": "mtf-alpha", "status": "submitted", "refusals": {}}],
           "analyses": []}
    text = write_round_report(doc, tmp_path).html.read_text()
    assert "quorum 3 not reached: 1 site" in text and "<svg" not in text


# ---- deleted residuals ----------------------------------------------------------------------

def test_deleted_residual_by_hand():
    yi, vi = [0.0, 0.2, 1.5], [0.04, 0.04, 0.04]
    z = deleted_residuals(yi, vi)
    # leave out site 3: two sites, FE mean 0.1, Q = 0.5 < df = 1 so tau2 = 0, se^2 = 0.02
    assert z[2] == pytest.approx((1.5 - 0.1) / math.sqrt(0.04 + 0.02))
    # leave out site 1: mean 0.85, Q = (0.65^2 * 2) / 0.04 = 21.125, tau2 = (Q-1)/c, c = 25
    tau2 = (21.125 - 1) / (50 - 1250 / 50)
    assert z[0] == pytest.approx((0.0 - 0.85) / math.sqrt(0.04 + tau2 + 1 / (2 / (0.04 + tau2))))
    assert deleted_residuals([1.0, 2.0], [0.1, 0.1]) == [None, None]


def test_deleted_residual_is_shift_invariant():
    yi, vi = [0.1, -0.3, 0.4, 0.2, 1.2], [0.02, 0.05, 0.03, 0.01, 0.04]
    base = deleted_residuals(yi, vi)
    shifted = deleted_residuals([y + 3.0 for y in yi], vi)
    assert shifted == pytest.approx(base)


# ---- trend ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def monthly_rounds() -> list[dict]:
    # mtf-charlie's treatment effect drifts upwards from the 5th month on
    return [make_round(f"r-2026{m:02d}01-0001", f"2026-{m:02d}-01T06:00:00Z",
                       shift={"mtf-charlie": 0.3 * max(0, m - 4)}) for m in range(1, 8)]


def test_trend_finds_the_site_that_starts_to_diverge(monthly_rounds):
    trends = trend_summary(list(reversed(monthly_rounds)))     # input order does not matter
    assert [t.analysis for t in trends] == [a[0] for a in ANALYSES]
    for trend in trends:
        assert trend.rounds == tuple(d["round"] for d in monthly_rounds)
        charlie = next(s for s in trend.sites if s.site == "mtf-charlie")
        assert charlie.diverging
        out = [abs(z) > DIVERGENCE_Z for z in charlie.z]
        assert out[:4] == [False] * 4                           # not before the shift
        assert all(out[out.index(True):])                       # and stays out
        assert charlie.diverging_since == trend.rounds[out.index(True)]
        assert abs(charlie.z[-1]) > DIVERGENCE_Z
        # the other sites are not flagged, although the coordinator calls some of them
        # influential once mtf-charlie has moved away
        assert [s.site for s in trend.sites if s.diverging] == ["mtf-charlie"]
        assert trend.estimate[0] == monthly_rounds[0]["analyses"][
            [a[0] for a in ANALYSES].index(trend.analysis)]["estimate"]


def test_trend_drift_of_pooled_estimate(monthly_rounds):
    [trend] = trend_summary(monthly_rounds, ["los_MD"])
    change, z = trend.drift()
    assert change == pytest.approx(trend.estimate[-1] - trend.estimate[0])
    se0 = (trend.ci_ub[0] - trend.ci_lb[0]) / (2 * 1.959963984540054)
    se1 = (trend.ci_ub[-1] - trend.ci_lb[-1]) / (2 * 1.959963984540054)
    assert z == pytest.approx(change / math.hypot(se0, se1))


def test_trend_report_files(tmp_path, monthly_rounds):
    out = write_trend_report(monthly_rounds, tmp_path, analyses=["adjusted_logOR", "los_MD"])
    html_text = out.read_text()
    assert out == tmp_path / "trend.html"
    assert len(re.findall(r"<svg\b", html_text)) == 2
    assert "mtf-charlie" in html_text and "diverging since" in html_text
    data = json.loads((tmp_path / "trend.json").read_text())
    assert [a["analysis"] for a in data["analyses"]] == ["adjusted_logOR", "los_MD"]
    assert len(data["analyses"][0]["rounds"]) == 7
    with pytest.raises(InputError, match="'nope' is not in any round"):
        write_trend_report(monthly_rounds, tmp_path, analyses=["nope"])
    with pytest.raises(InputError, match="no round documents"):
        write_trend_report([], tmp_path)


# ---- command line -----------------------------------------------------------------------------

def test_cli_trend_and_round_from_rounds_dir(tmp_path, monthly_rounds, capsys):
    rounds = tmp_path / "rounds"
    rounds.mkdir()
    for doc in monthly_rounds[:3]:
        (rounds / f"{doc['round']}.json").write_text(json.dumps(doc))
    assert main(["report", "trend", "--rounds-dir", str(rounds), "--out",
                 str(tmp_path / "out"), "--analysis", "los_MD"]) == 0
    assert (tmp_path / "out" / "trend.html").exists()
    assert json.loads((tmp_path / "out" / "trend.json").read_text())["analyses"][0][
        "analysis"] == "los_MD"
    assert main(["report", "round", monthly_rounds[1]["round"], "--rounds-dir", str(rounds),
                 "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / f"{monthly_rounds[1]['round']}.html").exists()
    # the trend.json written into a report folder is not mistaken for a round
    assert main(["report", "trend", "--rounds-dir", str(tmp_path / "out"), "--out",
                 str(tmp_path / "out2")]) == 0
    capsys.readouterr()


def test_cli_errors_exit_2_and_name_the_problem(tmp_path, capsys):
    assert main(["report", "trend", "--rounds-dir", str(tmp_path / "nope"), "--out",
                 str(tmp_path)]) == 2
    assert "--rounds-dir" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["report", "trend", "--rounds-dir", str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 2
    assert "bad.json" in capsys.readouterr().err
    assert main(["report", "trend", "--out", str(tmp_path)]) == 2
    assert "--config" in capsys.readouterr().err
    (tmp_path / "bad.json").unlink()
    (tmp_path / "r.json").write_text(json.dumps({"round": "r-1", "status": "pooled",
                                                 "sites": [], "analyses": []}))
    assert main(["report", "round", "r-2", "--rounds-dir", str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 2
    assert "'r-2' not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- big rounds: a summary page and one page per analysis (issue 17) ------------------------

def _links(html_text: str) -> list[str]:
    return [a["href"] for tag, a in parse(html_text).tags if tag == "a" and "href" in a]


def test_big_round_is_a_summary_page_and_one_page_per_analysis(tmp_path, round_doc,
                                                               monkeypatch):
    import coordinator.reports as reports

    assert reports.report_layout(round_doc) == "page"
    monkeypatch.setattr(reports, "PAGES_ABOVE_ANALYSES", 2)      # 3 analyses: "big"
    assert reports.report_layout(round_doc) == "pages"
    out = tmp_path / "reports"
    paths = write_round_report(round_doc, out)
    assert paths.pages == out / round_doc["round"] and paths.html == out / "r-20261125-0001.html"
    assert json.loads(paths.json.read_text()) == round_doc
    pages = sorted(p.name for p in paths.pages.iterdir())
    assert pages == ["001-adjusted_logOR.html", "002-los_MD.html", "003-logHR_efron.html"]
    summary = paths.html.read_text()
    # the summary loads at once: tables, no plot; every analysis links to its page
    assert "<svg" not in summary and "Pooled results" in summary
    assert "6 of 7 allowed sites submitted (quorum 3)" in " ".join(parse(summary).text)
    assert {f"{round_doc['round']}/{p}" for p in pages} <= set(_links(summary))
    for number, name in enumerate(pages):
        page = (paths.pages / name).read_text()
        analysis = round_doc["analyses"][number]
        assert page.count("<svg") == 1 and page.count("<table") == 3
        assert f"<h1>{analysis['analysis']} " in page
        assert all(f">{s}<" in page for s in SITES if s != "mtf-foxtrot")
        assert "disclosure limit: a cell of 4 is below 5" in page
        # same CSP, no script, links only to pages of this report that exist
        tags = parse(page).tags
        assert any(t == "meta" and "default-src 'none'" in (a.get("content") or "")
                   for t, a in tags)
        assert not [t for t, _ in tags if t in ("script", "img", "iframe", "object")]
        for href in _links(page):
            assert not re.match(r"^[a-z]+:|^/|//", href), href
            assert (paths.pages / href).resolve().is_file(), href
    assert not list(out.glob(".*"))                          # no staging folder left
    # the files are private to the coordinator's user, as the one-page report
    assert {oct(p.stat().st_mode & 0o777) for p in paths.pages.iterdir()} == {"0o600"}


def test_rewriting_a_round_replaces_its_pages(tmp_path, round_doc, monkeypatch):
    import coordinator.reports as reports

    out = tmp_path / "reports"
    paths = write_round_report(round_doc, out, layout="pages")
    (paths.pages / "001-adjusted_logOR.html").write_text("stale")
    write_round_report(round_doc, out, layout="pages")
    assert (paths.pages / "001-adjusted_logOR.html").read_text() != "stale"
    # written again as one page: the folder of pages goes
    assert write_round_report(round_doc, out, layout="page").pages is None
    assert not paths.pages.exists() and "<svg" in paths.html.read_text()
    # a folder of that name that is not ours is left alone, and nothing is written
    (out / round_doc["round"]).mkdir()
    (out / round_doc["round"] / "notes.txt").write_text("mine")
    before = paths.html.read_text()
    with pytest.raises(InputError, match="holds other files than report pages"):
        write_round_report(round_doc, out, layout="pages")
    assert paths.html.read_text() == before
    assert (out / round_doc["round"] / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="layout: 'one' is not 'page' or 'pages'"):
        write_round_report(round_doc, tmp_path / "o", layout="one")
    assert not (tmp_path / "o").exists()
    # a failure while rendering leaves the previous report as it was
    monkeypatch.setattr(reports, "_site_estimate_table",
                        lambda a: (_ for _ in ()).throw(RuntimeError("boom")))
    (out / round_doc["round"] / "notes.txt").unlink()
    (out / round_doc["round"]).rmdir()
    with pytest.raises(RuntimeError, match="boom"):
        write_round_report(round_doc, out, layout="pages")
    assert paths.html.read_text() == before and not paths.pages.exists()
    assert not list(out.glob(".*"))


def test_report_worker_names_the_pages_folder(tmp_path, round_doc, monkeypatch, capsys):
    import io as _io

    import coordinator.reports as reports
    from coordinator import report_worker

    monkeypatch.setattr(reports, "PAGES_ABOVE_ANALYSES", 2)
    monkeypatch.setattr("sys.stdin", _io.TextIOWrapper(_io.BytesIO(
        json.dumps(round_doc).encode())))
    assert report_worker.main([str(tmp_path)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["pages"] == str(tmp_path / round_doc["round"])
    assert (tmp_path / round_doc["round"] / "002-los_MD.html").exists()
