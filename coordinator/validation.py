"""Value checks of a decoded submission, before anything is stored.

Why
---
A hostile or buggy site must not be able to poison a pooled result: a NaN, an infinite or a
non-positive variance breaks inverse-variance weighting (weights ``1/vi``), and ``se`` that
disagrees with ``vi`` means the site and the coordinator would not pool the same numbers.
Every problem is reported with the analysis, the field and the value; nothing is stored.
The security helper may add checks here (plausibility bounds per measure).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from fedsynth.errors import InputError
from fedsynth.serde import SubmissionContent, WireEstimate, WireRefusal

__all__ = ["check_submission", "MAX_REASON_CHARS", "MAX_ANALYSES"]

MAX_REASON_CHARS = 2000
MAX_CODE_CHARS = 64
MAX_ANALYSES = 1000
#: Relative tolerance of ``se**2 == vi`` (doubles sent as doubles: only rounding).
SE_TOLERANCE = 1e-6
# Size limits (security helper). Finite is not enough: yi = 1e300 or vi = 1e-320 are finite
# but overflow the inverse-variance sums (w * yi**2) or underflow se**2 to 0, and n = 2**62
# is no number of patients. The bounds are far outside any real effect size (log ratios,
# differences in clinical units, AUCs) and variance, so only hostile or broken input hits them.
MAX_ABS_YI = 1e8
MIN_VI = 1e-20
MAX_VI = 1e16
MAX_N = 1_000_000_000


def _check_estimate(e: WireEstimate) -> None:
    where = f"analysis {e.analysis!r}"
    for name in ("yi", "vi", "se"):
        value = getattr(e, name)
        if not isinstance(value, float) or not math.isfinite(value):
            raise InputError(f"{where}: {name} = {value!r} is not a finite number")
    if not e.vi > 0:
        raise InputError(f"{where}: vi = {e.vi!r} must be positive (a sampling variance)")
    if abs(e.yi) > MAX_ABS_YI:
        raise InputError(f"{where}: yi = {e.yi!r} is outside the accepted range "
                         f"[-{MAX_ABS_YI:g}, {MAX_ABS_YI:g}]")
    if not MIN_VI <= e.vi <= MAX_VI:
        raise InputError(f"{where}: vi = {e.vi!r} is outside the accepted range "
                         f"[{MIN_VI:g}, {MAX_VI:g}]")
    if not e.se > 0:
        raise InputError(f"{where}: se = {e.se!r} must be positive")
    if abs(e.se * e.se - e.vi) > SE_TOLERANCE * e.vi:
        raise InputError(f"{where}: se = {e.se!r} does not match vi = {e.vi!r} "
                         "(se² must equal vi)")
    if not isinstance(e.n, int) or e.n < 1:
        raise InputError(f"{where}: n = {e.n!r} must be a positive number of patients")
    if e.n > MAX_N:
        raise InputError(f"{where}: n = {e.n!r} is above the limit of {MAX_N} patients")


def _check_refusal(r: WireRefusal) -> None:
    where = f"analysis {r.analysis!r}"
    if not r.reason.strip():
        raise InputError(f"{where}: a refusal needs a reason")
    if len(r.reason) > MAX_REASON_CHARS:
        raise InputError(f"{where}: refusal reason is {len(r.reason)} characters long "
                         f"(at most {MAX_REASON_CHARS})")
    if len(r.code) > MAX_CODE_CHARS or not r.code.replace("_", "").replace("-", "").isalnum():
        raise InputError(f"{where}: refusal code {r.code[:80]!r} must be a short word "
                         "(letters, digits, '_', '-')")


def check_submission(content: SubmissionContent, analyses: Iterable[str]) -> None:
    """Check that a submission answers exactly the analyses of its round.

    Raise :class:`InputError` unless ``content`` answers exactly ``analyses`` with valid
    estimates or refusals.
    """
    expected = list(analyses)
    if len(content.results) > MAX_ANALYSES:
        raise InputError(f"submission has {len(content.results)} results (at most "
                         f"{MAX_ANALYSES})")
    unknown = [name for name in content.results if name not in expected]
    if unknown:
        raise InputError(f"submission: analysis {unknown[0][:200]!r} is not in round "
                         f"{content.round_id!r}'s spec")
    missing = [name for name in expected if name not in content.results]
    if missing:
        raise InputError(f"submission: analysis {missing[0]!r} of the spec has neither an "
                         "estimate nor a refusal")
    for result in content.results.values():
        if isinstance(result, WireEstimate):
            _check_estimate(result)
        else:
            _check_refusal(result)
