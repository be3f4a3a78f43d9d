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
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedsynth import PROTOCOL_VERSION, __version__
from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.v1 import federation_pb2 as pb

__all__ = [
    "WireEstimate", "WireLikelihood", "WireRefusal", "SubmissionContent", "WorkItem",
    "encode_results", "decode_results", "encode_submission", "decode_submission",
    "encode_work", "decode_work", "to_unix_ms", "from_unix_ms", "NONCE_BYTES", "pb",
    "STEP_KINDS", "ModelStepOrder", "WireAggregates", "WireSiteFit", "WireContribution",
    "WireMeasures", "IECV_MEASURES",
    "StepAnswerContent",
    "encode_model_step", "decode_model_step", "model_step_digest", "encode_step_answer",
    "decode_step_answer",
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


# ------------------------------------------------------------------------------- model steps
#
# A model step is generic: a kind (``irls``: the sums of a site's rows at coefficients;
# ``site_fit``: the site's own fit of the model) and a typed payload, so one stream serves
# every iterative fit. Numbers travel as protobuf doubles (NaN allowed: an aliased
# coefficient); the statistical checks of the values are in :mod:`fedsynth.models` and
# :mod:`coordinator.models`.

#: Kinds of model step, and the payload field each one uses.
STEP_KINDS = ("irls", "site_fit", "hierarchical", "iecv")
#: Fits a step may belong to (``iecv``: the evaluation of a model at a held-out site).
STEP_FITS = ("one_stage", "stratified", "site", "hierarchical", "iecv")
#: The per-site measures of an IECV answer (:class:`WireMeasures`), in contract order.
IECV_MEASURES = ("auc", "auc_var", "logit_auc", "logit_auc_var", "calibration_slope",
                 "calibration_slope_var", "calibration_in_the_large",
                 "calibration_in_the_large_var", "O", "E", "log_OE", "log_OE_var",
                 "recalibration")
#: Protobuf field of each :data:`IECV_MEASURES` name (proto fields are lower case).
_IECV_FIELDS = {"O": "observed", "E": "expected", "log_OE": "log_oe",
                "log_OE_var": "log_oe_var"}
#: Most coefficients a step may carry (a model has far fewer; bounds decoding work).
MAX_STEP_COEFFICIENTS = 512
#: Longest name, step id or reason accepted in a step message.
_MAX_TEXT = 512


@dataclass(frozen=True)
class ModelStepOrder:
    """One step of a model fit as the coordinator sends it (``ModelStep``).

    Attributes
    ----------
    round_id, step_id
        The round, and the step's id (unique within the round).
    model
        The model's name in the round's spec.
    kind
        ``irls`` or ``site_fit`` (:data:`STEP_KINDS`).
    fit
        ``one_stage``, ``stratified`` or ``site``.
    sequence
        Request number within the fit (0 = the first).
    spec_toml
        The round's spec (the site reviews it under its policy before answering).
    deadline
        The round's deadline (UTC).
    coefficients
        ``irls``: ``{name: value}``, or None for the start step (R's ``mustart``).
    epsilon, maxit
        ``site_fit``: the IRLS settings of the site's own fit.
    proposal
        ``hierarchical``: the point to evaluate, in the JSON form of
        :class:`fedsynth.models.hierarchical.Proposal` (``family, beta, log_tau, log_sigma,
        nodes, tol, iteration``; ``log_tau`` None for ``tau = 0``).
    scoring
        ``iecv``: the model to evaluate at the held-out site, in the JSON form of
        :class:`fedsynth.models.iecv.ScoringModel` (``variant, family, coefficients`` by
        name with null for aliased, ``recalibrate``, ``developed_on``).
    held_out
        IECV: the site held out of this development fit (``""`` for the round's own fits
        and for the evaluation steps). A site counts its step cap per fit, and each
        development fit is a fit of its own.
    """

    round_id: str
    step_id: str
    model: str
    kind: str
    fit: str
    sequence: int
    spec_toml: str
    deadline: _dt.datetime
    coefficients: Mapping[str, float] | None = None
    epsilon: float = 1e-10
    maxit: int = 25
    proposal: Mapping[str, Any] | None = None
    scoring: Mapping[str, Any] | None = None
    held_out: str = ""


@dataclass(frozen=True)
class WireMeasures:
    """A held-out site's IECV measures as they travel (``IecvMeasures``).

    :meth:`to_dict` is the JSON form :meth:`fedsynth.models.iecv.SiteMeasures.from_dict`
    reads (NaN as null): ``n``, the Output contract's measures, ``recalibration`` and
    ``refused`` (measure -> sentence).
    """

    n: int
    values: Mapping[str, float]
    refused: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WireMeasures:
        """From :meth:`fedsynth.models.iecv.SiteMeasures.to_dict`."""
        def num(key: str) -> float:
            value = data.get(key)
            return float("nan") if value is None else float(value)
        return cls(n=int(data["n"]), values={k: num(k) for k in IECV_MEASURES},
                   refused={str(k): str(v) for k, v in (data.get("refused") or {}).items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON form (NaN as ``null``)."""
        out: dict[str, Any] = {"n": self.n}
        out.update({k: finite_or_none(self.values.get(k, float("nan")))
                    for k in IECV_MEASURES})
        if self.refused:
            out["refused"] = dict(self.refused)
        return out


@dataclass(frozen=True)
class WireContribution:
    """A site's hierarchical-model term as it travels (``HierarchicalContribution``).

    :meth:`to_dict` is the JSON form
    :meth:`fedsynth.models.hierarchical.SiteContribution.from_dict` reads.
    """

    n: int
    defined: bool
    loglik: float
    gradient: tuple[float, ...]
    hessian: tuple[float, ...]
    nodes: int = 0
    quadrature_error: float = 0.0
    mode: float = 0.0
    mode_sd: float = 0.0
    posterior_mean: float = 0.0
    posterior_sd: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WireContribution:
        """From :meth:`fedsynth.models.hierarchical.SiteContribution.to_dict`."""
        def num(key: str) -> float:
            value = data.get(key)
            return float("nan") if value is None else float(value)
        defined = data.get("loglik") is not None
        return cls(n=int(data["n"]), defined=defined,
                   loglik=float(data["loglik"]) if defined else float("-inf"),
                   gradient=tuple(map(float, data["gradient"])) if defined else (),
                   hessian=(tuple(float(v) for row in data["hessian"] for v in row)
                            if defined else ()),
                   nodes=int(data.get("nodes") or 0), quadrature_error=num("quadrature_error"),
                   mode=num("mode"), mode_sd=num("mode_sd"),
                   posterior_mean=num("posterior_mean"), posterior_sd=num("posterior_sd"))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (an undefined contribution has ``loglik`` and derivatives ``null``)."""
        q = len(self.gradient)
        return {"n": self.n, "loglik": self.loglik if self.defined else None,
                "gradient": list(self.gradient) if self.defined else None,
                "hessian": ([[self.hessian[i * q + j] for j in range(q)] for i in range(q)]
                            if self.defined else None),
                "nodes": self.nodes, "quadrature_error": finite_or_none(self.quadrature_error),
                "mode": finite_or_none(self.mode), "mode_sd": finite_or_none(self.mode_sd),
                "posterior_mean": finite_or_none(self.posterior_mean),
                "posterior_sd": finite_or_none(self.posterior_sd)}


@dataclass(frozen=True)
class WireAggregates:
    """A site's IRLS sums as they travel (``IrlsAggregates``); nothing per patient.

    ``xtwx`` is row-major. :meth:`to_dict` is the JSON form
    :meth:`fedsynth.models.SiteStep.from_dict` reads.
    """

    names: tuple[str, ...]
    n: int
    xtwx: tuple[float, ...]
    score: tuple[float, ...]
    deviance: float
    minus_twice_loglik: float = float("nan")
    boundary: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WireAggregates:
        """From :meth:`fedsynth.models.SiteStep.to_dict` (``null`` numbers become NaN)."""
        def num(value: Any) -> float:
            return float("nan") if value is None else float(value)
        return cls(names=tuple(data["names"]), n=int(data["n"]),
                   xtwx=tuple(num(v) for row in data["xtwx"] for v in row),
                   score=tuple(num(v) for v in data["score"]),
                   deviance=num(data.get("deviance")),
                   minus_twice_loglik=num(data.get("minus_twice_loglik")),
                   boundary=bool(data.get("boundary", False)))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (nested ``xtwx``; NaN as ``null``)."""
        p = len(self.names)
        return {"names": list(self.names), "n": self.n,
                "xtwx": [[finite_or_none(self.xtwx[i * p + j]) for j in range(p)]
                         for i in range(p)],
                "score": [finite_or_none(v) for v in self.score],
                "deviance": finite_or_none(self.deviance),
                "minus_twice_loglik": finite_or_none(self.minus_twice_loglik),
                "boundary": self.boundary}


@dataclass(frozen=True)
class WireSiteFit:
    """A site's own fit as it travels (``SiteFitResult``).

    ``covariance`` is row-major and empty unless ``status`` is ``ok``. :meth:`to_dict` is
    the JSON form :meth:`fedsynth.models.SiteFit.from_dict` reads.
    """

    status: str
    reason: str
    n: int
    names: tuple[str, ...]
    coefficients: tuple[float, ...] = ()
    covariance: tuple[float, ...] = ()
    iterations: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WireSiteFit:
        """From :meth:`fedsynth.models.SiteFit.to_dict`."""
        names = tuple(data["names"])

        def num(value: Any) -> float:
            return float("nan") if value is None else float(value)
        coefs = data.get("coefficients") or {}
        vcov = data.get("vcov") or []
        return cls(status=str(data["status"]), reason=str(data.get("reason", "")),
                   n=int(data["n"]), names=names,
                   coefficients=tuple(num(coefs[n]) for n in names) if coefs else (),
                   covariance=tuple(num(v) for row in vcov for v in row),
                   iterations=int(data.get("iterations", 0)))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (NaN as ``null``)."""
        p = len(self.names)
        out: dict[str, Any] = {"status": self.status, "n": self.n, "names": list(self.names),
                               "iterations": self.iterations}
        if self.reason:
            out["reason"] = self.reason
        if self.status == "ok":
            out["coefficients"] = {k: finite_or_none(v)
                                   for k, v in zip(self.names, self.coefficients)}
            out["vcov"] = [[finite_or_none(self.covariance[i * p + j]) for j in range(p)]
                           for i in range(p)]
        return out


@dataclass(frozen=True)
class StepAnswerContent:
    """The signed content of one site's answer to one model step (``StepAnswer``).

    Attributes
    ----------
    round_id, site, nonce, timestamp
        As a submission's: the round, the site (its certificate's name), 16 random bytes
        (replay protection) and when the site signed it.
    step_id
        The step answered.
    request_digest
        SHA-256 of the ``ModelStep`` the site received (:func:`model_step_digest`): the
        answer is bound to the exact request, coefficients included.
    result
        :class:`WireAggregates` (``irls``), :class:`WireSiteFit` (``site_fit``) or
        :class:`WireRefusal` (the site refuses the step).
    """

    round_id: str
    site: str
    nonce: bytes
    timestamp: _dt.datetime
    step_id: str
    request_digest: bytes
    result: WireAggregates | WireSiteFit | WireContribution | WireMeasures | WireRefusal
    agent_version: str = __version__
    protocol_version: str = PROTOCOL_VERSION

    @property
    def kind(self) -> str:
        """``irls``, ``site_fit``, ``hierarchical`` or ``refusal``."""
        if isinstance(self.result, WireAggregates):
            return "irls"
        if isinstance(self.result, WireSiteFit):
            return "site_fit"
        if isinstance(self.result, WireContribution):
            return "hierarchical"
        if isinstance(self.result, WireMeasures):
            return "iecv"
        return "refusal"


def _text(value: str, what: str, *, empty: bool = False) -> str:
    if (not value and not empty) or len(value) > _MAX_TEXT:
        raise InputError(f"{what} must be 1-{_MAX_TEXT} characters, got {value[:80]!r}")
    return value


def _names(values: Sequence[str], what: str) -> tuple[str, ...]:
    names = tuple(values)
    if len(names) > MAX_STEP_COEFFICIENTS:
        raise InputError(f"{what}: {len(names)} names, at most {MAX_STEP_COEFFICIENTS}")
    for name in names:
        _text(name, f"{what}: a name")
    if len(set(names)) != len(names):
        raise InputError(f"{what}: a name appears twice")
    return names


def encode_model_step(order: ModelStepOrder) -> pb.ModelStep:
    """The wire message of a model step (what the coordinator pushes on the stream)."""
    if order.kind not in STEP_KINDS:
        raise InputError(f"model step: kind must be one of {', '.join(STEP_KINDS)}, got "
                         f"{order.kind!r}")
    message = pb.ModelStep(
        protocol_version=PROTOCOL_VERSION, round_id=order.round_id, step_id=order.step_id,
        model=order.model, kind=order.kind, fit=order.fit, sequence=order.sequence,
        spec_toml=order.spec_toml, deadline_unix_ms=to_unix_ms(order.deadline),
        held_out=order.held_out)
    if order.kind == "irls":
        coefficients = order.coefficients
        if coefficients is None:
            message.irls.CopyFrom(pb.IrlsPoint(start=True))
        else:
            message.irls.CopyFrom(pb.IrlsPoint(
                start=False, names=list(coefficients),
                coefficients=[float(v) for v in coefficients.values()]))
    elif order.kind == "site_fit":
        message.site_fit.CopyFrom(pb.SiteFitOrder(epsilon=order.epsilon, maxit=order.maxit))
    elif order.kind == "iecv":
        m = dict(order.scoring or {})
        coefficients = dict(m.get("coefficients") or {})
        message.iecv.CopyFrom(pb.IecvModel(
            variant=str(m.get("variant", "")), family=str(m.get("family", "")),
            names=list(coefficients),
            coefficients=[float("nan") if v is None else float(v)
                          for v in coefficients.values()],
            recalibrate=bool(m.get("recalibrate", False)),
            developed_on=[str(s) for s in m.get("developed_on", ())]))
    else:
        p = dict(order.proposal or {})
        log_tau, log_sigma = p.get("log_tau"), p.get("log_sigma")
        message.hierarchical.CopyFrom(pb.HierarchicalProposal(
            family=str(p.get("family", "")), beta=[float(b) for b in p.get("beta", ())],
            tau_zero=log_tau is None, log_tau=0.0 if log_tau is None else float(log_tau),
            has_log_sigma=log_sigma is not None,
            log_sigma=0.0 if log_sigma is None else float(log_sigma),
            nodes=int(p.get("nodes") or 0), tol=float(p.get("tol", 1e-9)),
            iteration=int(p.get("iteration", 0))))
    return message


def model_step_digest(message: pb.ModelStep) -> bytes:
    """SHA-256 of a model step's deterministic serialization (what an answer names)."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).digest()


def decode_model_step(message: pb.ModelStep) -> ModelStepOrder:
    """A model step from its wire message; :class:`InputError` naming the field."""
    _text(message.round_id, "model step: round_id")
    _text(message.step_id, "model step: step_id")
    _text(message.model, "model step: model")
    if message.fit not in STEP_FITS:
        raise InputError(f"model step: fit must be one of {', '.join(STEP_FITS)}, got "
                         f"{message.fit[:80]!r}")
    if message.sequence < 0:
        raise InputError(f"model step: sequence = {message.sequence} is negative")
    payload = message.WhichOneof("payload")
    if message.kind not in STEP_KINDS or payload != message.kind:
        raise InputError(f"model step: kind {message.kind[:40]!r} with payload "
                         f"{payload!r} (kinds: {', '.join(STEP_KINDS)})")
    coefficients: dict[str, float] | None = None
    proposal: dict[str, Any] | None = None
    epsilon, maxit = 1e-10, 25
    scoring: dict[str, Any] | None = None
    if payload == "iecv":
        e = message.iecv
        names = _names(e.names, "model step: iecv coefficients")
        if len(e.coefficients) != len(names) or not names:
            raise InputError(f"model step: iecv: {len(names)} coefficient names but "
                             f"{len(e.coefficients)} values")
        scoring = {"variant": _text(e.variant, "model step: iecv variant"),
                   "family": _text(e.family, "model step: iecv family"),
                   "coefficients": {n: (float(v) if math.isfinite(v) else None)
                                    for n, v in zip(names, e.coefficients)},
                   "recalibrate": bool(e.recalibrate),
                   "developed_on": list(_names(e.developed_on,
                                               "model step: iecv developed_on"))}
    elif payload == "hierarchical":
        h = message.hierarchical
        if len(h.beta) > MAX_STEP_COEFFICIENTS:
            raise InputError(f"model step: {len(h.beta)} coefficients, at most "
                             f"{MAX_STEP_COEFFICIENTS}")
        proposal = {"family": h.family, "beta": list(map(float, h.beta)),
                    "log_tau": None if h.tau_zero else float(h.log_tau),
                    "log_sigma": float(h.log_sigma) if h.has_log_sigma else None,
                    "nodes": int(h.nodes) or None, "tol": float(h.tol),
                    "iteration": int(h.iteration)}
    elif payload == "irls":
        point = message.irls
        if not point.start:
            names = _names(point.names, "model step: coefficients")
            if len(point.coefficients) != len(names):
                raise InputError(f"model step: {len(names)} coefficient names but "
                                 f"{len(point.coefficients)} values")
            coefficients = dict(zip(names, map(float, point.coefficients)))
        elif point.names or point.coefficients:
            raise InputError("model step: a start step carries no coefficients")
    else:
        epsilon, maxit = float(message.site_fit.epsilon), int(message.site_fit.maxit)
        if not (0 < epsilon < 1) or not 1 <= maxit <= 1000:
            raise InputError(f"model step: site fit settings epsilon = {epsilon!r}, maxit = "
                             f"{maxit!r} out of range ((0, 1) and 1-1000)")
    return ModelStepOrder(
        round_id=message.round_id, step_id=message.step_id, model=message.model,
        kind=message.kind, fit=message.fit, sequence=int(message.sequence),
        spec_toml=message.spec_toml, deadline=from_unix_ms(message.deadline_unix_ms),
        coefficients=coefficients, epsilon=epsilon, maxit=maxit, proposal=proposal,
        scoring=scoring,
        held_out=_text(message.held_out, "model step: held_out", empty=True))


def _matrix(values: Sequence[float], p: int, what: str) -> tuple[float, ...]:
    if len(values) != p * p:
        raise InputError(f"{what}: {len(values)} values, expected {p} x {p}")
    return tuple(float(v) for v in values)


def encode_step_answer(content: StepAnswerContent) -> bytes:
    """Serialized ``StepAnswer``: the exact bytes the site signs."""
    if len(content.nonce) != NONCE_BYTES:
        raise InputError(f"nonce must be {NONCE_BYTES} bytes, got {len(content.nonce)}")
    message = pb.StepAnswer(
        protocol_version=content.protocol_version, round_id=content.round_id,
        site=content.site, nonce=content.nonce,
        timestamp_unix_ms=to_unix_ms(content.timestamp), agent_version=content.agent_version,
        step_id=content.step_id, request_digest=content.request_digest)
    result = content.result
    if isinstance(result, WireAggregates):
        message.irls.CopyFrom(pb.IrlsAggregates(
            names=list(result.names), n=int(result.n), xtwx=list(result.xtwx),
            score=list(result.score), deviance=float(result.deviance),
            minus_twice_loglik=float(result.minus_twice_loglik),
            boundary=bool(result.boundary)))
    elif isinstance(result, WireContribution):
        message.hierarchical.CopyFrom(pb.HierarchicalContribution(
            n=int(result.n), defined=bool(result.defined),
            loglik=float(result.loglik) if result.defined else 0.0,
            gradient=list(result.gradient), hessian=list(result.hessian),
            nodes=int(result.nodes), quadrature_error=float(result.quadrature_error),
            mode=float(result.mode), mode_sd=float(result.mode_sd),
            posterior_mean=float(result.posterior_mean),
            posterior_sd=float(result.posterior_sd)))
    elif isinstance(result, WireMeasures):
        measures = pb.IecvMeasures(n=int(result.n))
        for key in IECV_MEASURES:
            setattr(measures, _IECV_FIELDS.get(key, key),
                    float(result.values.get(key, float("nan"))))
        measures.refused.update({str(k): str(v) for k, v in result.refused.items()})
        message.iecv.CopyFrom(measures)
    elif isinstance(result, WireSiteFit):
        message.site_fit.CopyFrom(pb.SiteFitResult(
            status=result.status, reason=result.reason, n=int(result.n),
            names=list(result.names), coefficients=list(result.coefficients),
            covariance=list(result.covariance), iterations=int(result.iterations)))
    else:
        message.refusal.CopyFrom(pb.Refusal(code=result.code, reason=result.reason))
    return message.SerializeToString(deterministic=True)


def decode_step_answer(data: bytes) -> StepAnswerContent:
    """Parse the signed bytes of a ``StepAnswer``; :class:`InputError` naming the field."""
    message = pb.StepAnswer()
    try:
        message.ParseFromString(data)
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError (a plain Exception)
        raise InputError("step answer: the bytes are not a fedsynth.v1.StepAnswer") from None
    _text(message.round_id, "step answer: round_id")
    _text(message.site, "step answer: site")
    _text(message.step_id, "step answer: step_id")
    if len(message.nonce) != NONCE_BYTES:
        raise InputError(f"step answer: nonce must be {NONCE_BYTES} bytes, got "
                         f"{len(message.nonce)}")
    if len(message.request_digest) != 32:
        raise InputError("step answer: request_digest must be a SHA-256 digest (32 bytes)")
    if message.timestamp_unix_ms <= 0:
        raise InputError(f"step answer: timestamp_unix_ms = {message.timestamp_unix_ms} is "
                         "not a time")
    outcome = message.WhichOneof("outcome")
    result: WireAggregates | WireSiteFit | WireContribution | WireMeasures | WireRefusal
    if outcome == "iecv":
        e = message.iecv
        if e.n < 0:
            raise InputError(f"step answer: n = {e.n} is negative")
        if len(e.refused) > len(IECV_MEASURES):
            raise InputError(f"step answer: {len(e.refused)} refused measures, at most "
                             f"{len(IECV_MEASURES)}")
        refused_measures = {}
        for key, reason in e.refused.items():
            if key not in IECV_MEASURES:
                raise InputError(f"step answer: refused names no measure: {key[:80]!r}")
            refused_measures[key] = _text(reason, "step answer: refused reason")
        result = WireMeasures(n=int(e.n),
                              values={k: float(getattr(e, _IECV_FIELDS.get(k, k)))
                                      for k in IECV_MEASURES},
                              refused=refused_measures)
    elif outcome == "hierarchical":
        h = message.hierarchical
        q = len(h.gradient)
        if q > MAX_STEP_COEFFICIENTS + 2:
            raise InputError(f"step answer: gradient has {q} values, at most "
                             f"{MAX_STEP_COEFFICIENTS + 2}")
        if h.n < 0:
            raise InputError(f"step answer: n = {h.n} is negative")
        if h.defined and q == 0:
            raise InputError("step answer: a defined contribution needs a gradient")
        result = WireContribution(
            n=int(h.n), defined=bool(h.defined),
            loglik=float(h.loglik) if h.defined else float("-inf"),
            gradient=tuple(map(float, h.gradient)) if h.defined else (),
            hessian=(_matrix(h.hessian, q, "step answer: hessian") if h.defined else ()),
            nodes=int(h.nodes), quadrature_error=float(h.quadrature_error),
            mode=float(h.mode), mode_sd=float(h.mode_sd),
            posterior_mean=float(h.posterior_mean), posterior_sd=float(h.posterior_sd))
    elif outcome == "irls":
        a = message.irls
        names = _names(a.names, "step answer: names")
        p = len(names)
        if len(a.score) != p:
            raise InputError(f"step answer: score has {len(a.score)} values, expected {p}")
        if a.n < 0:
            raise InputError(f"step answer: n = {a.n} is negative")
        result = WireAggregates(names=names, n=int(a.n),
                                xtwx=_matrix(a.xtwx, p, "step answer: xtwx"),
                                score=tuple(map(float, a.score)), deviance=float(a.deviance),
                                minus_twice_loglik=float(a.minus_twice_loglik),
                                boundary=bool(a.boundary))
    elif outcome == "site_fit":
        f = message.site_fit
        names = _names(f.names, "step answer: names")
        p = len(names)
        ok = f.status == "ok"
        if ok and len(f.coefficients) != p:
            raise InputError(f"step answer: {len(f.coefficients)} coefficients, expected {p}")
        if f.n < 0:
            raise InputError(f"step answer: n = {f.n} is negative")
        result = WireSiteFit(status=_text(f.status, "step answer: status"),
                             reason=_text(f.reason, "step answer: reason", empty=True),
                             n=int(f.n), names=names,
                             coefficients=tuple(map(float, f.coefficients)) if ok else (),
                             covariance=(_matrix(f.covariance, p, "step answer: covariance")
                                         if ok else ()),
                             iterations=int(f.iterations))
    elif outcome == "refusal":
        result = WireRefusal(message.step_id, message.refusal.code or "refused",
                             _text(message.refusal.reason, "step answer: reason",
                                   empty=True))
    else:
        raise InputError("step answer: it carries neither aggregates, a site fit nor a "
                         "refusal")
    return StepAnswerContent(
        round_id=message.round_id, site=message.site, nonce=bytes(message.nonce),
        timestamp=from_unix_ms(message.timestamp_unix_ms), step_id=message.step_id,
        request_digest=bytes(message.request_digest), result=result,
        agent_version=message.agent_version, protocol_version=message.protocol_version)
