"""Site policy: what the coordinator may ask this site to compute, decided by the site.

Why
---
Disclosure control (:mod:`site_agent.privacy`) decides whether a *computed* result may
leave; the policy decides whether an analysis may be *computed at all*. A coordinator is
trusted to pool, not to choose freely what a hospital runs on its patients: the site's data
steward lists the estimators and the columns that may serve as outcome, exposure and
covariate, caps the number of analyses per round (many near-identical analyses are the raw
material of differencing attacks), and may require that every spec not seen before is
approved by an operator (``fedsynth site pending`` / ``fedsynth site approve ROUND``)
before anything is computed. This is the "five safes" idea of safe projects and safe
outputs applied per request (Desai, Ritchie & Welpton, "Five Safes: designing data access
for research", UWE Economics Working Paper 1601, 2016).

The policy is a TOML file named by site.toml (``policy = "policy.toml"``), its keys at the
top level or under ``[policy]``::

    [policy]
    estimators = ["two_by_two", "logistic", "cox"]   # default: every estimator
    outcomes = ["outcome", "los_days", "time", "event"]  # default: any column
    exposures = ["treated"]
    covariates = ["age", "sex", "risk_score"]          # also the model score column
    max_analyses = 20                                   # per round (default 50)
    require_approval = true                             # default false
    approvals = "approvals"                             # directory, relative to the file
    allow_small_cell_likelihood = false   # default false: see below
    allow_unadjusted_likelihood = false   # default false: see below

Released likelihoods (``release = "likelihood"`` in a spec, issue 15): by default a site
releases a likelihood only for a model with covariates whose exposure x outcome cells all
pass ``[privacy].min_cell_count``. ``allow_small_cell_likelihood = true`` releases an
adjusted model's likelihood despite a small cell (a site with no events in one arm then
contributes; its likelihood shows that a cell is small or zero, which the operator
accepts explicitly); ``allow_unadjusted_likelihood = true`` releases the likelihood of a
model without covariates (a 2x2 table's), which determines the counts, so only when every
cell passes the limit (:func:`site_agent.privacy.guard`, rule 7).

A spec's identity is the SHA-256 of its canonical JSON (:func:`spec_fingerprint`); an
approval covers that exact content, so the same monthly spec is approved once, and any
change (a new covariate, a new analysis) needs a new approval.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.audit import AuditLog, canonical_json, digest
from fedsynth.config import load_site_config
from fedsynth.errors import ConfigError, InputError
from fedsynth.fileio import atomic_write, read_json_object
from fedsynth.timeutil import iso, utcnow
from fedsynth.vocabulary import ESTIMATORS as VOCABULARY_ESTIMATORS

__all__ = ["ESTIMATORS", "ApprovalStore", "PendingSpec", "Policy", "PolicyDecision",
           "apply_decision", "review_round", "site_audit_log", "site_policy",
           "spec_fingerprint", "spec_to_dict"]

#: Estimators of the analysis spec (defined once in fedsynth.vocabulary).
ESTIMATORS = VOCABULARY_ESTIMATORS

_KEYS = {"estimators", "outcomes", "exposures", "covariates", "max_analyses",
         "require_approval", "approvals", "allow_small_cell_likelihood",
         "allow_unadjusted_likelihood"}
_ROUND_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def spec_to_dict(spec: Any) -> dict[str, Any]:
    """A plain-dict form of a spec (``Spec.to_dict()`` when available)."""
    if isinstance(spec, Mapping):
        return dict(spec)
    if hasattr(spec, "to_dict"):
        return spec.to_dict()
    analyses = []
    for analysis in getattr(spec, "analyses", ()):
        if hasattr(analysis, "to_dict"):
            analyses.append(analysis.to_dict())
        else:
            analyses.append({k: v for k, v in vars(analysis).items() if not k.startswith("_")})
    return {"analyses": analyses}


def spec_fingerprint(spec: Any) -> str:
    """SHA-256 of the canonical JSON of a spec: what an operator's approval covers."""
    return digest(spec_to_dict(spec))


