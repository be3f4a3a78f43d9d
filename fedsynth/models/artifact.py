"""The signed model artifact: a fitted model that a site can score its patients with.

Why
---
A model developed across sites is deployed where it was not fitted: each site scores its
own patients with it, and a monthly evaluation round checks it (issue 14, "from model to
deployment and back"). The artifact carries everything scoring needs and nothing else:
the model's coding (outcome, covariates, declared categorical levels, offset, family),
the chosen variant's coefficients by name, site intercepts where the variant has them,
the hash of the ``[[model]]`` definition it was fitted from and when it was made. It is
**signed with the coordinator's key** (:mod:`fedsynth.signing`, the TLS key, as sites
sign submissions) so a site can check, before it scores a patient, that the numbers are
the coordinator's and unaltered: a tampered coefficient would silently mis-score every
patient.

Document (JSON; ``version`` 1)::

    {"format": "fedsynth-model-artifact", "version": 1,
     "model": {"name", "family", "link", "variant", "outcome", "covariates",
               "categorical": {column: [levels]}, "offset", "coefficients": {name: value},
               "aliased": [names], "site_intercepts": {site: value} | null,
               "spec_hash": "sha256:...", "created": ISO time, "source": text},
     "signature": {"algorithm": "ecdsa-p256-sha256" | "ed25519",
                   "certificate": PEM, "value": base64}}

The signed bytes are the canonical JSON (sorted keys, no spaces, ASCII) of ``format``,
``version`` and ``model``. :func:`verify_artifact` checks the signature against the
certificate in the document and, given the project's CA certificate, that the
certificate was issued by it for a server (the coordinator's certificate is the only
server certificate the project CA issues). Numbers round-trip exactly through JSON
(Python's shortest repr), so the same document verifies after any number of reads.

Variants: ``global`` (the one-stage model), ``recalibrated`` (the one-stage model whose
intercept each site re-estimates from its own outcomes when it scores: intercept
recalibration, one number computed locally, Janssen et al., J Clin Epidemiol 2008),
``stratified`` (common slopes, an intercept
per site: ``site_intercepts`` are the site intercepts themselves) and ``hierarchical``
(the random-intercept model's fixed part; ``site_intercepts`` are the conditional modes,
the sites' deviations from the mean intercept). Scoring a site that has an intercept uses
it; any other row is scored at the mean (global: the only) intercept; ``stratified``
needs a site.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from scipy import special

from fedsynth.errors import InputError
from fedsynth.models.coding import build_design
from fedsynth.models.families import get_family
from fedsynth.models.spec import INTERCEPT, ModelSpec, parse_model
from fedsynth.signing import SignatureError, load_certificate, sign, verify

__all__ = ["ARTIFACT_FORMAT", "ARTIFACT_VERSION", "VARIANTS", "ArtifactError",
           "RecalibrationError",
           "ModelArtifact", "Scores", "artifact_body", "sign_artifact", "verify_artifact",
           "read_artifact", "embedded_artifact", "model_hash", "canonical_bytes"]

ARTIFACT_FORMAT = "fedsynth-model-artifact"
ARTIFACT_VERSION = 1
#: Variants an artifact can carry.
VARIANTS: tuple[str, ...] = ("global", "recalibrated", "stratified", "hierarchical")
#: Largest artifact document read (bytes): a model has at most a few hundred numbers.
MAX_ARTIFACT_BYTES = 256 * 1024


class ArtifactError(InputError):
    """An artifact that is malformed, unsigned, tampered or not the coordinator's."""


class RecalibrationError(ArtifactError):
    """A ``recalibrated`` model whose intercept the rows cannot re-estimate.

    ``refusal`` is the key of :data:`fedsynth.effects.results.REFUSAL_VOCABULARY` an
    evaluation analysis refuses with (``missing_column``, ``non_binary``, ``no_events``),
    ``column`` the outcome column.
    """

    def __init__(self, message: str, *, refusal: str, column: str) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.column = column


