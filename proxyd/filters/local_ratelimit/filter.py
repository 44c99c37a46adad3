"""The local rate limit filter on a stream: Envoy's ``LocalRateLimitFilter``.

For each request, with the route's ``LocalRateLimit`` if it has one, else the filter's:

1. ``filter_enabled`` (a runtime fractional percent; unset: never) is drawn; when it
   does not fire the filter does nothing more.
2. ``enabled`` counts, and the config's token bucket gives a token or not: ``ok`` or
   ``rate_limited`` counts. A config without a token_bucket (only the HCM's may lack
   one) has an empty bucket, so every enabled request is rate limited, as in Envoy.
3. A rate-limited request is answered when ``filter_enforced`` fires (unset: never):
   ``enforced`` counts and the stream gets the configured status (429 by default),
   body "local_rate_limited", flag ``RL`` and the ``response_headers_to_add``; a gRPC
   request gets grpc-status UNAVAILABLE (14), or RESOURCE_EXHAUSTED (8) with
   ``rate_limited_as_resource_exhausted``. One not enforced goes on upstream with
   ``request_headers_to_add_when_not_enforced``.

With ``enable_x_ratelimit_headers: DRAFT_VERSION_03`` every response of a request that
asked the bucket (the 429 too) carries ``x-ratelimit-limit`` (max_tokens),
``x-ratelimit-remaining`` (whole tokens left after this request) and
``x-ratelimit-reset`` (0 while a token is left, else the seconds until the next one).
Envoy 1.40 sends no ``x-envoy-ratelimited`` header on a local rate limit reply, nor
does proxyd.

**The bucket** is Envoy 1.40's ``AtomicTokenBucketImpl``: it starts full with
``max_tokens`` and refills continuously at ``tokens_per_fill`` per ``fill_interval``
(not in steps at each interval), never above ``max_tokens``; a request takes one whole
token. Stats are ``<stat_prefix>.http_local_rate_limit.{enabled,enforced,ok,
rate_limited,shadow_mode}``, at the top of the stat names, as Envoy's.

**Per worker.** Envoy's bucket is shared by all worker threads of the process; proxyd's
workers share no memory, so each worker process has its own bucket with the whole
budget (``max_tokens`` and the full fill rate). With ``--concurrency 1`` this is
Envoy's limit exactly; with N workers a client may get up to N times the budget,
depending on which workers the kernel hands its connections to. Dividing the budget by
N is not the same either (a client whose connections all land on one worker would get
1/N of it), so proxyd keeps the whole budget per worker and documents it.

A worker keeps each bucket across epochs while its config (its place in the file and
its parameters) is unchanged: :data:`BUCKETS` holds them weakly, by that key, so an
epoch that changes something else (a host's health, another route) does not refill it,
and a bucket no factory uses any more goes with its last factory.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from typing import Any

from proxyd.filters.api import CONTINUE, FilterStream, HttpFilter, LocalReply, Result, StatsScope
from proxyd.protocol.header_mutations import ACTIONS
from proxyd.protocol.runtime import EMPTY, RANDOM, Snapshot

BODY = "local_rate_limited"
DETAILS = "local_rate_limited"
FLAG = "RL"
STATS = ("enabled", "enforced", "ok", "rate_limited", "shadow_mode")
GRPC_UNAVAILABLE = 14
GRPC_RESOURCE_EXHAUSTED = 8

_APPEND = ACTIONS["APPEND_IF_EXISTS_OR_ADD"]
_ADD_IF_ABSENT = ACTIONS["ADD_IF_ABSENT"]
_OVERWRITE_IF_EXISTS = ACTIONS["OVERWRITE_IF_EXISTS"]


class TokenBucket:
    """A continuously refilled bucket of ``max_tokens``, ``rate`` tokens a second,
    full when made. ``clock`` is monotonic seconds (replaced in tests)."""

    __slots__ = ("max_tokens", "rate", "clock", "since", "__weakref__")

    def __init__(
        self, max_tokens: int, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_tokens = max_tokens
        self.rate = rate
        self.clock = clock
        # The time at which the bucket was empty, were it never capped: tokens now are
        # min(max_tokens, (now - since) * rate), as Envoy's AtomicTokenBucketImpl keeps it.
        self.since = clock() - (max_tokens / rate if rate else 0.0)

    def tokens(self, now: float | None = None) -> float:
        if not self.rate:
            return 0.0
        t = self.clock() if now is None else now
        return min(float(self.max_tokens), (t - self.since) * self.rate)

    def consume(self) -> bool:
        """Take one token; False when there is less than one."""
        now = self.clock()
        total = self.tokens(now)
        if total < 1.0:
            return False
        self.since = now - (total - 1.0) / self.rate
        return True

    def reset_seconds(self) -> int:
        """Envoy's x-ratelimit-reset: 0 while a token is left, else the seconds until
        the next one, rounded up."""
        total = self.tokens()
        if total >= 1.0 or not self.rate:
            return 0
        return math.ceil((1.0 - total) / self.rate)


# Each worker's buckets by config key, held weakly: see the module's docstring.
BUCKETS: weakref.WeakValueDictionary[tuple[Any, ...], TokenBucket] = weakref.WeakValueDictionary()


def bucket_for(spec: dict[str, Any] | None) -> TokenBucket:
    """The worker's bucket for this config, made full when it has none yet."""
    if spec is None:
        return TokenBucket(0, 0.0)  # no token_bucket: always empty, as Envoy's
    key = (spec["key"], spec["max_tokens"], spec["tokens_per_fill"], spec["fill_ms"])
    bucket = BUCKETS.get(key)
    if bucket is None:
        rate = spec["tokens_per_fill"] * 1000 / spec["fill_ms"]
        bucket = BUCKETS[key] = TokenBucket(spec["max_tokens"], rate)
    return bucket


