"""The fault filter on a stream: Envoy's ``FaultFilter`` (delays, then aborts).

For each request whose route's cluster, ``x-envoy-downstream-service-node`` and header
matchers fit the settings (the route's ``HTTPFault`` if it has one, else the filter's):

1. **Delay.** Drawn with the delay's percentage; with ``header_delay`` the duration is
   ``x-envoy-fault-delay-request`` (ms) and ``x-envoy-fault-delay-request-percentage`` may
   lower the percentage (never raise it). A delay of 0 ms is none. The filter awaits
   ``trio.sleep`` in ``on_request_headers`` (the stream's deadlines still apply), sets
   the ``DI`` flag and counts ``delays_injected``; after it, the abort is drawn.
2. **Abort.** Drawn with the abort's percentage; ``http_status`` answers with that
   status and body "fault filter abort"; ``grpc_status`` answers HTTP 200 with that
   grpc-status (:attr:`LocalReply.grpc_status`); with ``header_abort`` the status comes
   from ``x-envoy-fault-abort-request`` (200-599, else none) or, failing that,
   ``x-envoy-fault-abort-grpc-request``, and ``x-envoy-fault-abort-request-percentage``
   may lower the percentage. Sets ``FI``, counts ``aborts_injected``.

A stream with a fault counts once in the ``active_faults`` gauge until it completes (a
delay that is not followed by an abort stops counting when it ends, as in Envoy 1.40);
when ``max_active_faults`` are already active in this worker, the fault is not injected
and ``faults_overflow`` counts it. Percentages are drawn per request from
:data:`RANDOM` (``random % denominator < numerator``, as Envoy's ``featureEnabled``);
0 never fires and a numerator of at least the denominator always does, without a draw.

**Runtime** (Envoy's keys, or the config's ``*_runtime`` names for the global ones): a
request without ``x-envoy-downstream-service-cluster`` draws against
``fault.http.abort.abort_percent`` / ``fault.http.delay.fixed_delay_percent`` when the
runtime has them (a fractional percent, or an integer percentage), else the configured
percentage; ``fault.http.abort.http_status``, ``.grpc_status`` and
``fault.http.delay.fixed_duration_ms`` replace the configured status and duration, and
``fault.http.max_active_faults`` the limit. A request with that header (value ``C``)
reads ``fault.http.C.abort.abort_percent`` and ``fault.http.C.delay.fixed_delay_percent``
*instead of* the global percentage keys (with the configured percentage as default), and
``fault.http.C.abort.http_status`` (...) over the global ones, as Envoy's
``FaultFilter`` does. With no ``fault.http.`` key (nor a renamed one) in the runtime
none of this runs: the epoch's runtime is looked at when the factory is built.

Envoy reads only the first value of a repeated ``x-envoy-fault-*`` header; the stream
gives repeated values joined with ",", so the text before the first "," is read.
"""

from __future__ import annotations

import os
import random
from typing import Any

import trio

from proxyd.epoch import HeaderMatch, from_wire
from proxyd.filters.api import CONTINUE, FilterStream, HttpFilter, LocalReply, Result, StatsScope
from proxyd.protocol.routing import compile_headers, header_names, headers_match
from proxyd.protocol.runtime import EMPTY, Snapshot

# Envoy's names in the filter's stats scope (``http.<stat_prefix>.``); the per
# downstream cluster counters are ``fault.<cluster>.aborts_injected`` and so on.
STAT_PREFIX = "fault."
ABORTS = "aborts_injected"
DELAYS = "delays_injected"
OVERFLOW = STAT_PREFIX + "faults_overflow"
ACTIVE = STAT_PREFIX + "active_faults"
# Envoy creates it with the others; proxyd refuses response_rate_limit, so it stays 0.
RATE_LIMITED = STAT_PREFIX + "response_rl_injected"

ABORT_HEADER = "x-envoy-fault-abort-request"
ABORT_GRPC_HEADER = "x-envoy-fault-abort-grpc-request"
ABORT_PERCENT_HEADER = "x-envoy-fault-abort-request-percentage"
DELAY_HEADER = "x-envoy-fault-delay-request"
DELAY_PERCENT_HEADER = "x-envoy-fault-delay-request-percentage"
DOWNSTREAM_CLUSTER_HEADER = "x-envoy-downstream-service-cluster"
DOWNSTREAM_NODE_HEADER = "x-envoy-downstream-service-node"

ABORT_BODY = "fault filter abort"
ABORT_DETAILS = "fault_filter_abort"

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_SPACE = " \t\n\v\f\r"

# Envoy's default runtime keys, by the name of the ``*_runtime`` field that renames each.
RUNTIME_KEYS = {
    "abort_percent": "fault.http.abort.abort_percent",
    "abort_http_status": "fault.http.abort.http_status",
    "abort_grpc_status": "fault.http.abort.grpc_status",
    "delay_percent": "fault.http.delay.fixed_delay_percent",
    "delay_duration": "fault.http.delay.fixed_duration_ms",
    "max_active_faults": "fault.http.max_active_faults",
}
RUNTIME_PREFIX = "fault.http."

