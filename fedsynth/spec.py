"""The analysis spec: which estimates every site computes in a round.

Why
---
The spec is written by the central analytics team (TOML, see docs/architecture.md), sent to every
site inside a round, and executed there by :func:`fedsynth.effects.estimate_all`. A
site must never guess: a typo in a key or an estimator name would otherwise produce a
silently different analysis at each site. So the spec is parsed into typed, frozen
objects and every problem (unknown estimator, missing, unknown or inapplicable key, wrong
type, duplicate name) is an error that names the analysis and the key. The same objects
round-trip through :meth:`Spec.to_dict` (the form that travels in a round) and
:meth:`Spec.to_toml`. A spec may also hold ``[[model]]`` tables (regression models fitted
across sites), parsed by :mod:`fedsynth.models.spec` into :attr:`Spec.models`.

Size limits. A spec reaches a site from the coordinator, and the site writes it (or its
names) into its hash-chained audit log before anything leaves; an entry above the log's
1 MiB cap cannot be written, and nothing may be sent without it. So every string of a spec
has a documented maximum, refused here with a message naming the key: analysis and spec
names at most :data:`MAX_NAME_CHARS`, column names at most :data:`MAX_COLUMN_CHARS`,
descriptions at most :data:`MAX_DESCRIPTION_CHARS`, at most :data:`MAX_COVARIATES`
covariates and :data:`MAX_ANALYSES` analyses, and the whole spec at most
:data:`MAX_SPEC_BYTES` as JSON (:data:`MAX_SPEC_TEXT_BYTES` as TOML text, checked before
parsing). Names and columns hold no control or format character (a terminal would act on
it); descriptions may hold line breaks and tabs only.

Likelihood sharing (issue 15). An analysis of a one-parameter estimand (``two_by_two``
with ``measure = "OR"``, ``logistic``, ``cox``: the log OR or log HR of the exposure) may
ask the sites for an approximation of their profile log-likelihood instead of ``(yi,
vi)``: ``release = "likelihood"`` (default ``"estimate"``), with ``likelihood_form`` (the
released form: ``"grid_with_gradients"``, the default, ``"custom"`` or ``"normal"``) and
``prior`` (the prior on tau of the coordinator's random-effects pooling of the
likelihoods, ``"NAME:SCALE"`` as ``fedsynth meta --bayes``; default
``"half_normal:0.5"``). A site with no events in one arm then contributes instead of
being dropped (docs/decisions/rare-events.md; the site's policy decides whether it may).

Example
-------
.. code-block:: toml

    name = "monthly"
    [[analysis]]
    name = "mortality_adjusted"
    estimator = "logistic"
    outcome = "outcome"
    exposure = "treated"
    covariates = ["age", "sex"]
    release = "likelihood"
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.errors import ConfigError, InputError
from fedsynth.models.spec import ModelSpec, parse_categorical, parse_models
from fedsynth.vocabulary import DEFAULT_PRIOR, DEFAULT_PRIOR_SCALE, ESTIMATOR_MEASURES, PRIORS

__all__ = ["Spec", "AnalysisSpec", "load_spec", "parse_spec", "embed_model_files",
           "ESTIMATORS", "MEASURES",
           "MAX_NAME_CHARS", "MAX_COLUMN_CHARS", "MAX_DESCRIPTION_CHARS", "MAX_COVARIATES",
           "MAX_ANALYSES", "MAX_SPEC_BYTES", "MAX_SPEC_TEXT_BYTES", "RELEASES",
           "LIKELIHOOD_FORMS", "LIKELIHOOD_ESTIMATORS", "DEFAULT_LIKELIHOOD_PRIOR"]

#: Longest analysis or spec name (characters).
MAX_NAME_CHARS = 100
#: Longest column name (characters); PostgreSQL's identifiers stop at 63 bytes, SQL
#: Server's at 128 characters.
MAX_COLUMN_CHARS = 128
#: Longest description of a spec or an analysis (characters).
MAX_DESCRIPTION_CHARS = 2000
#: Most covariates of one analysis.
MAX_COVARIATES = 100
#: Most analyses of one spec (the coordinator accepts at most as many results).
MAX_ANALYSES = 1000
#: Largest spec as compact JSON (:meth:`Spec.to_json`), in bytes: with every audit entry's
#: other fields this keeps a site's entries far below the audit log's 1 MiB cap.
MAX_SPEC_BYTES = 256 * 1024
#: Largest spec as TOML text, checked before parsing (bounded work for hostile input).
MAX_SPEC_TEXT_BYTES = 1024 * 1024

#: Estimators and, for each, (required keys, optional keys with defaults). The estimators
#: that evaluate a risk score take either a ``score`` column or a signed model artifact
#: (``model``, whose predictions are the score; fedsynth.models.artifact).
_STRING_KEYS = ("outcome", "exposure", "measure", "time", "event", "ties", "score", "scale",
                "description", "release", "likelihood_form", "prior")
_ALL_KEYS = ("name", "estimator", "outcome", "exposure", "covariates", "measure", "time",
             "event", "ties", "score", "scale", "description", "categorical", "release",
             "likelihood_form", "prior", "model")
#: What a site releases for an analysis: its estimate ``(yi, vi)`` or its likelihood.
RELEASES = ("estimate", "likelihood")
#: Forms of a released likelihood (as :data:`fedsynth.effects.likelihood.FORMS`).
LIKELIHOOD_FORMS = ("grid_with_gradients", "custom", "normal")
#: Estimators whose parameter of interest has a profile likelihood a site can release
#: (two_by_two only with measure OR).
LIKELIHOOD_ESTIMATORS = ("two_by_two", "logistic", "cox")
#: The prior on tau of the random-effects pooling of likelihoods, unless ``prior`` says.
DEFAULT_LIKELIHOOD_PRIOR = f"{DEFAULT_PRIOR}:{DEFAULT_PRIOR_SCALE:g}"
_LIKELIHOOD_KEYS = ("release", "likelihood_form", "prior")
#: Largest embedded model artifact (canonical JSON, bytes).
MAX_MODEL_ARTIFACT_CHARS = 64 * 1024

ESTIMATORS: dict[str, dict[str, Any]] = {
    "two_by_two": {"required": ("outcome", "exposure"),
                   "optional": {"measure": "OR"}},
    "two_group": {"required": ("outcome", "exposure"),
                  "optional": {"measure": "MD"}},
    "logistic": {"required": ("outcome", "exposure"),
                 "optional": {"covariates": (), "categorical": ()}},
    "linear": {"required": ("outcome", "exposure"),
               "optional": {"covariates": (), "categorical": ()}},
    "cox": {"required": ("time", "event", "exposure"),
            "optional": {"covariates": (), "ties": "efron", "categorical": ()}},
    "auc": {"required": ("outcome", "score"), "optional": {"scale": "raw", "model": None}},
    "calibration_slope": {"required": ("outcome", "score"), "optional": {"model": None}},
    "calibration_in_the_large": {"required": ("outcome", "score"), "optional": {"model": None}},
    "oe_ratio": {"required": ("outcome", "score"), "optional": {"model": None}},
    "brier": {"required": ("outcome", "score"), "optional": {"model": None}},
}

#: Allowed values of the enumerated keys.
MEASURES: dict[str, tuple[str, ...]] = dict(ESTIMATOR_MEASURES)
_CHOICES: dict[str, tuple[str, ...]] = {"ties": ("efron", "breslow"),
                                        "scale": ("raw", "logit")}
_NAME = re.compile(rf"^[A-Za-z0-9_.\-]{{1,{MAX_NAME_CHARS}}}$")
_COLUMN_KEYS = ("outcome", "exposure", "time", "event", "score")


def _preview(value: str) -> str:
    """A value for an error message: at most 40 characters, escaped, with its length."""
    shown = value if len(value) <= 40 else value[:40] + "..."
    return f"{shown!r} ({len(value)} characters)" if len(value) > 40 else repr(shown)


def _check_text(where: str, key: str, value: str, limit: int, *,
                line_breaks: bool = False) -> None:
    """Refuse a string above ``limit`` characters or holding a control character."""
    if len(value) > limit:
        raise ConfigError(f"{where}: key {key!r} is {len(value)} characters long (at most "
                          f"{limit}): {_preview(value)}")
    text = value.replace("\n", "").replace("\t", "") if line_breaks else value
    if not text.isprintable():
        bad = next(ch for ch in text if not ch.isprintable())
        raise ConfigError(f"{where}: key {key!r} holds the control or format character "
                          f"{bad!r}: {_preview(value)}")


def _check_model_limits(model: ModelSpec) -> None:
    """The size limits of analyses, applied to a ``[[model]]`` (columns, description)."""
    where = f"model {model.name!r}"
    if len(model.covariates) > MAX_COVARIATES:
        raise ConfigError(f"{where}: key 'covariates' lists {len(model.covariates)} columns "
                          f"(at most {MAX_COVARIATES})")
    for key in ("outcome", "offset"):
        if getattr(model, key) is not None:
            _check_text(where, key, getattr(model, key), MAX_COLUMN_CHARS)
    for column in model.covariates:
        _check_text(where, "covariates", column, MAX_COLUMN_CHARS)
    if model.description is not None:
        _check_text(where, "description", model.description, MAX_DESCRIPTION_CHARS,
                    line_breaks=True)


@dataclass(frozen=True)
class AnalysisSpec:
    """One analysis of a spec (one ``[[analysis]]`` table).

    Keys that do not apply to the estimator are ``None`` (or ``()`` for covariates);
    defaults (``measure = "OR"`` for two_by_two, ``"MD"`` for two_group, ``ties =
    "efron"``, ``scale = "raw"``) are filled in, so every site runs the same analysis.
    """

    name: str
    estimator: str
    outcome: str | None = None
    exposure: str | None = None
    covariates: tuple[str, ...] = ()
    measure: str | None = None
    time: str | None = None
    event: str | None = None
    ties: str | None = None
    score: str | None = None
    scale: str | None = None
    description: str | None = None
    #: ``((column, levels), ...)``: categorical covariates coded as in
    #: :mod:`fedsynth.models.coding` (first level = reference).
    categorical: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: ``"likelihood"`` when the sites release a likelihood (None: an estimate).
    release: str | None = None
    #: The released likelihood's form (set when ``release == "likelihood"``).
    likelihood_form: str | None = None
    #: ``"NAME:SCALE"``: the prior on tau of the likelihoods' random-effects pooling.
    prior: str | None = None

    #: A signed model artifact (canonical JSON text) whose predictions are the score of a
    #: model-evaluation estimator (instead of a ``score`` column); embedded by
    #: :func:`load_spec` from ``model = "model.json"`` so it travels with the spec.
    model: str | None = None
    #: The data columns the embedded model scores from (its covariates and offset).
    model_columns: tuple[str, ...] = field(default=(), compare=False)

    @property
    def wants_likelihood(self) -> bool:
        """Whether the sites release a likelihood for this analysis."""
        return self.release == "likelihood"

    @property
    def prior_setting(self) -> tuple[str, float]:
        """``(prior name, scale)`` of :attr:`prior` (the default when unset)."""
        name, scale = (self.prior or DEFAULT_LIKELIHOOD_PRIOR).split(":")
        return name, float(scale)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every data column the analysis uses (missing values there drop the row)."""
        cols = [self.outcome, self.exposure, self.time, self.event, self.score,
                *self.covariates, *self.model_columns]
        return tuple(dict.fromkeys(c for c in cols if c))

    def to_dict(self) -> dict[str, Any]:
        """The analysis as a plain dict with only the keys that are set."""
        out: dict[str, Any] = {"name": self.name, "estimator": self.estimator}
        for key in _ALL_KEYS[2:]:
            value = getattr(self, key)
            if key == "covariates":
                if self.estimator in ("logistic", "linear", "cox"):
                    out[key] = list(value)
            elif key == "categorical":
                if value:  # only when set: specs without it keep their old form
                    out[key] = {column: list(levels) for column, levels in value}
            elif key == "model":
                if value is not None:  # only when set: specs without it are unchanged
                    out[key] = value
            elif value is not None:
                out[key] = value
        return out

    def required(self, key: str) -> str:
        """The value of a string key the estimator requires (``outcome``, ``score``, ...).

        Validation (:func:`_parse_analysis`) already refuses a spec without the keys its
        estimator requires, so this only narrows ``str | None`` to ``str`` for the
        estimators; a hand-built spec that lacks the key gets a :class:`ConfigError`.
        """
        value = getattr(self, key)
        if not isinstance(value, str):
            raise ConfigError(f"analysis {self.name!r}: {key!r} is required by estimator "
                              f"{self.estimator!r} (got {value!r})")
        return value

    @classmethod
    def from_dict(cls, table: Mapping[str, Any], index: int = 0) -> AnalysisSpec:
        """Validate one ``[[analysis]]`` table; errors name the analysis and the key."""
        return _parse_analysis(table, index, None)

    @classmethod
    def coerce(cls, analysis: Any, where: str = "estimate") -> AnalysisSpec:
        """``analysis`` as an :class:`AnalysisSpec`: itself, or a validated mapping.

        Raises :class:`~fedsynth.errors.InputError` (naming ``where``) for anything else.
        """
        if isinstance(analysis, AnalysisSpec):
            return analysis
        if isinstance(analysis, Mapping):
            return cls.from_dict(analysis)
        raise InputError(f"{where}: analysis must be an AnalysisSpec, got "
                         f"{type(analysis).__name__}")


