"""Retry decisions as Envoy's router makes them (``RetryStateImpl``), with no I/O.

A route's ``retry_policy`` (or its virtual host's) says on which outcomes of an attempt
the router tries again (``retry_on``), how many times (``num_retries``), how long each
attempt may take (``per_try_timeout``) and how long to wait between attempts
(``retry_back_off``: Envoy's jittered exponential back-off).

:class:`RetryState` is one request's: the router tells it each attempt's outcome
(:meth:`RetryState.would_retry_status` or :meth:`RetryState.would_retry_reset`) and then
asks :meth:`RetryState.decide`, which applies the retry limit in Envoy's order
(``upstream_rq_retry_limit_exceeded`` before the circuit breaker's
``upstream_rq_retry_overflow``); the breaker itself is the caller's.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable

# retry_on condition bits (Envoy's RetryPolicy::RETRY_ON_*).
RETRY_5XX = 0x1
RETRY_GATEWAY_ERROR = 0x2
RETRY_CONNECT_FAILURE = 0x4
RETRY_RETRIABLE_4XX = 0x8
RETRY_REFUSED_STREAM = 0x10
RETRY_RETRIABLE_STATUS_CODES = 0x20
RETRY_RESET = 0x40
RETRY_RETRIABLE_HEADERS = 0x80
RETRY_ENVOY_RATE_LIMITED = 0x100

# The conditions proxyd implements, by their retry_on name.
RETRY_ON = {
    "5xx": RETRY_5XX,
    "gateway-error": RETRY_GATEWAY_ERROR,
    "connect-failure": RETRY_CONNECT_FAILURE,
    "retriable-4xx": RETRY_RETRIABLE_4XX,
    # An HTTP/2 stream refused by the upstream (REFUSED_STREAM, or above a GOAWAY's last
    # stream id); an HTTP/1.1 cluster never refuses one (as for Envoy).
    "refused-stream": RETRY_REFUSED_STREAM,
    "retriable-status-codes": RETRY_RETRIABLE_STATUS_CODES,
    "reset": RETRY_RESET,
    # Both read response headers (RetryingExchange: retriable_headers, and a response
    # with x-envoy-ratelimited).
    "retriable-headers": RETRY_RETRIABLE_HEADERS,
    "envoy-ratelimited": RETRY_ENVOY_RATE_LIMITED,
}

# Envoy's other retry_on names: refused in configuration by name; ignored in a
# request's x-envoy-retry-on (as Envoy ignores names it does not know there).
NOT_IMPLEMENTED = frozenset(
    {
        "reset-before-request",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)

DEFAULT_BASE_INTERVAL_MS = 25


def parse_retry_on(text: str) -> tuple[int, list[str]]:
    """The condition bits of a comma-separated retry_on, and the names not known."""
    bits = 0
    unknown = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        bit = RETRY_ON.get(name)
        if bit is None:
            unknown.append(name)
        else:
            bits |= bit
    return bits, unknown


class JitteredBackOff:
    """Envoy's ``JitteredExponentialBackOffStrategy``: the n-th wait is uniform in
    [0, min(base * 2**(n-1), max)), never above ``max``, in whole milliseconds."""

    __slots__ = ("base_ms", "max_ms", "next_ms", "random")

    def __init__(self, base_ms: int, max_ms: int, rand: Callable[[], int] | None = None):
        assert 0 < base_ms <= max_ms
        self.base_ms = base_ms
        self.max_ms = max_ms
        self.next_ms = base_ms
        self.random = rand if rand is not None else _random64

    def next_backoff_ms(self) -> int:
        backoff = self.next_ms
        self.next_ms = backoff * 2 if backoff < self.max_ms // 2 else self.max_ms
        return min(self.random() % backoff, self.max_ms)

    def reset(self) -> None:
        self.next_ms = self.base_ms


def _random64() -> int:
    return random.getrandbits(64)


class Reset(enum.Enum):
    """How an attempt ended without a response head."""

    CONNECT_FAILURE = "connect failure"
    CONNECTION_TERMINATION = "connection termination"
    PER_TRY_TIMEOUT = "per try timeout"
    REFUSED_STREAM = "refused stream"  # an HTTP/2 upstream's REFUSED_STREAM


class Decision(enum.Enum):
    """What :meth:`RetryState.decide` concluded."""

    NO_RETRY = "no retry"  # the outcome is not one to retry
    RETRY = "retry"  # retry (if the circuit breaker allows)
    LIMIT_EXCEEDED = "limit exceeded"  # retriable, but no retries are left


class RetryState:
    """One request's retries: conditions, retries left, and its back-off."""

    __slots__ = ("retry_on", "retries_left", "status_codes", "backoff")

    def __init__(
        self,
        retry_on: int,
        num_retries: int,
        status_codes: frozenset[int],
        backoff: JitteredBackOff,
    ) -> None:
        self.retry_on = retry_on
        self.retries_left = num_retries
        self.status_codes = status_codes
        self.backoff = backoff

    def would_retry_status(self, status: int, overloaded: bool = False) -> bool:
        """Whether a response with ``status`` is one to retry (never one the upstream
        marked ``x-envoy-overloaded``)."""
        on = self.retry_on
        if not on or overloaded:
            return False
        if on & RETRY_5XX and 500 <= status < 600:
            return True
        if on & RETRY_GATEWAY_ERROR and status in (502, 503, 504):
            return True
        if on & RETRY_RETRIABLE_4XX and status == 409:
            return True
        return bool(on & RETRY_RETRIABLE_STATUS_CODES and status in self.status_codes)

    def would_retry_reset(self, reset: Reset) -> bool:
        """Whether an attempt that ended without a response is one to retry."""
        on = self.retry_on
        if on & (RETRY_5XX | RETRY_GATEWAY_ERROR | RETRY_RESET):
            return True
        if reset is Reset.REFUSED_STREAM:
            return bool(on & RETRY_REFUSED_STREAM)
        return bool(on & RETRY_CONNECT_FAILURE and reset is Reset.CONNECT_FAILURE)

    def decide(self, would_retry: bool) -> Decision:
        """Envoy's ``shouldRetry`` up to the circuit breaker: a retriable outcome uses
        one of the retries left, or is over the limit."""
        if not would_retry:
            return Decision.NO_RETRY
        if self.retries_left <= 0:
            return Decision.LIMIT_EXCEEDED
        self.retries_left -= 1
        return Decision.RETRY

    def next_backoff_s(self) -> float:
        return self.backoff.next_backoff_ms() / 1000.0
