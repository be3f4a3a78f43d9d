"""The examples in the docstrings and in the README's Python API section run as written.

Every ``>>>`` example of the public API's modules, and the README section between
``<!-- section:python-api -->`` and its end marker, is executed by :mod:`doctest` and must
print exactly what is shown (real output, not a sketch).
"""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("fedsynth", "fedsynth.api", "fedsynth.results", "fedsynth.plots",
           "fedsynth.meta.mv", "fedsynth.meta.robust",
           "fedsynth.meta.pooling", "fedsynth.meta.bayes", "fedsynth.vocabulary",
           "fedsynth.meta.bias", "fedsynth.effects.effect_sizes")
FLAGS = doctest.ELLIPSIS


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=FLAGS, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest failures in {name}"


def test_the_public_api_has_examples():
    import fedsynth

    for name in ("meta_analysis", "escalc", "meta_regression", "subgroups",
                 "bayes_meta_analysis", "forest_plot", "example_data"):
        doc = getattr(fedsynth, name).__doc__ or ""
        assert ">>>" in doc, f"fedsynth.{name} has no example"


def _readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- section:python-api -->(.*?)<!-- /section:python-api -->", text,
                      re.S)
    assert match, "README.md has no Python API section"
    return match.group(1)


def test_readme_python_api_section_runs_as_shown():
    section = _readme_section()
    parser = doctest.DocTestParser()
    test = parser.get_doctest(section, {}, "README.md[python-api]", "README.md", 0)
    assert len(test.examples) >= 20
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} README examples differ from the real output"
