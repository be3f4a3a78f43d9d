"""The reconstruction attack of issue 10, item 1: integer search for the score x outcome
table behind a released AUC, its DeLong variance and n.

A coordinator that asks for the AUC of a score with few distinct values (a 0/1 column such
as the exposure or sex, a 3-level grade) receives ``yi`` (the AUC, or its logit), ``vi``
(DeLong's variance, or its delta-method transform) and ``n``. Both are functions of the
k x 2 table of score level by outcome, so the coordinator can enumerate the tables of
``n`` patients and keep those that reproduce ``yi`` and ``vi``:

* the Mann-Whitney statistic ``U = AUC * m * (n - m)`` is a multiple of 1/2, which leaves a
  handful of candidate case counts ``m``;
* for each ``m`` the tables are searched exhaustively (2 levels: every split of cases and
  controls; 3 levels: every split of the controls, the cases' split solved exactly from
  ``U``), and DeLong's variance is recomputed exactly for the survivors.

Used by ``tests/unit/test_implied_score_tables.py`` and
``tests/integration/test_reconstruction_attack.py``: on the numbers a site releases
without disclosure control the search finds the true table (so the tests can fail); on
what the site really sends it finds none with a small cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Relative tolerance when matching a recomputed AUC or variance to the released one
#: (the site sends doubles; a rational recomputed in floating point agrees to ~1e-15).
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Table:
    """A score-level x outcome table: ``cases[j]``, ``controls[j]`` at the j-th lowest
    score value."""

    cases: tuple[int, ...]
    controls: tuple[int, ...]

    @property
    def cells(self) -> tuple[int, ...]:
        return self.cases + self.controls

    def smallest(self) -> int:
        return min(self.cells)


def auc_and_variance(cases: np.ndarray, controls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC and DeLong variance of k x 2 tables, vectorised over the leading axes.

    ``cases`` and ``controls`` have shape ``(..., k)``: counts at each score level, levels
    in increasing order (a case above a control is concordant, a tie counts 1/2), exactly
    as pROC and :func:`fedsynth.effects.delong.delong_auc` compute it.
    """
    cases = np.asarray(cases, dtype=float)
    controls = np.asarray(controls, dtype=float)
    m = cases.sum(-1, keepdims=True)
    n0 = controls.sum(-1, keepdims=True)
    below = np.cumsum(controls, -1) - controls                 # controls under each level
    above = cases.sum(-1, keepdims=True) - np.cumsum(cases, -1)  # cases over each level
    v10 = (below + 0.5 * controls) / n0
    v01 = (above + 0.5 * cases) / m
    auc = (cases * v10).sum(-1, keepdims=True) / m
    s10 = (cases * (v10 - auc) ** 2).sum(-1, keepdims=True) / (m - 1)
    s01 = (controls * (v01 - auc) ** 2).sum(-1, keepdims=True) / (n0 - 1)
    return auc[..., 0], (s10 / m + s01 / n0)[..., 0]


def _on_raw_scale(yi: float, vi: float, scale: str) -> tuple[float, float]:
    if scale == "raw":
        return yi, vi
    auc = 1.0 / (1.0 + np.exp(-yi))                 # the delta method undone
    return float(auc), float(vi * (auc * (1 - auc)) ** 2)


def _case_counts(auc: float, n: int) -> list[int]:
    """Case counts m for which ``2 * AUC * m * (n - m)`` is an integer."""
    out = []
    for m in range(2, n - 1):
        twice_u = 2.0 * auc * m * (n - m)
        if abs(twice_u - round(twice_u)) <= 1e-6:
            out.append(m)
    return out


def _close(a: np.ndarray, b: float) -> np.ndarray:
    return np.abs(a - b) <= TOLERANCE * max(abs(b), 1e-300)


def two_level_tables(yi: float, vi: float, n: int, scale: str = "raw") -> list[Table]:
    """Every 2 x 2 table (0/1 score x outcome) of ``n`` patients whose AUC and DeLong
    variance reproduce the released ``yi`` and ``vi``."""
    auc, var = _on_raw_scale(yi, vi, scale)
    found = []
    for m in _case_counts(auc, n):
        n0 = n - m
        high_cases = np.arange(m + 1)[:, None]          # cases at the score's higher level
        high_controls = np.arange(n0 + 1)[None, :]
        u = high_cases * (n0 - high_controls) + 0.5 * (
            high_cases * high_controls + (m - high_cases) * (n0 - high_controls))
        hit = np.abs(u - auc * m * n0) <= 1e-6
        i, j = np.nonzero(hit)
        if not len(i):
            continue
        cases = np.stack([m - i, i], axis=-1)
        controls = np.stack([n0 - j, j], axis=-1)
        a, v = auc_and_variance(cases, controls)
        keep = _close(a, auc) & _close(v, var)
        found += [Table(tuple(int(x) for x in c), tuple(int(x) for x in d))
                  for c, d in zip(cases[keep], controls[keep])]
    return found