def model_hash(model: ModelSpec) -> str:
    """``sha256:`` of the ``[[model]]`` definition's canonical JSON (what was fitted)."""
    text = json.dumps(model.to_dict(), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: canonical JSON of ``format``, ``version``, ``model``."""
    payload = {key: document.get(key) for key in ("format", "version", "model")}
    try:
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as error:
        raise ArtifactError(f"model artifact: not JSON-safe: {error}") from None


def _checked_numbers(values: Mapping[str, Any], where: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise ArtifactError(f"model artifact: {where} {name!r} is {value!r}, not a finite "
                                "number")
        out[str(name)] = float(value)
    return out


def artifact_body(entry: Mapping[str, Any], model: ModelSpec, *, variant: str,
                  created: str, source: str = "") -> dict[str, Any]:
    """The unsigned ``model`` object of an artifact from a fitted model's JSON entry.

    Parameters
    ----------
    entry
        One entry of ``"models"`` as ``fedsynth model fit --format json`` writes it (and,
        once rounds store models, as ``round show --format json`` will): ``one_stage``,
        ``stratified``, ``hierarchical`` objects with ``coefficients``.
    model
        The ``[[model]]`` definition it was fitted from (its coding travels in the
        artifact; its coefficient names must be the fit's).
    variant
        ``global``, ``recalibrated``, ``stratified`` or ``hierarchical``.
    created
        ISO 8601 time of export.
    source
        Free text saying where the fit came from (a file, a round).

    Raises
    ------
    ArtifactError
        An unknown variant, a fit without that variant, or names that differ.
    """
    if variant not in VARIANTS:
        raise ArtifactError(f"variant: {variant!r} is not one of {', '.join(VARIANTS)}")
    if entry.get("name") != model.name:
        raise ArtifactError(f"model artifact: the fit is of model {entry.get('name')!r}, "
                            f"the spec's model is {model.name!r}")
    key = {"global": "one_stage", "recalibrated": "one_stage", "stratified": "stratified",
           "hierarchical": "hierarchical"}[variant]
    fit = entry.get(key)
    if not isinstance(fit, Mapping) or not isinstance(fit.get("coefficients"), Mapping):
        raise ArtifactError(f"variant {variant!r}: the fit of model {model.name!r} has no "
                            f"{key!r} result (was it fitted with that variant?)")
    coefficients = dict(fit["coefficients"])
    expected = [n for n in model.coefficient_names
                if not (variant == "stratified" and n == INTERCEPT)]
    if sorted(coefficients) != sorted(expected):
        raise ArtifactError(f"model artifact: the fit's coefficients "
                            f"({', '.join(coefficients)}) are not the model's "
                            f"({', '.join(expected)}): a different spec?")
    aliased = [n for n in expected if coefficients[n] is None]
    finite = _checked_numbers({n: coefficients[n] for n in expected if n not in aliased},
                     "coefficient")
    site_intercepts: dict[str, float] | None = None
    if variant in ("stratified", "hierarchical"):
        raw = fit.get("site_intercepts")
        if not isinstance(raw, Mapping) or not raw:
            raise ArtifactError(f"variant {variant!r}: the fit has no site intercepts")
        site_intercepts = _checked_numbers(raw, "site intercept")
    return {"name": model.name, "family": model.family, "link": model.link,
            "variant": variant, "outcome": model.outcome,
            "covariates": list(model.covariates),
            "categorical": {c: list(levels) for c, levels in model.categorical},
            "offset": model.offset, "coefficients": finite, "aliased": aliased,
            "site_intercepts": site_intercepts, "spec_hash": model_hash(model),
            "created": created, "source": source}


def _algorithm(key: Any) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ecdsa-p256-sha256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise ArtifactError(f"unsupported signing key type {type(key).__name__}")


def sign_artifact(body: Mapping[str, Any], private_key: Any,
                  certificate_pem: bytes) -> dict[str, Any]:
    """The signed artifact document: ``body`` signed with the coordinator's key.

    ``certificate_pem`` (the coordinator's certificate) is embedded so that a site can
    verify with nothing but the project CA certificate it already holds; the key must be
    the certificate's (checked by verifying the new signature).
    """
    document: dict[str, Any] = {"format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION,
                                "model": dict(body)}
    signature = sign(private_key, canonical_bytes(document))
    document["signature"] = {"algorithm": _algorithm(private_key),
                             "certificate": certificate_pem.decode("ascii"),
                             "value": base64.b64encode(signature).decode("ascii")}
    try:
        verify(load_certificate(certificate_pem), canonical_bytes(document), signature)
    except SignatureError:
        raise ArtifactError("the signing key is not the certificate's key (--key and "
                            "--cert belong to different identities)") from None
    return document


@dataclass(frozen=True)
class Scores:
    """Scores of a data set's rows.

    ``linear_predictor`` and ``prediction`` (probability for binomial, mean for gaussian
    and poisson, offset included) per input row, ``NaN`` where a column the model uses is
    missing (``scored`` is False there). ``recalibration`` is the intercept shift a
    ``recalibrated`` model estimated from the rows' outcomes (0 for other variants).
    """

    linear_predictor: np.ndarray
    prediction: np.ndarray
    scored: np.ndarray
    recalibration: float = 0.0

    @property
    def n_scored(self) -> int:
        """Rows scored."""
        return int(self.scored.sum())


@dataclass(frozen=True)
class ModelArtifact:
    """A verified artifact, ready to score.

    Attributes
    ----------
    model
        The ``[[model]]`` coding rebuilt from the artifact.
    variant
        ``global``, ``stratified`` or ``hierarchical``.
    coefficients
        Finite coefficients by name (aliased ones absent; they score as 0, as R's
        ``predict`` with an ``NA`` coefficient).
    aliased
        Names of aliased coefficients.
    site_intercepts
        ``{site: intercept}`` (stratified) or ``{site: deviation}`` (hierarchical), or None.
    spec_hash, created, source
        Provenance.
    signer
        The signing certificate's subject common name.
    document
        The full signed document (as read).
    """

    model: ModelSpec
    variant: str
    coefficients: Mapping[str, float]
    aliased: tuple[str, ...]
    site_intercepts: Mapping[str, float] | None
    spec_hash: str
    created: str
    source: str
    signer: str
    document: Mapping[str, Any]

    @property
    def columns(self) -> tuple[str, ...]:
        """The data columns scoring reads (covariates, then the offset)."""
        return (*self.model.covariates, *((self.model.offset,) if self.model.offset else ()))

    def canonical_json(self) -> str:
        """The signed document as canonical JSON (how a spec embeds it)."""
        return json.dumps(self.document, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True, allow_nan=False)

    def intercept_for(self, site: str | None) -> float:
        """The intercept scoring uses at ``site`` (None: the mean / the only one)."""
        if self.variant == "stratified":
            if site is None:
                raise ArtifactError("a stratified model has one intercept per site: name the "
                                    f"site (one of {', '.join(self.site_intercepts or {})})")
            if site not in (self.site_intercepts or {}):
                raise ArtifactError(f"site {site!r} has no intercept in this stratified "
                                    f"model (it has {', '.join(self.site_intercepts or {})})")
            return float((self.site_intercepts or {})[site])
        base = float(self.coefficients.get(INTERCEPT, 0.0))
        if self.variant == "hierarchical" and site is not None:
            return base + float((self.site_intercepts or {}).get(site, 0.0))
        return base

    def score(self, frame: pd.DataFrame, *, site: str | None = None) -> Scores:
        """Score ``frame``'s rows (the outcome column is not needed).

        Rows with a missing value in a covariate or the offset are not scored (NaN); a
        value outside a categorical column's declared levels is an error naming the
        column, the value and the row (:class:`fedsynth.models.coding.CodingError`).
        """
        if not isinstance(frame, pd.DataFrame):
            raise InputError(f"score: data must be a pandas DataFrame, got "
                             f"{type(frame).__name__}")
        used = [*self.model.covariates, *([self.model.offset] if self.model.offset else [])]
        absent = [c for c in used if c not in frame.columns]
        if absent:
            raise InputError(f"data: no column {absent[0]!r} (the model uses "
                             f"{', '.join(used)})")
        work = frame.loc[:, used].copy()
        work[self.model.outcome] = 0.0
        complete = ~work.isna().any(axis=1).to_numpy()
        n = len(frame)
        lp = np.full(n, np.nan)
        if complete.any():
            design = build_design(work.loc[complete].reset_index(drop=True), self.model)
            beta = np.array([0.0 if name == INTERCEPT else self.coefficients.get(name, 0.0)
                             for name in design.names])
            lp[complete] = design.x @ beta + design.offset + self.intercept_for(site)
        shift = 0.0
        if self.variant == "recalibrated":
            shift = self._recalibration(frame, lp)
            lp = lp + shift
        mean = get_family(self.model.family).linkinv(lp) if complete.any() else lp
        return Scores(linear_predictor=lp, prediction=np.where(complete, mean, np.nan),
                      scored=complete, recalibration=shift)

    def _recalibration(self, frame: pd.DataFrame, lp: np.ndarray) -> float:
        """The intercept shift re-estimated from the rows' outcomes (one number).

        The maximum-likelihood ``a`` of ``glm(y ~ offset(lp), family)``: for the canonical
        links the score equation is ``sum(y) = sum(linkinv(lp + a))``, closed form for
        gaussian (``mean(y - lp)``) and poisson (``log(sum y / sum exp(lp))``), Newton's
        method for binomial (the equation is monotone in ``a``).
        """
        outcome = self.model.outcome
        if outcome not in frame.columns:
            raise RecalibrationError(f"a recalibrated model re-estimates its intercept from "
                                     f"the site's own outcomes: the data need column "
                                     f"{outcome!r}", refusal="missing_column", column=outcome)
        y = pd.to_numeric(frame[outcome], errors="coerce").to_numpy(dtype=float)
        use = np.isfinite(y) & np.isfinite(lp)
        if not use.any():
            raise RecalibrationError(f"a recalibrated model needs rows with both the outcome "
                                     f"{outcome!r} and every covariate to re-estimate its "
                                     "intercept", refusal="no_events", column=outcome)
        y, eta = y[use], lp[use]
        family = self.model.family
        if family == "gaussian":
            return float(np.mean(y - eta))
        total = float(y.sum())
        if family == "binomial" and (np.any((y != 0) & (y != 1))):
            raise RecalibrationError(f"column {outcome!r}: a binomial outcome is 0 or 1",
                                     refusal="non_binary", column=outcome)
        if total <= 0 or (family == "binomial" and total >= len(y)):
            raise RecalibrationError(f"column {outcome!r}: the intercept cannot be "
                                     f"re-estimated from {len(y)} rows with {total:g} events "
                                     "(none, or all)", refusal="no_events", column=outcome)
        if family == "poisson":
            return float(np.log(total) - np.log(np.exp(eta).sum()))
        shift = 0.0
        for _ in range(100):
            p = special.expit(eta + shift)
            step = (total - p.sum()) / max(float((p * (1 - p)).sum()), 1e-300)
            shift += step
            if abs(step) < 1e-12 * max(1.0, abs(shift)):
                break
        return float(shift)


def _certificate_checks(cert: Any, ca_pem: bytes | None) -> None:
    if ca_pem is None:
        return
    ca = load_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception) as error:  # noqa: BLE001 - any failure refuses
        raise ArtifactError("model artifact: its signing certificate was not issued by the "
                            f"project CA ({type(error).__name__})") from None
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = []
    if x509.oid.ExtendedKeyUsageOID.SERVER_AUTH not in usage:
        raise ArtifactError("model artifact: signed by a site's (client) certificate, not the "
                            "coordinator's; only the coordinator signs models")


def verify_artifact(document: Any, *, ca_pem: bytes | None = None) -> ModelArtifact:
    """Check an artifact document and return it ready to score.

    Parameters
    ----------
    document
        The parsed JSON document.
    ca_pem
        The project CA certificate (PEM). When given, the signing certificate must have
        been issued by it for a server (the coordinator). Without it only the signature
        against the embedded certificate is checked (integrity: what a site does with an
        artifact that arrived inside a round's spec over the mutually authenticated
        channel, see docs/decisions/iecv.md).

    Raises
    ------
    ArtifactError
        Wrong format or version, no signature (unsigned), a signature that does not
        verify (tampered), a certificate not from the CA, a malformed model.
    """
    if not isinstance(document, Mapping):
        raise ArtifactError(f"model artifact: expected a JSON object, got "
                            f"{type(document).__name__}")
    if document.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"model artifact: format is {document.get('format')!r}, not "
                            f"{ARTIFACT_FORMAT!r} (is this a fedsynth model artifact?)")
    if document.get("version") != ARTIFACT_VERSION:
        raise ArtifactError(f"model artifact: version {document.get('version')!r} is not "
                            f"supported (this fedsynth reads version {ARTIFACT_VERSION})")
    sig = document.get("signature")
    if not isinstance(sig, Mapping) or not sig.get("value") or not sig.get("certificate"):
        raise ArtifactError("model artifact: unsigned (no signature): refusing to score "
                            "with a model whose origin cannot be checked; export it with "
                            "'fedsynth model export'")
    try:
        signature = base64.b64decode(str(sig["value"]), validate=True)
    except ValueError:
        raise ArtifactError("model artifact: the signature is not base64") from None
    cert = load_certificate(str(sig["certificate"]))
    try:
        verify(cert, canonical_bytes(document), signature)
    except SignatureError:
        raise ArtifactError("model artifact: the signature does not verify: the artifact "
                            "was altered after it was signed (tampered); refusing to "
                            "score with it") from None
    _certificate_checks(cert, ca_pem)
    body = document.get("model")
    if not isinstance(body, Mapping):
        raise ArtifactError("model artifact: 'model' must be an object")
    try:
        spec = parse_model({"name": body.get("name"), "family": body.get("family"),
                            "outcome": body.get("outcome"),
                            "covariates": body.get("covariates", []),
                            **({"categorical": body["categorical"]}
                               if body.get("categorical") else {}),
                            **({"offset": body["offset"]} if body.get("offset") else {})})
    except InputError as error:
        raise ArtifactError(f"model artifact: {error}") from None
    variant = body.get("variant")
    if variant not in VARIANTS:
        raise ArtifactError(f"model artifact: variant {variant!r} is not one of "
                            f"{', '.join(VARIANTS)}")
    coefficients = _checked_numbers(dict(body.get("coefficients") or {}), "coefficient")
    aliased = tuple(str(a) for a in body.get("aliased") or ())
    names = [n for n in spec.coefficient_names
             if not (variant == "stratified" and n == INTERCEPT)]
    if sorted([*coefficients, *aliased]) != sorted(names):
        raise ArtifactError("model artifact: its coefficients do not match its coding")
    raw_sites = body.get("site_intercepts")
    sites = (_checked_numbers(raw_sites, "site intercept") if isinstance(raw_sites, Mapping)
             else None)
    if variant == "stratified" and not sites:
        raise ArtifactError("model artifact: a stratified model needs site intercepts")
    common = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return ModelArtifact(model=spec, variant=str(variant), coefficients=coefficients,
                         aliased=aliased, site_intercepts=sites,
                         spec_hash=str(body.get("spec_hash", "")),
                         created=str(body.get("created", "")),
                         source=str(body.get("source", "")),
                         signer=str(common[0].value) if common else "",
                         document=dict(document))


@functools.lru_cache(maxsize=16)
def embedded_artifact(text: str) -> ModelArtifact:
    """The artifact a spec embeds (canonical JSON), verified once per process per text."""
    return read_artifact(text)


def read_artifact(text: str | bytes, *, ca_pem: bytes | None = None,
                  label: str = "model artifact") -> ModelArtifact:
    """Parse artifact JSON text (size-bounded) and :func:`verify_artifact` it."""
    if len(text) > MAX_ARTIFACT_BYTES:
        raise ArtifactError(f"{label}: {len(text)} bytes (at most {MAX_ARTIFACT_BYTES})")
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{label}: not JSON: {error}") from None
    return verify_artifact(document, ca_pem=ca_pem)
