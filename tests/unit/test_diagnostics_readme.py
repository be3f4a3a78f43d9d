"""The README's diagnostics examples are real output: keep them so."""

from __future__ import annotations

import re
from pathlib import Path

from fedsynth.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- section:diagnostics -->")
    return text[start:text.index("<!-- /section:diagnostics -->")]


def test_seed_example_block_is_the_real_output(capsys):
    block = re.findall(r"```text\n(.*?)\n```", _section(), re.S)[0]
    assert main(["meta", "--example", "--diagnostics"]) == 0
    out = capsys.readouterr().out.rstrip("\n")
    assert out.endswith(block)


def test_bcg_blocks_are_the_real_output(tmp_path, capsys, monkeypatch):
    sec = _section()
    csv_text = re.search(r"cat > bcg.csv <<'CSV'\n(.*?)\nCSV", sec, re.S).group(1)
    (tmp_path / "bcg.csv").write_text(csv_text + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["meta", "bcg.csv", "--subgroup", "alloc", "--moderator", "ablat",
                 "--diagnostics"]) == 0
    out = capsys.readouterr().out
    block = re.findall(r"```text\n(.*?)\n```", sec, re.S)[1]
    for part in block.split("\n\n...\n\n"):
        assert part in out
