r"""Terminal-safe text: what fedsynth prints of text that came from the other side.

Why
---
A coordinator prints what sites sent (refusal reasons, agent versions, site names in
``fedsynth round show`` and ``fedsynth sites``); a site operator reads what a coordinator
sent (the spec in ``fedsynth site pending``, rejection reasons in the logs). Either side
may be hostile. Printed raw, a control sequence such as ``ESC [ 2 K`` erases the line it
is on, ``ESC [ 1 A`` moves the cursor up, a carriage return overwrites a line from its
start, and Unicode bidirectional overrides (``U+202E``) reorder what is displayed
("Trojan Source", Boucher & Anderson, USENIX Security 2023): an operator could be shown a
harmless analysis while approving a risky one. Terminal emulators also act on OSC and DCS
strings (window titles, clipboard writes; cf. CVE-2003-0063 and the xterm advisories).

So every such text goes through :func:`printable` before it is printed or logged: each
character Python does not consider printable (``str.isprintable``: the Unicode categories
"Other" ``C*`` -- control, format, surrogate, private use, unassigned -- and "Separator"
``Z*`` except the ASCII space) is shown as its escape, ``\x1b``, ``\u202e``, ``\n``,
exactly as Python's ``repr`` writes it, so the operator *sees* that something was there.
:func:`json_safe` does the same for JSON documents that a person may read in a terminal
(``--log-format json``), with JSON's own ``\uXXXX`` escapes, so the document still
parses to the same values.

One helper, used by every printer: ``fedsynth site pending``, ``round show``/``list``/
``wait``, ``sites``, ``site estimate``, the CLI's error line and the text and JSON log
formatters (:mod:`fedsynth.logs`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["printable", "json_safe"]

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(value: Any, *, keep_newlines: bool = False) -> str:
    r"""``str(value)`` with every non-printable character shown as its escape.

    Parameters
    ----------
    value
        Any object; ``str()`` of it is rendered.
    keep_newlines
        Keep ``\n`` as a line break (multi-line text such as a traceback); every other
        control character is still escaped (a carriage return included, since it can
        overwrite the start of a line).

    Returns
    -------
    str
        The text, unchanged when it holds only printable characters (the common case costs
        one C-level scan).

    Examples
    --------
    >>> printable("mtf-alpha\x1b[2K")
    'mtf-alpha\\x1b[2K'
    >>> printable("a\u202eb")
    'a\\u202eb'
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    if keep_newlines:
        return "\n".join(printable(line) for line in text.split("\n"))
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def json_safe(document: str) -> str:
    r"""A JSON text with every non-printable character written as a JSON ``\u`` escape.

    ``json.dumps(..., ensure_ascii=False)`` keeps characters such as ``U+202E`` or C1
    controls raw; this rewrites them (surrogate pairs above the BMP) so the text is
    terminal-safe and still parses to exactly the same values. Only string contents can
    hold such characters (where a ``\uXXXX`` escape is valid), except the line breaks of
    indented output, which are kept: ``json.dumps`` never leaves a raw line break inside a
    string.
    """
    if document.isprintable():
        return document
    out = []
    for ch in document:
        if ch.isprintable() or ch == "\n":
            out.append(ch)
            continue
        code = ord(ch)
        if code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return "".join(out)
