"""Round lifecycle: open a round, decide when it closes, pool it, build its document.

Why
---
A round is open until every allowed site has answered or its deadline passes (whichever
comes first); then it is *pooled* if at least ``quorum`` sites submitted, else *failed*
with a plain reason. All analyses are pooled in one call of the batch engine
(:func:`fedsynth.meta.pool`, metafor's definitions) over the sites that sent an
estimate, and each gets the heterogeneity flag of DESIGN.md
(:func:`fedsynth.meta.analysis.analyse` with ``pooled=``); sites that refused are
listed with their reasons, so the report shows who is missing from each number.

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
from fedsynth.jsonsafe import finite_or_none
from coordinator.store import RoundRecord, Store, SubmissionRecord, iso

__all__ = ["RoundOutcome", "open_round", "round_document", "is_due", "pool_analyses",
           "pool_round", "close_if_due"]

log = logging.getLogger(__name__)


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


def _json_flag(flag: dict[str, Any]) -> dict[str, Any]:
    """The flag's dict with its per-driver numbers made JSON-ready.

    ``HeterogeneityFlag.to_dict`` already maps NaN to None for its own numbers; the driver
    entries carry raw floats, which may be NaN (e.g. no deleted fit), so only those are
    converted here instead of walking the whole document.
    """
    drivers = flag.get("drivers")
    if drivers:
        flag["drivers"] = [{key: (finite_or_none(value) if key in _DRIVER_NUMBERS else value)
                            for key, value in driver.items()} for driver in drivers]
    return flag


_DRIVER_NUMBERS = frozenset({"rstudent", "blup", "blup_pi_lb", "blup_pi_ub"})

_NO_FLAG: dict[str, Any] = {"flagged": False, "level": None, "reasons": [], "sites": []}


@dataclass(frozen=True)
class _Column:
    """One analysis' inputs gathered from the submissions (JSON-ready already)."""

    name: str
    estimates: list[dict[str, Any]]
    refused: dict[str, str]
    cells: dict[int, tuple[float, float]]        # column of the site -> (yi, vi)


def _gather(name: str, subs: list[SubmissionRecord]) -> _Column:
    estimates: list[dict[str, Any]] = []
    refused: dict[str, str] = {}
    cells: dict[int, tuple[float, float]] = {}
    for j, sub in enumerate(subs):
        result = sub.results.get(name)
        if result is None:
            refused[sub.site] = "the site's submission has no answer for this analysis"
        elif "refused" in result:
            refused[sub.site] = str(result["refused"])
        else:
            n = result["n"]
            estimates.append({"site": sub.site, "yi": finite_or_none(result["yi"]),
                              "vi": finite_or_none(result["vi"]), "se": finite_or_none(result["se"]),
                              "n": int(n) if isinstance(n, (int, float)) and
                              math.isfinite(n) else None})
            y, v = estimates[-1]["yi"], estimates[-1]["vi"]
            # a non-finite value keeps its cell out of the batch (pooled alone, with a note)
            cells[j] = (math.nan if y is None else y, math.nan if v is None else v)
    return _Column(name, estimates, refused, cells)


def _entry_head(analysis: dict[str, Any], column: _Column,
                pooling: dict[str, Any]) -> dict[str, Any]:
    return {"analysis": column.name, "estimator": analysis.get("estimator"),
            "measure": analysis.get("measure"), "k": len(column.estimates),
            "method": pooling.get("method", "REML"), "test": pooling.get("test", "z")}


def _finish(entry: dict[str, Any], column: _Column) -> dict[str, Any]:
    entry["site_estimates"] = column.estimates
    entry["refused"] = column.refused
    return entry


def _settings(pooling: dict[str, Any]) -> dict[str, Any]:
    return {"method": pooling.get("method", "REML"), "test": pooling.get("test", "z"),
            "level": float(pooling.get("level", 95.0)),
            "i2_threshold": float(pooling.get("i2_threshold", 50.0))}


