"""``fedsynth site run``: the site agent's run loop.

Why
---
The agent is the only fedsynth process inside a hospital network, so it dials out and
tolerates everything outside its control: a coordinator restart or a network outage is met
with reconnection under exponential backoff with full jitter (Brooker, "Exponential backoff
and jitter", AWS Architecture Blog 2015: spreads the reconnections of many sites after a
coordinator restart), and a restart of the agent itself never double-submits (the signed
submission is recorded in :class:`site_agent.state.SiteState` before it is sent and resent
byte-identical).

For each open round it: checks the site policy (refusing analyses the policy forbids, or
waiting for an operator's approval), computes every analysis on local data
(:func:`site_agent.connectors.estimate_from_data`; an analysis with ``release =
"likelihood"`` by :func:`site_agent.likelihood.likelihoods_from_data`), applies the
disclosure limits
(:func:`site_agent.privacy.guard`), words every refusal from the fixed vocabulary
(:func:`site_agent.privacy.release`), signs, writes the submission to the site's
hash-chained audit log, and only then records and submits it, logging in plain words what
left the site. Nothing leaves unless its audit entry was written: when the append fails
(a full disk, a corrupt log, an entry above the size cap) the round is not answered and
is retried at the next poll (``tests/integration/test_site_audit_before_send.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import signal
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fedsynth import PROTOCOL_VERSION, __version__
from fedsynth.config import SiteConfig
from fedsynth.errors import FedsynthError
from fedsynth.serde import (
    NONCE_BYTES,
    StepAnswerContent,
    SubmissionContent,
    WireAggregates,
    WireContribution,
    WireEstimate,
    WireLikelihood,
    WireMeasures,
    WireRefusal,
    WireSiteFit,
    WorkItem,
    decode_model_step,
    encode_step_answer,
    encode_submission,
    model_step_digest,
    pb,
)
from fedsynth.signing import load_private_key, sign
from fedsynth.spec import Spec, parse_spec
from fedsynth.timeutil import iso, utcnow
from site_agent.client import CoordinatorRefused, CoordinatorUnavailable, FederationClient
from site_agent.state import RoundEntry, SiteState

__all__ = ["SiteAgent", "Backoff", "AuditFailed", "describe_results", "run_agent",
           "submission_audit"]

log = logging.getLogger("fedsynth.site")

#: Longest local detail of one refusal kept in an audit entry, and the most kept for one
#: submission (the full text is in the site's log): a database error may quote the
#: operator's whole query, and an entry above the audit log's 1 MiB cap would stop every
#: submission. With the spec's own size limits (fedsynth.spec.MAX_SPEC_BYTES) the
#: submission's entry stays far below the cap (tests/unit/test_site_audit_entry.py).
AUDIT_DETAIL_CHARS = 2000
AUDIT_DETAIL_BUDGET = 128 * 1024


class AuditFailed(FedsynthError):
    """The site's audit log could not be appended: nothing may be sent."""


