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

Crashes
-------
An append writes and fsyncs its line, then replaces the head file. A process killed during
an append (SIGKILL, OOM killer, power cut) therefore leaves one of three states: part of
the line and no final newline, with the head naming the entry before (*torn write*); the
whole line without its newline; or the whole line with the head one entry behind and maybe
a temporary head file. The first append writes the head (seq -1) before its line, so the
first append has the same three states. Each is recognised exactly (an incomplete line
must start like every line fedsynth writes; a whole entry must carry the next sequence
number, link to the last entry and match its own digest) and repaired by the next append or
by :meth:`AuditLog.recover` at start-up, which records the repair as an ``audit.recovered``
entry (the length and SHA-256 of removed bytes included) and removes the temporary files;
:func:`verify_log` reports these states as notes, not problems. Anything else (the head
ahead of the chain, two or more entries behind it, an incomplete line that is not the start
of an entry, a last entry that differs from the head's) is tampering: appends refuse to
continue the chain and ``verify`` fails. Treating one whole, correctly chained extra entry
as an interrupted append concedes nothing: whoever can append such an entry can also
rewrite the head file (see SECURITY.md).

Without its head file, a log cannot show that its tail was cut off: :func:`verify_log`
says so and fails unless ``allow_missing_head`` is given; an append to such a log records
an ``audit.recovered`` entry saying that the head was missing before it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import fcntl
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsynth.errors import FedsynthError, InputError
from fedsynth.fileio import PRIVATE_FILE_MODE, atomic_write, make_private_dirs, stale_temporaries
from fedsynth.timeutil import iso, utcnow

__all__ = [
    "GENESIS",
    "MAX_ENTRY_BYTES",
    "RECOVERED_EVENT",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "AuditRecovery",
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
#: Event of the entry that records a repair after an interrupted append.
RECOVERED_EVENT = "audit.recovered"


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
        True when the chain is intact and matches the head file (or the head file is
        missing and that was explicitly allowed).
    entries
        Number of complete entries read (including broken ones).
    problems
        Plain sentences naming the line (1-based) and sequence number of each problem.
    head
        ``hash`` of the last entry, or None for an empty log.
    notes
        Plain sentences about states that are not tampering: an append interrupted by a
        crash (a torn last write, a head file one entry behind, a temporary file of the
        head), earlier recoveries recorded in the chain, a head file allowed to be missing.
    head_missing
        True when the head file does not exist (a cut-off tail cannot be detected then).
    """

    ok: bool
    entries: int
    problems: tuple[str, ...]
    head: str | None = None
    notes: tuple[str, ...] = ()
    head_missing: bool = False


@dataclass(frozen=True)
class AuditRecovery:
    """What :meth:`AuditLog.recover` (or an append) repaired after an interrupted append.

    Attributes
    ----------
    torn_bytes
        Length of an incomplete last line that was removed (0 when none).
    torn_sha256
        SHA-256 of those bytes (recorded so that what was removed stays identifiable).
    completed_seq
        Sequence number of a whole last entry that only lacked its newline, kept.
    head_forward_seq
        Sequence number the head file was brought forward to (the entry was written, the
        head update was not).
    head_missing
        The head file did not exist while the log held entries: a tail cut off before this
        point cannot be detected.
    temporaries
        Names of temporary files of an interrupted head update that were removed.
    """

    torn_bytes: int = 0
    torn_sha256: str | None = None
    completed_seq: int | None = None
    head_forward_seq: int | None = None
    head_missing: bool = False
    temporaries: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """True when anything was repaired (an ``audit.recovered`` entry records it)."""
        return bool(self.torn_bytes or self.completed_seq is not None
                    or self.head_forward_seq is not None or self.head_missing
                    or self.temporaries)

    def describe(self) -> list[str]:
        """One plain sentence per repair."""
        out = []
        if self.torn_bytes:
            out.append(f"removed the {self.torn_bytes} bytes of an append interrupted "
                       f"mid-write (sha256 {self.torn_sha256})")
        if self.completed_seq is not None:
            out.append(f"completed entry seq {self.completed_seq}, written whole but for its "
                       "final newline")
        if self.head_forward_seq is not None:
            out.append(f"brought the head file forward to seq {self.head_forward_seq} (the "
                       "entry was written, the head update was interrupted)")
        if self.head_missing:
            out.append("the head file was missing: a tail cut off before this point cannot "
                       "be detected")
        if self.temporaries:
            out.append(f"removed {len(self.temporaries)} temporary file(s) of an interrupted "
                       f"head update ({', '.join(self.temporaries)})")
        return out

    def to_data(self) -> dict[str, Any]:
        """The content of the ``audit.recovered`` entry."""
        return {"torn_bytes": self.torn_bytes, "torn_sha256": self.torn_sha256,
                "completed_seq": self.completed_seq,
                "head_forward_seq": self.head_forward_seq, "head_missing": self.head_missing,
                "temporaries": list(self.temporaries), "summary": "; ".join(self.describe())}


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


_FIELDS = ("seq", "ts", "event", "data", "prev", "hash")


@dataclass(frozen=True)
class _Head:
    seq: int
    hash: str


def _read_head(path: Path) -> _Head | None:
    """The head file of log ``path``; None when missing; :class:`AuditError` if malformed."""
    head_file = _head_path(path)
    try:
        head = json.loads(head_file.read_text(encoding="utf-8"))
        return _Head(int(head["seq"]), str(head["hash"]))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise AuditError(f"head file {str(head_file)!r} is unreadable or malformed "
                         f"({error})") from None


def _parse_entry(line: bytes) -> dict[str, Any] | None:
    """The entry on ``line`` if it is one with a correct digest, else None."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(obj, dict) or set(obj) != set(_FIELDS):
        return None
    seq = obj["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(obj["hash"], str):
        return None
    try:
        if digest({k: obj[k] for k in _FIELDS if k != "hash"}) != obj["hash"]:
            return None
    except ValueError:
        return None
    return obj


@dataclass(frozen=True)
class _Tail:
    """The end of a log file: its last complete line and the bytes after it."""

    size: int
    last_line: bytes | None          # without its newline; None when there is none
    fragment: bytes                  # bytes after the last newline (a torn write?)
    fragment_start: int


#: Every line :meth:`AuditLog.append` writes starts with these bytes (keys are sorted), so
#: an interrupted write leaves a prefix of them, or bytes that start with them.
_ENTRY_START = b'{"data":'


def _read_tail(handle: Any) -> _Tail:
    """Read backwards from the end of an open log to its last complete line."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    block = 8192
    pos = size
    tail = b""
    # an entry is at most MAX_ENTRY_BYTES: a longer fragment or line is not one of ours
    limit = 2 * MAX_ENTRY_BYTES + 2
    while pos > 0 and size - pos < limit:
        step = min(block, pos)
        pos -= step
        handle.seek(pos)
        tail = handle.read(step) + tail
        cut = tail.rfind(b"\n")
        if cut >= 0 and tail.rfind(b"\n", 0, cut) >= 0:
            break
        block = min(block * 2, 1 << 20)
    cut = tail.rfind(b"\n")
    if cut < 0:
        if pos > 0:     # no newline within the limit: one oversized fragment
            return _Tail(size, None, tail, size - len(tail))
        return _Tail(size, None, tail, 0)
    fragment = tail[cut + 1:]
    before = tail.rfind(b"\n", 0, cut)
    if before < 0 and pos > 0:
        last = None     # the last line is longer than any entry
    else:
        last = tail[before + 1:cut]
    return _Tail(size, last, fragment, pos + cut + 1)


@dataclass(frozen=True)
class _Plan:
    """How the end of a log relates to its head file, and what recovery it needs."""

    next_seq: int
    prev: str
    completed: dict[str, Any] | None = None   # a whole last entry lacking its newline
    drop_fragment: bool = False
    head_forward: int | None = None
    head_missing: bool = False
    problem: str | None = None


def _plan(tail: _Tail, head: _Head | None, *, last_label: str = "the last line") -> _Plan:
    """Tell an append interrupted by a crash from tampering, at the end of a log.

    A crash can leave exactly three states behind :meth:`AuditLog.append` (line written
    and fsync'd, then the head file replaced): part of the line and no newline (the head
    still names the entry before); the whole line without its newline; or the whole line
    with the head file still one entry behind (and perhaps a temporary head file). Every
    other disagreement between the chain's end and the head file is tampering.
    """
    last: dict[str, Any] | None = None
    if tail.last_line is not None:
        last = _parse_entry(tail.last_line)
        if last is None:
            return _Plan(0, GENESIS, problem=f"{last_label} is not a valid entry (its "
                         "content does not match its hash, or it is not an entry)")
    elif tail.fragment_start > 0:
        return _Plan(0, GENESIS, problem="the last line is longer than any entry")
    end_seq, end_hash = (int(last["seq"]), str(last["hash"])) if last else (-1, GENESIS)
    head_forward = None
    head_missing = False
    if head is None:
        head_missing = end_seq >= 0
    elif (head.seq, head.hash) == (end_seq, end_hash):
        pass
    elif last is not None and head.seq == end_seq - 1 and last["prev"] == head.hash:
        head_forward = end_seq
    elif head.seq > end_seq:
        return _Plan(0, GENESIS, problem=(
            f"the log ends at {last_label} (seq {end_seq if end_seq >= 0 else 'none'}) but "
            f"its head file records seq {head.seq}: entries at the end were removed"))
    elif head.seq == end_seq:
        return _Plan(0, GENESIS, problem=(
            f"the last entry (seq {end_seq}) differs from the one recorded in the head file "
            "(entry edited or replaced)"))
    else:
        return _Plan(0, GENESIS, problem=(
            f"the head file records seq {head.seq} but the log continues to seq {end_seq}: "
            "entries were appended outside fedsynth"))
    if not tail.fragment:
        return _Plan(end_seq + 1, end_hash, head_forward=head_forward,
                     head_missing=head_missing)
    fragment = tail.fragment
    if head_forward is not None or len(fragment) > MAX_ENTRY_BYTES:
        return _Plan(0, GENESIS, problem=(
            f"the file ends with an incomplete line of {len(fragment)} bytes that no "
            "interrupted append leaves behind (tampering)"))
    whole = _parse_entry(fragment)
    if whole is not None and whole["seq"] == end_seq + 1 and whole["prev"] == end_hash:
        return _Plan(end_seq + 2, str(whole["hash"]), completed=whole,
                     head_missing=head_missing)
    if _ENTRY_START.startswith(fragment) or fragment.startswith(_ENTRY_START):
        return _Plan(end_seq + 1, end_hash, drop_fragment=True, head_missing=head_missing)
    return _Plan(0, GENESIS, problem=(
        f"the file ends with an incomplete line of {len(fragment)} bytes that is not the "
        "start of an entry (tampering, not an interrupted append)"))


class AuditLog:
    """An append-only, hash-chained audit log in a JSON Lines file.

    Parameters
    ----------
    path
        The log file; created owner-only (0600, its folder 0700) on the first append.

    Notes
    -----
    An append interrupted by a crash (SIGKILL, power cut) is repaired by the next append or
    by :meth:`recover` (run it when a process starts), and the repair is itself recorded as
    an ``audit.recovered`` entry; anything else that does not fit the head file is refused
    (:class:`AuditError`), as tampering. :func:`verify_log` tells the two apart likewise.

    Examples
    --------
    >>> log = AuditLog(tmp_path / "site-audit.jsonl")           # doctest: +SKIP
    >>> log.append("submission.sent", {"round": "r-1", "digest": "ab12..."})  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    def _open(self) -> Any:
        make_private_dirs(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
        return os.fdopen(fd, "r+b")

    def _recover_locked(self, handle: Any) -> tuple[int, str, AuditRecovery]:
        """Check (and repair) the end of the log; the caller holds the exclusive lock."""
        tail = _read_tail(handle)
        try:
            head = _read_head(self.path)
        except AuditError as error:
            raise AuditError(f"audit log {self.path}: {error}; run 'fedsynth audit verify' "
                             "and archive the file before appending") from None
        plan = _plan(tail, head)
        if plan.problem is not None:
            what = ("ends with an incomplete line" if tail.fragment else "cannot be continued")
            raise AuditError(f"audit log {self.path} {what}: {plan.problem}; run 'fedsynth "
                             "audit verify' and archive the file (with its .head) before "
                             "appending")
        temporaries = stale_temporaries(_head_path(self.path))
        for stale in temporaries:
            stale.unlink(missing_ok=True)
        torn = b""
        if plan.drop_fragment:
            torn = tail.fragment
            handle.truncate(tail.fragment_start)
            handle.flush()
            os.fsync(handle.fileno())
        elif plan.completed is not None:
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        # The head catches up with the chain before anything else is appended, so that a
        # crash during the recovery entry's append leaves again a state recovery knows.
        if plan.completed is not None:
            self._write_head_raw(int(plan.completed["seq"]), str(plan.completed["hash"]))
        elif plan.head_forward is not None:
            self._write_head_raw(plan.next_seq - 1, plan.prev)
        if tail.size == 0 and head is None:
            # Head first: a crash during the very first append then leaves a head one
            # entry behind, which recovery recognises, instead of no head at all.
            self._write_head_raw(-1, GENESIS)
        recovery = AuditRecovery(
            torn_bytes=len(torn), torn_sha256=hashlib.sha256(torn).hexdigest() if torn else None,
            completed_seq=int(plan.completed["seq"]) if plan.completed is not None else None,
            head_forward_seq=plan.head_forward, head_missing=plan.head_missing,
            temporaries=tuple(p.name for p in temporaries))
        if recovery.changed:
            log = logging.getLogger(__name__)
            report = log.error if recovery.head_missing else log.warning
            report("audit log %s: recovered from an interrupted append: %s", self.path,
                   "; ".join(recovery.describe()))
        return plan.next_seq, plan.prev, recovery

    def _write_entry(self, handle: Any, seq: int, prev: str, event: str,
                     clean: Any) -> AuditEntry:
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
        return entry

    def recover(self) -> AuditRecovery:
        """Repair the end of the log after a crash, and record the repair in the chain.

        Run at start-up (the coordinator does; an append does it too); it creates the log
        (empty, with its head file) when there is none. Removes an
        incomplete last line an interrupted append left (its length and SHA-256 are
        recorded), completes a whole last entry that lacks its newline, brings the head file
        forward when the entry was written but the head update was interrupted, and removes
        the head update's temporary files. A missing head file is recorded too (a cut-off
        tail before that point can no longer be detected) and logged as an error.

        Raises
        ------
        AuditError
            The end of the log is not something a crash leaves behind (tampering): nothing
            is changed. Or the log cannot be written (its folder is read-only).
        """
        if not self.path.exists():
            head = _read_head(self.path)
            if head is not None and head.seq >= 0:
                raise AuditError(f"audit log {self.path} does not exist but its head file "
                                 f"records seq {head.seq}: the log was removed; restore it "
                                 "or archive the head file")
        try:
            # creates an empty log and its head when there is none: a log that cannot be
            # written is found at start-up, not at the first event worth recording
            with self._open() as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                try:
                    seq, prev, recovery = self._recover_locked(handle)
                    if recovery.changed:
                        self._write_entry(handle, seq, prev, RECOVERED_EVENT,
                                          recovery.to_data())
                finally:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        except OSError as error:
            raise AuditError(f"audit log {self.path} cannot be written: "
                             f"{error.strerror or error}") from None
        return recovery

    def append(self, event: str, data: Mapping[str, Any]) -> AuditEntry:
        """Append one entry, fsync it, and return it.

        An append interrupted by a crash before this one is repaired first (see
        :meth:`recover`).

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
            The end of the log does not fit its head file in a way a crash explains
            (tampering): the chain is not continued.
        """
        if not isinstance(event, str) or not event.strip():
            raise InputError(f"audit event name must be a non-empty string, got {event!r}")
        if not isinstance(data, Mapping):
            raise InputError(f"audit data for event {event!r} must be a mapping, got "
                             f"{type(data).__name__}")
        clean = _jsonable(data)
        with self._open() as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                seq, prev, recovery = self._recover_locked(handle)
                if recovery.changed:
                    done = self._write_entry(handle, seq, prev, RECOVERED_EVENT,
                                             recovery.to_data())
                    seq, prev = done.seq + 1, done.hash
                entry = self._write_entry(handle, seq, prev, event, clean)
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return entry

    def _write_head_raw(self, seq: int, hash_: str) -> None:
        atomic_write(_head_path(self.path), json.dumps({"seq": seq, "hash": hash_}))

    def _write_head(self, entry: AuditEntry) -> None:
        self._write_head_raw(entry.seq, entry.hash)

    def entries(self) -> list[AuditEntry]:
        """Read every entry (no verification; use :func:`verify_log` for that)."""
        out: list[AuditEntry] = []
        if not self.path.exists():
            return out
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip() and line.endswith("\n"):
                    obj = json.loads(line)
                    out.append(AuditEntry(**{k: obj[k] for k in _FIELDS}))
        return out

    def verify(self, *, allow_missing_head: bool = False) -> AuditVerification:
        """Shortcut for :func:`verify_log` on this log."""
        return verify_log(self.path, allow_missing_head=allow_missing_head)


def _read_consistent(path: Path) -> tuple[bytes, _Head | None, list[Path], str | None]:
    """The log's bytes, its head and stale temporaries, read under a shared lock so that a
    live append (which holds the exclusive lock) is never seen half-done."""
    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        except OSError:         # a file system without locks: read as it is
            pass
        try:
            raw = handle.read()
            try:
                head, head_error = _read_head(path), None
            except AuditError as error:
                head, head_error = None, str(error)
            temporaries = stale_temporaries(_head_path(path))
        finally:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            except OSError:
                pass
    return raw, head, temporaries, head_error


def verify_log(path: str | Path, *, allow_missing_head: bool = False) -> AuditVerification:
    """Check a hash-chained audit log and say where it is broken.

    Detects an edited entry (its digest no longer matches its content), a removed entry
    (a gap in ``seq`` and a broken ``prev`` link), reordered entries (``seq`` out of order,
    broken links), a truncated tail (the head file records a later entry), entries appended
    by another writer and malformed lines. Each problem is one sentence naming the 1-based
    line and the sequence number.

    What a crash during an append leaves behind (an incomplete last line that starts like an
    entry, a head file one entry behind the chain, a temporary head file) is not tampering:
    it is reported in :attr:`AuditVerification.notes` and repaired at the next append or
    start (:meth:`AuditLog.recover`). Without its head file a log cannot show that its tail
    was cut off: that is a problem unless ``allow_missing_head``.

    Parameters
    ----------
    path
        The JSON Lines log.
    allow_missing_head
        Accept a log whose head file is missing (reported as a note instead).

    Raises
    ------
    InputError
        The file does not exist or cannot be read.
    """
    path = Path(path)
    try:
        raw, head, temporaries, head_error = _read_consistent(path)
    except FileNotFoundError:
        raise InputError(f"audit log {str(path)!r} does not exist") from None
    except OSError as error:
        raise InputError(f"audit log {str(path)!r} cannot be read: {error}") from None
    problems: list[str] = []
    notes: list[str] = []
    cut = raw.rfind(b"\n")
    body, fragment = raw[:cut + 1], raw[cut + 1:]
    lines = body.split(b"\n")[:-1] if body else []
    expected_prev: str | None = GENESIS
    expected_seq = 0
    last_hash: str | None = None
    for number, line in enumerate(lines, start=1):
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
                gap = seq - expected_seq
                problems.append(f"{label}: expected seq {expected_seq}; {gap} "
                                f"entr{'y' if gap == 1 else 'ies'} removed or reordered "
                                "before this line")
            else:
                problems.append(f"{label}: expected seq {expected_seq}; entries reordered or "
                                "duplicated")
        body_fields = {k: obj[k] for k in _FIELDS if k != "hash"}
        try:
            actual = digest(body_fields)
        except ValueError:
            actual = None
        if actual != obj["hash"]:
            problems.append(f"{label}: content does not match its hash (entry edited)")
        if expected_prev is not None and obj["prev"] != expected_prev:
            problems.append(f"{label}: link to the previous entry is broken (an entry before "
                            "it was removed, inserted, edited or reordered)")
        if obj["event"] == RECOVERED_EVENT and isinstance(obj["data"], dict):
            summary = obj["data"].get("summary") or "repaired"
            notes.append(f"{label}: recovery after an interrupted append at {obj['ts']}: "
                         f"{summary}")
        expected_prev = obj["hash"] if isinstance(obj["hash"], str) else None
        expected_seq = (seq + 1) if isinstance(seq, int) else expected_seq + 1
        last_hash = obj["hash"] if isinstance(obj["hash"], str) else None
    entries = len(lines)
    head_file = _head_path(path)
    head_missing = head is None and head_error is None
    if head_error is not None:
        problems.append(f"head file {head_file.name} is unreadable or malformed")
    else:
        tail = _Tail(len(raw), lines[-1] if lines else None, fragment, cut + 1)
        plan = _plan(tail, head, last_label=f"line {entries}")
        if plan.problem is not None:
            if fragment:
                problems.append(f"line {entries + 1}: the file does not end with a newline; "
                                + plan.problem)
            elif problems and "is not a valid entry" in plan.problem:
                pass            # the broken last line is reported above already
            else:
                problems.append(plan.problem)
        else:
            if plan.drop_fragment:
                notes.append(f"line {entries + 1}: an append was interrupted mid-write (a torn "
                             f"last write of {len(fragment)} bytes, not tampering); it is "
                             "removed at the next start or append")
            if plan.completed is not None:
                notes.append(f"line {entries + 1} (seq {plan.completed['seq']}): the last entry "
                             "was written whole but for its final newline (interrupted "
                             "append); it is completed at the next start or append")
                last_hash = str(plan.completed["hash"])
            if plan.head_forward is not None:
                notes.append(f"line {entries} (seq {plan.head_forward}): the entry was written "
                             "but the head update was interrupted (a torn last write, not "
                             "tampering); the head is brought forward at the next start or "
                             "append")
            if head_missing and (entries or fragment):
                sentence = (f"head file {head_file.name} is missing: a cut-off tail cannot be "
                            "detected without it")
                if allow_missing_head:
                    notes.append(sentence + " (allowed by --allow-missing-head)")
                else:
                    problems.append(sentence + " (pass --allow-missing-head to accept a log "
                                    "without its head file)")
    if temporaries:
        notes.append(f"{len(temporaries)} temporary file(s) of an interrupted head update "
                     f"({', '.join(p.name for p in temporaries)}); removed at the next start "
                     "or append")
    return AuditVerification(ok=not problems, entries=entries, problems=tuple(problems),
                             head=last_hash, notes=tuple(notes), head_missing=head_missing)
