"""``fedsynth meta --plot KIND OUT``: every kind writes a real image; bad kinds exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

import fedsynth
from fedsynth.cli import main
from fedsynth.plots import PLOT_KINDS


@pytest.fixture()
def bcg_csv(tmp_path: Path) -> Path:
    frame = fedsynth.example_data("bcg").rename(columns={
        "tpos": "ai", "tneg": "bi", "cpos": "ci", "cneg": "di", "author": "study"})
    path = tmp_path / "bcg.csv"
    frame.to_csv(path, index=False)
    return path


def test_every_kind_writes_an_image(bcg_csv: Path, tmp_path: Path, capsys) -> None:
    argv = ["meta", str(bcg_csv), "--measure", "OR", "--moderator", "ablat"]
    for kind in PLOT_KINDS:
        argv += ["--plot", kind, str(tmp_path / f"{kind}.png")]
    assert main(argv) == 0, capsys.readouterr().err
    for kind in PLOT_KINDS:
        assert (tmp_path / f"{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", kind


@pytest.mark.parametrize("extra, message", [
    (["--plot", "violin", "x.png"], "--plot: kind 'violin' is not one of"),
    (["--plot", "radial", "x.txt"], "must end in .png, .svg or .pdf"),
    (["--plot", "bubble", "x.png"], "--plot bubble: needs one numeric --moderator"),
])
def test_bad_plot_requests_exit_2(bcg_csv: Path, tmp_path: Path, capsys, extra,
                                  message) -> None:
    extra = [e if not e.startswith("x.") else str(tmp_path / e) for e in extra]
    assert main(["meta", str(bcg_csv), "--measure", "OR", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("x.*"))


def test_labbe_needs_a_2x2_measure(tmp_path: Path, capsys) -> None:
    path = tmp_path / "s.csv"
    path.write_text("study,yi,vi\na,0.1,0.01\nb,0.3,0.02\nc,0.2,0.04\n")
    assert main(["meta", str(path), "--plot", "labbe", str(tmp_path / "l.png")]) == 2
    assert "--plot labbe: needs --measure OR, RR or RD" in capsys.readouterr().err