@dataclass
class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**attempt))``."""

    base: float = 0.5
    cap: float = 30.0
    attempt: int = 0

    def next_delay(self, rng: random.Random | None = None) -> float:
        """The next pause: full jitter up to the capped exponential bound, so sites spread out."""
        upper = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return (rng or random).uniform(0.0, upper) if upper > 0 else 0.0

    def reset(self) -> None:
        """Start again from the shortest pause (after a call succeeded)."""
        self.attempt = 0


def _likelihood(result: Any) -> dict[str, Any] | None:
    """The approximation dict of a released likelihood, else None."""
    value = getattr(result, "likelihood", None)
    return dict(value) if isinstance(value, dict) else None


def _describe_likelihood(likelihood: dict[str, Any]) -> str:
    form = likelihood.get("form")
    if form == "grid_with_gradients":
        shape = (f"the log-likelihood and its derivative at {len(likelihood['points'])} "
                 "points")
    elif form == "custom":
        shape = "the three parameters mu, sigma, gamma of the custom approximation"
    else:
        shape = "its normal approximation"
    est = likelihood.get("estimate")
    return (f"{shape} ({form}); the site's own estimate "
            + (f"{est:.6g}" if est is not None else "does not exist (monotone likelihood)"))


def describe_results(site: str, round_id: str, results: dict[str, Any]) -> list[str]:
    """Plain sentences, one per analysis, saying what the site sends (for the data steward)."""
    lines = []
    n_est = sum(1 for r in results.values() if hasattr(r, "yi"))
    n_lik = sum(1 for r in results.values() if _likelihood(r) is not None)
    n_ref = len(results) - n_est - n_lik
    lines.append(f"Round {round_id}: site {site} sends {n_est} estimate(s)"
                 + (f", {n_lik} likelihood(s)" if n_lik else "")
                 + f" and {n_ref} refusal(s). No patient rows, identifiers or counts leave "
                 "the site; for each estimate only the four numbers below are sent"
                 + (", for each likelihood only its approximation" if n_lik else "") + ".")
    for name, result in results.items():
        likelihood = _likelihood(result)
        if likelihood is not None:
            lines.append(f"  {name}: likelihood: {_describe_likelihood(likelihood)}, "
                         f"computed on n = {result.n} patients.")
        elif hasattr(result, "yi"):
            lines.append(f"  {name}: estimate yi = {result.yi:.6g}, variance vi = "
                         f"{result.vi:.6g}, standard error se = {result.se:.6g}, computed on "
                         f"n = {result.n} patients.")
        else:
            lines.append(f"  {name}: NOT sent. Reason given to the coordinator: "
                         f"{getattr(result, 'reason', 'refused')}")
            detail = getattr(result, "detail", None)
            if detail:
                lines.append(f"    (kept at this site, not sent: {detail})")
    return lines


def _local_details(results: dict[str, Any]) -> dict[str, Any]:
    """Per refused analysis, what the site knows but did not send.

    Per refused analysis, what the site knows but did not send (for its audit log),
    each text cut at :data:`AUDIT_DETAIL_CHARS` and all of them at
    :data:`AUDIT_DETAIL_BUDGET` characters.
    """
    out = {}
    budget = AUDIT_DETAIL_BUDGET
    for name, result in results.items():
        detail = getattr(result, "detail", None)
        if hasattr(result, "yi") or _likelihood(result) is not None or not detail:
            continue
        text = str(detail)
        limit = min(AUDIT_DETAIL_CHARS, max(budget, 0))
        if len(text) > limit:
            text = text[:limit] + " [cut; the full text is in the site's log]"
        budget -= len(text)
        out[name] = {"code": getattr(result, "code", "refused"), "detail": text}
    return out


def submission_audit(round_id: str, payload: bytes, results: dict[str, Any]
                     ) -> dict[str, Any]:
    """The ``submission.signed`` audit entry.

    The ``submission.signed`` audit entry: the digest of the signed bytes, what is sent
    per analysis, and what was kept at the site about each refusal.
    """
    def sent(r: Any) -> dict[str, Any]:
        likelihood = _likelihood(r)
        if likelihood is not None:
            return {"likelihood": likelihood, "n": r.n}
        if hasattr(r, "yi"):
            return {"yi": r.yi, "vi": r.vi, "se": r.se, "n": r.n}
        return {"refused": r.reason}

    return {"round": round_id, "digest": hashlib.sha256(payload).hexdigest(),
            "sent": {n: sent(r) for n, r in results.items()},
            "kept": _local_details(results)}


class SiteAgent:
    """One site agent.

    Parameters
    ----------
    config
        The site configuration.
    once
        Exit after one round has been answered (acknowledged or refused).
    """

    def __init__(self, config: SiteConfig, *, once: bool = False) -> None:
        self.config = config
        self.once = once
        self.state = SiteState(config.state_file, config.name)
        self.key = (load_private_key(config.tls.key) if config.tls is not None else None)
        if self.key is None and not config.insecure:
            raise FedsynthError("the site has no key to sign submissions with ([tls].key)")
        self.backoff = Backoff(cap=config.max_backoff.total_seconds())
        self._stop = asyncio.Event()
        self.answered: list[str] = []
        self.rejected: list[str] = []
        self._audit_log: Any = None
        self._model_steps: Any = None
        # step id -> (request digest, signed answer, signature): a step pushed again (a
        # reconnect) is answered with the identical bytes, which the coordinator acknowledges
        # as a duplicate
        self._step_answers: dict[str, tuple[bytes, bytes, bytes]] = {}
        self.steps_answered = 0

    # --- helpers ---------------------------------------------------------------------------
    def _audit_required(self, event: str, data: dict[str, Any]) -> None:
        """Append to the site's audit log or raise :class:`AuditFailed` (fail closed)."""
        try:
            if self._audit_log is None:
                # lazy: loaded by _warm_imports in a worker thread, off the event loop
                from site_agent.policy import site_audit_log

                self._audit_log = site_audit_log(self.config)
            self._audit_log.append(event, data)
        except Exception as error:  # noqa: BLE001 - any failure: nothing may be sent
            raise AuditFailed(f"the site's audit log could not be written for event "
                              f"{event!r}: {error}") from error

    def _audit(self, event: str, data: dict[str, Any]) -> None:
        """Append an entry about something that already happened.

        Append an entry about something that already happened (an acknowledgement):
        a failure is logged, there is nothing left to stop.
        """
        try:
            self._audit_required(event, data)
        except AuditFailed:
            log.exception("site audit log append failed")

    def _target(self) -> str:
        target = self.config.coordinator
        if target.startswith("@"):
            try:
                with open(target[1:], encoding="utf-8") as handle:
                    return handle.read().strip()
            except OSError as error:
                raise CoordinatorUnavailable(f"coordinator address file {target[1:]} not "
                                             f"readable yet ({error.strerror})") from None
        return target

    def request_stop(self) -> None:
        """Ask the agent to stop (from a signal handler or a test); pauses end at once."""
        self._stop.set()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    # --- computing a round -----------------------------------------------------------------
    def compute(self, work: WorkItem) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Results to send for ``work`` (after policy and disclosure control).

        Returns ``(results, None)``, or ``({}, decision)`` when the policy requires an
        operator's approval first (nothing is computed then).
        """
        # lazy: loaded by _warm_imports in a worker thread, off the event loop
        from site_agent.connectors import estimate_from_data
        from site_agent.likelihood import likelihoods_from_data
        from site_agent.policy import review_round, site_policy
        from site_agent.privacy import PrivacyLimits, ReleaseHistory, guard, release

        spec = parse_spec(work.spec_toml)
        policy = site_policy(self.config)
        # review_round records a pending spec and audits each decision once per round and
        # state (not on every poll while the spec waits for the operator's approval). A
        # failed append raises AuditFailed: the round is not answered.
        decision = review_round(policy, work.round_id, spec,
                                SimpleNamespace(append=self._audit_required))
        if decision.needs_approval:
            return {}, decision.to_dict()
        allowed = [a for a in spec.analyses if a.name not in decision.refusals]
        results: dict[str, Any] = {}
        if allowed:
            sub_spec = Spec(analyses=tuple(allowed), name=spec.name)
            # A file or a SQL source alike: the estimators report every count disclosure
            # control checks, tables implied by 0/1 outcomes included (site_agent.privacy,
            # rule 4), so no data frame is needed there.
            estimated = [a for a in allowed if not a.wants_likelihood]
            computed = (dict(estimate_from_data(self.config.data,
                                                Spec(analyses=tuple(estimated),
                                                     name=spec.name)))
                        if estimated else {})
            # Analyses with release = "likelihood": the profile likelihood's approximation,
            # judged by the policy's likelihood permissions below (privacy rule 7).
            computed.update(likelihoods_from_data(
                self.config.data, [a for a in allowed if a.wants_likelihood]))
            computed = {a.name: computed[a.name] for a in allowed}
            limits = PrivacyLimits(min_cell_count=self.config.privacy.min_cell_count,
                                   min_n=self.config.privacy.min_n)
            # What this site released in earlier rounds (n per analysis definition), so that
            # the same analysis on slightly more patients cannot be differenced (rule 5).
            state = Path(self.config.state_file)
            history = ReleaseHistory(state.with_name(state.stem + ".releases.json"))
            guarded = guard(computed, limits, spec=sub_spec, history=history,
                            allow_small_cell_likelihood=policy.allow_small_cell_likelihood,
                            allow_unadjusted_likelihood=policy.allow_unadjusted_likelihood)
            history.record(guarded, sub_spec)
        else:
            guarded = {}
        for analysis in spec.analyses:   # spec order
            if analysis.name in decision.refusals:
                results[analysis.name] = decision.refusal(analysis.name)
            else:
                results[analysis.name] = guarded[analysis.name]
        # What leaves: every refusal worded from the fixed vocabulary with the spec's column
        # names only; the full local error stays in Refusal.detail (log and audit).
        return release(results, spec), None

    def sign_results(self, round_id: str, results: dict[str, Any]) -> tuple[bytes, bytes]:
        """Sign this site's results for ``round_id``; returns the payload and its signature."""
        content = SubmissionContent(
            round_id=round_id, site=self.config.name, nonce=os.urandom(NONCE_BYTES),
            timestamp=utcnow(),
            results={name: self._wire(name, r) for name, r in results.items()},
            agent_version=__version__, protocol_version=PROTOCOL_VERSION)
        payload = encode_submission(content)
        signature = sign(self.key, payload) if self.key is not None else b""
        return payload, signature

    @staticmethod
    def _wire(name: str, r: Any) -> WireEstimate | WireLikelihood | WireRefusal:
        """What leaves the site for one analysis, as it travels."""
        likelihood = _likelihood(r)
        if likelihood is not None:
            return WireLikelihood.from_likelihood(name, likelihood, int(r.n))
        if hasattr(r, "yi"):
            return WireEstimate(name, float(r.yi), float(r.vi), float(r.se), int(r.n))
        return WireRefusal(name, str(getattr(r, "code", "refused")),
                           str(getattr(r, "reason", "refused")))

    async def handle(self, client: FederationClient, work: WorkItem) -> None:
        """Answer one round (or resend what was already signed for it)."""
        entry = self.state.get(work.round_id)
        if entry is not None and entry.status in ("acknowledged", "rejected"):
            return
        if entry is None or entry.status == "pending":
            try:
                results, pending = await asyncio.to_thread(self.compute, work)
            except AuditFailed as error:
                log.error("round %s: %s; nothing was computed or sent, retrying at the next "
                          "poll", work.round_id, error)
                return
            except FedsynthError as error:
                # A problem of this site (data unreadable, bad spec): say so, retry later.
                log.error("round %s: cannot compute the analyses: %s", work.round_id, error)
                return
            except Exception:  # noqa: BLE001 - a bug must not crash-loop the agent
                log.exception("round %s: cannot compute the analyses (unexpected error; "
                              "nothing was sent, retrying at the next poll)", work.round_id)
                return
            if pending is not None:
                if entry is None:
                    log.warning("round %s: the site policy requires an operator's approval "
                                "of this spec before anything is computed; run 'fedsynth "
                                "site pending' and 'fedsynth site approve %s'",
                                work.round_id, work.round_id)
                    self.state.put(RoundEntry(work.round_id, "pending",
                                              detail="waiting for approval",
                                              updated_at=iso(utcnow())))
                return
            payload, signature = self.sign_results(work.round_id, results)
            # The audit entry first: nothing leaves the site unless it is recorded there.
            try:
                self._audit_required("submission.signed",
                                     submission_audit(work.round_id, payload, results))
            except AuditFailed as error:
                log.error("round %s: %s; the submission was NOT sent, retrying at the next "
                          "poll", work.round_id, error)
                return
            entry = RoundEntry(work.round_id, "signed", payload, signature,
                               updated_at=iso(utcnow()))
            self.state.put(entry)     # recorded BEFORE it is sent (a restart resends it)
            for line in describe_results(self.config.name, work.round_id, results):
                log.info("%s", line)
        else:
            log.info("round %s: resending the submission signed at %s (identical bytes)",
                     work.round_id, entry.updated_at)
        await self._send(client, entry)

    async def _send(self, client: FederationClient, entry: RoundEntry) -> None:
        try:
            ack = await client.submit(entry.payload, entry.signature)
        except CoordinatorRefused as refused:
            self.state.put(RoundEntry(entry.round_id, "rejected", entry.payload,
                                      entry.signature, refused.reason,
                                      iso(utcnow())))
            log.error("round %s: the coordinator refused this site's submission "
                      "(%s): %s", entry.round_id, refused.code, refused.reason)
            self._audit("submission.rejected", {"round": entry.round_id,
                                                "code": refused.code,
                                                "reason": refused.reason})
            self.answered.append(entry.round_id)
            self.rejected.append(entry.round_id)
            return
        self.state.put(RoundEntry(entry.round_id, "acknowledged", entry.payload,
                                  entry.signature, f"{ack.status}: {ack.message}",
                                  iso(utcnow())))
        log.info("round %s: the coordinator acknowledged the submission (%s)",
                 entry.round_id, ack.status)
        self._audit("submission.acknowledged", {"round": entry.round_id,
                                                "status": ack.status})
        self.answered.append(entry.round_id)

    # --- model steps -----------------------------------------------------------------------
    def compute_step(self, message: pb.ModelStep, request_digest: bytes
                     ) -> tuple[bytes, bytes, str]:
        """Answer one model step: decide, compute, sign, audit (blocking; a worker thread).

        Returns the signed answer, its signature and a plain sentence of what it holds.
        Raises :class:`AuditFailed` (nothing may be sent) when the audit entry cannot be
        written.
        """
        # lazy: loaded by _warm_imports in a worker thread, off the event loop
        from site_agent.steps import ModelSteps, describe_answer

        if self._model_steps is None:
            self._model_steps = ModelSteps(self.config)
        order = decode_model_step(message)
        try:
            answer: Any = self._model_steps.answer(order)
        except Exception:  # noqa: BLE001 - a bug refuses the step; the detail stays here
            log.exception("round %s: model %s step %s failed", order.round_id, order.model,
                          order.step_id)
            answer = WireRefusal(order.model, "internal_error", "the model step failed "
                                 "unexpectedly at the site (the details are in the site's "
                                 "log)")
        content = StepAnswerContent(
            round_id=order.round_id, site=self.config.name, nonce=os.urandom(NONCE_BYTES),
            timestamp=utcnow(), step_id=order.step_id, request_digest=request_digest,
            result=answer, agent_version=__version__, protocol_version=PROTOCOL_VERSION)
        payload = encode_step_answer(content)
        signature = sign(self.key, payload) if self.key is not None else b""
        sent: dict[str, Any]
        if isinstance(answer, WireAggregates):
            sent = {"n": answer.n, "names": list(answer.names), "deviance": answer.deviance}
        elif isinstance(answer, WireSiteFit):
            sent = {"n": answer.n, "status": answer.status}
        elif isinstance(answer, WireContribution):
            sent = {"n": answer.n, "loglik": answer.loglik if answer.defined else None}
        elif isinstance(answer, WireMeasures):
            sent = {"iecv": answer.to_dict()}
        else:
            sent = {"refused": answer.reason, "code": answer.code}
        # The audit entry first: nothing leaves the site unless it is recorded there.
        self._audit_required("model_step.signed", {
            "round": order.round_id, "step": order.step_id, "model": order.model,
            "kind": order.kind, "fit": order.fit, "sequence": order.sequence,
            "request_digest": request_digest.hex(),
            "digest": hashlib.sha256(payload).hexdigest(), "sent": sent})
        return payload, signature, describe_answer(order, answer)

    async def handle_step(self, client: FederationClient, message: pb.ModelStep) -> None:
        """Answer one pushed model step (or resend the answer already signed for it)."""
        digest = model_step_digest(message)
        cached = self._step_answers.get(message.step_id)
        if cached is not None and cached[0] == digest:
            payload, signature = cached[1], cached[2]
        else:
            try:
                payload, signature, sentence = await asyncio.to_thread(
                    self.compute_step, message, digest)
            except AuditFailed as error:
                log.error("round %s: %s; the model step was NOT answered", message.round_id,
                          error)
                return
            except FedsynthError as error:     # an undecodable step: nothing to answer
                log.error("round %s: model step refused before computing: %s",
                          message.round_id, error)
                return
            if len(self._step_answers) > 10_000:
                self._step_answers.clear()
            self._step_answers[message.step_id] = (digest, payload, signature)
            log.info("round %s: %s", message.round_id, sentence)
        try:
            await client.answer_step(payload, signature)
        except CoordinatorRefused as refused:
            log.error("round %s: the coordinator refused this site's answer to model step "
                      "%s (%s): %s", message.round_id, message.step_id, refused.code,
                      refused.reason)
            self._audit("model_step.rejected", {"round": message.round_id,
                                                "step": message.step_id,
                                                "code": refused.code,
                                                "reason": refused.reason})
            return
        self.steps_answered += 1

    async def step_loop(self, client: FederationClient) -> None:
        """Keep the model-step stream open and answer each step as it arrives."""
        backoff = Backoff(base=0.2, cap=min(5.0, self.config.max_backoff.total_seconds()))
        while not self._stop.is_set():
            try:
                async for message in client.stream_steps():
                    backoff.reset()
                    await self.handle_step(client, message)
            except CoordinatorUnavailable as error:
                log.info("%s; opening it again", error)
                await self._sleep(backoff.next_delay())
            except CoordinatorRefused as refused:
                # e.g. a coordinator without model steps (UNIMPLEMENTED): look again later
                log.warning("the coordinator refused the model-step stream: %s", refused)
                await self._sleep(30.0)

    # --- run loop --------------------------------------------------------------------------
    async def resend_unacknowledged(self, client: FederationClient) -> None:
        """Resend submissions signed before the agent stopped but never acknowledged."""
        for entry in self.state.rounds().values():
            if entry.status == "signed":
                log.info("round %s: a submission was signed but not acknowledged before the "
                         "agent stopped; resending it", entry.round_id)
                await self._send(client, entry)

    async def session(self) -> None:
        """One connected session: register, then heartbeat and pull until an error."""
        config = self.config
        async with FederationClient(self._target(), config.tls, insecure=config.insecure,
                                    server_name=config.server_name, site=config.name) as client:
            site = await client.register()
            if site != config.name:
                raise FedsynthError(f"the coordinator sees this site as {site!r} but "
                                    f"site.toml says {config.name!r}")
            log.info("connected to the coordinator at %s as %s", client.target, site)
            self.backoff.reset()
            steps = asyncio.create_task(self.step_loop(client), name="model steps")
            try:
                await self.resend_unacknowledged(client)
                last_beat = 0.0
                loop = asyncio.get_running_loop()
                while not self._stop.is_set():
                    if loop.time() - last_beat >= config.heartbeat_interval.total_seconds():
                        await client.heartbeat()
                        last_beat = loop.time()
                    for work in await client.pull_work():
                        await self.handle(client, work)
                    if self.once and self.answered:
                        self._stop.set()
                        break
                    await self._sleep(config.poll_interval.total_seconds())
            finally:
                steps.cancel()
                await asyncio.gather(steps, return_exceptions=True)

    async def run(self) -> int:
        """Run until stopped (or, with ``once``, until one round is answered)."""
        # Load the statistics stack before connecting: a round is then answered in the
        # time its computation takes, not plus seconds of imports.
        await asyncio.to_thread(_warm_imports)
        while not self._stop.is_set():
            try:
                await self.session()
            except CoordinatorUnavailable as error:
                delay = self.backoff.next_delay()
                log.warning("%s; retrying in %.1f s", error, delay)
                await self._sleep(delay)
            except CoordinatorRefused as refused:
                # Registration refused (not allowed, incompatible version): permanent.
                log.error("the coordinator refused this site: %s", refused)
                return 1
        # With --once, a refused submission is a failure the caller should see.
        return 1 if self.once and self.rejected else 0


def _warm_imports() -> None:
    """Import the statistics stack (numpy, pandas, scipy, statsmodels, SQLAlchemy).

    Called in a worker thread before the agent connects, so that the event loop is free
    meanwhile and a round is answered in the time its computation takes.
    """
    # lazy: this function is the import, run off the event loop
    import fedsynth.effects.patient_level  # noqa: F401
    import site_agent.connectors  # noqa: F401
    import site_agent.likelihood  # noqa: F401
    import site_agent.policy  # noqa: F401
    import site_agent.privacy  # noqa: F401
    import site_agent.steps  # noqa: F401


async def run_agent(config: SiteConfig, *, once: bool = False) -> int:
    """Run an agent with SIGTERM/SIGINT handling."""
    agent = SiteAgent(config, once=once)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, agent.request_stop)
        except (NotImplementedError, RuntimeError):  # pragma: no cover
            pass
    return await agent.run()
