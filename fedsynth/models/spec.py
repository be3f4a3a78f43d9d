"""The ``[[model]]`` table of a spec: one regression model fitted across sites.

Why
---
A model travels to every site inside a round, like an ``[[analysis]]``, and every site must
build *the same* design matrix from it: the same coefficients in the same order, whatever
values its own rows happen to hold. So a model names its family, outcome and covariates,
and every categorical covariate declares its levels in order (the first is the reference),
as R's ``factor(x, levels = ...)`` does before ``model.matrix``. A site that lacks a level
still has the column (all zero); a site whose data hold a value outside the declared levels
stops with an error instead of silently coding it as the reference. This module only parses
and validates (no numpy, so loading a spec stays cheap); :mod:`fedsynth.models.coding` builds
the design matrix.

Coefficient names are the same everywhere (JSON, tables, plots): ``intercept``, a numeric
covariate by its column name, a level of a categorical covariate as ``column=level``
(e.g. ``pupil=None``), in covariate order with the levels of a categorical covariate in
declared order (R's ``model.matrix`` order).

Example
-------
.. code-block:: toml

    [[model]]
    name = "tbi_mortality"
    family = "binomial"            # binomial (logit) | gaussian (identity) | poisson (log)
    outcome = "mort"
    covariates = ["age", "motor_score", "pupil", "hypots"]
    [model.categorical]
    motor_score = ["5/6", "4", "3", "1/2"]
    pupil = ["Both", "One", "None"]
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedsynth.errors import ConfigError

__all__ = ["ModelSpec", "FAMILIES", "LINKS", "parse_model", "parse_models",
           "parse_categorical", "coefficient_names", "INTERCEPT", "MODEL_KEYS"]

#: Families and their (canonical) links, as R's ``binomial()``, ``gaussian()``, ``poisson()``.
FAMILIES: tuple[str, ...] = ("binomial", "gaussian", "poisson")
LINKS: dict[str, str] = {"binomial": "logit", "gaussian": "identity", "poisson": "log"}
#: The name of the intercept coefficient.
INTERCEPT = "intercept"
#: Keys of a ``[[model]]`` table.
MODEL_KEYS: tuple[str, ...] = ("name", "family", "outcome", "covariates", "categorical",
                               "offset", "description", "iecv")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
#: Longest level label (it becomes part of a coefficient name).
MAX_LEVEL_LENGTH = 100
#: Most levels of one categorical column (each level but the first is a coefficient).
MAX_LEVELS = 100

Categorical = tuple[tuple[str, tuple[str, ...]], ...]


def _level_text(value: Any, where: str, column: str) -> str:
    # Levels are text; TOML integers are accepted and written as text ("4"), so a level
    # matches the data value 4 or "4" alike (see fedsynth.models.coding).
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(f"{where}: categorical column {column!r}: levels must be strings "
                          f"or integers, got {type(value).__name__} {value!r}")
    text = str(value)
    if not text or len(text) > MAX_LEVEL_LENGTH:
        raise ConfigError(f"{where}: categorical column {column!r}: level {value!r} must be "
                          f"1 to {MAX_LEVEL_LENGTH} characters")
    if not text.isprintable():
        # A level becomes part of a coefficient name, shown in terminals and reports.
        raise ConfigError(f"{where}: categorical column {column!r}: level {value!r} holds a "
                          "control or format character")
    return text


def parse_categorical(value: Any, covariates: Sequence[str], where: str,
                      key: str = "categorical") -> Categorical:
    """Validate a ``categorical`` table: ``{column: [levels, ...]}``.

    Every column must be one of ``covariates`` and list at least two distinct levels
    (strings or integers, kept as text, first = reference). Returns ``((column, levels),
    ...)`` in covariate order. Errors name ``where``, the column and the value.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: key {key!r} must be a table of column = [levels], got "
                          f"{type(value).__name__} {value!r}")
    parsed: dict[str, tuple[str, ...]] = {}
    for column, levels in value.items():
        if not isinstance(column, str) or not column:
            raise ConfigError(f"{where}: key {key!r} has an empty column name")
        if column not in covariates:
            raise ConfigError(f"{where}: key {key!r} names column {column!r}, which is not "
                              f"one of the covariates ({', '.join(covariates) or 'none'})")
        if not isinstance(levels, (list, tuple)):
            raise ConfigError(f"{where}: categorical column {column!r}: levels must be a "
                              f"list, got {type(levels).__name__} {levels!r}")
        if len(levels) > MAX_LEVELS:
            raise ConfigError(f"{where}: categorical column {column!r} lists {len(levels)} "
                              f"levels (at most {MAX_LEVELS})")
        texts = tuple(_level_text(level, where, column) for level in levels)
        if len(texts) < 2:
            raise ConfigError(f"{where}: categorical column {column!r} needs at least two "
                              f"levels (the first is the reference), got {list(texts)!r}")
        if len(set(texts)) != len(texts):
            dup = next(t for t in texts if texts.count(t) > 1)
            raise ConfigError(f"{where}: categorical column {column!r} lists level {dup!r} "
                              "twice")
        parsed[column] = texts
    return tuple((c, parsed[c]) for c in covariates if c in parsed)


