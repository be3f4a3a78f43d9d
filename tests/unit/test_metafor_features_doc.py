"""docs/metafor-features.md: at least 50 features, each row's test exists, examples run."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metafor-features.md"


def _rows() -> list[list[str]]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| ") and not line.startswith("| section") and "---" not in line:
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_at_least_50_features_with_a_named_reference_test() -> None:
    tested = [r for r in _rows() if r[4] != "none"]
    assert len(tested) >= 50


def test_every_named_test_exists() -> None:
    for row in _rows():
        if row[4] == "none":
            continue
        path, _, name = row[4].strip("`").partition("::")
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^def {re.escape(name)}\(", source, re.M), row[4]


def test_rows_are_grouped_by_section() -> None:
    sections = [r[0] for r in _rows()]
    assert sections == sorted(sections)


def test_examples_run() -> None:
    result = doctest.testfile(str(DOC), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 8
