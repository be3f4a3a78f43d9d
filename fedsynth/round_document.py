"""The round document: a federated round's result as a typed, versioned value.

Why
---
A closed round's result crosses three processes: the coordinator's closer builds it and
commits it to the state store, a report worker renders it to HTML, and the command line
prints it (``fedsynth round show --format json``) or reads it back from files
(``fedsynth report --rounds-dir``). As an untyped ``dict`` each consumer re-checked the
fields it needed in its own way. This module is the one definition: frozen dataclasses
whose :meth:`RoundDocument.from_dict` validates a JSON document once, naming the field
(``analyses[2].site_estimates[0].yi``) and the value of anything wrong, and whose
:meth:`RoundDocument.to_dict` gives back the JSON contract of ``docs/round-document.md``.

It lives in the library (``fedsynth/``) rather than in ``coordinator/`` because it is a
data format, not a role: ``fedsynth report`` reads saved documents without a coordinator,
and a statistician may load a round's JSON next to ``fedsynth.meta`` (every analysis
carries its ``site_estimates``, so a round can be re-pooled or diagnosed offline). It
imports nothing but the standard library, :mod:`fedsynth.errors` and
:mod:`fedsynth.jsonsafe`, so reading a document costs no numerical import.

The JSON form
-------------
* Numbers are finite or ``null`` (strict JSON: NaN and infinities become ``null`` on
  reading, as :func:`fedsynth.jsonsafe.finite_or_none` does everywhere).
* Keys the type does not know are kept (``extra``) and written back unchanged, so a
  document from a newer minor release, or one that an operator annotated, survives being
  read and written by this one. The contract allows adding keys, never removing them.
* A document read with :meth:`~RoundDocument.from_dict` is written back by
  :meth:`~RoundDocument.to_dict` with the same keys in the same order (optional keys it did
  not have stay absent). A document built by the closer uses the canonical order of
  ``docs/round-document.md``.

Versions
--------
:data:`SCHEMA_VERSION` is 3. Version-1 documents carry no ``schema_version`` key: every
round closed before the key existed is version 1, and ``round show`` prints what it
always printed. Version 2 adds, per analysis, the measure's ``scale``, ``null_value``,
``estimand``, ``site_scale`` and ``pi_df`` and every site's BLUP (``blups``); per flag the
``rules`` that fired and the clinical width; per round the performance-measure pooling
settings. Version 3 adds, per analysis whose spec asks for released likelihoods
(``release = "likelihood"``, issue 15), the ``likelihood`` section
(:class:`LikelihoodPooling`: fixed-effect and random-effects pooling of the sites'
likelihoods beside the normal approximation, the difference, and what each site sent).
Older documents read with those fields absent (None). This reader refuses
a version it does not know, saying which it reads, instead of silently dropping a section.
Version 3 adds ``models``: one :class:`ModelResult` per ``[[model]]`` of the spec (issue 13:
one-stage, stratified and two-stage fits, the sites that contributed, refused or were
dropped); written only when the spec has models, so a version-2 document reads unchanged.
Version 4 adds, per model whose spec asks for it (``iecv = true``, issue 14), the
internal-external cross-validation: ``iecv`` (the global model's held-out measures per
site and pooled), ``iecv_candidates`` (the other candidate models), ``recommendation``
(``choice`` and ``reasons``), ``iecv_notes``, ``iecv_round_trips`` and ``iecv_seconds``;
absent for models without IECV, so a version-3 document reads and writes unchanged.

Examples
--------
>>> doc = RoundDocument.from_dict({"round": "r-20261125-0001", "status": "failed",
...                                "failure_reason": "only 1 of 3 sites submitted",
...                                "sites": [], "analyses": []})
>>> doc.status, doc.failure_reason
('failed', 'only 1 of 3 sites submitted')
>>> doc.to_dict()["round"]
'r-20261125-0001'
>>> RoundDocument.from_dict({"round": "r-1", "status": "closed"})
Traceback (most recent call last):
...
fedsynth.errors.InputError: round document r-1: field 'status' must be one of 'open', \
'pooled', 'failed', got 'closed'
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from fedsynth.errors import InputError
from fedsynth.jsonsafe import finite_or_none
from fedsynth.timeutil import parse_iso

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "AnalysisResult",
    "FlagDetails",
    "ModelResult",
    "HeterogeneityVerdict",
    "LikelihoodPooling",
    "PooledEstimate",
    "PoolingSettings",
    "RoundDocument",
    "SiteBlup",
    "SiteDriver",
    "SiteEstimate",
    "SiteLikelihood",
    "SiteParticipation",
    "schema_markdown",
]

#: Version of the round document written by this release.
SCHEMA_VERSION = 4
#: A round's status: open until it closes, then pooled (quorum reached) or failed.
STATUSES = ("open", "pooled", "failed")
#: Status of an allowed site in a round.
SITE_STATUSES = ("submitted", "missing")
#: Levels of a raised heterogeneity flag.
FLAG_LEVELS = ("strong", "moderate")

#: Round ids become report file names: letters, digits, dot, underscore, dash, at most 128,
#: no leading dot.
ROUND_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")

Interval = tuple[float | None, float | None]


# ------------------------------------------------------------------------------------------
# Reading JSON values: each check names the field and the value
# ------------------------------------------------------------------------------------------

class _Reader:
    """Validating access to one JSON object of the document, with its field path."""

    def __init__(self, value: Any, path: str, where: str) -> None:
        if not isinstance(value, Mapping):
            self.fail(path, "must be a JSON object", value, where)
        self.data: Mapping[str, Any] = value
        self.path = path
        self.where = where

    @staticmethod
    def fail(path: str, what: str, value: Any, where: str) -> None:
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:200] + "..."
        name = path or "(document)"
        raise InputError(f"{where}: field {name!r} {what}, got {shown}")

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def error(self, key: str, what: str) -> None:
        self.fail(self.at(key), what, self.data.get(key), self.where)

    def text(self, key: str, *, required: bool = False,
             choices: Sequence[str] | None = None) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.error(key, "is required: a string" if key not in self.data
                           else "must be a string")
            return None
        if not isinstance(value, str):
            self.error(key, "must be a string")
        if choices is not None and value not in choices:
            self.error(key, "must be one of " + ", ".join(repr(c) for c in choices))
        return value

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(key, "must be a number or null")
        if isinstance(value, float) and not math.isfinite(value):
            return None                       # strict JSON: no NaN or infinity
        return value

    def integer(self, key: str, *, minimum: int = 0) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.error(key, f"must be an integer >= {minimum} or null")
        return value

    def boolean(self, key: str, *, required: bool = False) -> bool | None:
        value = self.data.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, bool):
            self.error(key, "must be true or false")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, "must be a list of strings")
        return tuple(value)

    def text_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            self.error(key, "must be an object of strings")
        return dict(value)

    def interval(self, key: str) -> Interval | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            self.error(key, "must be a [lower, upper] pair or null")
        pair = _Reader({"lower": value[0], "upper": value[1]}, self.at(key), self.where)
        return (pair.number("lower"), pair.number("upper"))

    def objects(self, key: str) -> Iterator[_Reader]:
        value = self.data.get(key)
        if value is None:
            return
        if not isinstance(value, list):
            self.error(key, "must be a list")
        for index, item in enumerate(value):
            yield _Reader(item, f"{self.at(key)}[{index}]", self.where)

    def mapping(self, key: str) -> dict[str, Any] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.error(key, "must be a JSON object")
        return dict(value)

    def extra(self, known: frozenset[str]) -> dict[str, Any]:
        """Keys this version does not know, kept as read (non-finite numbers as null)."""
        return {k: _writable(v) for k, v in self.data.items() if k not in known}

    def layout(self) -> tuple[str, ...]:
        return tuple(self.data)


def _writable(value: Any) -> Any:
    """``value`` with every NaN or infinity (which strict JSON cannot write) as null."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, Mapping):
        return {k: _writable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_writable(v) for v in value]
    return value


