"""Round lifecycle: open a round, decide when it closes, pool it, build its document.

Why
---
A round is open until every allowed site has answered or its deadline passes (whichever
comes first); then it is *pooled* if at least ``quorum`` sites submitted, else *failed*
with a plain reason. Every analysis is pooled through the batch engine
(:func:`coordinator.synthesis.analysis.analyse`: the pooled fit with metafor's
definitions, the diagnostics and the heterogeneity flag of DESIGN.md) over the sites that
sent an estimate; sites that refused are listed with their reasons, so the report shows
who is missing from each number.

Pooling is a pure function of the stored submissions (:func:`pool_round`), so a coordinator
that crashed mid-close recomputes the same document after restart, and the store's
conditional close (:meth:`coordinator.store.Store.close_round`) keeps only one of them.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from dataclasses import dataclass
from typing import Any

from fedsynth.errors import InputError
from coordinator.store import RoundRecord, Store, SubmissionRecord, iso

__all__ = ["RoundOutcome", "open_round", "round_document", "is_due", "pool_round",
           "close_if_due", "jsonable"]

log = logging.getLogger(__name__)


def jsonable(value: Any) -> Any:
    """Deep copy with NaN/inf replaced by None, tuples by lists, numpy scalars by floats."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    if kind == "b":                      # numpy bool: must stay a JSON boolean
        return bool(value)
    if kind in ("i", "u"):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def open_round(store: Store, *, spec_source: str, deadline: _dt.timedelta,
               quorum: int | None, allowed: tuple[str, ...], pooling: dict[str, Any],
               now: _dt.datetime, source: str | None = None) -> RoundRecord:
    """Validate the spec (TOML text) and the terms, then open a round in the store."""
    from fedsynth.spec import parse_spec

    spec = parse_spec(spec_source)
    if not allowed:
        raise InputError("sites.allow is empty: a round needs at least one allowed site")
    if quorum is None:
        quorum = len(allowed)
    if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
        raise InputError(f"quorum = {quorum!r} must be a positive integer")
    if quorum > len(allowed):
        raise InputError(f"quorum = {quorum} exceeds the {len(allowed)} allowed sites "
                         f"({', '.join(allowed)})")
    if deadline.total_seconds() <= 0:
        raise InputError(f"deadline = {deadline} must be positive")
    return store.create_round(spec_toml=spec.to_toml(), spec=spec.to_dict(),
                              deadline=now + deadline, quorum=quorum, allowed=allowed,
                              pooling=pooling, now=now, source=source)


def _sites_section(record: RoundRecord, subs: list[SubmissionRecord]) -> list[dict[str, Any]]:
    by_site = {s.site: s for s in subs}
    out = []
    for site in record.allowed:
        sub = by_site.get(site)
        if sub is None:
            out.append({"site": site, "status": "missing", "submitted_at": None,
                        "refusals": {}})
        else:
            refusals = {name: r["refused"] for name, r in sub.results.items()
                        if "refused" in r}
            out.append({"site": site, "status": "submitted", "submitted_at": sub.received_at,
                        "refusals": refusals})
    return out


def round_document(store: Store, record: RoundRecord) -> dict[str, Any]:
    """The round document (docs/round-document.md) of a stored round.

    A closed round's document is the one stored at its close; an open round's shows who
    has answered so far and no analyses.
    """
    if record.document is not None:
        return record.document
    subs = store.submissions(record.id)
    return {"round": record.id, "status": record.status, "spec": record.spec,
            "opened_at": iso(record.opened_at), "deadline": iso(record.deadline),
            "closed_at": iso(record.closed_at), "quorum": record.quorum,
            "failure_reason": record.failure_reason, "pooling": record.pooling,
            "sites": _sites_section(record, subs), "analyses": []}


def is_due(record: RoundRecord, n_submitted: int, now: _dt.datetime) -> bool:
    """A round closes when every allowed site answered or its deadline has passed."""
    return record.is_open and (n_submitted >= len(record.allowed) or now > record.deadline)


