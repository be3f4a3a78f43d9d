"""Domain logic behind the coordinator's gRPC methods (no grpc import).

Why
---
Servicers (:mod:`coordinator.service`) only read a request, call a handler and map a
:class:`Rejected` to a status code; everything that decides (who the peer is, whether a
submission is acceptable) lives here, where unit tests can call it without a network.

Identity comes from the verified TLS peer certificate (its common name), never from a
message field; the certificate must name a site on the allow-list. A submission is accepted
only if, in this order: its signature verifies against that same certificate's key; the
signed ``site`` equals the certificate's name; it speaks our protocol version; it is not an
identical resend (then it is acknowledged as ``duplicate``, whatever its age, so a
restarted agent can always finish); its timestamp is within the window; it answers exactly
the round's analyses with valid values; and the store accepts it (round exists, open, before
its deadline, no replayed nonce, no different earlier answer). Each refusal names the reason
and changes no state.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedsynth import PROTOCOL_VERSION, __version__
from fedsynth.config import CoordinatorConfig
from fedsynth.errors import InputError
from fedsynth.serde import SubmissionContent, WorkItem, decode_submission
from fedsynth.signing import SignatureError, load_certificate, verify
from coordinator.store import Store, SubmissionConflict, iso, utcnow
from coordinator.validation import check_submission

__all__ = ["Rejected", "Handlers", "SubmitResult"]

log = logging.getLogger(__name__)


class Rejected(Exception):
    """A refused request. ``kind`` is mapped to a gRPC status by the servicer.

    Kinds: ``version`` (FAILED_PRECONDITION), ``unauthenticated``, ``permission``,
    ``invalid``, ``not_found``, ``precondition``, ``conflict`` (ALREADY_EXISTS).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


_CONFLICT_KINDS = {"unknown_round": "not_found", "round_closed": "precondition",
                   "late": "precondition", "site_not_in_round": "permission",
                   "different_content": "conflict", "replay": "conflict"}


@dataclass(frozen=True)
class SubmitResult:
    """What the coordinator answers to an accepted submission."""

    status: str             # "accepted" | "duplicate"
    round_id: str
    site: str
    message: str


