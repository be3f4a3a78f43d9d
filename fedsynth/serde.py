"""The one module that converts between domain dataclasses and ``fedsynth.v1`` messages.

Why
---
Servicers and the client stay thin (read a message, call domain code, write a message) and
every field mapping lives here, where the round-trip tests check it (Flower keeps the same
split in ``flwr.common.serde``). Two rules are enforced at this boundary:

* only ``yi, vi, se, n`` of an estimate leave the site: the counts an estimator keeps for
  disclosure control (``Estimate.cells``) and its ``details`` are never encoded; of a
  released likelihood (``release = "likelihood"``) only its approximation's numbers and
  ``n`` (:class:`WireLikelihood`);
* decoded values are checked for type and shape here (names, bytes lengths, finite
  timestamps); the statistical checks of values (finite, positive variance, ...) are in
  :mod:`coordinator.validation`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedsynth import PROTOCOL_VERSION, __version__
from fedsynth.errors import InputError
from fedsynth.v1 import federation_pb2 as pb

__all__ = [
    "WireEstimate", "WireLikelihood", "WireRefusal", "SubmissionContent", "WorkItem",
    "encode_results", "decode_results", "encode_submission", "decode_submission",
    "encode_work", "decode_work", "to_unix_ms", "from_unix_ms", "NONCE_BYTES", "pb",
]

#: Length of a submission nonce (random bytes).
NONCE_BYTES = 16
#: Names of the released likelihood forms (``fedsynth.effects.likelihood.FORMS``; this
#: module imports no numerical library, a unit test keeps the two equal).
LIKELIHOOD_FORMS = ("grid_with_gradients", "custom", "normal")


def to_unix_ms(when: _dt.datetime) -> int:
    """Unix milliseconds of an aware datetime."""
    if when.tzinfo is None:
        raise InputError(f"timestamp {when!r} has no time zone")
    return int(round(when.timestamp() * 1000))


def from_unix_ms(ms: int) -> _dt.datetime:
    """Aware UTC datetime of Unix milliseconds."""
    try:
        return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise InputError(f"timestamp_unix_ms = {ms!r} is out of range") from None


@dataclass(frozen=True)
class WireEstimate:
    """An estimate as it travels: the four numbers a site sends for one analysis."""

    analysis: str
    yi: float
    vi: float
    se: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form of the estimate."""
        return {"yi": self.yi, "vi": self.vi, "se": self.se, "n": self.n}


@dataclass(frozen=True)
class WireLikelihood:
    """A released likelihood as it travels (``fedsynth.v1.Likelihood``).

    The numbers of a :mod:`fedsynth.effects.likelihood` approximation: ``points``,
    ``values`` and ``derivatives`` of the "grid with gradients" form, ``mu``, ``sigma``
    (``None``: flat) and ``gamma`` of the custom form, the site's ``estimate`` and ``se``
    (``None`` when the likelihood has no finite maximum), and ``n``. Only the fields of
    ``form`` are meaningful; :meth:`to_dict` writes only those, in the layout that
    :func:`fedsynth.effects.likelihood.approximation_from_dict` reads.
    """

    analysis: str
    form: str
    n: int
    points: tuple[float, ...] = ()
    values: tuple[float, ...] = ()
    derivatives: tuple[float, ...] = ()
    mu: float = 0.0
    sigma: float | None = None
    gamma: float = 0.0
    estimate: float | None = None
    se: float | None = None

    @property
    def likelihood(self) -> dict[str, Any]:
        """The approximation as ``approximation_from_dict`` reads it."""
        out: dict[str, Any] = {"form": self.form}
        if self.form == "grid_with_gradients":
            out.update(points=list(self.points), values=list(self.values),
                       derivatives=list(self.derivatives))
        elif self.form == "custom":
            out.update(mu=self.mu, sigma=self.sigma, gamma=self.gamma)
        out.update(estimate=self.estimate, se=self.se)
        return out

    @classmethod
    def from_likelihood(cls, analysis: str, likelihood: Mapping[str, Any],
                        n: int) -> WireLikelihood:
        """From an approximation's ``to_dict()`` (the site side) and ``n``."""
        def floats(key: str) -> tuple[float, ...]:
            return tuple(float(v) for v in likelihood.get(key) or ())

        def optional(key: str) -> float | None:
            value = likelihood.get(key)
            return None if value is None else float(value)

        return cls(analysis=analysis, form=str(likelihood.get("form")), n=int(n),
                   points=floats("points"), values=floats("values"),
                   derivatives=floats("derivatives"),
                   mu=float(likelihood.get("mu") or 0.0), sigma=optional("sigma"),
                   gamma=float(likelihood.get("gamma") or 0.0),
                   estimate=optional("estimate"), se=optional("se"))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (what the coordinator stores): ``{"likelihood": {...}, "n"}``."""
        return {"likelihood": self.likelihood, "n": self.n}


@dataclass(frozen=True)
class WireRefusal:
    """A refused analysis as it travels: a machine code and a plain reason."""

    analysis: str
    code: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form of the refusal (``refused`` is the reason)."""
        return {"refused": self.reason, "code": self.code}


