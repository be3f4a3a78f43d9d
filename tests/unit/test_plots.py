"""Forest and funnel plots: content, readability, formats and no global pyplot state.

Readability is checked on the rendered figure: every visible text's bounding box (from the
Agg renderer's ``get_window_extent``) must lie inside the figure and overlap no other text,
and there must be one label per site. ``test_layout_checker_detects_unreadable_plots`` proves
the checker fails on overlapping and clipped text, so the other tests can fail.
"""

from __future__ import annotations

import io
import math
import re

import matplotlib
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure
from matplotlib.text import Text

from fedsynth.errors import InputError
from fedsynth.meta import meta_analysis
from fedsynth.meta.bayes import bayes_pool
from fedsynth.meta.diagnostics import blup, publication_bias
from fedsynth.meta.subgroups import subgroup_analysis
from fedsynth.plots import forest_plot, forest_svg, funnel_plot, save_figure
from tests.conftest import load_json

DATA = load_json("metafor_public.json")
BCG = next(c for c in DATA["pooling"] if c["id"] == "bcg/OR/REML/z")
BCG_GROUPS = next(c for c in DATA["subgroup"] if c["id"] == "bcg/OR")["group"]


def bcg_result(**kwargs):
    return meta_analysis(BCG["yi"], BCG["vi"], labels=BCG["labels"], **kwargs)