def _json_interval(value: Interval | None) -> list[float | None] | None:
    return None if value is None else [value[0], value[1]]


# ------------------------------------------------------------------------------------------
# The JSON layout shared by every section
# ------------------------------------------------------------------------------------------

class _Section:
    """Common ``to_dict`` of the sections: canonical layout, or the layout read.

    Subclasses list their JSON items (key, value, written when built by code) in
    :meth:`_items`; ``_layout`` holds the keys of the object they were read from.
    """

    extra: Mapping[str, Any]
    _layout: tuple[str, ...] | None

    def _items(self) -> list[tuple[str, Any, bool]]:
        raise NotImplementedError

    @classmethod
    def _read(cls, r: _Reader) -> Any:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "round document") -> Any:
        """Read and validate one section from its JSON object (errors name the field)."""
        return cls._read(_Reader(data, "", where))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (docs/round-document.md); nested sections become objects too."""
        items = self._items()
        if self._layout is None:
            out = {key: value for key, value, shown in items if shown}
        else:
            known = {key: value for key, value, _ in items}
            out = {}
            for key in self._layout:
                if key in known:
                    out[key] = known[key]
                elif key in self.extra:
                    out[key] = self.extra[key]
            for key, value, shown in items:      # set after reading (dataclasses.replace)
                if shown and key not in out and value not in (None, [], {}):
                    out[key] = value
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


def _layout_field() -> Any:
    return field(default=None, repr=False, compare=False)


def _extra_field() -> Any:
    return field(default_factory=dict, repr=False)


def _doc(text: str) -> dict[str, str]:
    """Field metadata: the description shown in docs/round-document.md."""
    return {"doc": text}


# ------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolingSettings(_Section):
    """The round's pooling settings.

    From ``[pooling]`` of coordinator.toml, or ``round start``'s ``--method``/``--test``.
    """

    method: str | None = field(default=None, metadata=_doc(
        "tau² estimator: FE, DL, HE, HS, SJ, ML, REML, EB or PM"))
    test: str | None = field(default=None, metadata=_doc("inference: z or knha"))
    level: float | None = field(default=None, metadata=_doc(
        "confidence level in percent (95)"))
    i2_threshold: float | None = field(default=None, metadata=_doc(
        "I² (percent) at or above which the heterogeneity flag is raised (50)"))
    performance_method: str | None = field(default=None, metadata=_doc(
        "tau² estimator of performance measures (AUC, calibration, O:E, Brier; REML)"))
    performance_test: str | None = field(default=None, metadata=_doc(
        "their inference (knha)"))
    pi_width: Mapping[str, Any] | None = field(default=None, metadata=_doc(
        "estimator -> clinically meaningful PI half-width or [low, high] (version 2)"))
    extra: Mapping[str, Any] = _extra_field()
    _layout: tuple[str, ...] | None = _layout_field()

    def _items(self) -> list[tuple[str, Any, bool]]:
        return [("method", self.method, True), ("test", self.test, True),
                ("level", self.level, True), ("i2_threshold", self.i2_threshold, True),
                ("performance_method", self.performance_method,
                 self.performance_method is not None),
                ("performance_test", self.performance_test, self.performance_test is not None),
                ("pi_width", None if self.pi_width is None else dict(self.pi_width),
                 self.pi_width is not None)]

    @classmethod
    def _read(cls, r: _Reader) -> PoolingSettings:
        return cls(method=r.text("method"), test=r.text("test"), level=r.number("level"),
                   i2_threshold=r.number("i2_threshold"),
                   performance_method=r.text("performance_method"),
                   performance_test=r.text("performance_test"),
                   pi_width=r.mapping("pi_width"),
                   extra=r.extra(_KNOWN[cls]), _layout=r.layout())


@dataclass(frozen=True)
class SiteParticipation(_Section):
    """One allowed site of the round: did it submit, and which analyses did it refuse."""

    site: str = field(metadata=_doc("site name (its certificate's name)"))
    status: str | None = field(default=None, metadata=_doc("submitted | missing"))
    submitted_at: str | None = field(default=None, metadata=_doc(
        "when the coordinator received its submission (ISO-8601 UTC), null if missing"))
    refusals: Mapping[str, str] = field(default_factory=dict, metadata=_doc(
        "analysis name -> the site's plain reason for not sending it"))
    extra: Mapping[str, Any] = _extra_field()
    _layout: tuple[str, ...] | None = _layout_field()

    def _items(self) -> list[tuple[str, Any, bool]]:
        return [("site", self.site, True), ("status", self.status, True),
                ("submitted_at", self.submitted_at, True),
                ("refusals", dict(self.refusals), True)]

    @classmethod
    def _read(cls, r: _Reader) -> SiteParticipation:
        return cls(site=str(r.text("site", required=True)),
                   status=r.text("status", choices=SITE_STATUSES),
                   submitted_at=r.text("submitted_at"), refusals=r.text_map("refusals"),
                   extra=r.extra(_KNOWN[cls]), _layout=r.layout())


@dataclass(frozen=True)
class SiteEstimate(_Section):
    """What one site sent for one analysis (exactly what left the site)."""

    site: str = field(metadata=_doc("site name"))
    yi: float | None = field(default=None, metadata=_doc(
        "the site's effect estimate (log scale for ratios)"))
    vi: float | None = field(default=None, metadata=_doc("its sampling variance"))
    se: float | None = field(default=None, metadata=_doc("its standard error"))
    n: int | None = field(default=None, metadata=_doc("patients in the analysis"))
    extra: Mapping[str, Any] = _extra_field()
    _layout: tuple[str, ...] | None = _layout_field()

    def _items(self) -> list[tuple[str, Any, bool]]:
        return [("site", self.site, True), ("yi", self.yi, True), ("vi", self.vi, True),
                ("se", self.se, True), ("n", self.n, True)]

    @classmethod
    def _read(cls, r: _Reader) -> SiteEstimate:
        return cls(site=str(r.text("site", required=True)), yi=r.number("yi"),
                   vi=r.number("vi"), se=r.number("se"), n=r.integer("n"),
                   extra=r.extra(_KNOWN[cls]), _layout=r.layout())


@dataclass(frozen=True)
class SiteBlup(_Section):
    """One pooled site on the pooling scale, with its BLUP (version 2).

    ``yi``/``vi`` are what was pooled: what the site sent, moved to the pooling scale when
    the two differ (an AUC sent raw is pooled as a logit).
    """

    site: str = field(metadata=_doc("site name"))
    yi: float | None = field(default=None, metadata=_doc(
        "the site's estimate on the pooling scale"))
    vi: float | None = field(default=None, metadata=_doc("its variance on that scale"))
    blup: float | None = field(default=None, metadata=_doc(
        "best linear unbiased prediction of the site's true effect (shrunken estimate)"))
    blup_pi_lb: float | None = field(default=None, metadata=_doc(
        "prediction interval of the BLUP, lower"))
    blup_pi_ub: float | None = field(default=None, metadata=_doc("... upper"))
    extra: Mapping[str, Any] = _extra_field()
    _layout: tuple[str, ...] | None = _layout_field()

    def _items(self) -> list[tuple[str, Any, bool]]:
        return [("site", self.site, True), ("yi", self.yi, True), ("vi", self.vi, True),
                ("blup", self.blup, True), ("blup_pi_lb", self.blup_pi_lb, True),
                ("blup_pi_ub", self.blup_pi_ub, True)]

    @classmethod
    def _read(cls, r: _Reader) -> SiteBlup:
        return cls(site=str(r.text("site", required=True)), yi=r.number("yi"),
                   vi=r.number("vi"), blup=r.number("blup"),
                   blup_pi_lb=r.number("blup_pi_lb"), blup_pi_ub=r.number("blup_pi_ub"),
                   extra=r.extra(_KNOWN[cls]), _layout=r.layout())


@dataclass(frozen=True)
class PooledEstimate(_Section):
    """The pooled model of one analysis, metafor's ``rma.uni`` field for field.

    Written into the analysis object itself (not nested), with the reference keys of
    :meth:`fedsynth.meta.PoolingResult.to_dict`.
    """

    estimate: float | None = field(default=None, metadata=_doc("pooled estimate"))
    se: float | None = field(default=None, metadata=_doc("its standard error"))
    stat: float | None = field(default=None, metadata=_doc("z or t statistic"))
    pval: float | None = field(default=None, metadata=_doc("its p-value"))
    ci_lb: float | None = field(default=None, metadata=_doc("confidence interval, lower"))
    ci_ub: float | None = field(default=None, metadata=_doc("confidence interval, upper"))
    tau2: float | None = field(default=None, metadata=_doc("between-site variance tau²"))
    se_tau2: float | None = field(default=None, metadata=_doc("its standard error"))
    Q: float | None = field(default=None, metadata=_doc("Cochran's Q"))
    Q_df: int | None = field(default=None, metadata=_doc("its degrees of freedom (k - 1)"))
    Q_pval: float | None = field(default=None, metadata=_doc("its p-value"))
    I2: float | None = field(default=None, metadata=_doc("I² in percent"))
    H2: float | None = field(default=None, metadata=_doc("H²"))
    pi_lb: float | None = field(default=None, metadata=_doc(
        "prediction interval for a new site, lower (null for FE)"))
    pi_ub: float | None = field(default=None, metadata=_doc("prediction interval, upper"))
    logLik: float | None = field(default=None, metadata=_doc(
        "log-likelihood (ML/REML), else null"))
    tau2_ci: Interval | None = field(default=None, metadata=_doc(
        "Q-profile confidence interval of tau², [lower, upper]"))
    I2_ci: Interval | None = field(default=None, metadata=_doc(
        "confidence interval of I² (percent)"))
    H2_ci: Interval | None = field(default=None, metadata=_doc("confidence interval of H²"))
    level: float | None = field(default=None, metadata=_doc("confidence level in percent"))
    extra: Mapping[str, Any] = _extra_field()
    _layout: tuple[str, ...] | None = _layout_field()

    #: JSON keys of the pooled fields, in their canonical order.
    KEYS: ClassVar[tuple[str, ...]] = (
        "estimate", "se", "stat", "pval", "ci_lb", "ci_ub", "tau2", "se_tau2", "Q", "Q_df",
        "Q_pval", "I2", "H2", "pi_lb", "pi_ub", "logLik", "tau2_ci", "I2_ci", "H2_ci",
        "level")
    _INTERVALS: ClassVar[frozenset[str]] = frozenset({"tau2_ci", "I2_ci", "H2_ci"})

    def _items(self) -> list[tuple[str, Any, bool]]:
        items = []
        for key in self.KEYS:
            value = getattr(self, key)
            if key in self._INTERVALS:
                value = _json_interval(value)
            items.append((key, value, True))
        return items

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PooledEstimate:
        """From a JSON-ready pooled dict (``PoolingResult.to_dict()``; extra keys ignored).

        No validation: for the coordinator's own numbers, already JSON-ready.
        """
        kwargs: dict[str, Any] = {}
        for key in cls.KEYS:
            value = values.get(key)
            if key in cls._INTERVALS and value is not None:
                value = (value[0], value[1])
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def _read(cls, r: _Reader) -> PooledEstimate:
        kwargs: dict[str, Any] = {}
        for key in cls.KEYS:
            if key in cls._INTERVALS:
                kwargs[key] = r.interval(key)
            elif key == "Q_df":
                kwargs[key] = r.integer(key)
            else:
                kwargs[key] = r.number(key)
        return cls(**kwargs)


@dataclass(frozen=True)
class SiteDriver(_Section):
    """A site that drives the heterogeneity, and the numbers behind it."""

    site: str = field(metadata=_doc("site name"))
    index: int | None = field(default=None, metadata=_doc(
        "its 0-based position among the pooled sites"))
    kinds: tuple[str, ...] = field(default=(), metadata=_doc(
        "outlying_blup | studentized_residual | influential"))
    rstudent: float | None = field(default=None, metadata=_doc(
        "studentized deleted residual"))
    blup: float | None = field(default=None, metadata=_doc("the site's BLUP"))
    blup_pi_lb: float | None = field(default=None, metadata=_doc(
        "prediction interval of the BLUP, lower"))
    blup_pi_ub: float | None = field(default=None, metadata=_doc("... upper"))
    extra: Mapping[str, Any] = _extra_field()
    _layout: tuple[str, ...] | None = _layout_field()

    def _items(self) -> list[tuple[str, Any, bool]]:
        return [("site", self.site, True), ("index", self.index, True),
                ("kinds", list(self.kinds), True), ("rstudent", self.rstudent, True),
                ("blup", self.blup, True), ("blup_pi_lb", self.blup_pi_lb, True),
                ("blup_pi_ub", self.blup_pi_ub, True)]

    @classmethod
    def _read(cls, r: _Reader) -> SiteDriver:
        return cls(site=str(r.text("site", required=True)),
                   index=r.integer("index", minimum=-1),          # -1: position unknown
                   kinds=r.texts("kinds"), rstudent=r.number("rstudent"),
                   blup=r.number("blup"), blup_pi_lb=r.number("blup_pi_lb"),
                   blup_pi_ub=r.number("blup_pi_ub"), extra=r.extra(_KNOWN[cls]),
                   _layout=r.layout())


@dataclass(frozen=True)
class FlagDetails(_Section):
    """The settings and numbers the heterogeneity verdict was reached with.

    Written into the ``heterogeneity`` object itself (not nested).
    """

    drivers: tuple[SiteDriver, ...] = field(default=(), metadata=_doc(
        "each driving site with its kinds and numbers"))
    I2: float | None = field(default=None, metadata=_doc("I² judged (percent)"))
    I2_ci: Interval | None = field(default=None, metadata=_doc(
        "its confidence interval (the level rule reads the lower bound)"))
    i2_threshold: float | None = field(default=None, metadata=_doc("the threshold used"))
    null_value: float | None = field(default=None, metadata=_doc(
        "the null on the pooling scale (0 for log ratios, log O:E and logit c; 1 for a "
        "calibration slope; null: the measure has none)"))
    pi_crosses_null: bool | None = field(default=None, metadata=_doc(
        "the prediction interval crosses the null while the CI does not"))
    rules: tuple[str, ...] = field(default=(), metadata=_doc(
        "the rules that fired: i2 | pi_crosses_null | pi_width (version 2)"))
    clinical_width: Mapping[str, Any] | None = field(default=None, metadata=_doc(
        "the measure's clinically meaningful PI width {halfwidth, low, high}, or null"))
    pi_beyond_width: bool | None = field(default=None, metadata=_doc(
        "the back-transformed PI is wider than the clinical width"))
    extra: Mapping[str, Any] = _extra_field()
    _layout: tuple[str, ...] | None = _layout_field()

    KEYS: ClassVar[tuple[str, ...]] = ("drivers", "I2", "I2_ci", "i2_threshold",
                                       "null_value", "pi_crosses_null", "rules",
                                       "clinical_width", "pi_beyond_width")

    def _items(self) -> list[tuple[str, Any, bool]]:
        return [("drivers", [d.to_dict() for d in self.drivers], True), ("I2", self.I2, True),
                ("I2_ci", _json_interval(self.I2_ci), True),
                ("i2_threshold", self.i2_threshold, True),
                ("null_value", self.null_value, True),
                ("pi_crosses_null", self.pi_crosses_null, True),
                ("rules", list(self.rules), self.pi_beyond_width is not None),
                ("clinical_width", None if self.clinical_width is None
                 else dict(self.clinical_width), self.pi_beyond_width is not None),
                ("pi_beyond_width", self.pi_beyond_width, self.pi_beyond_width is not None)]

    @classmethod
    def _read(cls, r: _Reader) -> FlagDetails:
        return cls(drivers=tuple(SiteDriver._read(d) for d in r.objects("drivers")),
                   I2=r.number("I2"), I2_ci=r.interval("I2_ci"),
                   i2_threshold=r.number("i2_threshold"), null_value=r.number("null_value"),
                   pi_crosses_null=r.boolean("pi_crosses_null"), rules=r.texts("rules"),
                   clinical_width=r.mapping("clinical_width"),
                   pi_beyond_width=r.boolean("pi_beyond_width"))


@dataclass(frozen=True)
class HeterogeneityVerdict(_Section):
    """The heterogeneity flag of one analysis (docs/architecture.md, "Heterogeneity")."""

    flagged: bool | None = field(default=None, metadata=_doc(
        "I² >= threshold, or the PI crosses the null while the CI does not"))
    level: str | None = field(default=None, metadata=_doc(
        "strong (the I² CI's lower bound is also >= threshold) | moderate | null"))
    reasons: tuple[str, ...] = field(default=(), metadata=_doc(
        "plain sentences with the numbers, for the report"))
    sites: tuple[str, ...] = field(default=(), metadata=_doc("the sites that drive it"))
    details: FlagDetails | None = field(default=None, metadata=_doc(
        "the keys of FlagDetails, when the flag was computed (absent when nothing was "
        "pooled)"))
    extra: Mapping[str, Any] = _extra_field()
    _layout: tuple[str, ...] | None = _layout_field()

    def _items(self) -> list[tuple[str, Any, bool]]:
        items = [("flagged", self.flagged, True), ("level", self.level, True),
                 ("reasons", list(self.reasons), True), ("sites", list(self.sites), True)]
        if self.details is not None:
            items += self.details._items()
        return items

    @classmethod
    def _read(cls, r: _Reader) -> HeterogeneityVerdict:
        details = (FlagDetails._read(r) if any(r.has(k) for k in FlagDetails.KEYS)
                   else None)
        return cls(flagged=r.boolean("flagged"), level=r.text("level", choices=FLAG_LEVELS),
                   reasons=r.texts("reasons"), sites=r.texts("sites"), details=details,
                   extra=r.extra(_KNOWN[cls]), _layout=r.layout())


@dataclass(frozen=True)
class SiteLikelihood(_Section):
    """What one site released for a likelihood analysis (version 3): exactly what left it."""

    site: str = field(metadata=_doc("site name"))
    form: str | None = field(default=None, metadata=_doc(
        "grid_with_gradients | custom | normal (an estimate sent instead: normal)"))
    n: int | None = field(default=None, metadata=_doc("patients in the analysis"))
    estimate: float | None = field(default=None, metadata=_doc(
        "the site's own maximum-likelihood estimate, null when its likelihood has no "
        "finite maximum (no events in one arm)"))
    se: float | None = field(default=None, metadata=_doc("its standard error"))
    likelihood: Mapping[str, Any] | None = field(default=None, metadata=_doc(
        "the released approximation as sent (points/values/derivatives, or mu/sigma/gamma): "
        "fedsynth.effects.likelihood.approximation_from_dict reads it"))
    extra: Mapping[str, Any] = _extra_field()
    _layout: tuple[str, ...] | None = _layout_field()

    def _items(self) -> list[tuple[str, Any, bool]]:
        return [("site", self.site, True), ("form", self.form, True), ("n", self.n, True),
                ("estimate", self.estimate, True), ("se", self.se, True),
                ("likelihood", None if self.likelihood is None else _writable(
                    dict(self.likelihood)), True)]

    @classmethod
    def _read(cls, r: _Reader) -> SiteLikelihood:
        return cls(site=str(r.text("site", required=True)), form=r.text("form"),
                   n=r.integer("n"), estimate=r.number("estimate"), se=r.number("se"),
                   likelihood=r.mapping("likelihood"), extra=r.extra(_KNOWN[cls]),
                   _layout=r.layout())


@dataclass(frozen=True)
class LikelihoodPooling(_Section):
    """Pooling of the sites' released likelihoods for one analysis (version 3).

    Fixed effect: the maximum of the summed log-likelihoods with the likelihood-ratio
    interval; random effects: the Bayesian model with a flat prior on mu and the spec's
    prior on tau, integrated by quadrature (:mod:`fedsynth.meta.likelihood`). Beside them
    the normal approximation (inverse-variance fixed effect over the sites that have an
    estimate of their own) and the difference, on the log scale.
    """

    parameter: str | None = field(default=None, metadata=_doc(
        "what is pooled: log OR or log HR of the exposure"))
    estimand: str | None = field(default=None, metadata=_doc(
        "the back-transformed estimate: OR or HR"))
    form: str | None = field(default=None, metadata=_doc(
        "the released form the spec asked for"))
    k: int | None = field(default=None, metadata=_doc("sites whose likelihood is pooled"))
    k_without_estimate: int | None = field(default=None, metadata=_doc(
        "of those, sites without a finite estimate of their own (dropped by the normal "
        "approximation)"))
    level: float | None = field(default=None, metadata=_doc(
        "confidence/credible level in percent"))
    estimate: float | None = field(default=None, metadata=_doc(
        "fixed effect: maximum of the summed log-likelihoods"))
    se: float | None = field(default=None, metadata=_doc(
        "from the curvature at the maximum (for comparison only)"))
    ci_lb: float | None = field(default=None, metadata=_doc(
        "likelihood-ratio interval, lower (null: unbounded within [-20, 20])"))
    ci_ub: float | None = field(default=None, metadata=_doc("... upper"))
    normal_estimate: float | None = field(default=None, metadata=_doc(
        "normal approximation: inverse-variance fixed effect of the sites with an estimate"))
    normal_se: float | None = field(default=None, metadata=_doc("its standard error"))
    normal_ci_lb: float | None = field(default=None, metadata=_doc("its Wald CI, lower"))
    normal_ci_ub: float | None = field(default=None, metadata=_doc("... upper"))
    normal_k: int | None = field(default=None, metadata=_doc("sites it pools"))
    difference: float | None = field(default=None, metadata=_doc(
        "estimate - normal_estimate (log scale)"))
    prior: str | None = field(default=None, metadata=_doc(
        "random effects: prior on tau (half_normal, half_cauchy)"))
    tau_scale: float | None = field(default=None, metadata=_doc("the prior's scale"))
    mu_median: float | None = field(default=None, metadata=_doc(
        "random effects: posterior median of mu"))
    mu_mean: float | None = field(default=None, metadata=_doc("posterior mean of mu"))
    mu_sd: float | None = field(default=None, metadata=_doc("posterior sd of mu"))
    mu_ci: Interval | None = field(default=None, metadata=_doc(
        "equal-tailed credible interval of mu"))
    tau_median: float | None = field(default=None, metadata=_doc(
        "posterior median of tau"))
    tau_ci: Interval | None = field(default=None, metadata=_doc(
        "credible interval of tau"))
    prob_mu_positive: float | None = field(default=None, metadata=_doc("P(mu > 0 | data)"))
    difference_random: float | None = field(default=None, metadata=_doc(
        "mu_median - the analysis's pooled estimate (the round's method on the sites' "
        "normal approximations), log scale"))
    statement: str | None = field(default=None, metadata=_doc(
        "plain sentences comparing likelihood pooling with the normal approximation"))
    notes: tuple[str, ...] = field(default=(), metadata=_doc(
        "what could not be computed (e.g. no finite maximum)"))
    sites: tuple[SiteLikelihood, ...] = field(default=(), metadata=_doc(
        "what each site released, in submission order"))
    extra: Mapping[str, Any] = _extra_field()
    _layout: tuple[str, ...] | None = _layout_field()

    _NUMBERS: ClassVar[tuple[str, ...]] = (
        "level", "estimate", "se", "ci_lb", "ci_ub", "normal_estimate", "normal_se",
        "normal_ci_lb", "normal_ci_ub", "difference", "tau_scale", "mu_median", "mu_mean",
        "mu_sd", "tau_median", "prob_mu_positive", "difference_random")

    def _items(self) -> list[tuple[str, Any, bool]]:
        return [
            ("parameter", self.parameter, True), ("estimand", self.estimand, True),
            ("form", self.form, True), ("k", self.k, True),
            ("k_without_estimate", self.k_without_estimate, True),
            ("level", self.level, True), ("estimate", self.estimate, True),
            ("se", self.se, True), ("ci_lb", self.ci_lb, True), ("ci_ub", self.ci_ub, True),
            ("normal_estimate", self.normal_estimate, True),
            ("normal_se", self.normal_se, True), ("normal_ci_lb", self.normal_ci_lb, True),
            ("normal_ci_ub", self.normal_ci_ub, True), ("normal_k", self.normal_k, True),
            ("difference", self.difference, True), ("prior", self.prior, True),
            ("tau_scale", self.tau_scale, True), ("mu_median", self.mu_median, True),
            ("mu_mean", self.mu_mean, True), ("mu_sd", self.mu_sd, True),
            ("mu_ci", _json_interval(self.mu_ci), True),
            ("tau_median", self.tau_median, True),
            ("tau_ci", _json_interval(self.tau_ci), True),
            ("prob_mu_positive", self.prob_mu_positive, True),
            ("difference_random", self.difference_random, True),
            ("statement", self.statement, True), ("notes", list(self.notes), True),
            ("sites", [x.to_dict() for x in self.sites], True)]

    @classmethod
    def _read(cls, r: _Reader) -> LikelihoodPooling:
        numbers = {key: r.number(key) for key in cls._NUMBERS}
        return cls(parameter=r.text("parameter"), estimand=r.text("estimand"),
                   form=r.text("form"), k=r.integer("k"),
                   k_without_estimate=r.integer("k_without_estimate"),
                   normal_k=r.integer("normal_k"), prior=r.text("prior"),
                   mu_ci=r.interval("mu_ci"), tau_ci=r.interval("tau_ci"),
                   statement=r.text("statement"), notes=r.texts("notes"),
                   sites=tuple(SiteLikelihood._read(x) for x in r.objects("sites")),
                   extra=r.extra(_KNOWN[cls]), _layout=r.layout(), **numbers)


@dataclass(frozen=True)
class AnalysisResult(_Section):
    """One analysis of the round: who sent what, the pooled model, the flag."""

    analysis: str = field(metadata=_doc("the analysis name (unique within the spec)"))
    estimator: str | None = field(default=None, metadata=_doc(
        "the spec's estimator (two_by_two, logistic, cox, auc, ...)"))
    measure: str | None = field(default=None, metadata=_doc(
        "the effect measure (OR, RR, MD, ...), null where the estimator implies it"))
    k: int | None = field(default=None, metadata=_doc("number of sites pooled"))
    method: str | None = field(default=None, metadata=_doc("tau² estimator used"))
    test: str | None = field(default=None, metadata=_doc("z or knha"))
    pooled: PooledEstimate | None = field(default=None, metadata=_doc(
        "the keys of PooledEstimate (absent when nothing could be pooled)"))
    heterogeneity: HeterogeneityVerdict | None = field(default=None, metadata=_doc(
        "the heterogeneity flag"))
    notes: tuple[str, ...] = field(default=(), metadata=_doc(
        "plain sentences on what could not be computed (absent when none)"))
    site_estimates: tuple[SiteEstimate, ...] = field(default=(), metadata=_doc(
        "what each pooled site sent, in submission order"))
    refused: Mapping[str, str] = field(default_factory=dict, metadata=_doc(
        "site -> why it sent no estimate for this analysis"))
    scale: str | None = field(default=None, metadata=_doc(
        "the scale the pooled numbers are on: identity, log or logit (version 2)"))
    null_value: float | None = field(default=None, metadata=_doc(
        "the null on the scale results are read on (AUC 0.5, slope 1, O:E 1, OR 1; null: "
        "none, as for the Brier score); the p-value tests it"))
    estimand: str | None = field(default=None, metadata=_doc(
        "what the back-transformed estimate is (c-statistic, O:E, OR, ...)"))
    site_scale: str | None = field(default=None, metadata=_doc(
        "the scale of site_estimates (an AUC sent raw: identity)"))
    pi_df: str | None = field(default=None, metadata=_doc(
        "degrees of freedom of the prediction interval's t: k-1 (metafor) or k-2"))
    blups: tuple[SiteBlup, ...] = field(default=(), metadata=_doc(
        "each pooled site on the pooling scale with its BLUP (version 2)"))
    likelihood: LikelihoodPooling | None = field(default=None, metadata=_doc(
        "the keys of LikelihoodPooling, as an object, when the spec asks for released "
        "likelihoods (version 3; absent otherwise)"))
    extra: Mapping[str, Any] = _extra_field()
    _layout: tuple[str, ...] | None = _layout_field()

    def _items(self) -> list[tuple[str, Any, bool]]:
        items: list[tuple[str, Any, bool]] = [
            ("analysis", self.analysis, True), ("estimator", self.estimator, True),
            ("measure", self.measure, True), ("k", self.k, True),
            ("method", self.method, True), ("test", self.test, True)]
        if self.scale is not None:
            items += [("scale", self.scale, True), ("null_value", self.null_value, True),
                      ("estimand", self.estimand, True), ("site_scale", self.site_scale, True),
                      ("pi_df", self.pi_df, True)]
        if self.pooled is not None:
            items += self.pooled._items()
        items += [("heterogeneity", None if self.heterogeneity is None
                   else self.heterogeneity.to_dict(), True),
                  ("notes", list(self.notes), bool(self.notes)),
                  ("site_estimates", [e.to_dict() for e in self.site_estimates], True),
                  ("refused", dict(self.refused), True),
                  ("blups", [b.to_dict() for b in self.blups], self.scale is not None),
                  ("likelihood", None if self.likelihood is None
                   else self.likelihood.to_dict(), self.likelihood is not None)]
        return items

    @classmethod
    def _read(cls, r: _Reader) -> AnalysisResult:
        pooled = (PooledEstimate._read(r) if any(r.has(k) for k in PooledEstimate.KEYS)
                  else None)
        het = r.data.get("heterogeneity")
        heterogeneity = (None if het is None else
                         HeterogeneityVerdict._read(_Reader(het, r.at("heterogeneity"),
                                                            r.where)))
        return cls(analysis=str(r.text("analysis", required=True)),
                   estimator=r.text("estimator"), measure=r.text("measure"),
                   k=r.integer("k"), method=r.text("method"), test=r.text("test"),
                   pooled=pooled, heterogeneity=heterogeneity, notes=r.texts("notes"),
                   site_estimates=tuple(SiteEstimate._read(e)
                                        for e in r.objects("site_estimates")),
                   refused=r.text_map("refused"), scale=r.text("scale"),
                   null_value=r.number("null_value"), estimand=r.text("estimand"),
                   site_scale=r.text("site_scale"), pi_df=r.text("pi_df"),
                   blups=tuple(SiteBlup._read(b) for b in r.objects("blups")),
                   likelihood=(None if r.data.get("likelihood") is None else
                               LikelihoodPooling._read(_Reader(
                                   r.data["likelihood"], r.at("likelihood"), r.where))),
                   extra=r.extra(_KNOWN[cls]),
                   _layout=r.layout())


#: ``status`` of a model entry.
MODEL_STATUSES = ("fitted", "failed")


def _fit_object(r: _Reader, key: str, required: tuple[str, ...]) -> dict[str, Any] | None:
    """A fit's object (``one_stage``, ...): a JSON object holding ``required`` keys."""
    value = r.mapping(key)
    if value is not None:
        for name in required:
            if name not in value:
                r.fail(f"{r.at(key)}.{name}", "is required", None, r.where)
        for name in ("coefficients", "se"):
            if name in value and value[name] is not None:
                inner = _Reader(value[name], f"{r.at(key)}.{name}", r.where)
                for coefficient in inner.data:
                    inner.number(coefficient)
    return None if value is None else {k: _writable(v) for k, v in value.items()}