def coefficient_names(covariates: Sequence[str], categorical: Categorical | Mapping[str, Any],
                      intercept: bool = True) -> tuple[str, ...]:
    """Coefficient names of a design: ``intercept``, then each covariate in order.

    A numeric covariate is one coefficient named by its column; a categorical covariate
    with levels ``(ref, b, c)`` gives ``column=b`` and ``column=c`` (treatment contrasts
    against the first level, as R's default ``contr.treatment``).
    """
    levels = dict(categorical)
    names = [INTERCEPT] if intercept else []
    for column in covariates:
        if column in levels:
            names.extend(f"{column}={level}" for level in tuple(levels[column])[1:])
        else:
            names.append(column)
    return tuple(names)


@dataclass(frozen=True)
class ModelSpec:
    """One validated ``[[model]]`` table.

    Attributes
    ----------
    name
        Unique within the spec (also among the analyses).
    family
        ``binomial`` (logit link, 0/1 outcome), ``gaussian`` (identity) or ``poisson``
        (log link, counts).
    outcome
        The outcome column.
    covariates
        Covariate columns in model order (may be empty: an intercept-only model).
    categorical
        ``((column, levels), ...)``: the categorical covariates and their levels, first =
        reference.
    offset
        Optional column added to the linear predictor as it is (R's ``offset``): for a
        rate model give ``log(person-time)``.
    description
        Free text for reports.
    iecv
        True: a round also runs internal-external cross-validation of the model (each
        site held out in turn; issue 14). Off by default: it costs one federated
        development per site (docs/decisions/iecv.md).
    """

    name: str
    family: str
    outcome: str
    covariates: tuple[str, ...] = ()
    categorical: Categorical = ()
    offset: str | None = None
    description: str | None = None
    iecv: bool = False

    @property
    def link(self) -> str:
        """The family's canonical link (``logit``, ``identity``, ``log``)."""
        return LINKS[self.family]

    @property
    def coefficient_names(self) -> tuple[str, ...]:
        """``intercept``, numeric covariates, ``column=level`` for non-reference levels."""
        return coefficient_names(self.covariates, self.categorical)

    @property
    def levels(self) -> dict[str, tuple[str, ...]]:
        """``{column: levels}`` of the categorical covariates."""
        return dict(self.categorical)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every data column the model uses (a missing value there drops the row)."""
        cols = [self.outcome, *self.covariates, self.offset]
        return tuple(dict.fromkeys(c for c in cols if c))

    def formula(self) -> str:
        """The model as R would be asked for it (for reports and logs)."""
        terms = [f"factor({c})" if c in self.levels else c for c in self.covariates]
        if self.offset:
            terms.append(f"offset({self.offset})")
        rhs = " + ".join(terms) or "1"
        return f"glm({self.outcome} ~ {rhs}, family = {self.family})"

    def to_dict(self) -> dict[str, Any]:
        """The model as a plain, JSON-safe dict (only the keys that are set)."""
        out: dict[str, Any] = {"name": self.name, "family": self.family,
                               "outcome": self.outcome, "covariates": list(self.covariates)}
        if self.categorical:
            out["categorical"] = {c: list(levels) for c, levels in self.categorical}
        if self.offset is not None:
            out["offset"] = self.offset
        if self.description is not None:
            out["description"] = self.description
        if self.iecv:
            # written only when set: the definition's digest (release history, artifact
            # spec_hash) of a model without IECV stays what it was
            out["iecv"] = True
        return out

    @classmethod
    def from_dict(cls, table: Mapping[str, Any], index: int = 0) -> ModelSpec:
        """Validate one ``[[model]]`` table; errors name the model and the key."""
        return parse_model(table, index)


def _where(table: Any, index: int) -> str:
    name = table.get("name") if isinstance(table, Mapping) else None
    if isinstance(name, str) and name:
        return f"model {name!r}"
    return f"model #{index + 1}"


def parse_model(table: Any, index: int = 0) -> ModelSpec:
    """Validate one ``[[model]]`` table into a :class:`ModelSpec`.

    Raises
    ------
    fedsynth.errors.ConfigError
        Unknown, missing or mistyped key, unknown family, a column used twice, a
        categorical column that is not a covariate, fewer than two or repeated levels, or
        two coefficients with the same name. The message names the model and the key.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"model #{index + 1}: must be a table, got {type(table).__name__}")
    where = _where(table, index)
    unknown = [k for k in table if k not in MODEL_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known keys: "
                          f"{', '.join(MODEL_KEYS)})")
    for key in ("name", "family", "outcome"):
        if key not in table:
            raise ConfigError(f"{where}: missing key {key!r}")
    for key in ("name", "family", "outcome", "offset", "description"):
        if key in table:
            value = table[key]
            if not isinstance(value, str):
                raise ConfigError(f"{where}: key {key!r} must be a string, got "
                                  f"{type(value).__name__} {value!r}")
            if key != "description" and not value.strip():
                raise ConfigError(f"{where}: key {key!r} must not be empty")
    iecv = table.get("iecv", False)
    if not isinstance(iecv, bool):
        raise ConfigError(f"{where}: key 'iecv' must be true or false, got "
                          f"{type(iecv).__name__} {iecv!r}")
    name = table["name"]
    if not _NAME.match(name):
        raise ConfigError(f"{where}: key 'name' must be 1-100 letters, digits, '_', '.' or "
                          f"'-', got {name!r}")
    family = table["family"]
    if family not in FAMILIES:
        raise ConfigError(f"{where}: key 'family' has unknown value {family!r} (known: "
                          f"{', '.join(FAMILIES)})")
    covariates = table.get("covariates", [])
    if not isinstance(covariates, (list, tuple)) or not all(
            isinstance(c, str) and c for c in covariates):
        raise ConfigError(f"{where}: key 'covariates' must be a list of column names, got "
                          f"{covariates!r}")
    if len(set(covariates)) != len(covariates):
        dup = next(c for c in covariates if covariates.count(c) > 1)
        raise ConfigError(f"{where}: key 'covariates' lists column {dup!r} twice")
    outcome, offset = table["outcome"], table.get("offset")
    for column in covariates:
        if column in (outcome, offset):
            raise ConfigError(f"{where}: key 'covariates' repeats column {column!r}, already "
                              "used as outcome or offset")
    if offset is not None and offset == outcome:
        raise ConfigError(f"{where}: key 'offset' names the outcome column {outcome!r}")
    if iecv and family != "binomial":
        raise ConfigError(f"{where}: key 'iecv' = true needs family = \"binomial\" (IECV "
                          f"measures a risk model's discrimination and calibration), got "
                          f"family {family!r}")
    categorical = parse_categorical(table.get("categorical", {}), covariates, where)
    names = coefficient_names(covariates, categorical)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"{where}: two coefficients would be named {dup!r}; rename the "
                          "column or the level")
    return ModelSpec(name=name, family=family, outcome=outcome, covariates=tuple(covariates),
                     categorical=categorical, offset=offset,
                     description=table.get("description"), iecv=iecv)


def parse_models(tables: Any, taken: Sequence[str] = ()) -> tuple[ModelSpec, ...]:
    """Validate a list of ``[[model]]`` tables; names unique and not in ``taken``.

    ``taken`` holds the analysis names of the same spec: a model may not share one (both
    become keys of the round's results and file names in reports).
    """
    if not isinstance(tables, (list, tuple)) or not tables:
        raise ConfigError(f"spec: key 'model' must be a non-empty array of tables, got "
                          f"{tables!r}")
    models: list[ModelSpec] = []
    seen = set(taken)
    for index, table in enumerate(tables):
        model = parse_model(table, index)
        if model.name in seen:
            raise ConfigError(f"model {model.name!r}: key 'name' is a duplicate (model "
                              f"#{index + 1}); names must be unique among the analyses and "
                              "models of a spec")
        seen.add(model.name)
        models.append(model)
    return tuple(models)