def _analyses(spec: Any) -> list[Mapping[str, Any]]:
    as_dict = spec_to_dict(spec)
    analyses = as_dict.get("analyses", as_dict.get("analysis", []))
    return [a if isinstance(a, Mapping) else vars(a) for a in analyses]


def _models(spec: Any) -> list[Mapping[str, Any]]:
    models = spec_to_dict(spec).get("models", [])
    return [m if isinstance(m, Mapping) else vars(m) for m in models]


@dataclass(frozen=True)
class PolicyDecision:
    """What the policy says about one spec.

    Attributes
    ----------
    fingerprint
        :func:`spec_fingerprint` of the spec.
    refusals
        ``{analysis name: plain reason}`` for analyses the policy forbids.
    needs_approval
        True when the policy requires approval and this spec has not been approved: the
        agent must compute nothing until an operator approves it.
    allowed
        Names of the analyses the policy permits (in spec order).
    """

    fingerprint: str
    refusals: Mapping[str, str]
    needs_approval: bool
    allowed: tuple[str, ...] = ()
    sentences: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for the site's audit log)."""
        return {"fingerprint": self.fingerprint, "refusals": dict(self.refusals),
                "needs_approval": self.needs_approval, "allowed": list(self.allowed)}

    def refusal(self, name: str) -> Any:
        """The refusal of a forbidden analysis.

        The :class:`~fedsynth.effects.Refusal` (code ``policy``) of a forbidden analysis,
        worded from the fixed vocabulary.
        """
        # lazy: keeps pandas and scipy out of `fedsynth site pending/approve` start-up
        from fedsynth.effects.results import Refusal

        sentence = dict(self.sentences.get(name) or {})
        key = sentence.pop("key", None)
        if key is None:
            return Refusal(analysis=name, reason=self.refusals[name], code="policy")
        return Refusal.of(key, name, **sentence)


@dataclass(frozen=True)
class PendingSpec:
    """A spec waiting for an operator's approval."""

    round: str
    fingerprint: str
    received_at: str
    spec: Mapping[str, Any]
    refusals: Mapping[str, str] = field(default_factory=dict)