def three_level_tables(yi: float, vi: float, n: int, scale: str = "raw") -> list[Table]:
    """Every 3 x 2 table (3-level score x outcome) of ``n`` patients whose AUC and DeLong
    variance reproduce ``yi`` and ``vi``. Levels may be empty (a 2-level table is then
    found too, with a zero row)."""
    auc, var = _on_raw_scale(yi, vi, scale)
    found = []
    for m in _case_counts(auc, n):
        n0 = n - m
        u = auc * m * n0
        d0, d1 = np.meshgrid(np.arange(n0 + 1), np.arange(n0 + 1), indexing="ij")
        ok = d0 + d1 <= n0
        d0, d1 = d0[ok], d1[ok]
        d2 = n0 - d0 - d1
        c1 = np.arange(m + 1)
        # U = c0 d0/2 + c1 (d0 + d1/2) + c2 (d0 + d1 + d2/2) with c0 = m - c1 - c2, solved
        # for c2 given (d0, d1, c1): U is linear in it.
        D0, C1 = d0[:, None], c1[None, :]
        D1, D2 = d1[:, None], d2[:, None]
        slope = 0.5 * D0 + D1 + 0.5 * D2
        with np.errstate(divide="ignore", invalid="ignore"):
            c2 = (u - 0.5 * m * D0 - C1 * (0.5 * D0 + 0.5 * D1)) / slope
        c2r = np.round(c2)
        hit = (slope > 0) & (np.abs(c2 - c2r) <= 1e-6) & (c2r >= 0) & (c2r <= m - C1)
        rows, cols = np.nonzero(hit)
        if not len(rows):
            continue
        cc1 = c1[cols]
        cc2 = c2r[rows, cols].astype(int)
        cases = np.stack([m - cc1 - cc2, cc1, cc2], axis=-1)
        controls = np.stack([d0[rows], d1[rows], d2[rows]], axis=-1)
        a, v = auc_and_variance(cases, controls)
        keep = _close(a, auc) & _close(v, var)
        found += [Table(tuple(int(x) for x in c), tuple(int(x) for x in d))
                  for c, d in zip(cases[keep], controls[keep])]
    return found


def attack_site(seed: int = 20261127):
    """A site of 200 patients whose small cells the attack targets.

    * ``sex`` x ``outcome``: (sex 1, event) 2, (sex 1, no event) 28, (sex 0, event) 58,
      (sex 0, no event) 112 -- the table of issue 10, item 1;
    * ``grade`` (0, 1, 2) x ``outcome``: events 3, 20, 37; non-events 60, 50, 30;
    * ``treated``, ``age``, ``risk_score`` (continuous, in (0, 1)), ``los_days``: ordinary
      columns with no small table.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    outcome = np.r_[np.ones(60, int), np.zeros(140, int)]
    sex = np.r_[np.ones(2, int), np.zeros(58, int), np.ones(28, int), np.zeros(112, int)]
    grade = np.r_[rng.permutation(np.repeat([0, 1, 2], [3, 20, 37])),
                  rng.permutation(np.repeat([0, 1, 2], [60, 50, 30]))]
    order = rng.permutation(200)
    frame = pd.DataFrame({
        "patient_id": [f"attack-{i:05d}" for i in range(1, 201)],
        "age": rng.integers(30, 90, 200)[order],
        "sex": sex[order], "grade": grade[order], "outcome": outcome[order],
        "treated": rng.integers(0, 2, 200),
        "risk_score": np.round(np.clip(0.15 + 0.3 * outcome[order] + rng.normal(0, 0.12, 200),
                                       0.01, 0.99), 6),
        "los_days": np.round(rng.gamma(2.0, 3.0, 200), 1)})
    return frame


def true_table(frame, score: str, levels: tuple[int, ...]) -> Table:
    """The score x outcome table of ``frame`` (the ground truth the attack aims at)."""
    cases = tuple(int(((frame[score] == v) & (frame.outcome == 1)).sum()) for v in levels)
    controls = tuple(int(((frame[score] == v) & (frame.outcome == 0)).sum()) for v in levels)
    return Table(cases, controls)