@dataclass(frozen=True)
class Spec:
    """A validated analysis spec.

    Attributes
    ----------
    analyses
        The analyses in file order; names are unique.
    name
        Optional name of the spec (e.g. ``"monthly"``).
    """

    analyses: tuple[AnalysisSpec, ...]
    name: str | None = None
    description: str | None = None
    #: ``[[model]]`` tables (:class:`fedsynth.models.ModelSpec`), fitted across sites.
    models: tuple[ModelSpec, ...] = ()

    def __getitem__(self, name: str) -> AnalysisSpec:
        for analysis in self.analyses:
            if analysis.name == name:
                return analysis
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        """Analysis names in order."""
        return tuple(a.name for a in self.analyses)

    def model(self, name: str) -> ModelSpec:
        """The ``[[model]]`` called ``name`` (KeyError if none)."""
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "analyses": [...]}``: the form that travels in a round (JSON-safe)."""
        out: dict[str, Any] = {"name": self.name,
                               "analyses": [a.to_dict() for a in self.analyses]}
        if self.description is not None:
            out["description"] = self.description
        if self.models:
            out["models"] = [m.to_dict() for m in self.models]
        return out

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) of :meth:`to_dict`, e.g. for signing."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def to_toml(self) -> str:
        """The spec as TOML that :func:`parse_spec` reads back to an equal :class:`Spec`."""
        lines: list[str] = []
        if self.name is not None:
            lines.append(f"name = {_toml_value(self.name)}")
        if self.description is not None:
            lines.append(f"description = {_toml_value(self.description)}")
        for analysis in self.analyses:
            lines.append("")
            lines.append("[[analysis]]")
            for key, value in analysis.to_dict().items():
                lines.append(f"{key} = {_toml_value(value)}")
        for model in self.models:
            lines.append("")
            lines.append("[[model]]")
            for key, value in model.to_dict().items():
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):            # a model's ``iecv = true``
        return "true" if value else "false"
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # an inline table; keys quoted (any column name)
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")  # pragma: no cover


def _where(table: Mapping[str, Any], index: int) -> str:
    name = table.get("name") if isinstance(table, Mapping) else None
    if isinstance(name, str) and name and _NAME.match(name):
        return f"analysis {name!r}"
    return f"analysis #{index + 1}"


def _embed_model(where: str, value: str, base: Path | None) -> tuple[str, tuple[str, ...]]:
    """The canonical JSON of the signed artifact ``value`` names or holds, and its columns.

    A path is read only for a spec read from its file (``base``, its folder): a spec that
    arrives in a round must carry the artifact embedded, so a coordinator can never make a
    site read a local file. The signature is checked against the certificate inside the
    artifact (integrity); who signed it is the spec's sender's business (the round's
    mutually authenticated channel; ``fedsynth site score`` also checks the CA).
    """
    text = value.strip()
    if not text.startswith("{"):
        if base is None:
            raise ConfigError(f"{where}: key 'model' names a file ({_preview(value)}); a "
                              "spec that is not read from its own file must carry the model "
                              "artifact embedded (fedsynth embeds it when it reads the file)")
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{where}: key 'model': cannot read {str(path)!r}: "
                              f"{getattr(error, 'strerror', None) or error}") from None
    if len(text) > MAX_MODEL_ARTIFACT_CHARS * 4:
        raise ConfigError(f"{where}: key 'model': the artifact is {len(text)} characters "
                          f"long (at most {MAX_MODEL_ARTIFACT_CHARS})")
    # lazy: numpy, pandas and cryptography load only for specs that name a model artifact
    # (reading any other spec stays standard-library only)
    from fedsynth.models.artifact import read_artifact

    try:
        artifact = read_artifact(text)
    except InputError as error:
        raise ConfigError(f"{where}: key 'model': {error}") from None
    if artifact.model.family != "binomial":
        raise ConfigError(f"{where}: key 'model': the artifact's model "
                          f"{artifact.model.name!r} is {artifact.model.family}; evaluation "
                          "estimators score risks (a binomial model)")
    embedded = artifact.canonical_json()
    if len(embedded) > MAX_MODEL_ARTIFACT_CHARS:
        raise ConfigError(f"{where}: key 'model': the artifact is {len(embedded)} characters "
                          f"as JSON (at most {MAX_MODEL_ARTIFACT_CHARS})")
    return embedded, artifact.columns


def _parse_analysis(table: Any, index: int, base: Path | None) -> AnalysisSpec:
    if not isinstance(table, Mapping):
        raise ConfigError(f"analysis #{index + 1}: must be a table, got "
                          f"{type(table).__name__}")
    where = _where(table, index)
    unknown = [k for k in table if k not in _ALL_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known keys: "
                          f"{', '.join(_ALL_KEYS)})")
    for key in ("name", "estimator"):
        if key not in table:
            raise ConfigError(f"{where}: missing key {key!r}")
    for key, value in table.items():
        if key == "covariates":
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, str) and v for v in value):
                raise ConfigError(f"{where}: key 'covariates' must be a list of column "
                                  f"names, got {value!r}")
            if len(set(value)) != len(value):
                raise ConfigError(f"{where}: key 'covariates' lists a column twice: "
                                  f"{value!r}")
        elif key == "categorical":
            continue  # validated below, once the covariates are known
        elif not isinstance(value, str):
            raise ConfigError(f"{where}: key {key!r} must be a string, got "
                              f"{type(value).__name__} {value!r}")
        elif not value.strip() and key != "description":
            raise ConfigError(f"{where}: key {key!r} must not be empty")
    for key in _COLUMN_KEYS:
        if key in table:
            _check_text(where, key, table[key], MAX_COLUMN_CHARS)
    if "covariates" in table:
        if len(table["covariates"]) > MAX_COVARIATES:
            raise ConfigError(f"{where}: key 'covariates' lists {len(table['covariates'])} "
                              f"columns (at most {MAX_COVARIATES})")
        for column in table["covariates"]:
            _check_text(where, "covariates", column, MAX_COLUMN_CHARS)
    if "description" in table:
        _check_text(where, "description", table["description"], MAX_DESCRIPTION_CHARS,
                    line_breaks=True)
    name = table["name"]
    if not _NAME.match(name):
        raise ConfigError(f"{where}: key 'name' must be 1-{MAX_NAME_CHARS} letters, digits, "
                          f"'_', '.' or '-', got {_preview(name)}")
    estimator = table["estimator"]
    if estimator not in ESTIMATORS:
        raise ConfigError(f"{where}: key 'estimator' has unknown value {estimator!r} "
                          f"(known: {', '.join(ESTIMATORS)})")
    rules = ESTIMATORS[estimator]
    allowed = {"name", "estimator", "description", *rules["required"], *rules["optional"]}
    if estimator in LIKELIHOOD_ESTIMATORS:
        allowed |= set(_LIKELIHOOD_KEYS)
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}: key {key!r} does not apply to estimator "
                              f"{estimator!r} (its keys: {', '.join(sorted(allowed))})")
    for key in rules["required"]:
        if key == "score" and "model" in table:
            if "score" in table:
                raise ConfigError(f"{where}: give either 'score' (a column of risks) or "
                                  f"'model' (a signed model artifact), not both")
            continue                    # the model artifact's predictions are the score
        if key not in table:
            also = (" or 'model', a signed model artifact" if key == "score" else "")
            raise ConfigError(f"{where}: missing key {key!r}{also} (required by estimator "
                              f"{estimator!r})")
    values: dict[str, Any] = {**rules["optional"], **table}
    if "covariates" in values:
        values["covariates"] = tuple(values["covariates"])
    if "categorical" in table:
        values["categorical"] = parse_categorical(table["categorical"],
                                                  values["covariates"], where)
    if values.get("model") is not None:
        values["model"], values["model_columns"] = _embed_model(where, values["model"], base)
    if estimator in MEASURES and values["measure"] not in MEASURES[estimator]:
        raise ConfigError(f"{where}: key 'measure' has value {values['measure']!r}; "
                          f"{estimator} supports {', '.join(MEASURES[estimator])}")
    for key, choices in _CHOICES.items():
        if key in values and values[key] not in choices:
            raise ConfigError(f"{where}: key {key!r} has value {values[key]!r} (known: "
                              f"{', '.join(choices)})")
    _check_release(where, estimator, values)
    for column in values.get("covariates", ()):
        if column in (values.get("outcome"), values.get("exposure"), values.get("time"),
                      values.get("event")):
            raise ConfigError(f"{where}: key 'covariates' repeats column {column!r}, "
                              "already used as outcome, exposure, time or event")
    if estimator in ("two_by_two", "two_group", "logistic", "linear") and \
            values["outcome"] == values["exposure"]:
        raise ConfigError(f"{where}: key 'exposure' names the outcome column "
                          f"{values['exposure']!r}")
    return AnalysisSpec(**values)


def _check_release(where: str, estimator: str, values: dict[str, Any]) -> None:
    """Validate ``release``, ``likelihood_form`` and ``prior``; fill in the defaults.

    The defaults are filled in only when ``release = "likelihood"``, so a spec without
    the key keeps its form (and its fingerprint, which a site's approval covers).
    """
    release = values.get("release")
    if release is None or release == "estimate":
        for key in ("likelihood_form", "prior"):
            if key in values:
                raise ConfigError(f"{where}: key {key!r} applies only with release = "
                                  "\"likelihood\"")
        return
    if release not in RELEASES:
        raise ConfigError(f"{where}: key 'release' has value {release!r} (known: "
                          f"{', '.join(RELEASES)})")
    if estimator == "two_by_two" and values.get("measure") != "OR":
        raise ConfigError(f"{where}: key 'release' = \"likelihood\" needs measure \"OR\" "
                          f"for two_by_two (the log odds ratio's profile likelihood), got "
                          f"measure {values.get('measure')!r}")
    form = values.setdefault("likelihood_form", LIKELIHOOD_FORMS[0])
    if form not in LIKELIHOOD_FORMS:
        raise ConfigError(f"{where}: key 'likelihood_form' has value {form!r} (known: "
                          f"{', '.join(LIKELIHOOD_FORMS)})")
    prior = values.setdefault("prior", DEFAULT_LIKELIHOOD_PRIOR)
    name, sep, scale = prior.partition(":")
    if name not in PRIORS:
        raise ConfigError(f"{where}: key 'prior' has value {prior!r}: unknown prior "
                          f"{name!r} (known: {', '.join(PRIORS)}); write NAME:SCALE")
    try:
        value = float(scale) if sep else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{where}: key 'prior' has value {prior!r}: expected NAME:SCALE "
                          "with a finite scale > 0, e.g. \"half_normal:0.5\"")
    values["prior"] = f"{name}:{value:g}"


def parse_spec(source: str | Mapping[str, Any], *, base: str | Path | None = None) -> Spec:
    """Parse and validate a spec from TOML text or from a dict (e.g. a round's spec).

    Accepts ``[[analysis]]`` tables (TOML) or an ``"analyses"`` list (the
    :meth:`Spec.to_dict` form). Raises :class:`fedsynth.errors.ConfigError` naming the
    analysis and the key on any problem. ``base``: the folder a ``model = "FILE"`` path is
    read from (:func:`load_spec` passes the spec file's folder); without it an analysis's
    model artifact must be embedded.
    """
    if isinstance(source, (str, bytes)):
        text = source.decode() if isinstance(source, bytes) else source
        if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_TEXT_BYTES:
            raise ConfigError(f"analysis spec: the TOML text is {len(text)} characters long "
                              f"(at most {MAX_SPEC_TEXT_BYTES} bytes)")
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"analysis spec: not valid TOML: {error}") from None
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        raise ConfigError(f"analysis spec: expected TOML text or a table, got "
                          f"{type(source).__name__}")
    unknown = [k for k in data if k not in ("name", "description", "analysis", "analyses",
                                            "model", "models")]
    if unknown:
        raise ConfigError(f"analysis spec: unknown top-level key {unknown[0]!r} (known: "
                          "name, description, analysis, model)")
    if "analysis" in data and "analyses" in data:
        raise ConfigError("analysis spec: give either 'analysis' tables or an 'analyses' "
                          "list, not both")
    if "model" in data and "models" in data:
        raise ConfigError("analysis spec: give either 'model' tables or a 'models' list, "
                          "not both")
    for key in ("name", "description"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ConfigError(f"analysis spec: key {key!r} must be a string, got "
                              f"{data[key]!r}")
    if data.get("name") is not None:
        _check_text("analysis spec", "name", data["name"], MAX_NAME_CHARS)
    if data.get("description") is not None:
        _check_text("analysis spec", "description", data["description"],
                    MAX_DESCRIPTION_CHARS, line_breaks=True)
    tables = data.get("analysis", data.get("analyses"))
    if tables is None:
        raise ConfigError("analysis spec: missing key 'analysis' (no [[analysis]] table)")
    if not isinstance(tables, (list, tuple)) or not tables:
        raise ConfigError("analysis spec: key 'analysis' must be a non-empty array of "
                          f"tables, got {tables!r}")
    if len(tables) > MAX_ANALYSES:
        raise ConfigError(f"analysis spec: {len(tables)} analyses (at most {MAX_ANALYSES})")
    analyses: list[AnalysisSpec] = []
    seen: set[str] = set()
    for index, table in enumerate(tables):
        analysis = _parse_analysis(table, index, None if base is None else Path(base))
        if analysis.name in seen:
            raise ConfigError(f"analysis {analysis.name!r}: key 'name' is a duplicate "
                              f"(analysis #{index + 1}); names must be unique")
        seen.add(analysis.name)
        analyses.append(analysis)
    model_tables = data.get("model", data.get("models"))
    models = () if model_tables is None else parse_models(model_tables, taken=tuple(seen))
    for model in models:
        _check_model_limits(model)
    spec = Spec(analyses=tuple(analyses), name=data.get("name"),
                description=data.get("description"), models=models)
    size = len(spec.to_json().encode("utf-8"))
    if size > MAX_SPEC_BYTES:
        raise ConfigError(f"analysis spec: {size} bytes as JSON (at most {MAX_SPEC_BYTES}); "
                          "split it into several rounds")
    return spec


def embed_model_files(text: str, base: str | Path) -> str:
    """Spec TOML text with every ``model = "FILE"`` replaced by the embedded artifact.

    What the coordinator stores and sends for a round: a site must get the artifact inside
    the spec, never a path (:func:`_embed_model`). Text without model artifacts is returned
    unchanged, so existing specs keep their exact text.
    """
    spec = parse_spec(text, base=base)
    if not any(a.model is not None for a in spec.analyses):
        return text
    return spec.to_toml()


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file (TOML). Errors name the file, analysis and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"spec: file not found: {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"spec: cannot read {str(path)!r}: {error}") from None
    try:
        return parse_spec(text, base=path.parent)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
