"""The layers of the project import downwards only.

``fedsynth/`` is the library (statistics, vocabulary, config, spec, serde, security): it
never imports a role. The two roles, ``coordinator/`` and ``site_agent/``, import the
library and never each other. The command line assembles itself from entry points, so no
layer needs an upward import to be reachable from ``fedsynth`` (docs/architecture.md).

Every ``import`` statement is read from the source (also those inside functions and behind
``TYPE_CHECKING``), so a lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: package -> top-level packages of this project it must never import
FORBIDDEN = {
    "fedsynth": {"coordinator", "site_agent", "tests", "benchmarks"},
    "coordinator": {"site_agent", "tests", "benchmarks"},
    "site_agent": {"coordinator", "tests", "benchmarks"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def upward_imports(package: str) -> list[str]:
    bad: list[str] = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            if module.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_or_sideways_imports(package: str) -> None:
    assert upward_imports(package) == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    """Control: the walker finds a lazy import, so the test above can fail."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from coordinator.store import Store\n    import site_agent\n")
    assert imported_modules(module) == [(2, "coordinator.store"), (3, "site_agent")]


def test_roles_contribute_their_commands_through_entry_points() -> None:
    from fedsynth.cli import discover_commands

    paths = {command.path for command in discover_commands()}
    assert ("meta",) in paths  # the library's own
    assert ("coordinator", "serve") in paths and ("round", "start") in paths
    assert ("site", "estimate") in paths and ("site", "run") in paths