def _fraction(runtime: Snapshot, setting: list[Any] | None) -> tuple[int, int]:
    """(numerator, denominator) of a RuntimeFractionalPercent; unset: 0 (never)."""
    if setting is None:
        return 0, 100
    key, numerator, denominator = setting
    if key:
        return runtime.fraction(key, numerator, denominator)
    return numerator, denominator


def fires(fraction: tuple[int, int]) -> bool:
    numerator, denominator = fraction
    if numerator <= 0:
        return False
    if numerator >= denominator:
        return True
    return RANDOM.getrandbits(64) % denominator < numerator


def reply_headers(adds: list[list[Any]]) -> tuple[tuple[str, str], ...]:
    """``response_headers_to_add`` on a local reply. Envoy's HeaderParser looks at the
    reply as it was before these additions, and it has none of their names: each is
    added (ADD_IF_ABSENT too, even after one of the same name), except an empty value
    without keep_empty_value and OVERWRITE_IF_EXISTS."""
    return tuple(
        (name, value)
        for name, value, action, keep_empty in adds
        if (value or keep_empty) and ACTIONS[action] != _OVERWRITE_IF_EXISTS
    )


class Factory:
    """One per epoch and route: the route's ``LocalRateLimit`` replaces the filter's."""

    __slots__ = (
        "name", "wanted_headers", "decodes", "encodes", "stats", "bucket", "enabled",
        "enforced", "status", "reply_headers", "request_headers", "x_headers", "grpc_status",
        "max_tokens",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        config: Any,
        per_route: Any,
        stats: StatsScope,
        runtime: Snapshot = EMPTY,
    ) -> None:
        settings = per_route if per_route is not None else config
        self.name = name
        self.enabled = _fraction(runtime, settings["enabled"])
        self.enforced = _fraction(runtime, settings["enforced"])
        self.status: int = settings["status"]
        self.reply_headers = reply_headers(settings["response_headers"])
        self.request_headers: list[list[Any]] = settings["request_headers"]
        self.x_headers: bool = settings["x_ratelimit_headers"]
        self.grpc_status = (
            GRPC_RESOURCE_EXHAUSTED if settings["resource_exhausted"] else GRPC_UNAVAILABLE
        )
        # ADD_IF_ABSENT and OVERWRITE_IF_EXISTS look at the request's own headers.
        self.wanted_headers = frozenset(n for n, _, a, _ in self.request_headers)
        self.decodes = self.enabled[0] > 0
        self.encodes = self.decodes and self.x_headers
        spec = settings["bucket"]
        self.bucket = bucket_for(spec)
        self.max_tokens = spec["max_tokens"] if spec is not None else 0
        self.stats = stats.root(settings["stat_prefix"] + ".http_local_rate_limit.")
        for stat in STATS:
            self.stats.inc(stat, 0)  # shown at 0 from the start, as Envoy does

    def create(self) -> LocalRateLimitFilter:
        return LocalRateLimitFilter(self)


class LocalRateLimitFilter(HttpFilter):
    __slots__ = ("factory", "asked")

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.asked = False  # the bucket was asked: the x-ratelimit headers go out

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        f = self.factory
        if not fires(f.enabled):
            return CONTINUE
        stats = f.stats
        stats.inc("enabled")
        self.asked = True
        if f.bucket.consume():
            stats.inc("ok")
            return CONTINUE
        stats.inc("rate_limited")
        if not fires(f.enforced):
            _add_request_headers(stream, f.request_headers)
            return CONTINUE
        stats.inc("enforced")
        stream.set_flag(FLAG)
        headers = f.reply_headers + self._x_headers() if f.x_headers else f.reply_headers
        self.asked = False  # the reply carries them already
        return LocalReply(f.status, BODY, headers, details=DETAILS, grpc_status=f.grpc_status)

    async def on_response_headers(
        self, stream: FilterStream, response: Any, end_stream: bool
    ) -> Result:
        if self.asked:
            for name, value in self._x_headers():
                stream.set_response_header(name, value)
        return CONTINUE

    def _x_headers(self) -> tuple[tuple[str, str], ...]:
        f = self.factory
        remaining = int(f.bucket.tokens())
        return (
            ("x-ratelimit-limit", str(f.max_tokens)),
            ("x-ratelimit-remaining", str(remaining)),
            ("x-ratelimit-reset", str(f.bucket.reset_seconds())),
        )


def _add_request_headers(stream: FilterStream, adds: list[list[Any]]) -> None:
    """``request_headers_to_add_when_not_enforced``, as Envoy's HeaderParser applies
    them: whether a name is present is read before any of them is added."""
    present = frozenset(stream.head.headers)
    for name, value, action, keep_empty in adds:
        if not value and not keep_empty:
            continue
        code = ACTIONS[action]
        if code == _APPEND:
            stream.add_request_header(name, value)
        elif code == _ADD_IF_ABSENT:
            if name not in present:
                stream.set_request_header(name, value)
        elif code == _OVERWRITE_IF_EXISTS:
            if name in present:
                stream.set_request_header(name, value)
        else:
            stream.set_request_header(name, value)