@dataclass(frozen=True)
class SubmissionContent:
    """The signed content of one site's answer to one round.

    Attributes
    ----------
    round_id
        The round answered.
    site
        The site name (must equal its certificate's name).
    nonce
        Random bytes, unique per submission (replay protection).
    timestamp
        When the site signed it (UTC).
    results
        ``{analysis: WireEstimate | WireLikelihood | WireRefusal}`` in spec order.
    agent_version
        The site agent's fedsynth version.
    protocol_version
        Wire-protocol version the site speaks.
    """

    round_id: str
    site: str
    nonce: bytes
    timestamp: _dt.datetime
    results: Mapping[str, WireEstimate | WireLikelihood | WireRefusal] = field(
        default_factory=dict)
    agent_version: str = __version__
    protocol_version: str = PROTOCOL_VERSION

    def estimates(self) -> dict[str, WireEstimate]:
        """The analyses answered with an estimate."""
        return {k: v for k, v in self.results.items() if isinstance(v, WireEstimate)}

    def likelihoods(self) -> dict[str, WireLikelihood]:
        """The analyses answered with a likelihood."""
        return {k: v for k, v in self.results.items() if isinstance(v, WireLikelihood)}

    def refusals(self) -> dict[str, WireRefusal]:
        """The analyses refused."""
        return {k: v for k, v in self.results.items() if isinstance(v, WireRefusal)}


@dataclass(frozen=True)
class WorkItem:
    """An open round as a site sees it."""

    round_id: str
    spec_toml: str
    opened_at: _dt.datetime
    deadline: _dt.datetime


def _is_refusal(result: Any) -> bool:
    return not hasattr(result, "yi") and _likelihood_of(result) is None


def _likelihood_of(result: Any) -> Mapping[str, Any] | None:
    """The approximation dict of a released likelihood (site or wire type), else None."""
    value = getattr(result, "likelihood", None)
    return value if isinstance(value, Mapping) else None


def _encode_likelihood(name: str, likelihood: Mapping[str, Any], n: Any) -> pb.Likelihood:
    wire = WireLikelihood.from_likelihood(name, likelihood, int(n) if n is not None else 0)
    message = pb.Likelihood(form=wire.form, points=wire.points, values=wire.values,
                            derivatives=wire.derivatives, mu=wire.mu, gamma=wire.gamma,
                            n=wire.n)
    for key in ("sigma", "estimate", "se"):
        value = getattr(wire, key)
        if value is not None:
            setattr(message, key, value)
    return message


def encode_results(results: Mapping[str, Any]) -> list[pb.AnalysisResult]:
    """Messages of ``{name: Estimate | Likelihood | Refusal}`` (site or Wire* types).

    Only ``yi, vi, se, n`` of an estimate are encoded, and only the approximation's numbers
    and ``n`` of a likelihood (anything with a ``likelihood`` mapping); never cells or
    details.
    """
    out = []
    for name, result in results.items():
        if not isinstance(name, str) or not name:
            raise InputError(f"analysis name {name!r} must be a non-empty string")
        likelihood = _likelihood_of(result)
        if likelihood is not None:
            out.append(pb.AnalysisResult(analysis=name, likelihood=_encode_likelihood(
                name, likelihood, getattr(result, "n", 0))))
        elif _is_refusal(result):
            out.append(pb.AnalysisResult(analysis=name, refusal=pb.Refusal(
                code=str(getattr(result, "code", "refused") or "refused"),
                reason=str(getattr(result, "reason", "refused")))))
        else:
            n = getattr(result, "n", 0)
            out.append(pb.AnalysisResult(analysis=name, estimate=pb.Estimate(
                yi=float(result.yi), vi=float(result.vi), se=float(result.se),
                n=int(n) if n is not None else 0)))
    return out


