"""Per-site rate limits for the coordinator: a token bucket per certificate identity.

Why
---
A malicious or misbehaving site (a crashed agent in a tight retry loop, a stolen key
used for a flood) must not starve the others: every site gets its own bucket of ``burst``
tokens refilled at ``rate`` tokens per second (the token-bucket algorithm, Turner, "New
directions in communications", IEEE Commun. Mag. 24(10), 1986; as in Envoy's and gRPC's
own local rate limiters). A call costs one token; an empty bucket ends the call with
``RESOURCE_EXHAUSTED`` and a retry hint, before the request reaches any handler, so it
changes no state. The identity is the TLS peer certificate's common name (never a message
field); calls without a certificate (``--insecure``) share the bucket of their peer address.

Defaults (5 calls/s sustained, bursts of 50) are far above what an agent needs (a
heartbeat every few seconds, one pull and one submission per round).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from fedsynth.errors import InputError

__all__ = ["RateLimit", "RateLimiter", "RateLimitInterceptor"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RateLimit:
    """Token-bucket parameters (``[limits]`` of coordinator.toml: ``rate``, ``burst``).

    Attributes
    ----------
    rate
        Sustained calls per second per site (> 0).
    burst
        Largest number of calls a site may make at once (>= 1).
    """

    rate: float = 5.0
    burst: int = 50

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


def _identity(context: Any) -> str:
    from fedsynth.revocation import peer_certificate

    cert = peer_certificate(context)
    if cert is not None:
        from cryptography.x509.oid import NameOID

        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if names:
            return f"site:{names[0].value}"
    try:
        return f"peer:{context.peer()}"
    except Exception:  # noqa: BLE001
        return "peer:?"


class RateLimitInterceptor(grpc.aio.ServerInterceptor):
    """grpc.aio server interceptor applying a :class:`RateLimiter` to every call.

    Parameters
    ----------
    limiter
        The buckets.
    on_reject
        Optional callback ``(identity, method)`` for refused calls (audit, metrics); its
        exceptions are logged, not propagated. It is called at most once per identity every
        ``report_every`` seconds: a flood must not turn into a flood of fsync'd audit
        entries (which would make the audit log the denial-of-service amplifier).
    report_every
        Seconds between two reports for the same identity.
    """

    def __init__(self, limiter: RateLimiter,
                 on_reject: Callable[[str, str], None] | None = None, *,
                 report_every: float = 60.0) -> None:
        self._limiter = limiter
        self._on_reject = on_reject
        self._report_every = report_every
        self._reported = RateLimiter(RateLimit(rate=1.0 / report_every, burst=1),
                                     clock=limiter._clock, max_keys=limiter._max_keys)

    async def intercept_service(self, continuation, handler_call_details):
        from fedsynth.revocation import _wrap_handler

        handler = await continuation(handler_call_details)
        method = handler_call_details.method

        async def check(context) -> None:
            who = _identity(context)
            wait = self._limiter.try_acquire(who)
            if wait > 0:
                if self._on_reject is not None and self._reported.allow(who):
                    try:
                        self._on_reject(who, method)
                    except Exception:  # noqa: BLE001
                        log.exception("rate-limit on_reject callback failed")
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"rate limit exceeded for {who.split(':', 1)[1]!r} "
                    f"({self._limiter.limit.rate:g} calls/s, burst "
                    f"{self._limiter.limit.burst}); retry in {wait:.2f} s")

        return _wrap_handler(handler, check)
