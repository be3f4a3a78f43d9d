"""`fedsynth meta --by` at scale: streamed CSV output and agreement with the one-analysis API.

Issue 17: a 200,000-analysis ``--by`` CSV is written chunk by chunk
(:func:`fedsynth.cli.commands.meta._stream_csv`). Rows of the (m, K) grid are pooled
and flagged independently, so the streamed output must equal the output built at once
(to the last bits that numpy's SIMD loops give differently to an element in a vector
body and in a scalar tail), and every column must equal :func:`fedsynth.meta.meta_analysis` and
:meth:`PoolingResult.heterogeneity` of that analysis alone.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from fedsynth.cli import main
from fedsynth.cli.commands import meta
from fedsynth.meta import meta_analysis


def _random_csv(path, m: int, seed: int, kmax: int = 12) -> dict[str, tuple]:
    """``m`` analyses with 1..kmax sites, tau between 0 and 0.4; returns name -> (lab, y, v)."""
    rng = np.random.default_rng(seed)
    lines = ["analysis,study,yi,vi"]
    truth = {}
    for i in range(m):
        k = int(rng.integers(1, kmax + 1))
        v = rng.uniform(0.005, 0.2, k)
        y = rng.normal(0.1, 0.3) + rng.normal(0, 1, k) * np.sqrt(v + rng.uniform(0, 0.4) ** 2)
        labs = [f"s{j}" for j in range(k)]
        name = f"a{i:04d}"
        truth[name] = (labs, y, v)
        lines += [f"{name},{lab},{yy!r},{vv!r}"
                  for lab, yy, vv in zip(labs, y.tolist(), v.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return truth


def _run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("options", [(), ("--method", "DL"), ("--method", "PM", "--test",
                                                                  "knha", "--level", "90")])
def test_streamed_csv_equals_csv_built_at_once(tmp_path, capsys, monkeypatch, options):
    path = tmp_path / "many.csv"
    _random_csv(path, 120, seed=len(options))
    argv = ("meta", str(path), "--by", "analysis", "--format", "csv", *options)
    whole = _run(capsys, *argv)            # 120 analyses < STREAM_CHUNK: built at once
    calls = []
    real = meta._stream_csv
    monkeypatch.setattr(meta, "STREAM_CHUNK", 17)   # 8 chunks, the last one short
    monkeypatch.setattr(meta, "_stream_csv", lambda *a: calls.append(1) or real(*a))
    streamed = _run(capsys, *argv)
    assert calls == [1]
    _same_csv(streamed, whole)


def _same_csv(a: str, b: str) -> None:
    ra, rb = list(csv.reader(io.StringIO(a))), list(csv.reader(io.StringIO(b)))
    assert len(ra) == len(rb) and ra[0] == rb[0]
    for x, y in zip(ra[1:], rb[1:]):
        assert len(x) == len(y)
        for key, cx, cy in zip(ra[0], x, y):
            assert _close(_cell(cx), _cell(cy), rtol=1e-13, atol=1e-15), (x[0], key, cx, cy)


def test_options_outside_the_stream_set_build_at_once(tmp_path, monkeypatch):
    import argparse

    parser = argparse.ArgumentParser()
    meta.add_arguments(parser)
    monkeypatch.setattr(meta, "STREAM_CHUNK", 1)
    data = meta.MetaInput(np.zeros((3, 2)), np.ones((3, 2)), np.ones((3, 2), bool),
                          np.full((3, 2), "x", object), ("a", "b", "c"), True, None,
                          np.zeros((3, 2), int))
    assert meta._streams(parser.parse_args(["f.csv", "--by", "g", "--format", "csv"]), data)
    for extra in (["--diagnostics"], ["--format", "json"], ["--bayes", "half_normal:0.5"],
                  ["--forest", "f.svg"]):
        args = parser.parse_args(["f.csv", "--by", "g", "--format", "csv", *extra])
        assert not meta._streams(args, data), extra


def _cell(text: str):
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def _close(got, want, rtol: float = 1e-10, atol: float = 1e-12) -> bool:
    if want is None or got is None:
        return got is None and want is None
    if isinstance(want, str) or isinstance(want, bool):
        return got == want
    return math.isclose(float(got), float(want), rel_tol=rtol, abs_tol=atol)


@pytest.mark.parametrize("method,test", [("REML", "z"), ("DL", "z"), ("ML", "knha")])
def test_batch_csv_equals_per_analysis_api(tmp_path, capsys, monkeypatch, method, test):
    """Every column of a few hundred random analyses against meta_analysis one by one."""
    path = tmp_path / "many.csv"
    truth = _random_csv(path, 300, seed=17)
    monkeypatch.setattr(meta, "STREAM_CHUNK", 64)  # the streamed path
    out = _run(capsys, "meta", str(path), "--by", "analysis", "--format", "csv",
               "--method", method, "--test", test)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 300
    for row in rows:
        labs, y, v = truth[row["analysis"]]
        res = meta_analysis(y, v, labels=labs, method=method, test=test, level=95)
        want = res.to_dict()
        for key, value in want.items():
            if key.endswith("_ci"):
                lo, hi = (None, None) if value is None else value
                assert _close(_cell(row[f"{key}_lb"]), lo), (row["analysis"], key)
                assert _close(_cell(row[f"{key}_ub"]), hi), (row["analysis"], key)
            else:
                assert _close(_cell(row[key]), value), (row["analysis"], key, row[key], value)
        flag = res.heterogeneity()
        assert _cell(row["heterogeneity_flagged"]) == flag.flagged
        assert row["heterogeneity_level"] == ("" if flag.level is None else str(flag.level))
        assert row["heterogeneity_sites"] == ";".join(flag.sites)
        assert row["heterogeneity_reasons"] == " ".join(flag.reasons)


@settings(max_examples=15, deadline=None)
@given(m=hs.integers(2, 40), chunk=hs.integers(1, 13), seed=hs.integers(0, 10_000))
def test_streaming_does_not_depend_on_the_chunk_size(tmp_path_factory, m, chunk, seed):
    path = tmp_path_factory.mktemp("stream") / "g.csv"
    _random_csv(path, m, seed=seed, kmax=6)
    buf = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(buf):
        main(["meta", str(path), "--by", "analysis", "--format", "csv"])
    whole = buf.getvalue()
    old = meta.STREAM_CHUNK
    meta.STREAM_CHUNK = chunk
    try:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            main(["meta", str(path), "--by", "analysis", "--format", "csv"])
    finally:
        meta.STREAM_CHUNK = old
    _same_csv(buf.getvalue(), whole)