def _decode_likelihood(name: str, m: pb.Likelihood) -> WireLikelihood:
    """A likelihood message; shapes checked here, values in :mod:`coordinator.validation`."""
    if m.form not in LIKELIHOOD_FORMS:
        raise InputError(f"results: analysis {name!r}: likelihood form {m.form[:80]!r} is "
                         f"not one of {', '.join(LIKELIHOOD_FORMS)}")
    return WireLikelihood(
        analysis=name, form=m.form, n=m.n, points=tuple(m.points), values=tuple(m.values),
        derivatives=tuple(m.derivatives), mu=m.mu,
        sigma=m.sigma if m.HasField("sigma") else None, gamma=m.gamma,
        estimate=m.estimate if m.HasField("estimate") else None,
        se=m.se if m.HasField("se") else None)


def decode_results(messages: Any) -> dict[str, WireEstimate | WireLikelihood | WireRefusal]:
    """``{name: WireEstimate | WireLikelihood | WireRefusal}`` of repeated ``AnalysisResult``.

    Raises :class:`InputError` for an empty or duplicated analysis name, an empty result
    or an unknown likelihood form.
    """
    out: dict[str, WireEstimate | WireLikelihood | WireRefusal] = {}
    for message in messages:
        name = message.analysis
        if not name:
            raise InputError("results: an analysis has an empty name")
        if name in out:
            raise InputError(f"results: analysis {name!r} appears twice")
        kind = message.WhichOneof("outcome")
        if kind == "estimate":
            e = message.estimate
            out[name] = WireEstimate(name, e.yi, e.vi, e.se, e.n)
        elif kind == "likelihood":
            out[name] = _decode_likelihood(name, message.likelihood)
        elif kind == "refusal":
            out[name] = WireRefusal(name, message.refusal.code or "refused",
                                    message.refusal.reason)
        else:
            raise InputError(f"results: analysis {name!r} has neither an estimate, a "
                             "likelihood nor a refusal")
    return out


def encode_submission(content: SubmissionContent) -> bytes:
    """Serialized ``Submission``: the exact bytes the site signs."""
    if len(content.nonce) != NONCE_BYTES:
        raise InputError(f"nonce must be {NONCE_BYTES} bytes, got {len(content.nonce)}")
    message = pb.Submission(
        protocol_version=content.protocol_version, round_id=content.round_id,
        site=content.site, nonce=content.nonce,
        timestamp_unix_ms=to_unix_ms(content.timestamp), agent_version=content.agent_version,
        results=encode_results(content.results))
    return message.SerializeToString(deterministic=True)


def decode_submission(data: bytes) -> SubmissionContent:
    """Parse the signed bytes of a ``Submission``; :class:`InputError` naming the field."""
    message = pb.Submission()
    try:
        message.ParseFromString(data)
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError (a plain Exception)
        raise InputError("submission: the bytes are not a fedsynth.v1.Submission") from None
    if not message.round_id:
        raise InputError("submission: round_id is empty")
    if not message.site:
        raise InputError("submission: site is empty")
    if len(message.nonce) != NONCE_BYTES:
        raise InputError(f"submission: nonce must be {NONCE_BYTES} bytes, got "
                         f"{len(message.nonce)}")
    if message.timestamp_unix_ms <= 0:
        raise InputError(f"submission: timestamp_unix_ms = {message.timestamp_unix_ms} is "
                         "not a time")
    return SubmissionContent(
        round_id=message.round_id, site=message.site, nonce=bytes(message.nonce),
        timestamp=from_unix_ms(message.timestamp_unix_ms),
        results=decode_results(message.results), agent_version=message.agent_version,
        protocol_version=message.protocol_version)


def encode_work(item: WorkItem) -> pb.Work:
    """The wire message of an open round."""
    return pb.Work(round_id=item.round_id, spec_toml=item.spec_toml,
                   opened_at_unix_ms=to_unix_ms(item.opened_at),
                   deadline_unix_ms=to_unix_ms(item.deadline))


def decode_work(message: pb.Work) -> WorkItem:
    """An open round from its wire message (an empty round id is an :class:`InputError`)."""
    if not message.round_id:
        raise InputError("work: round_id is empty")
    return WorkItem(round_id=message.round_id, spec_toml=message.spec_toml,
                    opened_at=from_unix_ms(message.opened_at_unix_ms),
                    deadline=from_unix_ms(message.deadline_unix_ms))