#: The verdicts of :func:`fedsynth.models.iecv.recommend` (kept here as text: the document
#: reader does not load the model statistics).
RECOMMENDATIONS = ("global", "global with local intercept recalibration",
                   "hierarchical / site-specific")


def _iecv_object(r: _Reader, key: str) -> dict[str, Any] | None:
    """An IECV object: ``per_site`` (site -> measures) and ``pooled`` (measure -> tests)."""
    value = _fit_object(r, key, ("per_site", "pooled"))
    if value is not None:
        inner = _Reader(value, r.at(key), r.where)
        for part in ("per_site", "pooled"):
            groups = _Reader(inner.mapping(part) or {}, inner.at(part), r.where)
            for name in groups.data:
                group = _Reader(groups.mapping(name) or {}, groups.at(name), r.where)
                for measure, number in group.data.items():
                    if not isinstance(number, Mapping) and measure != "refused":
                        group.number(measure)
    return value


def _recommendation(r: _Reader, key: str) -> dict[str, Any] | None:
    """``{"choice": one of RECOMMENDATIONS, "reasons": [text]}``."""
    value = r.mapping(key)
    if value is None:
        return None
    inner = _Reader(value, r.at(key), r.where)
    return {**value, "choice": inner.text("choice", required=True, choices=RECOMMENDATIONS),
            "reasons": list(inner.texts("reasons"))}


