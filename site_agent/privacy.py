"""Disclosure control at the site: what may leave, checked before anything is sent.

Why
---
A site sends effect estimates, never rows; but a summary statistic can still disclose a
patient. Several routes matter and each has a rule here (statistical disclosure control as
in Hundepool et al., *Statistical Disclosure Control*, Wiley 2012, ch. 5 "threshold rule"
and ch. 4.5 "disclosure by differencing"; for meta-analysis of 2×2 tables see also
Kim et al., "Privacy-preserving federated meta-analysis", and the DataSHIELD disclosure
settings ``nfilter.tab`` / ``nfilter.subset``, Gaye et al., *Int J Epidemiol* 43(6), 2014):

1. **Threshold rule.** Every count behind a count-based estimate (the cells of a 2×2 table,
   events and non-events, cases and controls, group sizes: the estimator reports them in
   ``Estimate.cells``; they are never sent) must be at least ``min_cell_count`` (default 5),
   and every analysis must rest on at least ``min_n`` patients (default 20).

2. **Reconstruction through sibling estimates.** Estimates sent together can identify a
   table even when none of them is a count. From a 2×2 table (a, b, c, d) the coordinator
   receives, per measure, ``yi`` and ``vi`` and ``n``:

   * log OR with ``vi = 1/a + 1/b + 1/c + 1/d``, log RR with ``vi = 1/a - 1/n1 + 1/c -
     1/n2``, and RD with ``vi = p1(1-p1)/n1 + p2(1-p2)/n2``; any two of these with ``n``
     give at least five equations in four unknown integers, so the table is identified
     (often even one measure with its variance and ``n`` suffices, by integer search);
   * an *unadjusted* logistic regression of the same outcome on the same exposure is the
     log OR again, a linear model on a 0/1 outcome is the RD, a two-group mean difference
     of a 0/1 outcome is the RD, ``log(O/E)`` with ``vi = (1 - O/N)/O`` gives
     ``O = 1/(vi + 1/N)`` exactly.

   So the rule cannot be "suppress the count-based estimate": once a table built from two
   columns (an outcome and an exposure, or an outcome and a score) has a small cell,
   *every* estimate that uses those two columns, in either role (crude or adjusted, any
   estimator), is suppressed; when the small count is a margin of one column alone (few
   events, a small exposure group, a rare score level), every estimate that uses that
   column in a table role is suppressed. Conversely, when every cell is at least
   ``min_cell_count``, releasing several measures of the same table is allowed: the table
   they identify contains no small cell, which is exactly what the threshold rule permits.

3. **Differencing.** Two analyses over nearly the same patients (e.g. one dropping two rows
   with a missing covariate) let the coordinator subtract one from the other and learn
   about the few patients in the difference (for two crude 2×2 tables: their exact
   outcomes). Released analyses must therefore have equal ``n`` or ``n`` differing by at
   least ``min_cell_count``; otherwise the analysis on fewer patients is suppressed.

4. **Implied tables.** Every estimator is judged by the tables its released numbers
   imply, whatever its name. A mean difference (``two_group``) or a linear model of a 0/1
   outcome is the risk difference, and ``yi``, ``vi`` and ``n`` then identify the 2×2
   table by integer search (a Cox model of a 0/1 event carries the event × exposure table
   likewise). The AUC of a 0/1 score (the exposure, sex) with its DeLong variance and
   ``n`` identifies the score × outcome 2×2 table, a 3-level score's AUC its 2×3 table
   (``tests/integration/test_reconstruction_attack.py`` runs that search), and a Brier
   score, calibration slope or intercept or O/E ratio of a few-valued score is likewise a
   function of that table (O/E's expected count even gives the number of patients at each
   score value). So a column with at most
   :data:`~fedsynth.effects.patient_level.CATEGORICAL_LEVELS` distinct values is a
   categorical variable: the estimators report, in ``Estimate.cells`` (never sent), the
   exposure × outcome table behind every estimate of a 0/1 outcome, the smallest cell
   (``table_min``) of a score's or a few-valued outcome's table with the other column,
   and its smallest level (``score_level_min``, ``outcome_level_min``), whatever the data
   source: the DataFrame estimators (:mod:`fedsynth.effects.patient_level`) count them on
   the rows; every other engine (a database through
   :mod:`site_agent.connectors.engine`, Spark, a Parquet folder scanned in batches)
   computes every estimator, regressions and Cox included, as sums inside the engine, and
   the one finishing step (:mod:`fedsynth.effects.chunked`) reports the same cells from
   the engine's one-pass counts and its level × 0/1 count tables (``level_counts``: at
   most 21 rows of counts, never values). Only an analysis scored by a model artifact, a
   released likelihood and a model step fetch a SQL source's rows, and only their columns
   (``SqlSource.fetch_columns``); they run the DataFrame code, which counts the cells on
   those rows. :func:`guard` needs no data frame for this rule: it checks
   the cells like any others (rules 1 and 2), so a CSV file and a database with the same
   rows are suppressed identically. What each estimator's numbers determine is written
   down in ``docs/decisions/security.md``.

5. **Differencing across rounds.** The same analysis a month later on data that grew by
   two patients is the same attack as rule 3 spread over time. :class:`ReleaseHistory`
   remembers the ``n`` of every release (keyed by analysis definition, for the record);
   ``guard(..., history=...)`` suppresses a release whose ``n`` differs from any earlier
   release by fewer than ``min_cell_count``, whatever its definition, as rule 3 does within
   a round (equal ``n``, the same data again, is allowed).

6. **Refusals that reveal a count.** "No events", "the exposure takes a single value",
   "the exposure perfectly predicts the outcome in one group" tell the coordinator that a
   count is 0 even when the table itself is suppressed. The estimators attach the counts
   behind a refusal (``Refusal.cells``, ``Refusal.n``; never sent), and :func:`guard`
   rewords a refusal whose cause is a count below the limit as a disclosure-control
   suppression; its cells also suppress their table's siblings (rule 2).

7. **Released likelihoods** (``release = "likelihood"``, :mod:`site_agent.likelihood`).
   The profile likelihood of a 2x2 table determines the table, so does any likelihood of a
   model without covariates, and a monotone likelihood reveals a zero cell
   (docs/decisions/rare-events.md). So rule 1 is
   :func:`fedsynth.effects.likelihood.check_release`: by default a likelihood leaves only
   for an adjusted model (covariates) whose exposure x outcome cells all pass
   ``min_cell_count``; the site's policy may explicitly allow likelihoods of unadjusted
   models (``allow_unadjusted_likelihood``: still only when every cell passes) and
   adjusted likelihoods despite a small cell (``allow_small_cell_likelihood``: how a site
   with no events in one arm contributes). A likelihood released under that permission is
   not suppressed again as a sibling of its own small table (rule 2: the operator accepted
   what it reveals), but its small cells still suppress the site's other estimates on those
   columns, and rules 3 and 5 (``n``) apply to it as to an estimate.

A suppressed analysis becomes a :class:`~fedsynth.effects.Refusal` whose reason names
the rule and the configured limit, never a count, so the refusal itself discloses nothing
beyond "some count is below the limit". Every refusal that leaves the site is a sentence
of the fixed vocabulary (:data:`fedsynth.effects.results.REFUSAL_VOCABULARY`), rendered
by :func:`release` with the spec's column names only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsynth.audit import digest
from fedsynth.effects.likelihood import check_release
from fedsynth.errors import InputError
from fedsynth.fileio import atomic_write, read_json_object

__all__ = ["PrivacyLimits", "ReleaseHistory", "guard", "release", "REFUSAL_CODES"]

#: Machine codes of the refusals :func:`guard` produces.
REFUSAL_CODES = ("disclosure_min_n", "disclosure_min_cell", "disclosure_linked_table",
                 "disclosure_differencing")
#: Vocabulary key of each refusal of :func:`fedsynth.effects.likelihood.check_release`.
_LIKELIHOOD_REFUSALS = {"unadjusted_likelihood": "likelihood_unadjusted",
                        "disclosure_limit": "disclosure_likelihood"}


@dataclass(frozen=True)
class PrivacyLimits:
    """The site's disclosure limits (``[privacy]`` of site.toml).

    Attributes
    ----------
    min_cell_count
        Smallest count allowed behind a count-based estimate (threshold rule). Default 5.
    min_n
        Smallest number of patients an analysis may rest on. Default 20.
    """

    min_cell_count: int = 5
    min_n: int = 20

    def __post_init__(self) -> None:
        for name in ("min_cell_count", "min_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"privacy.{name} must be an integer >= 1, got {value!r}")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any] | None) -> PrivacyLimits:
        """Build from the ``[privacy]`` table of site.toml; unknown keys are an error."""
        table = dict(table or {})
        unknown = sorted(set(table) - {"min_cell_count", "min_n"})
        if unknown:
            raise InputError(f"privacy: unknown key {unknown[0]!r} (known: min_cell_count, "
                             "min_n)")
        return cls(**table)


def _refusal(key: str, analysis: str, limits: PrivacyLimits, original: Any = None):
    """A disclosure-control refusal (sentence ``key`` of the fixed vocabulary).

    The counts of ``original`` (the estimate or refusal it replaces) stay with it, at the
    site, so that guarding the result again decides the same; an original refusal's own
    sentence is kept as local detail for the site's log.
    """
    # Imported here: the result types belong to the estimators package.
    # lazy: keeps pandas and scipy out of `fedsynth site pending/approve` start-up
    from fedsynth.effects.results import Refusal

    detail = None
    if original is not None and _is_refusal(original):
        detail = "; ".join(t for t in (f"{getattr(original, 'code', 'refused')}: "
                                       f"{getattr(original, 'reason', '')}",
                                       getattr(original, "detail", None)) if t)
    return Refusal.of(key, analysis, min_cell_count=limits.min_cell_count,
                      min_n=limits.min_n, detail=detail,
                      cells=dict(getattr(original, "cells", None) or {}),
                      n=getattr(original, "n", None),
                      details=dict(getattr(original, "details", None) or {}))


def _is_refusal(result: Any) -> bool:
    return not hasattr(result, "yi") and not _is_likelihood(result)


def _is_likelihood(result: Any) -> bool:
    """A released likelihood (:class:`site_agent.likelihood.LikelihoodRelease`)."""
    return isinstance(getattr(result, "likelihood", None), Mapping)


def _columns(name: str, result: Any, spec: Any) -> tuple[str | None, str | None, bool]:
    """(outcome, exposure, known) of an analysis, from the spec or the estimate's details.

    The outcome slot holds the outcome, or the event of a time-to-event analysis; the
    exposure slot holds the exposure, or the score of a model-evaluation analysis (a score
    with few values is a grouping like an exposure: its table with the outcome is what the
    estimate may reveal). ``known`` is False when neither the spec nor the details say
    which columns the analysis used; such an analysis is then treated as possibly using
    every column (the conservative choice).
    """
    analysis = _analysis_of(name, spec) if spec is not None else None
    sources: list[Any] = [analysis] if analysis is not None else []
    details = getattr(result, "details", None)
    if isinstance(details, Mapping):
        sources.append(details)

    def pick(key: str) -> str | None:
        for source in sources:
            value = source.get(key) if isinstance(source, Mapping) else getattr(source, key,
                                                                                None)
            if value:
                return str(value)
        return None

    outcome = pick("outcome") or pick("event")
    exposure = pick("exposure") or pick("score")
    return outcome, exposure, bool(sources) and outcome is not None


def _small_cells(cells: Mapping[str, Any] | None, limit: int) -> list[str]:
    if not cells:
        return []
    return [key for key, count in cells.items() if count is not None and int(count) < limit]


# Cells that are margins of one column alone. When one of these is small, every estimate
# using that column (in a table role: outcome or event, exposure or score) is affected,
# whatever the other column of its table. Any other cell belongs to the table of the
# analysis's outcome with its exposure (or score).
_OUTCOME_MARGINS = frozenset({"events", "non_events", "nonevents", "cases", "controls",
                              "observed", "o", "positives", "negatives",
                              "outcome_level_min"})
_EXPOSURE_MARGINS = frozenset({"n_exposed", "n_unexposed", "score_level_min"})


@dataclass(frozen=True)
class _Taint:
    """A table or a margin with a count below the limit.

    A table (two columns) or a margin (one column) with a count below the limit;
    ``columns`` is None when the analysis's columns are unknown (it then taints all).
    """

    columns: frozenset[str] | None
    margin: bool


def _taints(small: list[str], outcome: str | None, exposure: str | None,
            known: bool) -> list[_Taint]:
    if not known:
        return [_Taint(None, False)]
    out = []
    for cell in small:
        name = cell.lower()
        if name in _OUTCOME_MARGINS:
            out.append(_Taint(frozenset({outcome}) if outcome else None, True))
        elif name in _EXPOSURE_MARGINS:
            out.append(_Taint(frozenset({exposure}) if exposure else None, True))
        else:
            pair = frozenset(c for c in (outcome, exposure) if c)
            out.append(_Taint(pair, not exposure))
    return out


def _linked(outcome: str | None, exposure: str | None, known: bool, taint: _Taint) -> bool:
    if not known or taint.columns is None:
        return True                     # cannot tell: assume the same table
    uses = frozenset(c for c in (outcome, exposure) if c)
    if taint.margin:                    # a margin of one column: any table using it
        return bool(taint.columns & uses)
    return taint.columns == uses        # a table: the same two columns, in either role


def _analysis_of(name: str, spec: Any) -> Any:
    for candidate in getattr(spec, "analyses", ()) or ():
        if getattr(candidate, "name", None) == name:
            return candidate
    return None


def _analysis_key(name: str, result: Any, spec: Any) -> str | None:
    """Digest of an analysis's definition without its name.

    Digest of an analysis's definition without its name (what makes two releases "the
    same analysis" across rounds), or None when the spec does not define it.
    """
    analysis = _analysis_of(name, spec)
    if analysis is None:
        return None
    body = dict(analysis.to_dict()) if hasattr(analysis, "to_dict") else {
        k: v for k, v in vars(analysis).items() if not k.startswith("_")}
    body.pop("name", None)
    body.pop("description", None)
    return digest(body)


class ReleaseHistory:
    """Per analysis definition, the ``n`` of every estimate this site has released.

    A small JSON file (``{analysis key: [n, ...]}``) replaced atomically. It holds no data
    beyond what already left the site.

    Parameters
    ----------
    path
        The file; created on the first :meth:`record`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, list[int]]:
        """The history (analysis key -> ``n`` of each release); empty if there is none."""
        data = read_json_object(self.path, "release history")
        return {str(k): [int(n) for n in v] for k, v in data.items()}

    def released(self, key: str) -> list[int]:
        """The ``n`` of earlier releases of the analysis with this key."""
        return self.load().get(key, [])

    def record(self, results: Mapping[str, Any], spec: Any) -> None:
        """Remember the ``n`` of every estimate in ``results`` (call once they are sent)."""
        history = self.load()
        changed = False
        for name, result in results.items():
            if _is_refusal(result):
                continue
            key = _analysis_key(name, result, spec)
            if key is None:
                continue
            ns = history.setdefault(key, [])
            if int(result.n) not in ns:
                ns.append(int(result.n))
                changed = True
        if changed:
            atomic_write(self.path, json.dumps(history, sort_keys=True))


