"""Value checks of a decoded submission, before anything is stored.

Why
---
A hostile or buggy site must not be able to poison a pooled result: a NaN, an infinite or a
non-positive variance breaks inverse-variance weighting (weights ``1/vi``), and ``se`` that
disagrees with ``vi`` means the site and the coordinator would not pool the same numbers.
Every problem is reported with the analysis, the field and the value; nothing is stored.
A released likelihood (:class:`fedsynth.serde.WireLikelihood`) is checked the same way:
finite numbers within documented bounds, at most :data:`MAX_LIKELIHOOD_POINTS` points,
strictly increasing, values shifted to a maximum of 0 (the released form's contract: an
absolute log-likelihood would say more about the data), the fields its form needs.
The security helper may add checks here (plausibility bounds per measure).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from fedsynth.errors import InputError
from fedsynth.serde import SubmissionContent, WireEstimate, WireLikelihood, WireRefusal

__all__ = ["check_submission", "MAX_REASON_CHARS", "MAX_ANALYSES", "MAX_LIKELIHOOD_POINTS"]

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
# Likelihood bounds: a site sends 8 or 9 grid points (fedsynth.effects.likelihood); 64
# leaves room for a finer grid and bounds the coordinator's work per site. Points and the
# custom form's mu are log ratios (|x| <= 50 is a ratio of e^50); a log-likelihood's drop
# and slope grow with the number of events, so their bounds follow MAX_N.
MAX_LIKELIHOOD_POINTS = 64
MAX_ABS_LOG_EFFECT = 50.0
MAX_ABS_LOGLIK = 1e12
MAX_ABS_SLOPE = 1e10
MAX_ABS_GAMMA = 1e3
MIN_SIGMA = 1e-8
MAX_SIGMA = 1e6
MAX_LIKELIHOOD_SE = 1e4
#: The largest released value must be 0 up to rounding.
TOP_TOLERANCE = 1e-6


def _bounded(where: str, name: str, value: object, bound: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise InputError(f"{where}: {name} = {value!r} is not a finite number")
    if abs(value) > bound:
        raise InputError(f"{where}: {name} = {value!r} is outside the accepted range "
                         f"[-{bound:g}, {bound:g}]")
    return float(value)


def _check_likelihood(e: WireLikelihood) -> None:
    where = f"analysis {e.analysis!r}: likelihood"
    if isinstance(e.n, bool) or not isinstance(e.n, int) or e.n < 1:
        raise InputError(f"{where}: n = {e.n!r} must be a positive number of patients")
    if e.n > MAX_N:
        raise InputError(f"{where}: n = {e.n!r} is above the limit of {MAX_N} patients")
    if (e.estimate is None) != (e.se is None):
        raise InputError(f"{where}: estimate and se come together (got estimate = "
                         f"{e.estimate!r}, se = {e.se!r})")
    if e.estimate is not None:
        _bounded(where, "estimate", e.estimate, MAX_ABS_LOG_EFFECT)
        se = _bounded(where, "se", e.se, MAX_LIKELIHOOD_SE)
        if not se > 0:
            raise InputError(f"{where}: se = {e.se!r} must be positive")
    if e.form == "normal":
        if e.estimate is None:
            raise InputError(f"{where}: form 'normal' needs estimate and se")
        return
    if e.form == "custom":
        _bounded(where, "mu", e.mu, MAX_ABS_LOG_EFFECT)
        _bounded(where, "gamma", e.gamma, MAX_ABS_GAMMA)
        if e.sigma is not None:
            sigma = _bounded(where, "sigma", e.sigma, MAX_SIGMA)
            if not sigma >= MIN_SIGMA:
                raise InputError(f"{where}: sigma = {e.sigma!r} is outside the accepted "
                                 f"range [{MIN_SIGMA:g}, {MAX_SIGMA:g}]")
        return
    if e.form != "grid_with_gradients":
        raise InputError(f"{where}: form {e.form[:80]!r} is not grid_with_gradients, "
                         "custom or normal")
    size = len(e.points)
    if not 2 <= size <= MAX_LIKELIHOOD_POINTS:
        raise InputError(f"{where}: {size} points (between 2 and {MAX_LIKELIHOOD_POINTS})")
    if len(e.values) != size or len(e.derivatives) != size:
        raise InputError(f"{where}: {size} points but {len(e.values)} values and "
                         f"{len(e.derivatives)} derivatives (one each per point)")
    points = [_bounded(where, f"points[{i}]", v, MAX_ABS_LOG_EFFECT)
              for i, v in enumerate(e.points)]
    values = [_bounded(where, f"values[{i}]", v, MAX_ABS_LOGLIK)
              for i, v in enumerate(e.values)]
    for i, v in enumerate(e.derivatives):
        _bounded(where, f"derivatives[{i}]", v, MAX_ABS_SLOPE)
    for i in range(1, size):
        if not points[i] > points[i - 1]:
            raise InputError(f"{where}: points must be strictly increasing (points[{i}] = "
                             f"{points[i]!r} after {points[i - 1]!r})")
    if abs(max(values)) > TOP_TOLERANCE:
        raise InputError(f"{where}: the largest value is {max(values)!r}; released values "
                         "are shifted so that their maximum is 0")


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


def check_submission(content: SubmissionContent, analyses: Iterable[str], *,
                     likelihood_analyses: Iterable[str] = ()) -> None:
    """Check that a submission answers exactly the analyses of its round.

    Raise :class:`InputError` unless ``content`` answers exactly ``analyses`` with valid
    estimates, likelihoods or refusals. A likelihood answers only an analysis of
    ``likelihood_analyses`` (those whose spec says ``release = "likelihood"``); such an
    analysis may also be answered with an estimate (its normal approximation).
    """
    expected = list(analyses)
    wants_likelihood = set(likelihood_analyses)
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
        elif isinstance(result, WireLikelihood):
            if result.analysis not in wants_likelihood:
                raise InputError(f"analysis {result.analysis!r}: a likelihood was sent but "
                                 "the spec does not ask for one (release = \"likelihood\")")
            _check_likelihood(result)
        else:
            _check_refusal(result)
