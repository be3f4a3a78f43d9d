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
and changes no state. Identical resends racing each other are all acknowledged, one as
``accepted`` and the others as ``duplicate`` (:meth:`coordinator.store.Store.add_submission`).

The ``submission.accepted`` audit entry is committed with the submission, in the store's
audit outbox, and appended to the audit log right after the commit; entries a crash left in
the outbox are appended at the next start (:meth:`Handlers.recover_audit`), so every
accepted submission has its entry whatever moment the coordinator was killed at.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coordinator.store import Store, SubmissionConflict, iso, utcnow
from coordinator.validation import check_submission
from fedsynth import PROTOCOL_VERSION, __version__
from fedsynth.config import CoordinatorConfig
from fedsynth.errors import InputError
from fedsynth.pki import certificate_common_name
from fedsynth.serde import (
    StepAnswerContent,
    SubmissionContent,
    WorkItem,
    decode_step_answer,
    decode_submission,
)
from fedsynth.signing import SignatureError, load_certificate, verify

__all__ = ["Rejected", "Handlers", "SubmitResult", "StepResult"]

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4096)
def _common_name(peer_pem: bytes) -> str:
    """The common name of a peer certificate, parsed once per certificate.

    The certificate's common name, parsed once per certificate (every call of a
    connection presents the same one; parsing it per call cost CPU under a flood).
    """
    return certificate_common_name(peer_pem)


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


