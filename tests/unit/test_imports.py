"""Imports sit at module top; a function-level import says why it is lazy.

The rule (docs/decisions/habits.md): an import inside a function is allowed only when it is
a measured start-up win (``fedsynth --help``, ``import fedsynth.meta``), breaks an import
cycle that moving code cannot fix, or loads an optional/dev-only dependency; a ``# lazy:``
comment on the import's line, or directly above it (or above the run of imports it belongs
to), says which. Without that comment the import belongs at the top of the module.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fedsynth", "coordinator", "site_agent")
GENERATED = re.compile(r"federation_pb2(_grpc)?\.pyi?$")
IMPORT_LINE = re.compile(r"\s*(from\s+\S+\s+import\b|import\s)")
LAZY = "# lazy:"


def _function_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child, in_function or isinstance(child, (ast.FunctionDef,
                                                           ast.AsyncFunctionDef)))

    visit(tree, False)
    return found


def _justified(lines: list[str], node: ast.Import | ast.ImportFrom) -> bool:
    """A ``# lazy:`` comment on the statement, or above it or its run of imports."""
    if any(LAZY in lines[i] for i in range(node.lineno - 1, node.end_lineno or node.lineno)):
        return True
    i = node.lineno - 2
    while i >= 0:
        line = lines[i]
        if LAZY in line:
            return True
        stripped = line.strip()
        # step over the comment block and the run of imports (with their continuation
        # lines) above this one
        if IMPORT_LINE.match(line) or stripped.startswith((")", ",", "#")) or (
                stripped and stripped[0].isidentifier() and stripped.endswith((",", "("))):
            i -= 1
            continue
        return False
    return False


def unjustified_imports(path: Path) -> list[str]:
    """``path:line: statement`` for each function-level import without a ``# lazy:`` reason."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return [f"{rel}:{node.lineno}: {lines[node.lineno - 1].strip()}"
            for node in _function_imports(ast.parse(source)) if not _justified(lines, node)]


def _modules() -> list[Path]:
    return [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
            if not GENERATED.search(p.name)]


def test_function_level_imports_say_why_they_are_lazy() -> None:
    offenders = [line for path in _modules() for line in unjustified_imports(path)]
    assert not offenders, (
        "imports inside functions without a '# lazy: <reason>' comment (move them to the "
        "top of the module, or say which measured start-up cost or import cycle keeps them "
        "there; docs/decisions/habits.md):\n" + "\n".join(offenders))


@pytest.mark.parametrize("body, ok", [
    ("def f():\n    import json\n", False),
    ("def f():\n    # lazy: pandas costs 1 s\n    import pandas\n", True),
    ("def f():\n    import pandas  # lazy: pandas costs 1 s\n", True),
    ("def f():\n    # lazy: two at once\n    import numpy as np\n    from scipy import (\n"
     "        special,\n        stats,\n    )\n    import pandas\n", True),
    ("def f():\n    # lazy: only the first\n    import numpy\n\n    x = 1\n    import json\n",
     False),
    ("class A:\n    async def f(self):\n        from os import path\n", False),
    ("def f():\n    # lazy: a reason that takes\n    # two lines\n    import pandas\n", True),
    ("import json\n\ntry:\n    import tomllib\nexcept ImportError:\n    tomllib = None\n", True),
])
def test_the_checker_itself(tmp_path: Path, body: str, ok: bool) -> None:
    module = tmp_path / "m.py"
    module.write_text(body, encoding="utf-8")
    assert (unjustified_imports(module) == []) is ok


def test_help_does_not_import_the_statistics_or_network_stack() -> None:
    """``fedsynth --help`` loads only the command modules: no numpy, pandas, grpc, ..."""
    heavy = ("numpy", "scipy", "pandas", "matplotlib", "statsmodels", "grpc",
             "cryptography", "sqlalchemy", "pyarrow")
    code = ("import contextlib, io, sys\n"
            "sys.argv = ['fedsynth', '--help']\n"
            "from fedsynth.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main()\n    except SystemExit:\n        pass\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "[]"