def _candidates(r: _Reader, key: str) -> dict[str, Any] | None:
    """``{variant: IECV object}``."""
    value = r.mapping(key)
    if value is None:
        return None
    inner = _Reader(value, r.at(key), r.where)
    return {variant: _iecv_object(inner, variant) for variant in inner.data}


def _flags(r: _Reader, key: str) -> dict[str, Any] | None:
    """``{coefficient: heterogeneity flag}``: each flag read as an analysis's verdict."""
    value = r.mapping(key)
    if value is None:
        return None
    inner = _Reader(value, r.at(key), r.where)
    return {name: HeterogeneityVerdict._read(_Reader(flag, inner.at(name), r.where)
                                             ).to_dict()
            for name, flag in inner.data.items()}


@dataclass(frozen=True)
class ModelResult(_Section):
    """One model of the round's spec, fitted across sites (issue 13).

    The fits' objects keep the keys of :mod:`fedsynth.models` (``GlmFit.to_dict``,
    ``StratifiedFit.to_dict``, ``TwoStageResult.to_dict``): coefficients by name
    (``intercept``, a column, ``column=level``), ``null`` where not estimable.
    """

    name: str = field(metadata=_doc("the model's name in the spec"))
    family: str | None = field(default=None, metadata=_doc(
        "binomial | gaussian | poisson"))
    status: str | None = field(default=None, metadata=_doc(
        "fitted | failed (reason says why)"))
    reason: str | None = field(default=None, metadata=_doc(
        "why the model was not fitted, else null"))
    n: int | None = field(default=None, metadata=_doc(
        "patients in the fits (complete rows of the contributing sites)"))
    sites: tuple[str, ...] = field(default=(), metadata=_doc(
        "the sites whose rows the fits rest on"))
    refused: Mapping[str, str] = field(default_factory=dict, metadata=_doc(
        "site -> its reason for refusing the model (disclosure control, policy)"))
    dropped: Mapping[str, str] = field(default_factory=dict, metadata=_doc(
        "site -> why the fit went on without it (no answer within the step timeout)"))
    one_stage: Mapping[str, Any] | None = field(default=None, metadata=_doc(
        "the global model by federated IRLS: coefficients, se, deviance, iterations, ..."))
    stratified: Mapping[str, Any] | None = field(default=None, metadata=_doc(
        "site intercepts, common slopes: coefficients, se, site_intercepts(_se), ..."))
    two_stage: Mapping[str, Any] | None = field(default=None, metadata=_doc(
        "per_site fits, pooled per coefficient (k, estimate, se, tau2, I2, Q, pi_lb, "
        "pi_ub) and multivariate"))
    hierarchical: Mapping[str, Any] | None = field(default=None, metadata=_doc(
        "the exact random-intercept model: coefficients, se, tau, tau2, logLik, "
        "site_intercepts, site_intercepts_se, ... (issue 14)"))
    heterogeneity: Mapping[str, Any] | None = field(default=None, metadata=_doc(
        "coefficient -> the heterogeneity flag of its two-stage pooling (as an "
        "analysis's: flagged, level, reasons, sites, ...)"))
    round_trips: int | None = field(default=None, metadata=_doc(
        "step exchanges with the sites for this model (every fit)"))
    seconds: float | None = field(default=None, metadata=_doc(
        "wall time of this model's fits at the coordinator"))
    notes: tuple[str, ...] = field(default=(), metadata=_doc("plain notes on the fits"))
    iecv: Mapping[str, Any] | None = field(default=None, metadata=_doc(
        "internal-external cross-validation of the global one-stage model (spec "
        "iecv = true): per_site {site: {n, auc, auc_var, logit_auc, logit_auc_var, "
        "calibration_slope(_var), calibration_in_the_large(_var), O, E, log_OE(_var)}}, "
        "pooled {measure: {z, knha: {estimate, se, ci_lb, ci_ub, tau2, I2, pi_lb, "
        "pi_ub, ...}}} (issue 14)"))
    iecv_candidates: Mapping[str, Any] | None = field(default=None, metadata=_doc(
        "variant -> the same object for the other candidates (global_recalibrated, "
        "hierarchical, hierarchical_recalibrated)"))
    recommendation: Mapping[str, Any] | None = field(default=None, metadata=_doc(
        "the verdict: choice (global | global with local intercept recalibration | "
        "hierarchical / site-specific) and the reasons with their numbers"))
    iecv_notes: tuple[str, ...] = field(default=(), metadata=_doc(
        "notes on the IECV (a measure a site could not compute; why it was not done)"))
    iecv_round_trips: int | None = field(default=None, metadata=_doc(
        "step exchanges of the IECV (k developments and the evaluations)"))
    iecv_seconds: float | None = field(default=None, metadata=_doc(
        "wall time of the IECV at the coordinator"))
    extra: Mapping[str, Any] = _extra_field()
    _layout: tuple[str, ...] | None = _layout_field()

    def _items(self) -> list[tuple[str, Any, bool]]:
        return [("name", self.name, True), ("family", self.family, True),
                ("status", self.status, True), ("reason", self.reason, True),
                ("n", self.n, True), ("sites", list(self.sites), True),
                ("refused", dict(self.refused), True), ("dropped", dict(self.dropped), True),
                ("one_stage", None if self.one_stage is None else dict(self.one_stage), True),
                ("stratified", None if self.stratified is None else dict(self.stratified),
                 True),
                ("two_stage", None if self.two_stage is None else dict(self.two_stage), True),
                ("hierarchical", None if self.hierarchical is None
                 else dict(self.hierarchical), self.hierarchical is not None),
                ("heterogeneity", None if self.heterogeneity is None
                 else dict(self.heterogeneity), self.heterogeneity is not None),
                ("round_trips", self.round_trips, True), ("seconds", self.seconds, True),
                ("notes", list(self.notes), True),
                ("iecv", None if self.iecv is None else dict(self.iecv), self._has_iecv),
                ("iecv_candidates", None if self.iecv_candidates is None
                 else dict(self.iecv_candidates), self._has_iecv),
                ("recommendation", None if self.recommendation is None
                 else dict(self.recommendation), self._has_iecv),
                ("iecv_notes", list(self.iecv_notes), self._has_iecv),
                ("iecv_round_trips", self.iecv_round_trips,
                 self.iecv_round_trips is not None),
                ("iecv_seconds", self.iecv_seconds, self.iecv_seconds is not None)]

    @property
    def _has_iecv(self) -> bool:
        """Whether the model asked for IECV (its keys are written then, else absent)."""
        return self.iecv is not None or bool(self.iecv_notes) or bool(self.iecv_candidates)

    @classmethod
    def _read(cls, r: _Reader) -> ModelResult:
        return cls(name=str(r.text("name", required=True)), family=r.text("family"),
                   status=r.text("status", choices=MODEL_STATUSES), reason=r.text("reason"),
                   n=r.integer("n"), sites=r.texts("sites"), refused=r.text_map("refused"),
                   dropped=r.text_map("dropped"),
                   one_stage=_fit_object(r, "one_stage", ("coefficients", "se")),
                   stratified=_fit_object(r, "stratified", ("coefficients", "se")),
                   two_stage=_fit_object(r, "two_stage", ("per_site", "pooled")),
                   hierarchical=_fit_object(r, "hierarchical", ("coefficients", "se", "tau2")),
                   heterogeneity=_flags(r, "heterogeneity"),
                   round_trips=r.integer("round_trips"), seconds=r.number("seconds"),
                   notes=r.texts("notes"), iecv=_iecv_object(r, "iecv"),
                   iecv_candidates=_candidates(r, "iecv_candidates"),
                   recommendation=_recommendation(r, "recommendation"),
                   iecv_notes=r.texts("iecv_notes"),
                   iecv_round_trips=r.integer("iecv_round_trips"),
                   iecv_seconds=r.number("iecv_seconds"),
                   extra=r.extra(_KNOWN[cls]), _layout=r.layout())