# One draw per decision, as Envoy takes a random number per featureEnabled call.
RANDOM = random.Random(os.urandom(32))


def fires(numerator: int, denominator: int) -> bool:
    """Envoy's ``featureEnabled`` with a FractionalPercent and no runtime override."""
    if numerator <= 0:
        return False
    if numerator >= denominator:
        return True
    return RANDOM.getrandbits(64) % denominator < numerator


def header_uint(value: str | None, limit: int) -> int | None:
    """``absl::SimpleAtoi`` of the header's first value into an unsigned type whose
    largest value is ``limit``; None when absent or not a number."""
    if value is None:
        return None
    text = value.split(",", 1)[0].strip(_SPACE)
    if text.startswith("+"):
        text = text[1:]
    if not text or not text.isascii() or not text.isdigit():
        return None
    number = int(text)
    return number if number <= limit else None


class Factory:
    """One per epoch and route, from the route's ``HTTPFault`` or else the filter's."""

    __slots__ = (
        "name",
        "wanted_headers",
        "decodes",
        "encodes",
        "stats",
        "abort",
        "abort_http",
        "abort_grpc",
        "abort_header",
        "delay",
        "delay_ms",
        "upstream_cluster",
        "downstream_nodes",
        "header_tests",
        "max_active_faults",
        "cluster_stats",
        "runtime",
        "keys",
    )

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
        self.decodes = True
        self.encodes = False
        self.stats = stats
        wanted: set[str] = set()
        abort = settings["abort"]
        # (numerator, denominator), or None when no abort (delay) is configured.
        self.abort: tuple[int, int] | None = None
        self.abort_http: int | None = None
        self.abort_grpc: int | None = None
        self.abort_header = False
        if abort is not None:
            self.abort = (abort["numerator"], abort["denominator"])
            self.abort_http = abort["http_status"]
            self.abort_grpc = abort["grpc_status"]
            self.abort_header = bool(abort["header"])
            if self.abort_header:
                wanted.update((ABORT_HEADER, ABORT_GRPC_HEADER, ABORT_PERCENT_HEADER))
        delay = settings["delay"]
        self.delay: tuple[int, int] | None = None
        self.delay_ms: int | None = None  # None with a delay: header_delay
        if delay is not None:
            self.delay = (delay["numerator"], delay["denominator"])
            self.delay_ms = delay["fixed_ms"]
            if self.delay_ms is None:
                wanted.update((DELAY_HEADER, DELAY_PERCENT_HEADER))
        self.upstream_cluster: str = settings["upstream_cluster"]
        self.downstream_nodes = frozenset(settings["downstream_nodes"])
        if self.downstream_nodes:
            wanted.add(DOWNSTREAM_NODE_HEADER)
        self.header_tests = compile_headers(
            tuple(from_wire(HeaderMatch, h) for h in settings["headers"])
        )
        wanted.update(header_names(self.header_tests))
        self.max_active_faults: int | None = settings["max_active_faults"]
        self.cluster_stats = not settings["disable_downstream_cluster_stats"]
        if self.cluster_stats:
            wanted.add(DOWNSTREAM_CLUSTER_HEADER)
        self.keys: dict[str, str] = settings.get("runtime_keys") or RUNTIME_KEYS
        # The epoch's runtime, or None when it has no key this filter reads.
        self.runtime: Snapshot | None = None
        if any(k in runtime.values for k in self.keys.values()) or any(
            k.startswith(RUNTIME_PREFIX) for k in runtime.values
        ):
            self.runtime = runtime
            wanted.add(DOWNSTREAM_CLUSTER_HEADER)
            limit = runtime.integer(self.keys["max_active_faults"], -1)
            if limit >= 0:
                self.max_active_faults = limit
        self.wanted_headers = frozenset(wanted)
        for counter in (STAT_PREFIX + ABORTS, STAT_PREFIX + DELAYS, OVERFLOW, RATE_LIMITED):
            stats.inc(counter, 0)  # shown at 0 from the start, as Envoy does
        stats.gauge_add(ACTIVE, 0)

    def create(self) -> FaultFilter:
        return FaultFilter(self)

    def applies(self, stream: FilterStream) -> bool:
        """The route's cluster, the downstream node and the header matchers fit."""
        if self.upstream_cluster and stream.upstream_cluster != self.upstream_cluster:
            return False
        headers = stream.head.headers
        if (
            self.downstream_nodes
            and headers.get(DOWNSTREAM_NODE_HEADER) not in self.downstream_nodes
        ):
            return False
        tests = self.header_tests
        return not tests or headers_match(tests, headers, stream.head.host, stream.head.path)

    def delay_for(self, headers: dict[str, str]) -> int | None:
        """The delay to inject (ms), or None."""
        if self.delay is None:
            return None
        numerator, denominator = self.delay
        ms = self.delay_ms
        if ms is None:
            numerator = _lowered(numerator, headers.get(DELAY_PERCENT_HEADER))
        rt = self.runtime
        cluster = headers.get(DOWNSTREAM_CLUSTER_HEADER) if rt is not None else None
        if rt is not None:
            key = self._key(cluster, "delay_percent", "delay.fixed_delay_percent")
            numerator, denominator = rt.fraction(key, numerator, denominator)
        if not fires(numerator, denominator):
            return None
        if ms is None:
            ms = header_uint(headers.get(DELAY_HEADER), _UINT64_MAX)
        if ms is not None and rt is not None:
            ms = rt.integer(self.keys["delay_duration"], ms)
            if cluster is not None:
                ms = rt.integer(f"{RUNTIME_PREFIX}{cluster}.delay.fixed_duration_ms", ms)
        return ms if ms else None

    def _key(self, cluster: str | None, name: str, suffix: str) -> str:
        """With x-envoy-downstream-service-cluster, Envoy reads only that cluster's key."""
        return self.keys[name] if cluster is None else f"{RUNTIME_PREFIX}{cluster}.{suffix}"

    def _status(self, cluster: str | None, name: str, suffix: str, default: int) -> int:
        """Envoy's abortHttpStatus / abortGrpcStatus: the cluster's key (with the
        configured default) replaces the global one."""
        rt = self.runtime
        if rt is None:
            return default
        if cluster is not None:
            return rt.integer(f"{RUNTIME_PREFIX}{cluster}.{suffix}", default)
        return rt.integer(self.keys[name], default)

    def abort_for(self, headers: dict[str, str]) -> tuple[int, int | None] | None:
        """(HTTP status, gRPC status or None) to abort with, or None."""
        if self.abort is None:
            return None
        numerator, denominator = self.abort
        if self.abort_header:
            numerator = _lowered(numerator, headers.get(ABORT_PERCENT_HEADER))
        cluster = headers.get(DOWNSTREAM_CLUSTER_HEADER) if self.runtime is not None else None
        if self.runtime is not None:
            key = self._key(cluster, "abort_percent", "abort.abort_percent")
            numerator, denominator = self.runtime.fraction(key, numerator, denominator)
        if not fires(numerator, denominator):
            return None
        status: int | None = self.abort_http
        grpc: int | None = self.abort_grpc
        if self.abort_header:
            status = header_uint(headers.get(ABORT_HEADER), _UINT64_MAX)
            if status is not None and not 200 <= status < 600:
                status = None
            grpc = header_uint(headers.get(ABORT_GRPC_HEADER), _UINT64_MAX)
        if status is not None:
            # A runtime status outside 200-599 is not sent: the configured one is.
            chosen = self._status(cluster, "abort_http_status", "abort.http_status", status)
            return (chosen if 200 <= chosen < 600 else status, None)
        if grpc is not None:
            return (200, self._status(cluster, "abort_grpc_status", "abort.grpc_status", grpc))
        return None