def _analysis_entry(analysis: dict[str, Any], subs: list[SubmissionRecord],
                    pooling: dict[str, Any]) -> dict[str, Any]:
    from coordinator.synthesis.analysis import analyse

    name = analysis["name"]
    estimates, refused = [], {}
    for sub in subs:
        result = sub.results.get(name)
        if result is None:
            refused[sub.site] = "the site's submission has no answer for this analysis"
        elif "refused" in result:
            refused[sub.site] = result["refused"]
        else:
            estimates.append({"site": sub.site, "yi": result["yi"], "vi": result["vi"],
                              "se": result["se"], "n": result["n"]})
    method = pooling.get("method", "REML")
    test = pooling.get("test", "z")
    entry: dict[str, Any] = {"analysis": name, "estimator": analysis.get("estimator"),
                             "measure": analysis.get("measure"), "k": len(estimates),
                             "method": method, "test": test}
    if not estimates:
        entry["heterogeneity"] = {"flagged": False, "level": None, "reasons": [], "sites": []}
        entry["notes"] = ["no site sent an estimate for this analysis; nothing was pooled"]
    else:
        try:
            result = analyse([e["yi"] for e in estimates], [e["vi"] for e in estimates],
                             labels=[e["site"] for e in estimates], method=method, test=test,
                             level=float(pooling.get("level", 95.0)),
                             i2_threshold=float(pooling.get("i2_threshold", 50.0)))
            pooled = result.to_dict()
            pooled.pop("analysis", None)
            pooled.pop("k", None)
            entry.update(pooled)
        except Exception as error:  # noqa: BLE001 - one bad analysis must not sink the round
            log.exception("pooling of analysis %s failed", name)
            entry["heterogeneity"] = {"flagged": False, "level": None, "reasons": [],
                                      "sites": []}
            entry["notes"] = [f"pooling failed: {error}"]
    entry["site_estimates"] = estimates
    entry["refused"] = refused
    return entry


@dataclass(frozen=True)
class RoundOutcome:
    """The result of closing a round: its status, document and failure reason."""

    status: str
    document: dict[str, Any]
    failure_reason: str | None
    n_submissions: int


def pool_round(record: RoundRecord, subs: list[SubmissionRecord],
               now: _dt.datetime) -> RoundOutcome:
    """Pool every analysis of the round (pure: no store access)."""
    submitted = [s.site for s in subs]
    missing = [s for s in record.allowed if s not in submitted]
    sites = _sites_section(record, subs)
    if len(subs) >= record.quorum:
        status, reason = "pooled", None
        analyses = [_analysis_entry(a, subs, record.pooling)
                    for a in record.spec.get("analyses", [])]
    else:
        status = "failed"
        reason = (f"only {len(subs)} of {len(record.allowed)} sites submitted before the "
                  f"deadline {iso(record.deadline)}, fewer than the quorum of "
                  f"{record.quorum}; missing: {', '.join(missing) or 'none'}")
        analyses = []
    document = {"round": record.id, "status": status, "spec": record.spec,
                "opened_at": iso(record.opened_at), "deadline": iso(record.deadline),
                "closed_at": iso(now), "quorum": record.quorum, "failure_reason": reason,
                "pooling": record.pooling, "sites": sites, "missing_sites": missing,
                "analyses": analyses}
    return RoundOutcome(status, jsonable(document), reason, len(subs))


def close_if_due(store: Store, round_id: str, now: _dt.datetime) -> RoundOutcome | None:
    """Close ``round_id`` if it is due; return the outcome if *this call* closed it.

    Retries when a submission arrived between reading and closing (the store's optimistic
    check); returns None when the round is not due or someone else closed it.
    """
    for _attempt in range(10):
        record = store.get_round(round_id)
        if not record.is_open:
            return None
        subs = store.submissions(round_id)
        if not is_due(record, len(subs), now):
            return None
        outcome = pool_round(record, subs, now)
        if store.close_round(round_id, status=outcome.status, document=outcome.document,
                             failure_reason=outcome.failure_reason,
                             seen_submissions=len(subs), now=now):
            return outcome
    return None
