"""The site agent's local record of what it sent, per round.

Why
---
An agent may be restarted at any moment (reboot, upgrade, crash). It must never send two
*different* answers to one round, and it must be able to finish a hand-shake it started.
So the signed submission is written here (atomically, fsync'd) *before* it is first sent;
after a restart the agent resends exactly those bytes, which the coordinator acknowledges
idempotently (same digest), instead of recomputing and signing a new submission with a new
nonce (which the coordinator would refuse as a different answer).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsynth.errors import InputError
from fedsynth.fileio import atomic_write

__all__ = ["RoundEntry", "SiteState"]


@dataclass(frozen=True)
class RoundEntry:
    """What the agent did for one round.

    Attributes
    ----------
    round_id
        The round.
    status
        ``signed`` (written, not yet acknowledged), ``acknowledged`` (the coordinator stored
        it), ``rejected`` (the coordinator refused it; ``detail`` says why) or ``pending``
        (waiting for an operator's approval of the spec; nothing computed).
    payload, signature
        The signed submission bytes (for an identical resend).
    detail
        Plain sentence: the coordinator's answer or the reason of a rejection.
    updated_at
        ISO time of the last change.
    """

    round_id: str
    status: str
    payload: bytes = b""
    signature: bytes = b""
    detail: str = ""
    updated_at: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON form of the entry (payload and signature in base64)."""
        return {"status": self.status, "payload": base64.b64encode(self.payload).decode(),
                "signature": base64.b64encode(self.signature).decode(),
                "detail": self.detail, "updated_at": self.updated_at}

    @classmethod
    def from_json(cls, round_id: str, data: dict[str, Any]) -> RoundEntry:
        """The entry of ``round_id`` from its JSON form (:meth:`to_json`)."""
        return cls(round_id, data["status"], base64.b64decode(data.get("payload", "")),
                   base64.b64decode(data.get("signature", "")), data.get("detail", ""),
                   data.get("updated_at", ""))


class SiteState:
    """A JSON file ``{"version": 1, "site": NAME, "rounds": {id: entry}}``.

    Parameters
    ----------
    path
        The state file (``state_file`` of site.toml).
    site
        The site name; a state file of another site is refused (two agents sharing a file
        would break the no-double-submit guarantee).
    """

    VERSION = 1

    def __init__(self, path: str | Path, site: str) -> None:
        self.path = Path(path)
        self.site = site
        self._rounds: dict[str, RoundEntry] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("site") != self.site:
                raise InputError(f"state_file {str(self.path)!r} belongs to site "
                                 f"{data.get('site')!r}, not {self.site!r}")
            self._rounds = {rid: RoundEntry.from_json(rid, entry)
                            for rid, entry in data.get("rounds", {}).items()}
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"state_file {str(self.path)!r} is corrupt ({error}); move it "
                             "aside only if you are sure no submission is in flight") from None

    def get(self, round_id: str) -> RoundEntry | None:
        """The entry of ``round_id``, or None if there is none."""
        return self._rounds.get(round_id)

    def rounds(self) -> dict[str, RoundEntry]:
        """A copy of every entry, by round id."""
        return dict(self._rounds)

    def put(self, entry: RoundEntry) -> None:
        """Record ``entry`` durably (write to a temporary file, fsync, rename, fsync dir)."""
        self._rounds[entry.round_id] = entry
        data = {"version": self.VERSION, "site": self.site,
                "rounds": {rid: e.to_json() for rid, e in sorted(self._rounds.items())}}
        atomic_write(self.path, json.dumps(data, indent=1))
