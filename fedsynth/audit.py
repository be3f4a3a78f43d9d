"""Append-only, hash-chained audit logs (both the site and the coordinator keep one).

Why
---
A site operator must be able to show exactly what left the hospital, and the central team
must be able to show every registration, submission, rejection and round transition. A
plain log file can be edited after the fact; a *hash chain* makes every edit, deletion or
reordering detectable: each entry stores the SHA-256 digest of the previous entry, and its
own digest covers its content and that link (the construction of Haber & Stornetta, "How
to time-stamp a digital document", J. Cryptology 3(2), 1991; and of Schneier & Kelsey,
"Secure audit logs to support computer forensics", ACM TISSEC 2(2), 1999).

Format: one JSON object per line (JSON Lines), UTF-8::

    {"seq": 0, "ts": "2026-11-25T14:00:00.123456Z", "event": "submission.sent",
     "data": {...}, "prev": "000...0", "hash": "<sha256 hex>"}

``hash = sha256(canonical_json({"seq", "ts", "event", "data", "prev"}))`` where canonical
JSON has sorted keys, no whitespace, and no NaN/Infinity (non-finite floats are written as
the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``). The first entry links to 64 zeros.

A chain alone cannot reveal that its *last* entries were cut off (the shortened chain is
still internally consistent), so every append also rewrites a small *head file*
(``<log>.head``, atomically by rename) with the sequence number and digest of the last
entry; :func:`verify_log` compares the chain's end with it. Someone able to rewrite both
files consistently defeats this, which is why SECURITY.md recommends shipping the head
digest off the host (e.g. printing it in the operator's reports).

Appends are serialised with an exclusive ``flock`` on the log, so two processes (the
running agent and ``fedsynth site approve``) can share one log, and each append is
``fsync``'d before :meth:`AuditLog.append` returns.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import fcntl
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsynth.errors import FedsynthError, InputError
from fedsynth.fileio import atomic_write
from fedsynth.timeutil import iso, utcnow

__all__ = [
    "GENESIS",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "AuditVerification",
    "canonical_json",
    "digest",
    "verify_log",
]

#: ``prev`` of the first entry.
GENESIS = "0" * 64
#: Largest accepted serialized entry; a hostile caller must not grow the log without bound
#: through one call (the coordinator logs rejected submissions, whose content it does not
#: control).
MAX_ENTRY_BYTES = 1 << 20


class AuditError(FedsynthError):
    """The audit log cannot be appended to (corrupt tail, unwritable file)."""


def _jsonable(value: Any) -> Any:
    """Convert ``value`` to plain JSON types deterministically.

    Non-finite floats become strings (JSON has no NaN), bytes become hex, sets are sorted,
    dataclasses and enums are unpacked: a rejected hostile submission (NaN variance, raw
    bytes) must still be recordable verbatim enough to be useful.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, (Path, _dt.datetime, _dt.date)):
        return value.isoformat() if not isinstance(value, Path) else str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    # numpy scalars and anything else with a Python equivalent
    if hasattr(value, "item"):
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return repr(value)


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text: sorted keys, no whitespace, no NaN; used for digests."""
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def digest(obj: Any) -> str:
    """SHA-256 hex digest of :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the chain.

    Attributes
    ----------
    seq
        0-based position in the chain.
    ts
        UTC time of the append, ISO 8601 with a ``Z``.
    event
        Dotted event name, e.g. ``"submission.sent"``, ``"round.closed"``.
    data
        The event's content (plain JSON values).
    prev
        ``hash`` of the previous entry (:data:`GENESIS` for the first).
    hash
        SHA-256 of the canonical JSON of the other five fields.
    """

    seq: int
    ts: str
    event: str
    data: Mapping[str, Any]
    prev: str
    hash: str

    def body(self) -> dict[str, Any]:
        """The hashed part of the entry."""
        return {"seq": self.seq, "ts": self.ts, "event": self.event, "data": self.data,
                "prev": self.prev}

    def to_dict(self) -> dict[str, Any]:
        """The entry as written on its line."""
        return {**self.body(), "hash": self.hash}


@dataclass(frozen=True)
class AuditVerification:
    """Result of :func:`verify_log`.

    Attributes
    ----------
    ok
        True when the chain is intact (and matches the head file, when there is one).
    entries
        Number of entries read (including broken ones).
    problems
        Plain sentences naming the line (1-based) and sequence number of each problem.
    head
        ``hash`` of the last entry, or None for an empty log.
    """

    ok: bool
    entries: int
    problems: tuple[str, ...]
    head: str | None = None


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


class AuditLog:
    """An append-only, hash-chained audit log in a JSON Lines file.

    Parameters
    ----------
    path
        The log file; created (with its directory) on the first append.

    Examples
    --------
    >>> log = AuditLog(tmp_path / "site-audit.jsonl")           # doctest: +SKIP
    >>> log.append("submission.sent", {"round": "r-1", "digest": "ab12..."})  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    @staticmethod
    def _last_entry(handle) -> tuple[int, str]:
        """Return (next seq, prev hash) from the last line of an open log (read under lock)."""
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size == 0:
            return 0, GENESIS
        # Read backwards in blocks until the start of the last line is found.
        block = 8192
        pos = size
        tail = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            handle.seek(pos)
            tail = handle.read(step) + tail
            if tail.count(b"\n") >= 2 or pos == 0:
                break
        if not tail.endswith(b"\n"):
            raise AuditError(
                f"audit log {handle.name} ends with an incomplete line (interrupted write or "
                "tampering); run 'fedsynth audit verify' and archive the file before "
                "appending")
        last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            obj = json.loads(last)
            return int(obj["seq"]) + 1, str(obj["hash"])
        except (ValueError, KeyError, TypeError) as error:
            raise AuditError(
                f"audit log {handle.name}: the last line is not a valid entry ({error}); run "
                "'fedsynth audit verify' and archive the file before appending") from error

    def append(self, event: str, data: Mapping[str, Any]) -> AuditEntry:
        """Append one entry, fsync it, and return it.

        Parameters
        ----------
        event
            Non-empty event name (``"submission.sent"``, ``"policy.refused"``, ...).
        data
            JSON-able mapping; non-JSON values are converted deterministically.

        Raises
        ------
        InputError
            Empty event name, data not a mapping, or an entry above 1 MiB.
        AuditError
            The log's last line is corrupt (the chain cannot be continued safely).
        """
        if not isinstance(event, str) or not event.strip():
            raise InputError(f"audit event name must be a non-empty string, got {event!r}")
        if not isinstance(data, Mapping):
            raise InputError(f"audit data for event {event!r} must be a mapping, got "
                             f"{type(data).__name__}")
        clean = _jsonable(data)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                seq, prev = self._last_entry(handle)
                body = {"seq": seq, "ts": iso(utcnow()), "event": event, "data": clean, "prev": prev}
                entry = AuditEntry(hash=digest(body), **body)
                line = (json.dumps(entry.to_dict(), sort_keys=True, separators=(",", ":"),
                                   ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
                if len(line) > MAX_ENTRY_BYTES:
                    raise InputError(f"audit entry for event {event!r} is {len(line)} bytes, "
                                     f"above the limit of {MAX_ENTRY_BYTES}")
                handle.seek(0, os.SEEK_END)
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
                self._write_head(entry)
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return entry

    def _write_head(self, entry: AuditEntry) -> None:
        atomic_write(_head_path(self.path), json.dumps({"seq": entry.seq, "hash": entry.hash}))

    def entries(self) -> list[AuditEntry]:
        """Read every entry (no verification; use :func:`verify_log` for that)."""
        out = []
        if not self.path.exists():
            return out
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    obj = json.loads(line)
                    out.append(AuditEntry(**{k: obj[k] for k in
                                             ("seq", "ts", "event", "data", "prev", "hash")}))
        return out

    def verify(self) -> AuditVerification:
        """Shortcut for :func:`verify_log` on this log."""
        return verify_log(self.path)


_FIELDS = ("seq", "ts", "event", "data", "prev", "hash")


def verify_log(path: str | Path) -> AuditVerification:
    """Check a hash-chained audit log and say where it is broken.

    Detects an edited entry (its digest no longer matches its content), a removed entry
    (a gap in ``seq`` and a broken ``prev`` link), reordered entries (``seq`` out of order,
    broken links), a truncated tail (the head file records a later entry) and malformed
    lines. Each problem is one sentence naming the 1-based line and the sequence number.

    Parameters
    ----------
    path
        The JSON Lines log.

    Raises
    ------
    InputError
        The file does not exist or cannot be read.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"audit log {str(path)!r} does not exist") from None
    except OSError as error:
        raise InputError(f"audit log {str(path)!r} cannot be read: {error}") from None
    problems: list[str] = []
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines and lines[-1] != b"":
        problems.append(f"line {len(lines)}: the file does not end with a newline "
                        "(interrupted write or tampering)")
    expected_prev = GENESIS
    expected_seq = 0
    entries = 0
    last_hash: str | None = None
    last_seq: int | None = None
    for number, line in enumerate(lines, start=1):
        entries += 1
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            problems.append(f"line {number}: not a valid JSON entry")
            expected_prev, last_hash = None, None  # the next link cannot be checked
            expected_seq += 1
            continue
        if not isinstance(obj, dict) or set(obj) != set(_FIELDS):
            problems.append(f"line {number}: entry does not have exactly the fields "
                            f"{', '.join(_FIELDS)}")
            expected_prev, last_hash = None, None
            expected_seq += 1
            continue
        seq = obj["seq"]
        label = f"line {number} (seq {seq})"
        if not isinstance(seq, int) or isinstance(seq, bool):
            problems.append(f"line {number}: seq is not an integer ({seq!r})")
        elif seq != expected_seq:
            if seq > expected_seq:
                problems.append(f"{label}: expected seq {expected_seq}; "
                                f"{seq - expected_seq} entr{'y' if seq - expected_seq == 1 else 'ies'} "
                                "removed or reordered before this line")
            else:
                problems.append(f"{label}: expected seq {expected_seq}; entries reordered or "
                                "duplicated")
        body = {k: obj[k] for k in _FIELDS if k != "hash"}
        try:
            actual = digest(body)
        except ValueError:
            actual = None
        if actual != obj["hash"]:
            problems.append(f"{label}: content does not match its hash (entry edited)")
        if expected_prev is not None and obj["prev"] != expected_prev:
            problems.append(f"{label}: link to the previous entry is broken (an entry before "
                            "it was removed, inserted, edited or reordered)")
        expected_prev = obj["hash"] if isinstance(obj["hash"], str) else None
        expected_seq = (seq + 1) if isinstance(seq, int) else expected_seq + 1
        last_hash = obj["hash"] if isinstance(obj["hash"], str) else None
        last_seq = seq if isinstance(seq, int) else None
    head_file = _head_path(path)
    if head_file.exists():
        try:
            head = json.loads(head_file.read_text(encoding="utf-8"))
            head_seq, head_hash = int(head["seq"]), str(head["hash"])
        except (ValueError, KeyError, TypeError, OSError):
            problems.append(f"head file {head_file.name} is unreadable or malformed")
        else:
            if last_seq is None or head_seq > last_seq:
                problems.append(
                    f"the log ends at line {entries} (seq {last_seq}) but its head file records "
                    f"seq {head_seq}: entries at the end were removed")
            elif head_seq == last_seq and head_hash != last_hash:
                problems.append(f"line {entries} (seq {last_seq}): last entry differs from the "
                                "one recorded in the head file (entry edited or replaced)")
            elif head_seq < last_seq:
                # Appended by a writer that did not update the head file (not this module).
                problems.append(f"the head file records seq {head_seq} but the log continues to "
                                f"seq {last_seq}: entries were appended outside fedsynth")
    return AuditVerification(ok=not problems, entries=entries, problems=tuple(problems),
                             head=last_hash)
