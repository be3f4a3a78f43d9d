"""docs/architecture.md stays true: its layout tree matches the repository, and nothing
refers to the design note it replaced."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
#: Column where descriptions start; deeper text continues the previous line's description.
DESCRIPTION_COLUMN = 28
SKIP_DIRS = {"__pycache__", ".git", ".pytest_cache", ".hypothesis", ".mypy_cache",
             ".ruff_cache", "build", "dist", ".venv"}


def layout_entries() -> list[str]:
    """Paths named by the tree of the "Layout" section, relative to the repository root
    (directories end with '/')."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Layout"):]
    block = section[section.index("```\n") + 4:]
    block = block[:block.index("```")]
    stack: list[str] = []
    paths = []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent >= DESCRIPTION_COLUMN:
            continue                                  # a description's second line
        assert indent % 2 == 0, f"odd indentation in the layout tree: {line!r}"
        name = line.split()[0]
        depth = indent // 2
        assert depth <= len(stack), f"layout tree skips a level: {line!r}"
        stack = stack[:depth]
        parent = "".join(stack)
        paths.append(parent + name)
        if name.endswith("/"):
            stack.append(name)
        else:
            stack.append("")                         # a file has no children
    return paths


def package_directories() -> set[str]:
    """Every directory of the repository that holds Python code, and every top-level one."""
    found = set()
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if any(p in SKIP_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        if len(parts) > 1:
            found.add("/".join(parts[:-1]) + "/")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    found |= {name.split("/")[0] + "/" for name in tracked if "/" in name}
    return found


def test_every_entry_of_the_tree_exists() -> None:
    entries = layout_entries()
    assert len(entries) > 60
    missing = [e for e in entries if not (ROOT / e).exists()]
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"
    for entry in entries:
        assert (ROOT / entry).is_dir() == entry.endswith("/"), entry


def test_every_package_directory_is_in_the_tree() -> None:
    listed = set(layout_entries())
    # "proto/fedsynth/v1/" stands for its parents too
    for entry in list(listed):
        parts = entry.rstrip("/").split("/")
        listed |= {"/".join(parts[:i]) + "/" for i in range(1, len(parts))}
    missing = sorted(package_directories() - listed)
    assert not missing, ("add these directories to the layout tree of "
                         f"docs/architecture.md: {missing}")


def test_the_shared_modules_are_described() -> None:
    listed = set(layout_entries())
    for name in ("round_document.py", "timeutil.py", "jsonsafe.py", "_version.py", "pki.py",
                 "serde.py", "spec.py", "config.py", "transport.py", "plots.py"):
        assert f"fedsynth/{name}" in listed, name


def test_no_reference_to_the_old_design_note() -> None:
    pattern = re.compile(r"DESIGN\.md")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".png", ".pdf", ".parquet"} or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1)
                      if pattern.search(line)]
    assert not offenders, "refer to docs/architecture.md instead: " + ", ".join(offenders)
