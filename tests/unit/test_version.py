"""The version is written once (fedsynth/_version.py); every other mention is derived or
checked here."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import fedsynth
from fedsynth._version import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_the_one_source() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+)?", __version__)
    # a literal, so setuptools reads it without importing the package
    tree = ast.parse((ROOT / "fedsynth" / "_version.py").read_text())
    [assign] = [node for node in tree.body if isinstance(node, ast.Assign)]
    assert isinstance(assign.value, ast.Constant) and assign.value.value == __version__
    assert fedsynth.__version__ == __version__


def test_pyproject_reads_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "fedsynth._version.__version__"}


def test_no_other_file_types_the_version_by_hand() -> None:
    """Files that must spell the version out (Helm, compose, documented commands) spell
    this one; no other source file carries a version literal of its own."""
    must_match = {
        "deploy/helm/fedsynth-coordinator/Chart.yaml":
            [r"^version: (\S+)$", r'^appVersion: "([^"]+)"$'],
        "deploy/docker-compose.yml": [r"fedsynth:(\d[\w.]*)"],
        "deploy/Dockerfile": [r"fedsynth:(\d[\w.]*)"],
        "deploy/README.md": [r"fedsynth==(\d[\w.]*)", r"fedsynth:(\d[\w.]*)"],
        "README.md": [r"fedsynth:(\d[\w.]*)"],
    }
    for name, patterns in must_match.items():
        text = (ROOT / name).read_text()
        for pattern in patterns:
            found = re.findall(pattern, text, flags=re.M)
            assert found, (name, pattern)
            assert set(found) == {__version__}, (name, pattern, found)
    literal = re.compile(r"""__version__\s*=\s*["']""")
    for path in [*ROOT.glob("fedsynth/**/*.py"), *ROOT.glob("coordinator/**/*.py"),
                 *ROOT.glob("site_agent/**/*.py")]:
        if path.name != "_version.py":
            assert not literal.search(path.read_text()), path


def test_cli_reports_it(capsys) -> None:
    from fedsynth.cli import main

    assert main(["version"]) == 0
    assert __version__ in capsys.readouterr().out