def guard(results: Mapping[str, Any], limits: PrivacyLimits = PrivacyLimits(), *,
          spec: Any = None,
          history: ReleaseHistory | None = None,
          allow_small_cell_likelihood: bool = False,
          allow_unadjusted_likelihood: bool = False) -> dict[str, Any]:
    """Apply the site's disclosure control to the results of one round.

    Parameters
    ----------
    results
        ``{analysis name: Estimate | Refusal}`` as returned by
        :func:`fedsynth.effects.estimate_all`.
    limits
        The site's :class:`PrivacyLimits`.
    spec
        The round's analysis spec (optional but recommended): it says which outcome and
        exposure (or score) each analysis used, so that suppressing one table also
        suppresses only the sibling estimates of the *same* table. Without it (and without
        ``details`` on the estimates), an estimate whose columns are unknown is treated as
        related to every suppressed table.
    history
        The site's :class:`ReleaseHistory` (optional): releases whose ``n`` differs by fewer
        than ``min_cell_count`` from any earlier release are suppressed (rule 5).
        :func:`guard` only reads it; the caller records what it sends with
        :meth:`ReleaseHistory.record`.
    allow_small_cell_likelihood, allow_unadjusted_likelihood
        The site policy's explicit permissions for released likelihoods (rule 7; both
        off by default).

    Returns
    -------
    dict
        Same keys, same order; each value is the untouched estimate or a ``Refusal`` (codes
        in :data:`REFUSAL_CODES`; reasons name the rule and the limit, never a count). A
        refusal of an estimator caused by a count below the limit (no events, an empty
        exposure group, a zero cell behind a separation: its ``cells``, or ``n`` below
        ``min_n``) becomes a disclosure-control refusal too, so its reason does not tell
        the count; other refusals are kept as they are.
    """
    if not isinstance(limits, PrivacyLimits):
        raise InputError(f"limits must be a PrivacyLimits, got {type(limits).__name__}")
    out: dict[str, Any] = dict(results)
    # Tables and margins with a count below the limit, from estimates and refusals alike.
    tainted: list[_Taint] = []
    # Likelihoods released with a small cell under the policy's explicit permission.
    permitted: set[str] = set()
    for name, result in results.items():
        # The estimators' cells include the tables implied by a 0/1 outcome and by a score
        # or outcome with few values (rule 4), and a refusal's counts (rule 6).
        cells = dict(getattr(result, "cells", None) or {})
        small = _small_cells(cells, limits.min_cell_count)
        if small:
            # Record the small table whatever else happens to this result: its siblings
            # on the same columns must go even if it fails min_n first.
            tainted.extend(_taints(small, *_columns(name, result, spec)))
        n = getattr(result, "n", None)
        if _is_refusal(result):
            code = str(getattr(result, "code", ""))
            if code == "policy" or code.startswith("disclosure_"):
                continue
            # Rule 6: a refusal whose cause is a count below the limit says only that
            # disclosure control suppressed the analysis.
            if n is not None and int(n) < limits.min_n:
                out[name] = _refusal("disclosure_min_n", name, limits, result)
            elif small:
                out[name] = _refusal("disclosure_min_cell", name, limits, result)
            continue
        if n is None or int(n) < limits.min_n:
            out[name] = _refusal("disclosure_min_n", name, limits, result)
        elif _is_likelihood(result):
            # Rule 7: the min-cell rule of a released likelihood.
            decision = check_release(
                str(getattr(result, "kind", "two_by_two")), cells,
                min_cell_count=limits.min_cell_count,
                allow_small_cells=allow_small_cell_likelihood,
                allow_unadjusted=allow_unadjusted_likelihood,
                adjusted=bool(getattr(result, "adjusted", False)))
            if not decision.allowed:
                out[name] = _refusal(_LIKELIHOOD_REFUSALS[decision.code], name, limits,
                                     result)
            elif small:
                permitted.add(name)
        elif small:
            out[name] = _refusal("disclosure_min_cell", name, limits, result)
    # Rule 2: siblings of a suppressed table (the same two columns, in either role) and
    # every estimate using a column one of whose margins is small.
    if tainted:
        for name, result in results.items():
            if _is_refusal(out[name]) or name in permitted:
                continue
            roles = _columns(name, result, spec)
            if any(_linked(*roles, taint) for taint in tainted):
                out[name] = _refusal("disclosure_linked_table", name, limits, result)
    # Rule 5: differencing against every earlier round's releases.
    if history is not None:
        released_before = {n for ns in history.load().values() for n in ns}
        for name, result in results.items():
            if _is_refusal(out[name]):
                continue
            n = int(getattr(result, "n"))
            # Any earlier release, whatever its definition: as within a round (rule 3), two
            # analyses over nearly the same patients can be subtracted, and a coordinator
            # could change a definition slightly between rounds to dodge a per-definition
            # check.
            if any(0 < abs(n - old) < limits.min_cell_count for old in released_before):
                out[name] = _refusal("disclosure_differencing_rounds", name, limits, result)
    # Rule 3: differencing between released analyses. Keep the largest n first, then admit
    # an analysis only if its n equals or differs by >= min_cell_count from every kept n.
    released = [(int(getattr(r, "n")), i, name) for i, (name, r) in enumerate(out.items())
                if not _is_refusal(r)]
    kept: list[int] = []
    for n, _, name in sorted(released, key=lambda t: (-t[0], t[1])):
        if all(n == other or abs(n - other) >= limits.min_cell_count for other in kept):
            kept.append(n)
        else:
            out[name] = _refusal("disclosure_differencing", name, limits, out[name])
    return out