class Handlers:
    """The coordinator's request handling.

    Parameters
    ----------
    store
        The state store.
    config
        The coordinator configuration (allow-list, submission window).
    clock
        Current UTC time (tests pass a fixed clock).
    audit
        Optional :class:`fedsynth.audit.AuditLog` of the coordinator.
    metrics
        Optional :class:`coordinator.metrics.CoordinatorMetrics`.
    """

    #: A wrong protocol version on Heartbeat/PullWork is audited at most this often per
    #: site and method.
    VERSION_AUDIT_EVERY = _dt.timedelta(seconds=60)

    def __init__(self, store: Store, config: CoordinatorConfig, *,
                 clock: Callable[[], _dt.datetime] = utcnow, audit: Any = None,
                 metrics: Any = None) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.audit = audit
        self.metrics = metrics
        self.allowed = frozenset(config.allow)
        # (site, method) -> when a wrong protocol version was last audited (throttling).
        self._version_audited: dict[tuple[str, str], _dt.datetime] = {}
        self._version_audit_lock = threading.Lock()

    # --- helpers -------------------------------------------------------------------------
    def _audit(self, event: str, data: dict[str, Any]) -> None:
        if self.audit is None:
            return
        try:
            self.audit.append(event, data)
        except Exception:  # noqa: BLE001 - logged; the audit helper's errors are not ours
            log.exception("coordinator audit log append failed")

    def check_version(self, version: str) -> None:
        """Refuse a peer speaking another protocol version, naming both."""
        if version != PROTOCOL_VERSION:
            raise Rejected("version", f"incompatible protocol: the site speaks "
                           f"{version or '(none)'!r}, this coordinator speaks "
                           f"{PROTOCOL_VERSION!r}")

    def identify(self, peer_pem: bytes | None, insecure_name: str | None = None) -> str:
        """The site name of a verified TLS peer certificate, if it is on the allow-list.

        ``insecure_name`` is used only when the server runs with ``--insecure`` (no TLS):
        then the site's claimed name is taken as is, which is why that mode is for local
        experiments only.
        """
        if peer_pem is None:
            if self.config.insecure and insecure_name:
                name = insecure_name
            else:
                raise Rejected("unauthenticated", "no client certificate: mutual TLS is "
                               "required")
        else:
            from fedsynth.pki import certificate_common_name

            try:
                name = certificate_common_name(peer_pem)
            except (InputError, ValueError) as error:
                raise Rejected("unauthenticated", f"client certificate unusable: {error}"
                               ) from None
        if name not in self.allowed:
            self._audit("peer.refused", {"site": name, "reason": "not on the allow-list"})
            raise Rejected("permission", f"site {name!r} is not on this coordinator's "
                           "allow-list (sites.allow)")
        return name

    # --- methods -------------------------------------------------------------------------
    def register(self, site: str, *, agent_version: str, protocol_version: str) -> str:
        try:
            self.check_version(protocol_version)
        except Rejected as rejected:
            self._audit("registration.rejected", {"site": site, "reason": rejected.message})
            raise
        self.store.record_contact(site, agent_version=agent_version[:64],
                                  protocol_version=protocol_version, now=self.clock())
        self._audit("site.registered", {"site": site, "agent_version": agent_version[:64],
                                        "protocol_version": protocol_version})
        if self.metrics is not None:
            self.metrics.site_seen(site)
        log.info("site %s registered (agent %s)", site, agent_version)
        return site

    def _check_version_audited(self, site: str, method: str, version: str) -> None:
        """:meth:`check_version` for the frequent calls (Heartbeat, PullWork), audited.

        A refusal is written to the audit log at most once per site and method every
        :attr:`VERSION_AUDIT_EVERY` (as the rate-limit and revocation refusals are): a
        site stuck on an old agent polls every few seconds, and one fsync'd entry per poll
        would let it fill the coordinator's disk with the same sentence.
        """
        try:
            self.check_version(version)
        except Rejected as rejected:
            now = self.clock()
            with self._version_audit_lock:
                last = self._version_audited.get((site, method))
                due = last is None or now - last >= self.VERSION_AUDIT_EVERY
                if due:
                    if len(self._version_audited) > 10_000:
                        self._version_audited.clear()
                    self._version_audited[(site, method)] = now
            if due:
                self._audit("call.rejected", {"site": site, "method": method,
                                              "kind": rejected.kind,
                                              "reason": rejected.message})
            raise

    def heartbeat(self, site: str, *, agent_version: str, protocol_version: str) -> None:
        self._check_version_audited(site, "Heartbeat", protocol_version)
        self.store.record_contact(site, agent_version=agent_version[:64],
                                  protocol_version=protocol_version, now=self.clock())
        if self.metrics is not None:
            self.metrics.site_seen(site)

    def pull_work(self, site: str, *, protocol_version: str) -> list[WorkItem]:
        self._check_version_audited(site, "PullWork", protocol_version)
        now = self.clock()
        return [WorkItem(r.id, r.spec_toml, r.opened_at, r.deadline)
                for r in self.store.open_rounds_for(site, now)]

    def submit(self, site: str, peer_pem: bytes | None, *, protocol_version: str,
               payload: bytes, signature: bytes) -> SubmitResult:
        """Verify and store one submission (see the module docstring for the order)."""
        try:
            result = self._submit(site, peer_pem, protocol_version, payload, signature)
        except Rejected as rejected:
            self._audit("submission.rejected", {"site": site, "kind": rejected.kind,
                                                "reason": rejected.message,
                                                "digest": hashlib.sha256(payload).hexdigest()})
            if self.metrics is not None:
                self.metrics.submission_rejected(rejected.kind)
            log.warning("submission from %s rejected: %s", site, rejected.message)
            raise
        if result.status == "accepted":
            if self.metrics is not None:
                self.metrics.submission_accepted(site)
            log.info("submission from %s for round %s accepted", site, result.round_id)
        return result

    def _submit(self, site: str, peer_pem: bytes | None, protocol_version: str,
                payload: bytes, signature: bytes) -> SubmitResult:
        self.check_version(protocol_version)
        if peer_pem is not None:
            try:
                verify(load_certificate(peer_pem), payload, signature)
            except SignatureError as error:
                raise Rejected("unauthenticated", str(error)) from None
        elif not self.config.insecure:
            raise Rejected("unauthenticated", "no client certificate to verify the "
                           "signature against")
        try:
            content: SubmissionContent = decode_submission(payload)
        except InputError as error:
            raise Rejected("invalid", str(error)) from None
        if content.site != site:
            raise Rejected("permission", f"the submission is signed for site "
                           f"{content.site[:80]!r} but the certificate is {site!r}")
        self.check_version(content.protocol_version)
        record = self.store.find_round(content.round_id)
        if record is None:
            raise Rejected("not_found", f"round {content.round_id[:80]!r} does not exist")
        # Identical resend: acknowledge before the time checks, so that an agent restarted
        # long after sending can still complete its hand-shake.
        digest = hashlib.sha256(payload).hexdigest()
        for previous in self.store.submissions(content.round_id):
            if previous.site == site and previous.digest == digest:
                return SubmitResult("duplicate", content.round_id, site,
                                    "identical submission already stored")
        now = self.clock()
        skew = abs((now - content.timestamp).total_seconds())
        window = self.config.submission_window.total_seconds()
        if skew > window:
            raise Rejected("invalid", f"submission timestamp {iso(content.timestamp)} is "
                           f"{skew:.0f} s from the coordinator's clock {iso(now)} (window "
                           f"{window:.0f} s): check the site's clock")
        analyses = [a["name"] for a in record.spec.get("analyses", [])]
        try:
            check_submission(content, analyses)
        except InputError as error:
            raise Rejected("invalid", str(error)) from None
        results = {name: r.to_dict() for name, r in content.results.items()}
        try:
            status = self.store.add_submission(
                round_id=content.round_id, site=site, nonce=content.nonce,
                signed_at=content.timestamp, payload=payload, signature=signature,
                results=results, agent_version=content.agent_version[:64], now=now)
        except SubmissionConflict as conflict:
            raise Rejected(_CONFLICT_KINDS.get(conflict.kind, "precondition"),
                           str(conflict)) from None
        if status == "accepted":
            self._audit("submission.accepted", {
                "site": site, "round": content.round_id, "digest": digest,
                "estimates": sorted(content.estimates()),
                "refusals": {k: v.reason for k, v in content.refusals().items()}})
        message = ("stored" if status == "accepted" else "identical submission already "
                   "stored")
        return SubmitResult(status, content.round_id, site, message)

    def coordinator_version(self) -> str:
        return __version__