@dataclass(frozen=True)
class RoundDocument(_Section):
    """A federated round: its terms, who took part, and every analysis's result.

    Build one from JSON with :meth:`from_dict` (validated) and write it with
    :meth:`to_dict`. ``analyses`` is empty while the round is open and when it failed.
    """

    round: str = field(metadata=_doc("round id (r-YYYYMMDD-NNNN; a safe file name)"))
    status: str = field(metadata=_doc("open | pooled | failed"))
    spec: Mapping[str, Any] | None = field(default=None, metadata=_doc(
        "the analysis spec as sent to the sites: {name, analyses: [...]}"))
    opened_at: str | None = field(default=None, metadata=_doc("ISO-8601 UTC"))
    deadline: str | None = field(default=None, metadata=_doc("ISO-8601 UTC"))
    closed_at: str | None = field(default=None, metadata=_doc(
        "ISO-8601 UTC, null while open"))
    quorum: int | None = field(default=None, metadata=_doc(
        "sites needed for the round to be pooled"))
    failure_reason: str | None = field(default=None, metadata=_doc(
        "plain sentence when status is failed, else null"))
    pooling: PoolingSettings | None = field(default=None, metadata=_doc(
        "the round's pooling settings"))
    sites: tuple[SiteParticipation, ...] = field(default=(), metadata=_doc(
        "every allowed site"))
    missing_sites: tuple[str, ...] | None = field(default=None, metadata=_doc(
        "allowed sites that did not submit (written at close)"))
    analyses: tuple[AnalysisResult, ...] = field(default=(), metadata=_doc(
        "one per analysis of the spec"))
    models: tuple[ModelResult, ...] = field(default=(), metadata=_doc(
        "one per model of the spec (version 3; written when the spec has models)"))
    schema_version: int = field(default=SCHEMA_VERSION, metadata=_doc(
        "absent in version 1; written from version 2 on"))
    extra: Mapping[str, Any] = _extra_field()
    _layout: tuple[str, ...] | None = _layout_field()

    def _items(self) -> list[tuple[str, Any, bool]]:
        return [
            ("schema_version", self.schema_version, self.schema_version != 1),
            ("round", self.round, True), ("status", self.status, True),
            ("spec", None if self.spec is None else dict(self.spec), True),
            ("opened_at", self.opened_at, True), ("deadline", self.deadline, True),
            ("closed_at", self.closed_at, True), ("quorum", self.quorum, True),
            ("failure_reason", self.failure_reason, True),
            ("pooling", None if self.pooling is None else self.pooling.to_dict(), True),
            ("sites", [s.to_dict() for s in self.sites], True),
            ("missing_sites", None if self.missing_sites is None else list(self.missing_sites),
             self.missing_sites is not None),
            ("analyses", [a.to_dict() for a in self.analyses], True),
            ("models", [m.to_dict() for m in self.models], bool(self.models))]

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "round document") -> RoundDocument:
        """Read and validate a round document (parsed JSON).

        Parameters
        ----------
        data
            The JSON object (a mapping).
        where
            How errors name the document (e.g. its file), before the round id.

        Raises
        ------
        fedsynth.errors.InputError
            Naming the field (``analyses[2].site_estimates[0].yi``) and its value when a
            field has the wrong type or value, a required field is missing, or the
            document's ``schema_version`` is newer than this release reads.
        """
        r = _Reader(data, "", where)
        round_id = r.data.get("round")
        if not isinstance(round_id, str) or not ROUND_ID.match(round_id):
            r.error("round", "must be an id of letters, digits, '.', '_' or '-' (at most "
                             "128, not starting with '.')")
        r.where = f"{where} {round_id}"
        version = r.integer("schema_version", minimum=1)
        if version is not None and version > SCHEMA_VERSION:
            r.error("schema_version", f"is newer than this fedsynth reads (version "
                                      f"{SCHEMA_VERSION}); upgrade fedsynth to read it")
        status = r.text("status", required=True, choices=STATUSES)
        for key in ("opened_at", "deadline", "closed_at"):
            _check_timestamp(r, key)
        pooling = r.data.get("pooling")
        missing = r.data.get("missing_sites")
        return cls(
            round=str(round_id), status=str(status), spec=r.mapping("spec"),
            opened_at=r.text("opened_at"), deadline=r.text("deadline"),
            closed_at=r.text("closed_at"), quorum=r.integer("quorum", minimum=1),
            failure_reason=r.text("failure_reason"),
            pooling=(None if pooling is None else
                     PoolingSettings._read(_Reader(pooling, "pooling", r.where))),
            sites=tuple(SiteParticipation._read(s) for s in r.objects("sites")),
            missing_sites=None if missing is None else r.texts("missing_sites"),
            analyses=tuple(AnalysisResult._read(a) for a in r.objects("analyses")),
            models=tuple(ModelResult._read(m) for m in r.objects("models")),
            schema_version=version or 1,             # no key: a version-1 document
            extra=r.extra(_KNOWN[cls]), _layout=r.layout())

    @classmethod
    def coerce(cls, value: RoundDocument | Mapping[str, Any], *,
               where: str = "round document") -> RoundDocument:
        """``value`` itself if it is a RoundDocument, else :meth:`from_dict` of it."""
        return value if isinstance(value, RoundDocument) else cls.from_dict(value, where=where)

    def analysis(self, name: str) -> AnalysisResult:
        """The analysis called ``name`` (KeyError naming the known ones otherwise)."""
        for entry in self.analyses:
            if entry.analysis == name:
                return entry
        raise KeyError(f"round {self.round} has no analysis {name!r}; analyses: "
                       f"{', '.join(a.analysis for a in self.analyses) or 'none'}")