def _analysis_entry(analysis: dict[str, Any], column: _Column,
                    pooling: dict[str, Any]) -> dict[str, Any]:
    """One analysis pooled on its own: the fallback when the batch call fails.

    A batch of all analyses fails as a whole on one bad value (``pool`` validates every
    cell), so the analyses are then pooled one by one and only the bad one carries the
    error as a note; one bad analysis must not sink the round.
    """
    from fedsynth.meta.analysis import analyse

    entry = _entry_head(analysis, column, pooling)
    if not column.estimates:
        entry["heterogeneity"] = dict(_NO_FLAG)
        entry["notes"] = ["no site sent an estimate for this analysis; nothing was pooled"]
        return _finish(entry, column)
    s = _settings(pooling)
    try:
        result = analyse([c[0] for c in column.cells.values()],
                         [c[1] for c in column.cells.values()],
                         labels=[e["site"] for e in column.estimates], method=s["method"],
                         test=s["test"], level=s["level"], i2_threshold=s["i2_threshold"],
                         diagnostics=False)
        pooled = result.pooling.to_dict()
        pooled.pop("k", None)
        entry.update(pooled)
        entry["heterogeneity"] = _json_flag(result.heterogeneity.to_dict())
        if result.notes:
            entry["notes"] = list(result.notes)
    except Exception as error:  # noqa: BLE001 - one bad analysis must not sink the round
        log.exception("pooling of analysis %s failed", column.name)
        entry["heterogeneity"] = dict(_NO_FLAG)
        entry["notes"] = [f"pooling failed: {error}"]
    return _finish(entry, column)


def pool_analyses(analyses: list[dict[str, Any]], subs: list[SubmissionRecord],
                  pooling: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``analyses`` section of a pooled round: every analysis in ONE batch call.

    All analyses of the round are laid out as a sites x analyses grid with a mask of the
    cells a site answered (refusals and missing answers are outside the mask), pooled by a
    single vectorised :func:`fedsynth.meta.pool` call, and each row is handed to
    :func:`fedsynth.meta.analysis.analyse` as ``pooled=`` so only the
    heterogeneity flag is computed per analysis (its site drivers need the influence
    diagnostics and BLUPs of DESIGN.md's rule). The case diagnostics and small-study tests
    (leave-one-out, influence table, BLUPs, Egger, Begg, trim-and-fill) are not part of the
    round document: the report does not show them, and they are reproducible on demand
    from ``site_estimates`` (``fedsynth meta --diagnostics``); see
    docs/decisions/federation.md ("Closing a round").

    Every value is built JSON-ready (``PoolingResult``/``BatchPoolingResult`` dicts map
    NaN to None, site estimates are converted as they are gathered), so the document needs
    no recursive conversion afterwards.
    """
    import numpy as np

    from fedsynth.meta import pool
    from fedsynth.meta.analysis import analyse

    columns = [_gather(a["name"], subs) for a in analyses]
    s = _settings(pooling)
    rows = [i for i, c in enumerate(columns)
            if c.cells and all(math.isfinite(y) and math.isfinite(v) and v > 0
                               for y, v in c.cells.values())]
    entries: dict[int, dict[str, Any]] = {}
    if rows:
        K = len(subs)
        yi = np.zeros((len(rows), K))
        vi = np.ones((len(rows), K))
        mask = np.zeros((len(rows), K), dtype=bool)
        for r, i in enumerate(rows):
            for j, (y, v) in columns[i].cells.items():
                yi[r, j], vi[r, j], mask[r, j] = y, v, True
        labels = np.broadcast_to(np.array([sub.site for sub in subs], dtype=object),
                                 (len(rows), K))
        try:
            batch = pool(yi, vi, mask=mask, method=s["method"], test=s["test"],
                         level=s["level"], names=[columns[i].name for i in rows],
                         labels=labels)
            dicts = batch.to_dicts()
            for r, i in enumerate(rows):
                column = columns[i]
                entry = _entry_head(analyses[i], column, pooling)
                try:
                    one = batch[r]
                    result = analyse(one.yi, one.vi, labels=one.labels, method=s["method"],
                                     test=s["test"], level=s["level"],
                                     i2_threshold=s["i2_threshold"], diagnostics=False,
                                     pooled=one)
                except Exception:  # noqa: BLE001 - pooled alone below, error as a note
                    log.exception("flag of analysis %s failed in the batch", column.name)
                    continue
                pooled = dicts[r]
                pooled.pop("k", None)
                entry.update(pooled)
                entry["heterogeneity"] = _json_flag(result.heterogeneity.to_dict())
                notes = list(result.notes)
                if batch.messages[r]:
                    notes.append(str(batch.messages[r]))
                if notes:
                    entry["notes"] = notes
                entries[i] = _finish(entry, column)
        except Exception:  # noqa: BLE001 - fall back to one analysis at a time
            log.exception("batch pooling of %d analyses failed; pooling one by one",
                          len(rows))
    return [entries[i] if i in entries else _analysis_entry(a, columns[i], pooling)
            for i, a in enumerate(analyses)]


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
        analyses = pool_analyses(list(record.spec.get("analyses", [])), subs,
                                 record.pooling)
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
    # every part is JSON-ready as built (spec, pooling and sites come from JSON in the
    # store; the analyses from pool_analyses), so no recursive copy is made here
    return RoundOutcome(status, document, reason, len(subs))


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
