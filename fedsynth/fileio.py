"""Durable, atomic file replacement, shared by every part that writes state to disk.

Keys, certificates, revocation lists, audit-log heads, the site's submission state, its
release history and approvals, the coordinator's address file and reports are all written
the same way: a temporary file in the target's folder, created private (0600) by
:func:`tempfile.mkstemp` so a key is never readable by others even briefly, fsync'd, given
its final mode, renamed over the target (atomic on POSIX), and the folder fsync'd so the
rename survives a power cut. A reader sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from fedsynth.errors import InputError


def atomic_write(path: str | Path, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``data`` atomically and durably.

    Parameters
    ----------
    path
        The file to write; its folder is created if missing.
    data
        Bytes, or text written as UTF-8.
    mode
        Permission bits of the final file (0o600 for private keys and reports).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(target.parent)
    return target


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """Read a JSON object written by :func:`atomic_write`; ``{}`` when the file is missing.

    Raises
    ------
    InputError
        The file is not valid JSON or does not hold an object; ``what`` names it.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as error:
        raise InputError(f"{what} {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} {str(path)!r} must hold an object")
    return data


def _fsync_directory(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse directory fsync
        pass
    finally:
        os.close(fd)