class ApprovalStore:
    """Pending and approved specs of a site, as files in one directory.

    ``pending/<round>.json`` holds a spec the agent received but may not compute yet;
    ``approved.json`` lists the approved fingerprints (with who approved them and when).
    Files are replaced atomically, so the running agent and the ``site approve`` command
    can share the directory.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @property
    def _approved_file(self) -> Path:
        return self.directory / "approved.json"

    def _write(self, path: Path, obj: Any) -> None:
        atomic_write(path, json.dumps(obj, indent=2, sort_keys=True))

    def approved(self) -> dict[str, dict[str, Any]]:
        """``{fingerprint: {"round", "approved_at", "by"}}``."""
        return read_json_object(self._approved_file, "approvals file")

    def is_approved(self, fingerprint: str) -> bool:
        """Whether the data steward approved the spec with this fingerprint."""
        return fingerprint in self.approved()

    @staticmethod
    def _check_round(round_id: str) -> str:
        if not isinstance(round_id, str) or not _ROUND_RE.match(round_id):
            raise InputError(f"ROUND: invalid round id {round_id!r} (letters, digits, '.', "
                             "'_', '-')")
        return round_id

    def record_pending(self, round_id: str, spec: Any,
                       refusals: Mapping[str, str] | None = None) -> PendingSpec:
        """Remember that ``round_id`` brought a spec that awaits approval."""
        self._check_round(round_id)
        pending = PendingSpec(
            round=round_id, fingerprint=spec_fingerprint(spec),
            received_at=iso(utcnow()),
            spec=json.loads(canonical_json(spec_to_dict(spec))),
            refusals=dict(refusals or {}))
        path = self.directory / "pending" / f"{round_id}.json"
        if not path.exists():
            self._write(path, {"round": pending.round, "fingerprint": pending.fingerprint,
                               "received_at": pending.received_at, "spec": pending.spec,
                               "refusals": pending.refusals})
        return pending

    def pending(self) -> list[PendingSpec]:
        """Specs awaiting approval, oldest first (already approved ones are skipped)."""
        folder = self.directory / "pending"
        if not folder.is_dir():
            return []
        approved = self.approved()
        out = []
        for path in sorted(folder.glob("*.json")):
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
                item = PendingSpec(round=obj["round"], fingerprint=obj["fingerprint"],
                                   received_at=obj["received_at"], spec=obj["spec"],
                                   refusals=obj.get("refusals", {}))
            except (ValueError, KeyError, TypeError) as error:
                raise InputError(f"pending spec {str(path)!r} is malformed: {error}") from None
            if item.fingerprint not in approved:
                out.append(item)
        return sorted(out, key=lambda p: (p.received_at, p.round))

    def approve(self, round_id: str, by: str | None = None) -> PendingSpec:
        """Approve the spec that ``round_id`` brought (its exact content, by fingerprint).

        Raises
        ------
        InputError
            No spec of that round is pending.
        """
        self._check_round(round_id)
        path = self.directory / "pending" / f"{round_id}.json"
        if not path.exists():
            known = ", ".join(p.round for p in self.pending()) or "none"
            raise InputError(f"ROUND: no spec of round {round_id!r} is pending approval "
                             f"(pending: {known})")
        obj = json.loads(path.read_text(encoding="utf-8"))
        # The fingerprint is recomputed from the stored spec, so editing the pending file
        # cannot smuggle an approval for different content.
        fingerprint = spec_fingerprint(obj["spec"])
        approved = self.approved()
        approved[fingerprint] = {
            "round": round_id, "by": by or os.environ.get("USER", "unknown"),
            "approved_at": iso(utcnow())}
        self._write(self._approved_file, approved)
        return PendingSpec(round=round_id, fingerprint=fingerprint,
                           received_at=obj.get("received_at", ""), spec=obj["spec"],
                           refusals=obj.get("refusals", {}))


def _str_list(table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: policy.{key} must be a list of non-empty strings, got "
                          f"{value!r}")
    return tuple(value)


@dataclass(frozen=True)
class Policy:
    """A site's policy (see the module docstring for the TOML keys).

    ``None`` for a column list means "any column"; an empty list means "none".
    """

    estimators: tuple[str, ...] = ESTIMATORS
    outcomes: tuple[str, ...] | None = None
    exposures: tuple[str, ...] | None = None
    covariates: tuple[str, ...] | None = None
    max_analyses: int = 50
    require_approval: bool = False
    approvals: Path | None = None
    allow_small_cell_likelihood: bool = False
    allow_unadjusted_likelihood: bool = False

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], *, where: str = "policy",
                     base: Path | None = None) -> Policy:
        """Validate a ``[policy]`` table; errors name the key and the value."""
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: [policy] must be a table, got {table!r}")
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key policy.{unknown[0]} (known: "
                              f"{', '.join(sorted(_KEYS))})")
        estimators = _str_list(table, "estimators", where)
        if estimators is not None:
            bad = [e for e in estimators if e not in ESTIMATORS]
            if bad:
                raise ConfigError(f"{where}: policy.estimators: unknown estimator {bad[0]!r} "
                                  f"(one of {', '.join(ESTIMATORS)})")
        max_analyses = table.get("max_analyses", 50)
        if isinstance(max_analyses, bool) or not isinstance(max_analyses, int) \
                or max_analyses < 1:
            raise ConfigError(f"{where}: policy.max_analyses must be an integer >= 1, got "
                              f"{max_analyses!r}")
        require = table.get("require_approval", False)
        if not isinstance(require, bool):
            raise ConfigError(f"{where}: policy.require_approval must be true or false, got "
                              f"{require!r}")
        flags = {}
        for key in ("allow_small_cell_likelihood", "allow_unadjusted_likelihood"):
            flags[key] = table.get(key, False)
            if not isinstance(flags[key], bool):
                raise ConfigError(f"{where}: policy.{key} must be true or false, got "
                                  f"{flags[key]!r}")
        approvals = table.get("approvals")
        if approvals is not None and (not isinstance(approvals, str) or not approvals):
            raise ConfigError(f"{where}: policy.approvals must be a directory path, got "
                              f"{approvals!r}")
        base = base or Path.cwd()
        approvals_dir = (base / approvals) if approvals else (base / "approvals")
        return cls(estimators=estimators if estimators is not None else ESTIMATORS,
                   outcomes=_str_list(table, "outcomes", where),
                   exposures=_str_list(table, "exposures", where),
                   covariates=_str_list(table, "covariates", where),
                   max_analyses=max_analyses, require_approval=require,
                   approvals=approvals_dir, **flags)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a policy file, or the ``[policy]`` table of a site.toml.

        A site.toml without ``[policy]`` gives the permissive default policy (every
        estimator and column, no approval), with approvals kept next to the file.
        """
        path = Path(path)
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"policy file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"policy file {str(path)!r} is not valid TOML: {error}") from None
        if isinstance(data.get("policy"), str):
            # site.toml may point at a policy file of its own: policy = "policy.toml"
            return cls.load(path.resolve().parent / data["policy"])
        if "policy" in data:
            table = data["policy"]
        elif set(data) <= _KEYS:
            table = data
        else:
            table = {}          # a site.toml without a [policy] table
        return cls.from_mapping(table, where=str(path), base=path.resolve().parent)

    def store(self) -> ApprovalStore:
        """The :class:`ApprovalStore` of this policy."""
        return ApprovalStore(self.approvals or Path("approvals"))

    def review(self, spec: Any, *, approved: bool | None = None) -> PolicyDecision:
        """Decide, per analysis, what the policy permits, and whether approval is needed.

        Parameters
        ----------
        spec
            The round's spec (``fedsynth.spec.Spec`` or its dict form).
        approved
            Whether the spec is approved; by default looked up in :meth:`store`.
        """
        # lazy: keeps pandas and scipy out of `fedsynth site pending/approve` start-up
        from fedsynth.effects.results import render_reason

        fingerprint = spec_fingerprint(spec)
        refusals: dict[str, str] = {}
        sentences: dict[str, dict[str, Any]] = {}
        allowed: list[str] = []
        for index, analysis in enumerate(_analyses(spec)):
            name = str(analysis.get("name", f"#{index + 1}"))
            sentence = self._refusal(analysis)
            if sentence is None and len(allowed) >= self.max_analyses:
                sentence = {"key": "policy_max_analyses", "max_analyses": self.max_analyses}
            if sentence is None:
                allowed.append(name)
            else:
                # A sentence of the fixed vocabulary, naming only the spec's own words.
                params = {k: v for k, v in sentence.items() if k != "key"}
                refusals[name] = render_reason(sentence["key"], params)[1]
                sentences[name] = sentence
        for model in _models(spec):
            # a model uses its columns as an outcome and covariates (the offset too), and
            # counts towards max_analyses like an analysis (issue 13)
            name = str(model.get("name", "model"))
            sentence = self._model_refusal(model)
            if sentence is None and len(allowed) >= self.max_analyses:
                sentence = {"key": "policy_max_analyses", "max_analyses": self.max_analyses}
            if sentence is None:
                allowed.append(name)
            else:
                params = {k: v for k, v in sentence.items() if k != "key"}
                refusals[name] = render_reason(sentence["key"], params)[1]
                sentences[name] = sentence
        if approved is None:
            approved = (not self.require_approval) or self.store().is_approved(fingerprint)
        needs = self.require_approval and not approved
        return PolicyDecision(fingerprint=fingerprint, refusals=refusals, needs_approval=needs,
                              allowed=tuple(allowed), sentences=sentences)

    def _model_refusal(self, model: Mapping[str, Any]) -> dict[str, Any] | None:
        """The vocabulary sentence refusing a ``[[model]]``, if the policy forbids a column."""
        roles: list[tuple[str, Sequence[str] | None, list[str]]] = [
            ("an outcome", self.outcomes, [str(model["outcome"])] if model.get("outcome")
             else []),
            ("a covariate", self.covariates,
             [str(c) for c in model.get("covariates") or []]
             + ([str(model["offset"])] if model.get("offset") else []))]
        for role, permitted, used in roles:
            if permitted is None:
                continue
            for column in used:
                if column not in permitted:
                    return {"key": "policy_column", "column": column, "role": role}
        return None

    def _refusal(self, analysis: Mapping[str, Any]) -> dict[str, Any] | None:
        """The vocabulary sentence (``{"key", params...}``) refusing ``analysis``, if any."""
        estimator = analysis.get("estimator")
        if estimator not in self.estimators:
            return {"key": "policy_estimator", "estimator": estimator}
        roles: list[tuple[str, Sequence[str] | None, list[str]]] = [
            ("an outcome", self.outcomes,
             [str(analysis[k]) for k in ("outcome", "time", "event") if analysis.get(k)]),
            ("an exposure", self.exposures, [analysis["exposure"]] if analysis.get("exposure")
             else []),
            ("a covariate", self.covariates,
             list(analysis.get("covariates") or []) + ([analysis["score"]]
                                                       if analysis.get("score") else [])),
        ]
        for role, permitted, used in roles:
            if permitted is None:
                continue
            for column in used:
                if column not in permitted:
                    return {"key": "policy_column", "column": column, "role": role}
        return None