def synthetic(k: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    v = rng.uniform(0.01, 0.3, k)
    y = rng.normal(0.2, 0.3, k) + rng.normal(0, np.sqrt(v))
    labels = [f"Military treatment facility {i + 1}" if i % 13 == 0 else f"Site {i + 1}"
              for i in range(k)]
    return meta_analysis(y, v, labels=labels)


def visible_texts(fig: Figure) -> list[Text]:
    """Every text the renderer draws: figure texts, titles, axis labels, in-view tick
    labels, legend entries."""
    out: list[Text] = list(fig.texts)
    for ax in fig.axes:
        out += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        out += list(ax.texts)
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = min(lo, hi), max(lo, hi)
            for loc, lab in zip(axis.get_majorticklocs(), axis.get_majorticklabels()):
                if lo - 1e-9 <= loc <= hi + 1e-9:
                    out.append(lab)
        if ax.get_legend():
            out += list(ax.get_legend().get_texts())
    for legend in fig.legends:
        out += list(legend.get_texts())
    return [t for t in out if t.get_visible() and t.get_text().strip()]


def layout_problems(fig: Figure) -> list[str]:
    """Texts clipped by the figure edge or overlapping another text (in pixels)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    fbox = fig.bbox
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in visible_texts(fig)]
    problems = []
    for text, b in boxes:
        if b.x0 < fbox.x0 - 0.5 or b.y0 < fbox.y0 - 0.5 or b.x1 > fbox.x1 + 0.5 \
                or b.y1 > fbox.y1 + 0.5:
            problems.append(f"clipped: {text!r}")
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i][1], boxes[j][1]
            if min(a.x1, b.x1) - max(a.x0, b.x0) > 0.5 and min(a.y1, b.y1) - max(a.y0, b.y0) > 0.5:
                problems.append(f"overlap: {boxes[i][0]!r} / {boxes[j][0]!r}")
    return problems


def site_labels(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.texts if (t.get_gid() or "").startswith("label-site-")]


def test_layout_checker_detects_unreadable_plots():
    fig = Figure(figsize=(3, 2))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.text(0.1, 0.5, "first label")
    fig.text(0.12, 0.5, "second label")            # on top of the first
    fig.text(0.9, 0.9, "runs off the right edge")
    problems = layout_problems(fig)
    assert any(p.startswith("overlap") for p in problems)
    assert any(p.startswith("clipped") for p in problems)


@pytest.mark.parametrize("k", [3, 13, 200])
def test_forest_rows_readable_for_3_13_200_sites(k):
    res = bcg_result() if k == 13 else synthetic(k)
    fig = forest_plot(res, title=f"{k} sites")
    assert layout_problems(fig) == []
    labels = site_labels(fig)
    assert len(labels) == k and labels == list(res.labels)
    sizes = {t.get_fontsize() for t in fig.texts if (t.get_gid() or "").startswith("label-")}
    assert sizes == {9.0}                  # fixed font size, the figure grows instead


def test_forest_height_grows_with_rows():
    h3 = forest_plot(synthetic(3)).get_figheight()
    h13 = forest_plot(synthetic(13)).get_figheight()
    h200 = forest_plot(synthetic(200)).get_figheight()
    assert h3 < h13 < h200
    assert (h200 - h13) == pytest.approx(187 * 0.22, rel=1e-6)


def test_forest_bcg_ratio_measure_with_everything():
    res = bcg_result()
    fig = forest_plot(res, measure="OR", title="BCG", blup=blup(BCG["yi"], BCG["vi"]),
                      bayes=bayes_pool(BCG["yi"], BCG["vi"]), show_fixed=True)
    assert layout_problems(fig) == []
    ax = fig.axes[0]
    # ticks are placed on the log scale and labelled with the ratio itself
    for loc, lab in zip(ax.get_xticks(), ax.get_xticklabels()):
        assert math.exp(loc) == pytest.approx(float(lab.get_text()), rel=1e-9)
    assert "log scale" in ax.get_xlabel()
    texts = [t.get_text() for t in fig.texts]
    est, lo, hi = (math.exp(x) for x in (res.estimate, res.ci_lb, res.ci_ub))
    assert f"{est:.2f} [{lo:.2f}, {hi:.2f}]" in texts           # back-transformed numbers
    assert any(t.startswith("Heterogeneity: \u03c4\u00b2 = 0.338, I\u00b2 = 92.1%, Q(12) = 163.16")
               for t in texts)
    assert any(t.startswith("Bayesian (half-normal") for t in texts)
    assert "FE model (inverse variance)" in texts and "Prediction interval" in texts
    # weights column sums to 100
    weights = [float(t[:-1]) for t in texts if re.fullmatch(r"\d+\.\d%", t)]
    assert len(weights) == 13 and sum(weights) == pytest.approx(100, abs=13 * 0.05)
    # one diamond per pooled row (RE, FE, Bayes)
    assert len(ax.patches) == 3


def test_forest_subgroups_blocks_and_test():
    res = bcg_result()
    fig = forest_plot(res, measure="OR", subgroups=BCG_GROUPS)
    assert layout_problems(fig) == []
    texts = [t.get_text() for t in fig.texts]
    groups = sorted(set(BCG_GROUPS))
    for g in groups:
        assert g in texts
        assert any(t.startswith(f"RE model for {g} (k = {BCG_GROUPS.count(g)}") for t in texts)
    assert any(t.startswith("Test for subgroup differences: Q(2)") for t in texts)
    assert len(site_labels(fig)) == 13
    assert len(fig.axes[0].patches) == len(groups) + 1
    # a precomputed SubgroupResult gives the same figure text
    sub = subgroup_analysis(BCG["yi"], BCG["vi"], BCG_GROUPS, labels=BCG["labels"])
    assert [t.get_text() for t in forest_plot(res, measure="OR", subgroups=sub).texts] == texts


def test_forest_accepts_round_document_analysis_and_fixed_effect():
    fe = bcg_result(method="FE")
    fig = forest_plot(fe)
    texts = [t.get_text() for t in fig.texts]
    assert "FE model (FE)" in texts and "Prediction interval" not in texts
    doc = {"analysis": "mortality", "estimate": -0.7, "ci_lb": -1.1, "ci_ub": -0.4,
           "pi_lb": -1.9, "pi_ub": 0.4, "tau2": 0.3, "I2": 90.0, "Q": 150.0, "Q_pval": 1e-9,
           "method": "REML", "site_estimates": [
               {"site": "mtf-alpha", "yi": -0.9, "vi": 0.05},
               {"site": "mtf-bravo", "yi": -0.3, "vi": 0.02},
               {"site": "mtf-charlie", "yi": -1.2, "vi": 0.1}]}
    fig = forest_plot(doc, measure="HR")
    assert site_labels(fig) == ["mtf-alpha", "mtf-bravo", "mtf-charlie"]
    assert layout_problems(fig) == []


def test_forest_long_labels_are_shortened_not_clipped():
    res = meta_analysis([0.1, 0.2, 0.3], [0.01, 0.02, 0.03],
                        labels=["A" * 200, "Walter Reed National Military Medical Center\n"
                                "Bethesda", "x"])
    fig = forest_plot(res)
    labels = site_labels(fig)
    assert labels[0].endswith("\u2026") and len(labels[0]) == 45
    assert "\n" not in labels[1]
    assert layout_problems(fig) == []


def test_forest_clips_extreme_intervals_with_arrows():
    res = meta_analysis([0.1, 0.2, 0.3, 0.0], [0.01, 0.02, 0.03, 400.0])
    fig = forest_plot(res)
    lo, hi = fig.axes[0].get_xlim()
    assert hi - lo < 10                     # the wide site does not squash the others
    markers = [ln.get_marker() for ln in fig.axes[0].lines]
    assert "<" in markers and ">" in markers
    assert layout_problems(fig) == []


def test_funnel_with_trim_and_fill_from_diagnostics():
    case = next(c for c in DATA["publication_bias"] if c["id"] == "nielweise2007/OR")
    res = meta_analysis(case["yi"], case["vi"], labels=case["labels"])
    pb = publication_bias(case["yi"], case["vi"])
    assert pb.trimfill_k0 == case["expected"]["trimfill_k0"] == 7
    fig = funnel_plot(res, filled=pb, measure="OR", title="Trim and fill")
    assert layout_problems(fig) == []
    ax = fig.axes[0]
    open_pts = [ln for ln in ax.lines if ln.get_marker() == "o" and ln.get_markerfacecolor()
                in ("white", (1.0, 1.0, 1.0, 1.0))]
    assert len(open_pts) == 1 and len(open_pts[0].get_xdata()) == 7
    np.testing.assert_allclose(open_pts[0].get_ydata(), np.sqrt(pb.trimfill_filled_vi))
    assert ax.get_ylim()[0] > ax.get_ylim()[1] == 0.0             # se axis reversed
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "filled by trim-and-fill (7)" in legend and "adjusted estimate" in legend
    # plain arrays work too
    fig2 = funnel_plot(res, filled=(pb.trimfill_filled_yi, pb.trimfill_filled_vi))
    assert layout_problems(fig2) == []


def test_funnel_contour_enhanced_labels_bands():
    fig = funnel_plot(bcg_result(), centre="null", measure="OR")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"0.01 < p < 0.05", "0.05 < p < 0.1", "p > 0.1", "pooled estimate"} <= set(legend)
    assert layout_problems(fig) == []


@pytest.mark.parametrize("fmt,magic", [("png", b"\x89PNG"), ("svg", b"<?xml"),
                                       ("pdf", b"%PDF")])
def test_save_figure_formats_path_and_file(tmp_path, fmt, magic):
    fig = forest_plot(bcg_result(), measure="OR")
    path = tmp_path / f"forest.{fmt}"
    save_figure(fig, path)
    assert path.read_bytes().startswith(magic)
    buf = io.BytesIO()
    save_figure(fig, buf, format=fmt)
    assert buf.getvalue().startswith(magic)
    if fmt in ("svg", "pdf"):           # reproducible bytes
        again = io.BytesIO()
        save_figure(fig, again, format=fmt)
        assert again.getvalue() == buf.getvalue()


def test_save_figure_rejects_bad_targets(tmp_path):
    fig = forest_plot(bcg_result())
    with pytest.raises(InputError, match="format: expected png, svg or pdf, got 'jpg'"):
        save_figure(fig, tmp_path / "x.jpg")
    with pytest.raises(InputError, match="format"):
        save_figure(fig, io.BytesIO(), format="gif")
    with pytest.raises(InputError, match="does not exist"):
        save_figure(fig, tmp_path / "missing" / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_no_pyplot_state_is_touched():
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    before = plt.get_fignums()
    forest_plot(bcg_result(), bayes=bayes_pool(BCG["yi"], BCG["vi"]))
    funnel_plot(bcg_result())
    assert plt.get_fignums() == before
    assert matplotlib.get_backend() == backend


@pytest.mark.parametrize("call,field", [
    (lambda: forest_plot({"yi": [0.1, 0.2], "vi": [0.1, -0.1]}), "vi[1]"),
    (lambda: forest_plot({"yi": [0.1, float("nan")], "vi": [0.1, 0.1]}), "yi[1]"),
    (lambda: forest_plot({"yi": [], "vi": []}), "result"),
    (lambda: forest_plot({"yi": [0.1], "vi": [0.1], "labels": ["a", "b"]}), "labels"),
    (lambda: forest_plot(bcg_result(), blup=[0.1, 0.2]), "blup"),
    (lambda: forest_plot(bcg_result(), subgroups=["a", "b"]), "subgroups"),
    (lambda: forest_plot(bcg_result(), measure=""), "measure"),
    (lambda: funnel_plot(bcg_result(), centre="middle"), "centre"),
    (lambda: funnel_plot(bcg_result(), levels=[95, 100]), "levels"),
    (lambda: funnel_plot(bcg_result(), filled=([0.1], [0.1, 0.2])), "filled"),
    (lambda: funnel_plot(bcg_result(), filled="nonsense"), "filled"),
])
def test_bad_input_names_the_field(call, field):
    with pytest.raises(InputError) as info:
        call()
    assert str(info.value).startswith(field)


def test_labels_are_literal_text_not_mathtext():
    res = meta_analysis([0.1, 0.2, 0.3], [0.01, 0.02, 0.03],
                        labels=["Site $1 and $2", "a_b^c", r"\alpha"])
    fig = forest_plot(res, title="cost $5 $6")
    assert site_labels(fig) == ["Site $1 and $2", "a_b^c", r"\alpha"]
    assert all(not t.get_parse_math() for t in fig.texts)
    assert layout_problems(fig) == []
    save_figure(fig, io.BytesIO(), format="svg")


@settings(max_examples=5, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],       # no shrinking: keep the run bounded
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_forest_readable_on_random_inputs(data):
    k = data.draw(st.integers(1, 40), label="k")
    yi = data.draw(st.lists(st.floats(-4, 4), min_size=k, max_size=k), label="yi")
    vi = data.draw(st.lists(st.floats(1e-4, 4.0), min_size=k, max_size=k), label="vi")
    labels = data.draw(st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                        min_size=1, max_size=70), min_size=k, max_size=k),
                       label="labels")
    measure = data.draw(st.sampled_from([None, "OR", "MD", "HR"]), label="measure")
    res = meta_analysis(yi, vi, labels=labels, method="DL" if k > 1 else "FE")
    fig = forest_plot(res, measure=measure, show_fixed=True,
                      bayes=bayes_pool(yi, vi, prior="half_cauchy", scale=1.0))
    assert layout_problems(fig) == []
    assert len(site_labels(fig)) == k
    assert layout_problems(funnel_plot(res, measure=measure)) == []


def test_ratio_axis_on_a_narrow_range_still_has_labelled_ticks():
    res = meta_analysis([0.01, -0.02, 0.03, 0.0], [1e-4, 2e-4, 1.5e-4, 1e-4])
    fig = forest_plot(res, measure="RR")
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    shown = [(loc, lab.get_text()) for loc, lab in zip(ax.get_xticks(), ax.get_xticklabels())
             if lo <= loc <= hi]
    assert len(shown) >= 2
    for loc, text in shown:
        assert math.exp(loc) == pytest.approx(float(text), rel=1e-9)
    assert layout_problems(fig) == []


# ---- forest_svg: the direct SVG writer the round report uses (issue 17) ----------------------

_SVG_ELEMENTS = {"svg", "style", "rect", "path", "g", "text"}
_SVG_ATTRIBUTES = {"xmlns", "class", "width", "height", "viewBox", "role", "d", "fill",
                   "stroke", "stroke-width", "stroke-dasharray", "x", "y", "transform", "style"}


def _svg_tree(svg: str):
    import xml.etree.ElementTree as ET

    root = ET.fromstring(svg)
    return root, [(el.tag.rsplit("}", 1)[-1], el) for el in root.iter()]


def test_forest_svg_has_the_layout_of_forest_plot():
    res = bcg_result()
    kwargs = dict(measure="OR", title="BCG", blup=blup(BCG["yi"], BCG["vi"]),
                  drivers=[BCG["labels"][2]])
    fig = forest_plot(res, **kwargs)
    root, _ = _svg_tree(forest_svg(res, **kwargs))
    # the same figure size (inches -> points), so the same columns and rows
    assert float(root.get("width").removesuffix("pt")) == pytest.approx(
        72 * fig.get_figwidth(), abs=0.06)
    assert float(root.get("height").removesuffix("pt")) == pytest.approx(
        72 * fig.get_figheight(), abs=0.06)
    texts = [el.text for el in root.iter("{http://www.w3.org/2000/svg}text")]
    # every text of the matplotlib figure, in the same words (ticks, labels, numbers)
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    mpl = [t.get_text() for t in fig.texts] + [ax.xaxis.label.get_text()] + [
        lab.get_text() for loc, lab in zip(ax.get_xticks(), ax.get_xticklabels())
        if lo <= loc <= hi]
    assert sorted(texts) == sorted(t for t in mpl if t)


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(labels=st.lists(st.text(min_size=1, max_size=60), min_size=2, max_size=12),
       title=st.text(max_size=40))
def test_forest_svg_is_inert_markup_with_escaped_text(labels, title):
    """The report inlines forest_svg without re-sanitizing it: whatever the site names,
    the SVG holds only these elements and attributes, no id, no link, and each label
    (whitespace collapsed, shortened) as the text of one <text>."""
    k = len(labels)
    yi = [0.1 * i for i in range(k)]
    vi = [0.05 + 0.01 * i for i in range(k)]
    res = meta_analysis(yi, vi, labels=labels)
    svg = forest_svg(res, title=title or None, drivers=labels[:1],
                     blup=blup(yi, vi))
    root, elements = _svg_tree(svg)
    for tag, el in elements:
        assert tag in _SVG_ELEMENTS, tag
        assert set(el.attrib) <= _SVG_ATTRIBUTES, el.attrib
        for name, value in el.attrib.items():
            if name == "transform":
                assert re.fullmatch(r"translate\([-0-9.]+ [-0-9.]+\)", value), value
            elif name not in ("class", "style", "role", "xmlns", "stroke-dasharray"):
                assert re.fullmatch(r"[-0-9. A-Za-zHVMLhvmlaz#]*", value), (name, value)
        if tag == "style":
            assert "@import" not in el.text and "url(" not in el.text
        if el.get("style"):
            assert re.fullmatch(r"fill:#[0-9a-f]{6}", el.get("style"))
    texts = [el.text or "" for tag, el in elements if tag == "text"]
    for i, label in enumerate(labels):
        shown = " ".join(label.split()) or f"Study {i + 1}"     # a blank name is numbered
        shown = shown if len(shown) <= 45 else shown[:44] + "\u2026"
        shown = re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f]", "\ufffd", shown)   # not XML
        assert shown in texts or "\u25b2 " + shown in texts


def test_advance_widths_are_those_of_the_font():
    """Column widths come from a table of DejaVu Sans advances: check it against the font
    matplotlib ships, so a font update that changes widths fails here."""
    from matplotlib import ft2font
    from matplotlib.font_manager import FontProperties, findfont

    from fedsynth.plots import _ADVANCE

    for weight in ("normal", "bold"):
        font = ft2font.FT2Font(findfont(FontProperties(family="DejaVu Sans", weight=weight)))
        font.set_size(1000, 72)
        for i, advance in enumerate(_ADVANCE[weight]):
            glyph = font.load_char(32 + i, flags=ft2font.LoadFlags.NO_HINTING)
            assert round(glyph.linearHoriAdvance / 65536) == advance, (weight, chr(32 + i))