def _check_timestamp(r: _Reader, key: str) -> None:
    """Timestamps stay text (written back exactly), but must be ISO-8601 with a zone."""
    value = r.text(key)
    if value is not None:
        try:
            parse_iso(value, key)
        except InputError:
            r.error(key, "must be an ISO-8601 timestamp with a zone (e.g. "
                         "'2026-11-25T14:00:00.000Z')")


def _known_keys(cls: type, groups: Mapping[str, type] | None = None) -> frozenset[str]:
    """The JSON keys a section reads.

    Its fields, with a flattened group's keys instead of the group field.
    """
    keys = {f.name for f in fields(cls) if f.name not in ("extra", "_layout")}
    for name, group in (groups or {}).items():
        keys.discard(name)
        keys |= _known_keys(group)
    return frozenset(keys)


#: JSON keys read by each section (the rest is kept as ``extra``).
_KNOWN: dict[type, frozenset[str]] = {
    PoolingSettings: _known_keys(PoolingSettings),
    SiteParticipation: _known_keys(SiteParticipation),
    SiteEstimate: _known_keys(SiteEstimate),
    PooledEstimate: _known_keys(PooledEstimate),
    SiteDriver: _known_keys(SiteDriver),
    SiteBlup: _known_keys(SiteBlup),
    FlagDetails: _known_keys(FlagDetails),
    HeterogeneityVerdict: _known_keys(HeterogeneityVerdict, {"details": FlagDetails}),
    SiteLikelihood: _known_keys(SiteLikelihood),
    LikelihoodPooling: _known_keys(LikelihoodPooling),
    AnalysisResult: _known_keys(AnalysisResult, {"pooled": PooledEstimate}),
    ModelResult: _known_keys(ModelResult),
    RoundDocument: _known_keys(RoundDocument),
}


