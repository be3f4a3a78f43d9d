"""Text in the coordinator's HTML reports: escaping and number cells.

One home for the two helpers every report section uses (the round report in
:mod:`coordinator.reports`, the model sections in :mod:`coordinator.report_models`), so a
table cell reads the same in every section.
"""

from __future__ import annotations

import html
from typing import Any

from fedsynth.jsonsafe import finite_or_none

__all__ = ["escape_html", "format_number"]


def escape_html(value: Any) -> str:
    """Escape any value for HTML text or attribute context (None is empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def format_number(value: Any, digits: int = 3) -> str:
    """Format a number for a table; missing or non-finite values show as an en dash."""
    number = finite_or_none(value)
    if number is None:
        return "\u2013"
    # One fixed-point format for every cell of a column: "0.0000" beside "2.550e-05" made
    # readers compare formats instead of numbers (issue 12). A value that rounds to zero
    # prints as zero, without a sign.
    text = f"{number:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text
