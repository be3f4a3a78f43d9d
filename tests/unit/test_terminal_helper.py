"""fedsynth.terminal: the one helper that renders text from the other side visibly."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from fedsynth.terminal import json_safe, printable

HIDE = "\x1b[2K\x1b[1A\r"
BIDI = "\u202e"


# --- the helper --------------------------------------------------------------------------
def test_printable_escapes_controls_and_keeps_ordinary_text() -> None:
    assert printable("mtf-alpha 0.1.0 ünïcödé 東京") == "mtf-alpha 0.1.0 ünïcödé 東京"
    assert printable(f"a{HIDE}b") == "a\\x1b[2K\\x1b[1A\\rb"
    assert printable(f"x{BIDI}y\u200bz\x85") == "x\\u202ey\\u200bz\\x85"
    assert printable("one\ntwo") == "one\\ntwo"
    assert printable("one\ntwo\x1b", keep_newlines=True) == "one\ntwo\\x1b"
    assert printable(12) == "12"


@given(st.text())
def test_printable_output_is_always_printable(text: str) -> None:
    out = printable(text)
    assert out.isprintable()
    if text.isprintable():
        assert out == text
    kept = printable(text, keep_newlines=True)
    assert kept.replace("\n", "").isprintable()


@given(st.dictionaries(st.text(), st.text()))
def test_json_safe_is_the_same_document(doc: dict) -> None:
    for indent in (None, 2):
        raw = json.dumps(doc, ensure_ascii=False, indent=indent)
        safe = json_safe(raw)
        assert json.loads(safe) == doc
        assert safe.replace("\n", "").isprintable()