def _lowered(numerator: int, header: str | None) -> int:
    """A ``*-percentage`` header lowers the configured numerator, never raises it."""
    value = header_uint(header, _UINT32_MAX)
    return numerator if value is None else min(value, numerator)


class FaultFilter(HttpFilter):
    __slots__ = ("factory", "active", "cluster")

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.active = False  # counted in active_faults
        self.cluster = ""  # x-envoy-downstream-service-cluster, for the per-cluster stats

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        f = self.factory
        if not f.applies(stream):
            return CONTINUE
        headers = stream.head.headers
        if f.cluster_stats:
            self.cluster = headers.get(DOWNSTREAM_CLUSTER_HEADER, "")
        ms = f.delay_for(headers)
        if ms is not None and self._activate():
            self._count(DELAYS)
            stream.set_flag("DI")
            await trio.sleep(ms / 1000)
            status = f.abort_for(headers)
            if status is not None:
                return self._abort(stream, status)
            self._deactivate()
            return CONTINUE
        status = f.abort_for(headers)
        if status is not None and self._activate():
            return self._abort(stream, status)
        return CONTINUE

    def on_stream_complete(self, stream: FilterStream) -> None:
        self._deactivate()

    def _abort(self, stream: FilterStream, status: tuple[int, int | None]) -> LocalReply:
        self._count(ABORTS)
        stream.set_flag("FI")
        http_status, grpc_status = status
        return LocalReply(http_status, ABORT_BODY, details=ABORT_DETAILS, grpc_status=grpc_status)

    def _count(self, stat: str) -> None:
        stats = self.factory.stats
        stats.inc(STAT_PREFIX + stat)
        if self.cluster:
            stats.inc(f"{STAT_PREFIX}{self.cluster}.{stat}")

    def _activate(self) -> bool:
        """Count this stream in active_faults, unless max_active_faults are active."""
        if self.active:
            return True
        f = self.factory
        if f.max_active_faults is not None and f.stats.value(ACTIVE) >= f.max_active_faults:
            f.stats.inc(OVERFLOW)
            return False
        f.stats.gauge_add(ACTIVE, 1)
        self.active = True
        return True

    def _deactivate(self) -> None:
        if self.active:
            self.active = False
            self.factory.stats.gauge_add(ACTIVE, -1)
