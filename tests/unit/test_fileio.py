"""fedsynth.fileio.atomic_write: content, permissions, no temporary left behind, failure safe."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedsynth.fileio import (PUBLIC_FILE_MODE, atomic_write, create_private_file,
                             stale_temporaries)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_text_and_bytes_with_the_requested_mode(tmp_path: Path) -> None:
    text_file = atomic_write(tmp_path / "sub" / "deeper" / "a.json", '{"x": 1}')
    cert_file = atomic_write(tmp_path / "c.crt", b"public", mode=PUBLIC_FILE_MODE)
    assert text_file.read_text(encoding="utf-8") == '{"x": 1}'
    assert cert_file.read_bytes() == b"public"
    # state is owner-only unless asked otherwise, and so are the folders made for it
    assert _mode(text_file) == 0o600
    assert _mode(tmp_path / "sub") == 0o700 and _mode(tmp_path / "sub" / "deeper") == 0o700
    assert _mode(cert_file) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.crt", "sub"]


def test_create_private_file_and_stale_temporaries(tmp_path: Path, monkeypatch) -> None:
    db = tmp_path / "state" / "state.db"
    assert create_private_file(db) is True
    assert _mode(db) == 0o600 and _mode(db.parent) == 0o700 and db.read_bytes() == b""
    db.write_bytes(b"kept")
    assert create_private_file(db) is False and db.read_bytes() == b"kept"
    # a writer killed between mkstemp and the rename leaves its temporary behind
    target = tmp_path / "log.head"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    import tempfile

    real_mkstemp = tempfile.mkstemp
    left = []

    def keep(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        left.append(name)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", keep)
    monkeypatch.setattr(os, "unlink", lambda *a, **k: None)   # as if killed: no clean-up
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, "x")
    monkeypatch.undo()
    assert stale_temporaries(target) == [Path(left[0])]
    assert stale_temporaries(tmp_path / "other.head") == []


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
