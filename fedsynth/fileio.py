"""Durable, atomic file replacement, shared by every part that writes state to disk.

Keys, certificates, revocation lists, audit-log heads, the site's submission state, its
release history and approvals, the coordinator's address file and reports are all written
the same way: a temporary file in the target's folder, created private (0600) by
:func:`tempfile.mkstemp` so a key is never readable by others even briefly, fsync'd, given
its final mode, renamed over the target (atomic on POSIX), and the folder fsync'd so the
rename survives a power cut. A reader sees the old file or the new one, never a torn one.

**Owner-only by default.** Everything fedsynth writes as state (the site's state file,
release history, approvals and pending specs, audit-log heads, reports) names sites,
rounds or results, so :func:`atomic_write` gives files mode 0600 and the folders it has to
create 0700 unless the caller asks otherwise; only public artefacts (certificates, the CRL,
the coordinator's address file) pass ``mode=PUBLIC_FILE_MODE`` explicitly.
:func:`create_private_file` does the same for files other libraries open (the SQLite
state store). A temporary file left by a writer killed between ``mkstemp`` and the rename
is recognised by :func:`stale_temporaries` and removed by the owner's recovery (the audit
log's, at start-up).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from fedsynth.errors import InputError

__all__ = ["PRIVATE_FILE_MODE", "PRIVATE_DIR_MODE", "PUBLIC_FILE_MODE", "atomic_write",
           "create_private_file", "make_private_dirs", "read_json_object",
           "stale_temporaries"]

#: Mode of every state file fedsynth creates (owner read/write only).
PRIVATE_FILE_MODE = 0o600
#: Mode of every folder fedsynth creates for its state.
PRIVATE_DIR_MODE = 0o700
#: Mode of public artefacts (certificates, CRL, address file).
PUBLIC_FILE_MODE = 0o644


def make_private_dirs(folder: str | Path) -> Path:
    """Create ``folder`` and its missing parents owner-only (0700); existing ones are kept.

    :meth:`pathlib.Path.mkdir` applies its ``mode`` to the last folder only, so each
    missing level is created in turn.
    """
    folder = Path(folder)
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for level in reversed(missing):
        try:
            level.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            pass
    return folder


def create_private_file(path: str | Path) -> bool:
    """Create ``path`` empty and owner-only (0600) unless it exists; True if created.

    For files another library creates with the default umask (SQLite's database file: its
    ``-wal`` and ``-shm`` files then take the database file's mode).
    """
    target = Path(path)
    make_private_dirs(target.parent)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    _fsync_directory(target.parent)
    return True


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}."


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files :func:`atomic_write` left next to ``path`` (its writer was killed).

    Only the owner of ``path`` may remove them, and only while no writer of ``path`` can be
    running (e.g. under the lock that serialises its writers).
    """
    target = Path(path)
    prefix = _temporary_prefix(target)
    try:
        names = os.listdir(target.parent)
    except FileNotFoundError:
        return []
    return sorted(target.parent / n for n in names
                  if n.startswith(prefix) and n.endswith(".tmp")
                  and len(n) > len(prefix) + len(".tmp"))


def atomic_write(path: str | Path, data: bytes | str, *,
                 mode: int = PRIVATE_FILE_MODE) -> Path:
    """Replace ``path`` with ``data`` atomically and durably.

    Parameters
    ----------
    path
        The file to write; its folder is created (0700) if missing.
    data
        Bytes, or text written as UTF-8.
    mode
        Permission bits of the final file: owner-only (0600) unless the file is public
        (:data:`PUBLIC_FILE_MODE` for certificates and the CRL).
    """
    target = Path(path)
    make_private_dirs(target.parent)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=".tmp",
                               dir=target.parent)
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