# ------------------------------------------------------------------------------------------
# The schema, for docs/round-document.md (a test keeps the two equal)
# ------------------------------------------------------------------------------------------

_TYPE_NAMES: dict[str, str] = {
    "str": "string", "str | None": "string or null", "int | None": "integer or null",
    "float | None": "number or null", "bool": "boolean", "bool | None": "boolean or null",
    "int": "integer", "Interval | None": "[number or null, number or null] or null",
    "tuple[str, ...]": "list of strings", "tuple[str, ...] | None": "list of strings",
    "Mapping[str, str]": "object: string -> string",
    "Mapping[str, Any] | None": "object or null",
}

_SECTIONS: tuple[tuple[type, str, str], ...] = (
    (RoundDocument, "RoundDocument", "the document (top level)"),
    (PoolingSettings, "PoolingSettings", "`pooling`"),
    (SiteParticipation, "SiteParticipation", "each item of `sites`"),
    (AnalysisResult, "AnalysisResult", "each item of `analyses`"),
    (PooledEstimate, "PooledEstimate", "keys written into the analysis object"),
    (HeterogeneityVerdict, "HeterogeneityVerdict", "`heterogeneity` of an analysis"),
    (FlagDetails, "FlagDetails", "keys written into the `heterogeneity` object"),
    (SiteDriver, "SiteDriver", "each item of `heterogeneity.drivers`"),
    (SiteEstimate, "SiteEstimate", "each item of `site_estimates`"),
    (SiteBlup, "SiteBlup", "each item of `blups`"),
    (LikelihoodPooling, "LikelihoodPooling", "`likelihood` of an analysis (version 3)"),
    (SiteLikelihood, "SiteLikelihood", "each item of `likelihood.sites`"),
    (ModelResult, "ModelResult", "each item of `models`"),
)