def release(results: Mapping[str, Any], spec: Any = None) -> dict[str, Any]:
    """What leaves the site for one round.

    What leaves the site for one round: estimates as they are, every refusal worded
    from the fixed vocabulary.

    The last step before anything is signed (:class:`site_agent.agent.SiteAgent`) and
    what ``fedsynth site estimate`` shows as sent. Each refusal's sentence is rendered
    again from :data:`fedsynth.effects.results.REFUSAL_VOCABULARY` with only the column
    names the spec gives this analysis (anything else a sentence would name falls back to
    the code's generic sentence); the full local error stays in ``Refusal.detail`` for
    the site's log and audit log.

    Parameters
    ----------
    results
        ``{name: Estimate | Refusal}`` after :func:`guard` (and the site policy).
    spec
        The round's spec: the columns each analysis may name.
    """
    # lazy: keeps pandas and scipy out of `fedsynth site pending/approve` start-up
    from fedsynth.effects.results import Refusal

    out: dict[str, Any] = {}
    for name, result in results.items():
        if not _is_refusal(result):
            out[name] = result
            continue
        if not isinstance(result, Refusal):
            result = Refusal(analysis=name, reason=str(getattr(result, "reason", "")),
                             code=str(getattr(result, "code", "refused")))
        analysis = _analysis_of(name, spec)
        columns = tuple(getattr(analysis, "columns", ()) or ()) if analysis else ()
        out[name] = result.public(columns=columns)
    return out


def suppressed(results: Mapping[str, Any]) -> Iterable[str]:
    """Names of the analyses :func:`guard` suppressed (refusal codes of this module)."""
    return [name for name, r in results.items()
            if _is_refusal(r) and getattr(r, "code", None) in REFUSAL_CODES]
