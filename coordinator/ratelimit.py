"""Admission control of the coordinator: per-site rate and concurrency limits.

Why
---
A malicious or misbehaving site (a crashed agent in a tight retry loop, a stolen key used
for a flood) must not starve the others. Two limits apply to every call, keyed by the TLS
peer certificate's common name (never a message field; calls without a certificate under
``--insecure`` are keyed by their peer address), before the request reaches any handler, so
that a refused call changes no state:

* a **token bucket** per site (Turner, "New directions in communications", IEEE Commun.
  Mag. 24(10), 1986; as in Envoy's and gRPC's local rate limiters): ``burst`` tokens
  refilled at ``rate`` per second, one per call; an empty bucket ends the call with
  ``RESOURCE_EXHAUSTED`` and a retry hint. This bounds how *often* a site calls.
* a **bound on calls in flight** per site (``in_flight``), checked when a call starts and
  released when it ends, whatever its outcome. A rate limit alone does not bound how many
  calls a site keeps open: ten identities holding twenty slow calls each stayed within their
  buckets, filled the server's one global limit of 256 concurrent calls, and legitimate
  sites and health checks were refused ("Concurrent RPC limit exceeded"). Now a site that
  opens more calls than ``in_flight`` gets its extra calls refused at once and only slows
  itself (the concurrency-limit pattern of Netflix's ``concurrency-limits`` and Envoy's
  per-client circuit breakers).

All sites together may have ``in_flight_total`` calls in flight, of which
``in_flight_reserved`` are kept for health checks and for sites **in good standing**: an
identity that had a call refused by either limit within the last ``penalty`` seconds is
limited to the unreserved share, so even many misbehaving identities at once cannot take
the slots the well-behaved sites need. The defaults are defined once, in
:class:`fedsynth.config.LimitsConfig` (``[limits]`` of coordinator.toml).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from fedsynth.config import LimitsConfig
from fedsynth.errors import InputError
from fedsynth.revocation import peer_common_name, wrap_method_handler

__all__ = ["RateLimit", "RateLimiter", "RateLimitInterceptor", "ConcurrencyLimiter",
           "AdmissionInterceptor", "HEALTH_PREFIX", "identity_of"]

log = logging.getLogger(__name__)

#: Methods of the standard health service (``grpc.health.v1.Health``): they may use the
#: reserved share of calls in flight.
HEALTH_PREFIX = "/grpc.health.v1.Health/"

_DEFAULTS = LimitsConfig()


@dataclass(frozen=True)
class RateLimit:
    """Token-bucket parameters (``[limits]`` of coordinator.toml: ``rate``, ``burst``).

    The defaults are those of :class:`fedsynth.config.LimitsConfig`.

    Attributes
    ----------
    rate
        Sustained calls per second per site (> 0).
    burst
        Largest number of calls a site may make at once (>= 1).
    """

    rate: float = _DEFAULTS.rate
    burst: int = _DEFAULTS.burst

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) \
                or not self.rate > 0 or self.rate != self.rate or self.rate == float("inf"):
            raise InputError(f"limits.rate must be a finite number > 0, got {self.rate!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise InputError(f"limits.burst must be an integer >= 1, got {self.burst!r}")


class RateLimiter:
    """Thread-safe token buckets keyed by site.

    Parameters
    ----------
    limit
        The :class:`RateLimit` every site gets.
    clock
        Monotonic clock in seconds (injectable for tests).
    max_keys
        Buckets kept at most; the least recently used are dropped beyond it, so a flood of
        distinct identities cannot exhaust memory.
    """

    def __init__(self, limit: RateLimit = RateLimit(), *,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self.limit = limit
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}   # key -> (tokens, last time)
        self._lock = threading.Lock()

    def allow(self, key: str, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket; False (and take none) if too few."""
        return self.try_acquire(key, cost) == 0.0

    def try_acquire(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; return 0.0 on success, else the seconds until enough exist."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.limit.burst), now))
            tokens = min(float(self.limit.burst), tokens + (now - last) * self.limit.rate)
            if tokens >= cost:
                self._buckets[key] = (tokens - cost, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (cost - tokens) / self.limit.rate
            while len(self._buckets) > self._max_keys:   # dicts keep insertion order: LRU
                self._buckets.pop(next(iter(self._buckets)))
        return wait


@dataclass(frozen=True)
class Refusal:
    """Why :meth:`ConcurrencyLimiter.try_enter` refused a call."""

    kind: str        # "identity" (its own bound) | "shared" | "total"
    message: str


class ConcurrencyLimiter:
    """Thread-safe count of calls in flight, per identity and in total.

    Parameters
    ----------
    per_identity
        Calls one identity may have in flight (``limits.in_flight``).
    total
        Calls in flight for all identities together (``limits.in_flight_total``).
    reserved
        Of ``total``, the slots only health checks and identities in good standing may use
        (``limits.in_flight_reserved``).
    penalty
        Seconds an identity stays out of good standing after a refusal (by this limiter, or
        reported with :meth:`mark` by the rate limiter).
    clock
        Monotonic clock in seconds (injectable for tests).
    max_keys
        Identities whose standing is remembered at most (least recently refused dropped).
    """

    def __init__(self, per_identity: int = _DEFAULTS.in_flight,
                 total: int = _DEFAULTS.in_flight_total,
                 reserved: int = _DEFAULTS.in_flight_reserved, *, penalty: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        LimitsConfig(in_flight=per_identity, in_flight_total=total,
                     in_flight_reserved=reserved)        # same checks, same messages
        self.per_identity = per_identity
        self.total = total
        self.reserved = reserved
        self.penalty = penalty
        self._clock = clock
        self._max_keys = max_keys
        self._counts: dict[str, int] = {}
        self._in_flight = 0
        self._refused_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def _mark_locked(self, key: str, now: float) -> None:
        self._refused_at.pop(key, None)
        self._refused_at[key] = now
        while len(self._refused_at) > self._max_keys:
            self._refused_at.pop(next(iter(self._refused_at)))

    def mark(self, key: str) -> None:
        """Take ``key`` out of good standing for :attr:`penalty` seconds (it was refused)."""
        with self._lock:
            self._mark_locked(key, self._clock())

    def in_good_standing(self, key: str) -> bool:
        """Whether ``key`` was not refused within the penalty period (so it may use the reserve)."""
        with self._lock:
            last = self._refused_at.get(key)
            return last is None or self._clock() - last >= self.penalty

    def try_enter(self, key: str, *, priority: bool = False) -> Refusal | None:
        """Admit one call of ``key``, or refuse it.

        Admit one call of ``key``: None when admitted (then call :meth:`leave` exactly
        once when it ends), else the :class:`Refusal` (nothing is counted).
        """
        now = self._clock()
        with self._lock:
            mine = self._counts.get(key, 0)
            if mine >= self.per_identity:
                self._mark_locked(key, now)
                return Refusal("identity", f"too many calls in flight for "
                               f"{key.split(':', 1)[-1]!r} ({mine}; at most "
                               f"{self.per_identity} at once): wait for the earlier calls to "
                               "finish")
            last = self._refused_at.get(key)
            good = priority or last is None or now - last >= self.penalty
            cap = self.total if good else self.total - self.reserved
            if self._in_flight >= cap:
                if good:
                    return Refusal("total", f"coordinator busy: {self._in_flight} calls in "
                                   f"flight (at most {self.total}); retry shortly")
                return Refusal("shared", f"coordinator busy for identities refused in the "
                               f"last {self.penalty:g} s: {self._in_flight} calls in flight, "
                               f"{self.reserved} kept for sites in good standing; retry "
                               "shortly")
            self._counts[key] = mine + 1
            self._in_flight += 1
            return None

    def leave(self, key: str) -> None:
        """End one admitted call of ``key``."""
        with self._lock:
            mine = self._counts.get(key, 0)
            if mine <= 1:
                self._counts.pop(key, None)
            else:
                self._counts[key] = mine - 1
            if mine > 0:
                self._in_flight -= 1

    def in_flight(self, key: str | None = None) -> int:
        """Calls in flight of ``key`` (or of everybody)."""
        with self._lock:
            return self._in_flight if key is None else self._counts.get(key, 0)


def identity_of(context: Any) -> str:
    """``site:NAME`` of the verified TLS peer certificate, else ``peer:ADDRESS``."""
    name = peer_common_name(context)
    if name is not None:
        return f"site:{name}"
    try:
        return f"peer:{context.peer()}"
    except Exception:  # noqa: BLE001
        return "peer:?"


_identity = identity_of     # the name earlier code and tests use


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """grpc.aio server interceptor: the rate limit, then the bound on calls in flight.

    Parameters
    ----------
    limiter
        The token buckets (:class:`RateLimiter`).
    concurrency
        The :class:`ConcurrencyLimiter`, or None for the rate limit alone.
    on_reject
        Optional callback ``(identity, method, kind)`` for refused calls (audit, metrics;
        ``kind`` is ``rate``, ``identity``, ``shared`` or ``total``); its exceptions are
        logged, not propagated. It is called at most once per identity and kind every
        ``report_every`` seconds: a flood must not turn into a flood of fsync'd audit
        entries (which would make the audit log the denial-of-service amplifier).
    report_every
        Seconds between two reports for the same identity and kind.
    """

    def __init__(self, limiter: RateLimiter, concurrency: ConcurrencyLimiter | None = None,
                 on_reject: Callable[[str, str, str], None] | None = None, *,
                 report_every: float = 60.0) -> None:
        self._limiter = limiter
        self._concurrency = concurrency
        self._on_reject = on_reject
        self._reported = RateLimiter(RateLimit(rate=1.0 / report_every, burst=1),
                                     clock=limiter._clock, max_keys=limiter._max_keys)

    def _report(self, who: str, method: str, kind: str) -> None:
        if self._on_reject is not None and self._reported.allow(f"{kind}|{who}"):
            try:
                self._on_reject(who, method, kind)
            except Exception:  # noqa: BLE001
                log.exception("admission on_reject callback failed")

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        """Wrap each call's handler so that it is admitted (or refused) before it runs."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        priority = method.startswith(HEALTH_PREFIX)
        concurrency = self._concurrency

        async def enter(context: Any) -> str | None:
            who = identity_of(context)
            wait = self._limiter.try_acquire(who)
            if wait > 0:
                if concurrency is not None:
                    concurrency.mark(who)
                self._report(who, method, "rate")
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"rate limit exceeded for {who.split(':', 1)[1]!r} "
                    f"({self._limiter.limit.rate:g} calls/s, burst "
                    f"{self._limiter.limit.burst}); retry in {wait:.2f} s")
            if concurrency is None:
                return None
            refusal = concurrency.try_enter(who, priority=priority)
            if refusal is not None:
                self._report(who, method, refusal.kind)
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal.message)
            return who

        def leave(ticket: str | None) -> None:
            if ticket is not None and concurrency is not None:
                concurrency.leave(ticket)

        return wrap_method_handler(handler, enter, leave)


class RateLimitInterceptor(AdmissionInterceptor):
    """The rate limit alone (:class:`AdmissionInterceptor` without a concurrency bound).

    ``on_reject`` takes ``(identity, method)``, reported at most once per identity every
    ``report_every`` seconds.
    """

    def __init__(self, limiter: RateLimiter,
                 on_reject: Callable[[str, str], None] | None = None, *,
                 report_every: float = 60.0) -> None:
        def report(who: str, method: str, _kind: str) -> None:
            if on_reject is not None:
                on_reject(who, method)

        super().__init__(limiter, None, report if on_reject is not None else None,
                         report_every=report_every)