#: Fields whose keys are written into the enclosing object (no key of their own).
_GROUPS = {"pooled": "PooledEstimate", "details": "FlagDetails"}


def _type_name(annotation: str) -> str:
    if annotation in _TYPE_NAMES:
        return _TYPE_NAMES[annotation]
    match = re.fullmatch(r"tuple\[(\w+), \.\.\.\]", annotation)
    if match:
        return f"list of {match.group(1)}"
    match = re.fullmatch(r"(\w+)( \| None)?", annotation)
    if match:
        return match.group(1) + (" or null" if match.group(2) else "")
    return annotation


def schema_markdown() -> str:
    """The field tables of docs/round-document.md, generated from the dataclasses."""
    lines = [f"Schema version {SCHEMA_VERSION} (`fedsynth.round_document`, generated by "
             "`python -m fedsynth.round_document`).", ""]
    for cls, name, where in _SECTIONS:
        lines += [f"### {name}: {where}", "", "| key | type | required | meaning |",
                  "|---|---|---|---|"]
        for f in fields(cls):
            if f.name in ("extra", "_layout"):
                continue
            required = f.default is MISSING and f.default_factory is MISSING
            if f.name in _GROUPS:
                key, kind = f"({f.name})", f"the keys of {_GROUPS[f.name]}, in this object"
            else:
                key, kind = f"`{f.name}`", _type_name(str(f.type))
            meaning = str(f.metadata.get("doc", "")).replace("|", "\\|")
            lines.append(f"| {key} | {kind} | {'yes' if required else 'no'} | {meaning} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(schema_markdown(), end="")
