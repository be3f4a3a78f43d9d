"""The example in docs/decisions/hierarchical.md runs and prints exactly what the page shows."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "decisions" / "hierarchical.md"


def test_decisions_example_output_is_real():
    text = DOC.read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    shown = re.search(r"```text\n(.*?)```", text, re.S).group(1)
    out = io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(DOC), "exec"), {})
    finally:
        os.chdir(cwd)
    assert out.getvalue() == shown