def site_policy(site_config: Any) -> Policy:
    """The policy a site.toml names (``policy = "policy.toml"``), or the default policy.

    Parameters
    ----------
    site_config
        A :class:`fedsynth.config.SiteConfig` or the path of site.toml.

    Without a ``policy`` key the default is permissive (every estimator and column, no
    approval), with approvals kept in ``approvals/`` next to site.toml.
    """
    config = _site_config(site_config)
    if config.policy is not None:
        return Policy.load(config.policy)
    base = Path(config.config_path).parent if config.config_path else Path.cwd()
    return Policy(approvals=base / "approvals")


def site_audit_log(site_config: Any):
    """The site's audit log: ``audit_log`` of site.toml, default ``<name>-audit.jsonl`` next to it.

    The agent records there every submission it sent (content and digest), every refusal
    and every policy decision; ``fedsynth site approve`` records approvals in the same chain.
    """
    config = _site_config(site_config)
    if config.audit_log is not None:
        return AuditLog(config.audit_log)
    base = Path(config.config_path).parent if config.config_path else Path.cwd()
    return AuditLog(base / f"{config.name}-audit.jsonl")


def _site_config(site_config: Any):
    if isinstance(site_config, (str, Path)):
        return load_site_config(site_config)
    return site_config


def review_round(policy: Policy, round_id: str, spec: Any, audit: Any = None) -> PolicyDecision:
    """The agent's policy step for one round: review, remember a pending spec, audit.

    Call it before computing anything. When ``decision.needs_approval`` the agent must
    skip the round for now (the spec is listed by ``fedsynth site pending``) and look again
    on its next poll; otherwise compute and pass the results through
    :func:`apply_decision`. Each decision is written to ``audit`` (an
    :class:`fedsynth.audit.AuditLog`) once per round and state, not once per poll.
    """
    decision = policy.review(spec)
    store = policy.store()
    if decision.needs_approval:
        fresh = not (store.directory / "pending" / f"{round_id}.json").exists()
        # Audited before the pending file is written: if the append fails (and raises),
        # the spec is not listed yet and the next poll tries both again.
        if fresh and audit is not None:
            audit.append("policy.pending", {"round": round_id, **decision.to_dict()})
        store.record_pending(round_id, spec, decision.refusals)
    elif audit is not None:
        audit.append("policy.decision", {"round": round_id, **decision.to_dict()})
    return decision


def apply_decision(results: Mapping[str, Any], decision: PolicyDecision) -> dict[str, Any]:
    """Replace the results of analyses the policy forbids by refusals (code ``policy``).

    Estimators should not even run for those analyses when avoidable; this guarantees that
    nothing computed for them is sent in any case.
    """
    return {name: (decision.refusal(name) if name in decision.refusals else result)
            for name, result in results.items()}
