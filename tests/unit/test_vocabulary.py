"""One vocabulary: every list of names is defined once (fedsynth/vocabulary.py).

The method, test, measure, estimator and prior names used to be typed out in several
modules (config, the engine, meta-regression, the command line, the spec, the site
policy, the coordinator's commands). This test reads the source tree and fails when a list
is typed out again, and checks that each user of a list takes it from the vocabulary.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from fedsynth import vocabulary as voc

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fedsynth", "coordinator", "site_agent")

#: the lists of names; a tuple, list or set literal of strings holding all of one of them
#: is a copy (a mapping from each name to its rules or implementation is not: the spec's
#: key rules and the estimators' dispatch table are keyed by the names, checked below)
LISTS = {
    "methods": set(voc.METHODS),
    "tests": set(voc.TESTS),
    "estimators": set(voc.ESTIMATORS),
    "measures": set(voc.ESCALC_MEASURES),
    "priors": set(voc.PRIORS),
}


def _sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "vocabulary.py" or "/v1/" in path.as_posix():
                continue
            yield path


def _string_collections(path: Path):
    """(line, set of strings) of every tuple/list/set literal made only of strings."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            yield node.lineno, {e.value for e in node.elts}


@pytest.mark.parametrize("what", sorted(LISTS))
def test_no_list_of_names_is_typed_out_twice(what):
    copies = [f"{p.relative_to(ROOT)}:{line}" for p in _sources()
              for line, names in _string_collections(p) if LISTS[what] <= names]
    assert not copies, f"the {what} list is defined again (import fedsynth.vocabulary): {copies}"


def test_the_vocabulary_itself():
    assert voc.METHODS == ("FE", "DL", "HE", "HS", "SJ", "ML", "REML", "EB", "PM")
    assert voc.RE_METHODS == voc.METHODS[1:]
    assert voc.TESTS == ("z", "knha")
    assert voc.ESCALC_MEASURES[:10] == ("OR", "RR", "RD", "MD", "SMD", "ROM", "ZCOR", "IRR",
                                        "PLO", "PR")
    assert len(voc.ESCALC_MEASURES) == 26      # issue 16 added 16 of metafor's measures
    assert voc.RATIO_MEASURES == {"OR", "RR", "IRR", "ROM", "CVR", "VR", "HR"}
    assert voc.ESTIMATOR_MEASURES == {"two_by_two": ("OR", "RR", "RD"),
                                      "two_group": ("MD", "SMD", "ROM")}
    assert voc.ESTIMATOR_INFO["two_by_two"].default_measure == "OR"
    assert voc.ESTIMATOR_INFO["auc"].null_value == 0.5       # tests/unit/test_nulls_scales.py
    assert voc.PRIORS == ("half_normal", "half_cauchy")
    assert voc.METHOD_INFO["REML"].label == "restricted maximum likelihood"


def test_every_user_takes_the_lists_from_the_vocabulary():
    from coordinator.commands import round as round_cmd
    from coordinator.commands import simulate
    from fedsynth import config, plots, spec
    from fedsynth.cli.commands import meta as meta_cmd
    from fedsynth.cli.commands import valmeta as valmeta_cmd
    from fedsynth.effects import effect_sizes, patient_level
    from fedsynth.meta import bayes, metareg, stats
    from site_agent import policy

    assert config.METHODS is voc.METHODS and config.TESTS is voc.TESTS
    assert stats.METHODS is voc.METHODS and stats.TESTS is voc.TESTS
    assert metareg.SUPPORTED_METHODS is voc.METHODS
    # fedsynth meta also takes the count-based methods (MH, Peto, GLMM) of issue 15
    assert meta_cmd.METHOD_CHOICES == (*voc.METHODS, *voc.COUNT_METHODS)
    # fedsynth meta also takes metafor's t and adhoc tests (issue 16 B1)
    assert meta_cmd.TEST_CHOICES is voc.RMA_TESTS
    assert valmeta_cmd.METHOD_CHOICES is voc.METHODS and valmeta_cmd.TEST_CHOICES is voc.TESTS
    assert plots.RATIO_MEASURES is voc.RATIO_MEASURES
    assert tuple(effect_sizes.COLUMN_SETS) == voc.ESCALC_MEASURES
    assert policy.ESTIMATORS is voc.ESTIMATORS
    assert spec.MEASURES == dict(voc.ESTIMATOR_MEASURES)
    # the spec's per-estimator key rules and the estimators' implementations cover
    # exactly the vocabulary's estimators
    assert tuple(spec.ESTIMATORS) == voc.ESTIMATORS
    assert tuple(patient_level._ESTIMATORS) == voc.ESTIMATORS
    assert set(voc.PRIORS) <= set(bayes.available_priors())
    for module in (round_cmd, simulate, meta_cmd, valmeta_cmd):
        parser = argparse.ArgumentParser()
        module.COMMANDS[0].add_arguments(parser) if hasattr(module, "COMMANDS") else None
        methods = (*voc.METHODS, *voc.COUNT_METHODS) if module is meta_cmd else voc.METHODS
        for action in parser._actions:
            if action.dest == "method":
                assert tuple(action.choices) == methods, module.__name__
            if action.dest == "test":
                tests = voc.RMA_TESTS if module is meta_cmd else voc.TESTS
                assert tuple(action.choices) == tests, module.__name__
            if action.dest == "measure" and action.choices is not None:
                assert tuple(action.choices) == voc.ESCALC_MEASURES, module.__name__


@pytest.mark.parametrize("check,value,message", [
    (voc.check_method, "xx", "method: 'xx' is not one of FE, DL"),
    (voc.check_test, "t", "test: 't' is not one of z, knha"),
    (voc.check_measure, "OX", "measure: unknown measure 'OX'"),
    (voc.check_level, 0, "level: 0 must be a fraction"),
    (voc.check_level, "x", "level: 'x' is not a number"),
])
def test_checks_name_the_option_and_the_value(check, value, message):
    from fedsynth.errors import InputError

    with pytest.raises(InputError, match=message):
        check(value)


def test_checks_normalise():
    assert voc.check_method("reml") == "REML"
    assert voc.check_test("KNHA") == "knha"
    assert voc.check_measure("smd") == "SMD"
    assert voc.check_level(0.95) == pytest.approx(95.0)
    assert voc.check_level(95) == 95.0
