"""fedsynth.fileio.atomic_write: content, permissions, no temporary left behind, failure safe."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedsynth.fileio import atomic_write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_text_and_bytes_with_the_requested_mode(tmp_path: Path) -> None:
    text_file = atomic_write(tmp_path / "sub" / "a.json", '{"x": 1}')
    key_file = atomic_write(tmp_path / "k.key", b"secret", mode=0o600)
    assert text_file.read_text(encoding="utf-8") == '{"x": 1}'
    assert key_file.read_bytes() == b"secret"
    assert _mode(text_file) == 0o644
    assert _mode(key_file) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key", "sub"]


def test_replaces_an_existing_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old content that is longer", encoding="utf-8")
    atomic_write(target, "new")
    assert target.read_text(encoding="utf-8") == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                            monkeypatch) -> None:
    target = tmp_path / "state.json"
    target.write_text("old", encoding="utf-8")

    def refuse(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_read_json_object_missing_valid_and_bad(tmp_path: Path) -> None:
    from fedsynth.errors import InputError
    from fedsynth.fileio import read_json_object

    assert read_json_object(tmp_path / "none.json", "release history") == {}
    good = atomic_write(tmp_path / "good.json", '{"a": [1, 2]}')
    assert read_json_object(good, "release history") == {"a": [1, 2]}
    broken = atomic_write(tmp_path / "broken.json", "{not json")
    with pytest.raises(InputError, match=r"release history '.*broken.json' is not valid JSON"):
        read_json_object(broken, "release history")
    listed = atomic_write(tmp_path / "list.json", "[1, 2]")
    with pytest.raises(InputError, match=r"approvals file '.*list.json' must hold an object"):
        read_json_object(listed, "approvals file")