@dataclass(frozen=True)
class StepResult:
    """What the coordinator answers to an accepted answer to a model step."""

    status: str             # "accepted" | "duplicate"
    round_id: str
    step_id: str
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
                 metrics: Any = None, steps: Any = None) -> None:
        self.store = store
        # the coordinator.models.StepHub routing model steps (None: no model fits here)
        self.steps = steps
        self.config = config
        self.clock = clock
        self.audit = audit
        self.metrics = metrics
        self.allowed = frozenset(config.allow)
        # (site, method) -> when a wrong protocol version was last audited (throttling).
        self._version_audited: dict[tuple[str, str], _dt.datetime] = {}
        self._version_audit_lock = threading.Lock()
        # audit outbox: ids appended to the audit log, not yet cleared from the store
        self._outbox_lock = threading.Lock()
        self._appended: set[int] = set()
        # the largest outbox id flush_audit appended in order: the flush after each
        # submission reads only newer entries (settle_audit rereads the whole outbox)
        self._flushed_upto: int | None = None
        self._outbox_error: str | None = None

    # --- helpers -------------------------------------------------------------------------
    def _audit(self, event: str, data: dict[str, Any]) -> None:
        if self.audit is None:
            return
        try:
            self.audit.append(event, data)
        except Exception:  # noqa: BLE001 - logged; the audit helper's errors are not ours
            log.exception("coordinator audit log append failed")

    def _due(self, key: tuple[str, str]) -> bool:
        """Whether ``key`` is due for an audit entry (and if so, remember now).

        True (and remember now) when ``key`` was not audited within
        :attr:`VERSION_AUDIT_EVERY`: frequent refusals are audited once a minute.
        """
        now = self.clock()
        with self._version_audit_lock:
            last = self._version_audited.get(key)
            if last is not None and now - last < self.VERSION_AUDIT_EVERY:
                return False
            if len(self._version_audited) > 10_000:
                self._version_audited.clear()
            self._version_audited[key] = now
            return True

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
            try:
                name = _common_name(peer_pem)
            except (InputError, ValueError) as error:
                raise Rejected("unauthenticated", f"client certificate unusable: {error}"
                               ) from None
        if name not in self.allowed:
            # audited at most once per name and minute: a certificate of the project CA
            # that is not on the allow-list must not turn its calls into fsync'd entries
            if self._due(("peer.refused", name)):
                self._audit("peer.refused", {"site": name, "reason": "not on the allow-list"})
            raise Rejected("permission", f"site {name!r} is not on this coordinator's "
                           "allow-list (sites.allow)")
        return name

    # --- methods -------------------------------------------------------------------------
    def register(self, site: str, *, agent_version: str, protocol_version: str) -> str:
        """Register ``site``, or refuse (and audit) an incompatible protocol; returns the name."""
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
            if self._due((site, method)):
                self._audit("call.rejected", {"site": site, "method": method,
                                              "kind": rejected.kind,
                                              "reason": rejected.message})
            raise

    def heartbeat(self, site: str, *, agent_version: str, protocol_version: str) -> None:
        """Record a heartbeat so that ``coordinator sites`` can show the site online."""
        self._check_version_audited(site, "Heartbeat", protocol_version)
        self.store.record_contact(site, agent_version=agent_version[:64],
                                  protocol_version=protocol_version, now=self.clock())
        if self.metrics is not None:
            self.metrics.site_seen(site)

    def pull_work(self, site: str, *, protocol_version: str) -> list[WorkItem]:
        """The rounds open for ``site`` now, as the work it should answer."""
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
        if self.store.submission_digest(content.round_id, site) == digest:
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
            check_submission(content, analyses, likelihood_analyses=[
                a["name"] for a in record.spec.get("analyses", [])
                if a.get("release") == "likelihood"])
        except InputError as error:
            raise Rejected("invalid", str(error)) from None
        results = {name: r.to_dict() for name, r in content.results.items()}
        audit = {"site": site, "round": content.round_id, "digest": digest,
                 "estimates": sorted(content.estimates()),
                 "refusals": {k: v.reason for k, v in content.refusals().items()}}
        if content.likelihoods():
            audit["likelihoods"] = sorted(content.likelihoods())
        try:
            status = self.store.add_submission(
                round_id=content.round_id, site=site, nonce=content.nonce,
                signed_at=content.timestamp, payload=payload, signature=signature,
                results=results, agent_version=content.agent_version[:64], now=now,
                audit=audit if self.audit is not None else None)
        except SubmissionConflict as conflict:
            raise Rejected(_CONFLICT_KINDS.get(conflict.kind, "precondition"),
                           str(conflict)) from None
        if status == "accepted":
            self.flush_audit()
        message = ("stored" if status == "accepted" else "identical submission already "
                   "stored")
        return SubmitResult(status, content.round_id, site, message)

    # --- model steps -----------------------------------------------------------------------
    def open_steps(self, site: str, *, protocol_version: str) -> Any:
        """Check a site's ``StreamSteps`` call; returns the hub whose stream it gets."""
        self._check_version_audited(site, "StreamSteps", protocol_version)
        if self.steps is None:
            raise Rejected("precondition", "this coordinator fits no models (no step hub)")
        return self.steps

    def answer_step(self, site: str, peer_pem: bytes | None, *, protocol_version: str,
                    payload: bytes, signature: bytes) -> StepResult:
        """Verify, store and deliver one signed answer to a model step.

        The rules of :meth:`submit` (signature by the certificate's key, signed site equal
        to the certificate's, protocol version, identical resend acknowledged as
        ``duplicate``, timestamp window, round open and before its deadline, nonce never
        seen), and: the answer must name a step the coordinator sent this site and is
        waiting for, with the digest of that exact request. Each refusal is audited and
        changes no state; each accepted answer's ``model_step.accepted`` entry is committed
        with it (the audit outbox) and appended to the audit log by :meth:`settle_audit`.
        """
        digest = hashlib.sha256(payload).hexdigest()
        try:
            result, content = self._answer_step(site, peer_pem, protocol_version, payload,
                                                signature, digest)
        except Rejected as rejected:
            self._audit("model_step.rejected", {"site": site, "kind": rejected.kind,
                                                "reason": rejected.message,
                                                "digest": digest})
            log.warning("model step answer from %s rejected: %s", site, rejected.message)
            raise
        if result.status == "accepted" and self.steps is not None:
            # The model_step.accepted entry is already durable in the store's audit outbox
            # (committed with the answer); the closer appends it to the audit log within
            # CLOSER_INTERVAL (settle_audit), so a step's round trip does not wait for a
            # second fsync.
            self.steps.resolve(content)
        return result

    def _answer_step(self, site: str, peer_pem: bytes | None, protocol_version: str,
                     payload: bytes, signature: bytes, digest: str
                     ) -> tuple[StepResult, StepAnswerContent]:
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
            content = decode_step_answer(payload)
        except InputError as error:
            raise Rejected("invalid", str(error)) from None
        if content.site != site:
            raise Rejected("permission", f"the answer is signed for site "
                           f"{content.site[:80]!r} but the certificate is {site!r}")
        self.check_version(content.protocol_version)
        if self.store.find_round(content.round_id) is None:
            raise Rejected("not_found", f"round {content.round_id[:80]!r} does not exist")
        if self.store.step_answer_digest(content.round_id, site, content.step_id) == digest:
            return StepResult("duplicate", content.round_id, content.step_id, site,
                              "identical answer already stored"), content
        now = self.clock()
        skew = abs((now - content.timestamp).total_seconds())
        window = self.config.submission_window.total_seconds()
        if skew > window:
            raise Rejected("invalid", f"answer timestamp {iso(content.timestamp)} is "
                           f"{skew:.0f} s from the coordinator's clock {iso(now)} (window "
                           f"{window:.0f} s): check the site's clock")
        problem = (self.steps.check(site, content) if self.steps is not None
                   else "this coordinator fits no models")
        if problem is not None:
            raise Rejected("not_found" if problem.startswith("no step") else "invalid",
                           problem)
        result = content.result
        audit = {"site": site, "round": content.round_id, "step": content.step_id,
                 "kind": content.kind, "digest": digest,
                 "request_digest": content.request_digest.hex()}
        if content.kind == "refusal":
            audit["refused"] = getattr(result, "reason", "")
        try:
            status = self.store.add_step_answer(
                round_id=content.round_id, site=site, step_id=content.step_id,
                kind=content.kind, nonce=content.nonce, signed_at=content.timestamp,
                payload=payload, signature=signature, now=now,
                audit=audit if self.audit is not None else None)
        except SubmissionConflict as conflict:
            raise Rejected(_CONFLICT_KINDS.get(conflict.kind, "precondition"),
                           str(conflict)) from None
        return StepResult(status, content.round_id, content.step_id, site,
                          "stored" if status == "accepted" else
                          "identical answer already stored"), content

    # --- audit outbox ----------------------------------------------------------------------
    def flush_audit(self, *, everything: bool = False) -> int:
        """Append the audit entries committed in the store's outbox to the audit log.

        Called after every accepted submission (the entry is on disk before the site is
        answered) and by :meth:`settle_audit`. Entries are appended in commit order, each
        once per process, carrying its ``outbox_id``; a failed append leaves the entry in
        the outbox to be retried. Returns the number appended.

        After a submission only the entries newer than the last one appended are read
        (the outbox holds every entry accepted since the closer's last
        :meth:`settle_audit`: reading and parsing them all after each submission made a
        round's cost grow with the square of its sites); ``everything`` (the closer's
        call) reads the whole outbox, which also picks up an entry that committed after
        a newer one (possible on PostgreSQL, where ids are drawn before the commit) and
        retries failed appends.
        """
        if self.audit is None:
            return 0
        done = 0
        with self._outbox_lock:
            after = None if everything else self._flushed_upto
            for entry in self.store.pending_audit(after=after):
                if entry.id in self._appended:
                    continue
                try:
                    self.audit.append(entry.event, {**entry.data, "outbox_id": entry.id})
                except Exception as error:  # noqa: BLE001 - kept in the outbox, retried
                    if str(error) != self._outbox_error:
                        log.error("coordinator audit log append failed; the entry stays in "
                                  "the store's audit outbox and is retried: %s", error)
                    self._outbox_error = str(error)
                    break
                self._outbox_error = None
                self._appended.add(entry.id)
                if self._flushed_upto is None or entry.id > self._flushed_upto:
                    self._flushed_upto = entry.id
                done += 1
        return done

    def settle_audit(self) -> None:
        """Append the outbox entries not appended yet and delete the appended ones.

        Retry outbox entries not appended yet, then delete the appended ones from the
        store (off the submission path: the closer calls this every step).
        """
        if self.audit is None:
            return
        self.flush_audit(everything=True)
        with self._outbox_lock:
            ids = sorted(self._appended)
        if ids:
            self.store.clear_audit(ids)
            with self._outbox_lock:
                self._appended.difference_update(ids)

    def recover_audit(self) -> int:
        """At start-up: append the audit entries a crash left in the outbox.

        An entry whose submission already has its entry in the audit log (the crash came
        after the append, before the outbox was cleared) is not written twice. The others
        are written now, marked ``"recovered": true``, and the log says how many. Returns
        the number written.
        """
        if self.audit is None:
            return 0
        pending = self.store.pending_audit()
        if not pending:
            return 0
        events = {entry.event for entry in pending}
        present = {self._outbox_key(e.event, e.data) for e in self.audit.entries()
                   if e.event in events}
        written = 0
        for entry in pending:
            if self._outbox_key(entry.event, entry.data) in present:
                continue
            self.audit.append(entry.event, {**entry.data, "outbox_id": entry.id,
                                            "recovered": True})
            written += 1
        self.store.clear_audit([entry.id for entry in pending])
        if written:
            log.warning("%d accepted submission(s) had no %s audit entry (the coordinator "
                        "stopped between the store commit and the audit append): written now "
                        "from the store's audit outbox, marked recovered", written,
                        "/".join(sorted(events)))
        return written

    @staticmethod
    def _outbox_key(event: str, data: Any) -> tuple[str, ...]:
        if not isinstance(data, dict):
            return (event,)
        return (event, str(data.get("round")), str(data.get("site")), str(data.get("digest")))

    def coordinator_version(self) -> str:
        """The coordinator's version, reported to sites for diagnostics."""
        return __version__
