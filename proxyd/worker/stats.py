"""The worker's counters and gauges: plain integers on small objects, Envoy's names.

A scope object (:class:`ClusterStats`, :class:`HttpStats`, :class:`ListenerStats`,
:class:`NamedStats` for HTTP filters) is resolved once per epoch by name and kept for
the life of the worker, so a request bumps an attribute and never formats a stat name. :meth:`StatsStore.report` turns the
whole store into ``(counter deltas since the last report, absolute gauges)`` with the
full Envoy stat names, which is what :class:`proxyd.ipc.StatsReport` carries.

Histograms are ``dict`` attributes of the same scopes, ``{bin: count}``
(:func:`proxyd.protocol.histogram.record` adds a sample); :meth:`StatsStore.report_histograms`
hands over the bins recorded since the previous report and empties them.

Per-host values for the admin ``/clusters`` page (:class:`HostStats`) travel in the same
report under ``<cluster>::<ip>:<port>::<stat>``, which the master keeps out of ``/stats``
(see :mod:`proxyd.stats`).

:func:`note_unexpected` is what a catch-all handler in the worker calls: it counts the
exception in ``server.proxyd.worker_exceptions`` (:class:`WorkerServerStats`) and logs
the first one of each kind at each place, with its traceback.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import structlog

from proxyd.stats import HOST_SEP
from proxyd.worker.outcomes import OutcomeStore

log = structlog.get_logger()

# Exceptions a catch-all handler caught: a bug, counted and logged once per kind.
WORKER_EXCEPTIONS_STAT = "server.proxyd.worker_exceptions"


class _Scope:
    """Subclasses list their counter, gauge and histogram attributes with their Envoy
    suffixes. A histogram attribute is a ``dict`` of bins
    (:func:`proxyd.protocol.histogram.record` adds a sample); one listed in
    ``HISTOGRAMS`` is reported from the start (Envoy shows it as "No recorded values"),
    one in ``LAZY_HISTOGRAMS`` only once it has a sample (Envoy makes it on first use)."""

    __slots__ = ("prefix", "_last", "_announced")
    COUNTERS: tuple[tuple[str, str], ...] = ()
    GAUGES: tuple[tuple[str, str], ...] = ()
    HISTOGRAMS: tuple[tuple[str, str], ...] = ()
    LAZY_HISTOGRAMS: tuple[tuple[str, str], ...] = ()

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._last: dict[str, int] = {}
        self._announced = False
        for attr, _ in self.COUNTERS:
            setattr(self, attr, 0)
        for attr, _ in self.GAUGES:
            setattr(self, attr, 0)
        for attr, _ in self.HISTOGRAMS + self.LAZY_HISTOGRAMS:
            setattr(self, attr, {})

    def collect_histograms(self, out: dict[str, dict[int, int]]) -> None:
        """The bins recorded since the previous call (the dicts are emptied, not
        replaced: a request path may hold one)."""
        announce = not self._announced
        self._announced = True
        prefix = self.prefix
        for attr, suffix in self.HISTOGRAMS:
            bins = getattr(self, attr)
            if bins or announce:
                out[prefix + suffix] = dict(bins)
                bins.clear()
        for attr, suffix in self.LAZY_HISTOGRAMS:
            bins = getattr(self, attr)
            if bins:
                out[prefix + suffix] = dict(bins)
                bins.clear()

    def collect(self, counters: dict[str, int], gauges: dict[str, int]) -> None:
        last = self._last
        prefix = self.prefix
        for attr, suffix in self.COUNTERS:
            value = getattr(self, attr)
            delta = value - last.get(attr, 0)
            if delta:
                # Added, not set: two scopes may count one name (a filter's and the
                # connection manager's downstream_rq_too_large).
                key = prefix + suffix
                counters[key] = counters.get(key, 0) + delta
                last[attr] = value
        for attr, suffix in self.GAUGES:
            gauges[prefix + suffix] = getattr(self, attr)


_S = TypeVar("_S", bound=_Scope)


class BreakerState(Protocol):
    """What ClusterStats reads from proxyd.worker.upstream.ClusterState."""

    def open_gauges(self) -> tuple[tuple[str, tuple[int, int, int, int]], ...]:
        """(priority stat name, BREAKER_GAUGES values) for each routing priority."""
        ...


class ClusterStats(_Scope):
    """``cluster.<name>.*``. ``by_code`` counts ``upstream_rq_<code>``."""

    __slots__ = (
        "rq_total",
        "rq_timeout",
        "cx_total",
        "cx_connect_fail",
        "cx_connect_timeout",
        "cx_destroy",
        "cx_active",
        "rq_active",
        "rq_active_overflow",
        "cx_overflow",
        "rq_pending_overflow",
        "lb_healthy_panic",
        "rq_pending_total",
        "rq_pending_active",
        "rq_cancelled",
        "rq_retry",
        "rq_retry_success",
        "rq_retry_overflow",
        "rq_retry_limit_exceeded",
        "rq_retry_backoff_exponential",
        "rq_retry_backoff_ratelimited",
        "rq_per_try_timeout",
        "rq_per_try_idle_timeout",
        "retry_or_shadow_abandoned",
        "cx_rx_bytes_total",
        "cx_tx_bytes_total",
        "cx_connect_attempts_exceeded",
        "cx_none_healthy",
        "breakers",
        "by_class",
        "by_code",
        "_last_codes",
        "h_rq_time",
        "h_cx_connect_ms",
        "h_cx_length_ms",
        "h_rq_per_cx",
        "tracked",
        "h_budget",
        "h_budget_per_try",
        "h_rq_headers_size",
        "h_rq_body_size",
        "h_rs_headers_size",
        "h_rs_body_size",
        "h_rq_headers_count",
        "h_rs_headers_count",
    )
    HISTOGRAMS = (
        ("h_cx_connect_ms", "upstream_cx_connect_ms"),
        ("h_cx_length_ms", "upstream_cx_length_ms"),
        ("h_rq_per_cx", "upstream_rq_per_cx"),
    )
    # Envoy makes upstream_rq_time when the first response is timed.
    LAZY_HISTOGRAMS = (("h_rq_time", "upstream_rq_time"),)
    # track_cluster_stats (reported from the start once a cluster of this name asked).
    TIMEOUT_BUDGET_HISTOGRAMS = (
        ("h_budget", "upstream_rq_timeout_budget_percent_used"),
        ("h_budget_per_try", "upstream_rq_timeout_budget_per_try_percent_used"),
    )
    SIZE_HISTOGRAMS = (
        ("h_rq_headers_size", "upstream_rq_headers_size"),
        ("h_rq_body_size", "upstream_rq_body_size"),
        ("h_rs_headers_size", "upstream_rs_headers_size"),
        ("h_rs_body_size", "upstream_rs_body_size"),
        ("h_rq_headers_count", "upstream_rq_headers_count"),
        ("h_rs_headers_count", "upstream_rs_headers_count"),
    )
    COUNTERS = (
        ("rq_total", "upstream_rq_total"),
        ("rq_timeout", "upstream_rq_timeout"),
        ("cx_total", "upstream_cx_total"),
        ("cx_connect_fail", "upstream_cx_connect_fail"),
        ("cx_connect_timeout", "upstream_cx_connect_timeout"),
        ("cx_destroy", "upstream_cx_destroy"),
        ("rq_active_overflow", "upstream_rq_active_overflow"),
        ("cx_overflow", "upstream_cx_overflow"),
        ("rq_pending_overflow", "upstream_rq_pending_overflow"),
        # Requests balanced in panic mode (proxyd.protocol.priority).
        ("lb_healthy_panic", "lb_healthy_panic"),
        # Circuit breakers and the pending queue (proxyd.worker.upstream).
        ("rq_pending_total", "upstream_rq_pending_total"),
        ("rq_cancelled", "upstream_rq_cancelled"),
        ("rq_retry", "upstream_rq_retry"),
        ("rq_retry_success", "upstream_rq_retry_success"),
        ("rq_retry_overflow", "upstream_rq_retry_overflow"),
        # Route retry policies (proxyd.worker.retrying).
        ("rq_retry_limit_exceeded", "upstream_rq_retry_limit_exceeded"),
        ("rq_retry_backoff_exponential", "upstream_rq_retry_backoff_exponential"),
        ("rq_retry_backoff_ratelimited", "upstream_rq_retry_backoff_ratelimited"),
        ("rq_per_try_timeout", "upstream_rq_per_try_timeout"),
        ("rq_per_try_idle_timeout", "upstream_rq_per_try_idle_timeout"),
        ("retry_or_shadow_abandoned", "retry_or_shadow_abandoned"),
        # Counted by the TCP proxy (proxyd.worker.tcp_proxy).
        ("cx_rx_bytes_total", "upstream_cx_rx_bytes_total"),
        ("cx_tx_bytes_total", "upstream_cx_tx_bytes_total"),
        ("cx_connect_attempts_exceeded", "upstream_cx_connect_attempts_exceeded"),
        ("cx_none_healthy", "upstream_cx_none_healthy"),
    )
    GAUGES = (
        ("cx_active", "upstream_cx_active"),
        ("rq_active", "upstream_rq_active"),
        ("rq_pending_active", "upstream_rq_pending_active"),
    )
    # The cluster's newest ClusterState: its circuit breaker *_open gauges.
    BREAKER_GAUGES = ("cx_open", "rq_pending_open", "rq_open", "rq_retry_open")
    # The COUNTERS and GAUGES attributes, set to 0 in _Scope.__init__ (lb_healthy_panic
    # is also what proxyd.protocol.priority.PanicCounter reads).
    rq_total: int
    rq_timeout: int
    cx_total: int
    cx_connect_fail: int
    cx_connect_timeout: int
    cx_destroy: int
    rq_active_overflow: int
    cx_overflow: int
    rq_pending_overflow: int
    lb_healthy_panic: int
    rq_pending_total: int
    rq_cancelled: int
    rq_retry: int
    rq_retry_success: int
    rq_retry_overflow: int
    rq_retry_limit_exceeded: int
    rq_retry_backoff_exponential: int
    rq_retry_backoff_ratelimited: int
    rq_per_try_timeout: int
    rq_per_try_idle_timeout: int
    retry_or_shadow_abandoned: int
    cx_rx_bytes_total: int
    cx_tx_bytes_total: int
    cx_connect_attempts_exceeded: int
    cx_none_healthy: int
    cx_active: int
    rq_active: int
    rq_pending_active: int
    # The histograms' bins (proxyd.protocol.histogram.record).
    h_rq_time: dict[int, int]
    h_cx_connect_ms: dict[int, int]
    h_cx_length_ms: dict[int, int]
    h_rq_per_cx: dict[int, int]
    h_budget: dict[int, int]
    h_budget_per_try: dict[int, int]
    h_rq_headers_size: dict[int, int]
    h_rq_body_size: dict[int, int]
    h_rs_headers_size: dict[int, int]
    h_rs_body_size: dict[int, int]
    h_rq_headers_count: dict[int, int]
    h_rs_headers_count: dict[int, int]

    def __init__(self, name: str) -> None:
        super().__init__(f"cluster.{name}.")
        # upstream_rq_1xx .. 5xx, indexed by status // 100.
        self.by_class = [0] * 6
        self.by_code: dict[int, int] = {}
        self._last_codes: dict[str, int] = {}
        self.breakers: BreakerState | None = None
        # track_cluster_stats: which groups are reported (set per epoch by track()).
        self.tracked: set[str] = set()
        for attr, _ in self.TIMEOUT_BUDGET_HISTOGRAMS + self.SIZE_HISTOGRAMS:
            setattr(self, attr, {})

    def track(self, timeout_budgets: bool, request_response_sizes: bool) -> None:
        """A cluster of this name has ``track_cluster_stats``: its histograms are
        reported from now on (a later epoch without it does not take them back, as
        Envoy's stats outlive a cluster update)."""
        if timeout_budgets and "budgets" not in self.tracked:
            self.tracked.add("budgets")
            self._announced = False
        if request_response_sizes and "sizes" not in self.tracked:
            self.tracked.add("sizes")
            self._announced = False

    def collect_histograms(self, out: dict[str, dict[int, int]]) -> None:
        announce = not self._announced
        super().collect_histograms(out)
        if not self.tracked:
            return
        prefix = self.prefix
        groups: tuple[tuple[str, str], ...] = ()
        if "budgets" in self.tracked:
            groups += self.TIMEOUT_BUDGET_HISTOGRAMS
        if "sizes" in self.tracked:
            groups += self.SIZE_HISTOGRAMS
        for attr, suffix in groups:
            bins = getattr(self, attr)
            if bins or announce:
                out[prefix + suffix] = dict(bins)
                bins.clear()

    def count_response(self, status: int) -> None:
        self.by_class[status // 100 if status < 600 else 5] += 1
        codes = self.by_code
        codes[status] = codes.get(status, 0) + 1

    def collect(self, counters: dict[str, int], gauges: dict[str, int]) -> None:
        super().collect(counters, gauges)
        last = self._last_codes
        prefix = self.prefix
        if self.breakers is not None:
            for priority, values in self.breakers.open_gauges():
                for name, value in zip(self.BREAKER_GAUGES, values, strict=True):
                    gauges[f"{prefix}circuit_breakers.{priority}.{name}"] = value
        for i in range(1, 6):
            name = f"{prefix}upstream_rq_{i}xx"
            delta = self.by_class[i] - last.get(name, 0)
            if delta:
                counters[name] = delta
                last[name] = self.by_class[i]
        for code, value in self.by_code.items():
            name = f"{prefix}upstream_rq_{code}"
            delta = value - last.get(name, 0)
            if delta:
                counters[name] = delta
                last[name] = value


class HttpStats(_Scope):
    """``http.<stat_prefix>.*`` (the HttpConnectionManager's scope)."""

    __slots__ = (
        "rq_total",
        "cx_total",
        "cx_active",
        "rq_active",
        "cx_destroy",
        "by_class",
        "_last_classes",
        "rq_timeout",
        "rq_idle_timeout",
        "header_overflow",
        "cx_protocol_error",
        "rq_too_large",
        "rq_direct_response",
        "cx_max_duration_reached",
        "rq_max_duration_reached",
        "cx_http2_total",
        "cx_http2_active",
        "rq_http2_total",
        "rq_overload_close",
        "h_rq_time",
        "h_cx_length_ms",
    )
    HISTOGRAMS = (
        ("h_rq_time", "downstream_rq_time"),
        ("h_cx_length_ms", "downstream_cx_length_ms"),
    )
    COUNTERS = (
        ("rq_total", "downstream_rq_total"),
        ("cx_total", "downstream_cx_total"),
        ("cx_destroy", "downstream_cx_destroy"),
        ("rq_timeout", "downstream_rq_timeout"),
        # The stream idle timeout (the connection manager's, or a route's idle_timeout).
        ("rq_idle_timeout", "downstream_rq_idle_timeout"),
        ("header_overflow", "downstream_cx_header_overflow"),
        ("cx_protocol_error", "downstream_cx_protocol_error"),
        ("rq_too_large", "downstream_rq_too_large"),
        # The router's: requests a redirect or direct_response route answered.
        ("rq_direct_response", "rq_direct_response"),
        # max_connection_duration and max_stream_duration (proxyd.worker.durations).
        ("cx_max_duration_reached", "downstream_cx_max_duration_reached"),
        ("rq_max_duration_reached", "downstream_rq_max_duration_reached"),
        # Downstream HTTP/2 connections and requests (proxyd.worker.h2_downstream).
        ("cx_http2_total", "downstream_cx_http2_total"),
        ("rq_http2_total", "downstream_rq_http2_total"),
        # envoy.overload_actions.stop_accepting_requests (proxyd.worker.manager).
        ("rq_overload_close", "downstream_rq_overload_close"),
    )
    GAUGES = (
        ("cx_active", "downstream_cx_active"),
        ("rq_active", "downstream_rq_active"),
        ("cx_http2_active", "downstream_cx_http2_active"),
    )
    # The COUNTERS and GAUGES attributes, set to 0 in _Scope.__init__.
    rq_overload_close: int
    rq_total: int
    cx_total: int
    cx_destroy: int
    rq_timeout: int
    rq_idle_timeout: int
    header_overflow: int
    cx_protocol_error: int
    rq_too_large: int
    rq_direct_response: int
    cx_max_duration_reached: int
    rq_max_duration_reached: int
    cx_http2_total: int
    rq_http2_total: int
    cx_active: int
    rq_active: int
    cx_http2_active: int
    h_rq_time: dict[int, int]
    h_cx_length_ms: dict[int, int]

    def __init__(self, stat_prefix: str) -> None:
        super().__init__(f"http.{stat_prefix}.")
        self.by_class = [0] * 6
        self._last_classes = [0] * 6

    def collect(self, counters: dict[str, int], gauges: dict[str, int]) -> None:
        super().collect(counters, gauges)
        for i in range(1, 6):
            delta = self.by_class[i] - self._last_classes[i]
            if delta:
                counters[f"{self.prefix}downstream_rq_{i}xx"] = delta
                self._last_classes[i] = self.by_class[i]


class ListenerStats(_Scope):
    """``listener.<address>_<port>.*``."""

    __slots__ = (
        "cx_total",
        "cx_active",
        "global_cx_overflow",
        "cx_overload_reject",
        "h_cx_length_ms",
        "h_accepted",
    )
    HISTOGRAMS = (
        ("h_cx_length_ms", "downstream_cx_length_ms"),
        # Connections accepted before the listening socket had none left (the accept loop).
        ("h_accepted", "connections_accepted_per_socket_event"),
    )
    COUNTERS = (
        ("cx_total", "downstream_cx_total"),
        # Refused at accept: the global connection limit, an overload action
        # (proxyd.worker.overload).
        ("global_cx_overflow", "downstream_global_cx_overflow"),
        ("cx_overload_reject", "downstream_cx_overload_reject"),
    )
    GAUGES = (("cx_active", "downstream_cx_active"),)
    # The COUNTERS and GAUGES attributes, set to 0 in _Scope.__init__.
    cx_total: int
    cx_active: int
    global_cx_overflow: int
    cx_overload_reject: int
    h_cx_length_ms: dict[int, int]
    h_accepted: dict[int, int]

    def __init__(self, stat_name: str) -> None:
        super().__init__(f"listener.{stat_name}.")


class TcpStats(_Scope):
    """``tcp.<stat_prefix>.*``: one TCP proxy's downstream stats (Envoy's names)."""

    __slots__ = ("cx_total", "cx_no_route", "rx_bytes", "tx_bytes", "idle_timeout", "max_duration")
    COUNTERS = (
        ("cx_total", "downstream_cx_total"),
        ("cx_no_route", "downstream_cx_no_route"),
        ("rx_bytes", "downstream_cx_rx_bytes_total"),
        ("tx_bytes", "downstream_cx_tx_bytes_total"),
        ("idle_timeout", "idle_timeout"),
        ("max_duration", "max_downstream_connection_duration"),
    )
    # The COUNTERS attributes, set to 0 in _Scope.__init__.
    cx_total: int
    cx_no_route: int
    rx_bytes: int
    tx_bytes: int
    idle_timeout: int
    max_duration: int

    def __init__(self, stat_prefix: str) -> None:
        super().__init__(f"tcp.{stat_prefix}.")


class HostStats(_Scope):
    """``<cluster>::<host>::*``: one upstream host of a cluster, for ``/clusters``.

    ``rq_success`` and ``rq_error`` split the finished requests: a response below 500
    is a success; a 5xx response, a failed connect, a reset or a timeout is an error.
    """

    __slots__ = (
        "rq_total",
        "rq_success",
        "rq_error",
        "rq_timeout",
        "cx_total",
        "cx_connect_fail",
        "cx_active",
        "rq_active",
    )
    COUNTERS = (
        ("rq_total", "rq_total"),
        ("rq_success", "rq_success"),
        ("rq_error", "rq_error"),
        ("rq_timeout", "rq_timeout"),
        ("cx_total", "cx_total"),
        ("cx_connect_fail", "cx_connect_fail"),
    )
    GAUGES = (("cx_active", "cx_active"), ("rq_active", "rq_active"))
    # The COUNTERS and GAUGES attributes, set to 0 in _Scope.__init__.
    rq_total: int
    rq_success: int
    rq_error: int
    rq_timeout: int
    cx_total: int
    cx_connect_fail: int
    cx_active: int
    rq_active: int

    def __init__(self, cluster: str, host: str) -> None:
        super().__init__(f"{cluster}{HOST_SEP}{host}{HOST_SEP}")


class NamedStats(_Scope):
    """A scope whose stats are named when first touched: the HTTP filters'
    (:class:`proxyd.filters.api.StatsScope`) under ``http.<stat_prefix>.``, by Envoy's
    name below it (``inc("fault.aborts_injected")``).

    ``inc(name, 0)`` and ``gauge_add(name, 0)`` make a stat visible at 0 before anything
    has counted it, as Envoy shows a filter's stats from the start. Counters report
    deltas, gauges absolute values, like the other scopes."""

    __slots__ = ("counters", "gauges", "store")

    def __init__(self, prefix: str, store: StatsStore | None = None) -> None:
        super().__init__(prefix)
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, int] = {}
        self.store = store  # where root() finds the other scopes

    def root(self, prefix: str) -> NamedStats:
        assert self.store is not None
        return self.store.named(prefix)

    def inc(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    def gauge_add(self, name: str, by: int) -> None:
        self.gauges[name] = self.gauges.get(name, 0) + by

    def value(self, name: str) -> int:
        if name in self.gauges:
            return self.gauges[name]
        return self.counters.get(name, 0)

    def collect(self, counters: dict[str, int], gauges: dict[str, int]) -> None:
        last = self._last
        prefix = self.prefix
        for name, value in self.counters.items():
            before = last.get(name)
            if before is None or value != before:  # a new name is reported even at 0
                key = prefix + name
                counters[key] = counters.get(key, 0) + value - (before or 0)
                last[name] = value
        for name, value in self.gauges.items():
            gauges[prefix + name] = value


class WorkerServerStats(_Scope):
    """``server.proxyd.*`` counted by a worker (summed over the workers by the master).

    ``worker_exceptions`` counts what catch-all handlers caught (:func:`note_unexpected`);
    it is proxyd's own, as Envoy has no catch-all to count."""

    __slots__ = ("worker_exceptions", "_logged")
    COUNTERS = (("worker_exceptions", WORKER_EXCEPTIONS_STAT.removeprefix("server.proxyd.")),)
    # The COUNTERS attributes, set to 0 in _Scope.__init__.
    worker_exceptions: int

    def __init__(self) -> None:
        super().__init__("server.proxyd.")
        # (where, exception type name) already logged with a traceback.
        self._logged: set[tuple[str, str]] = set()


class StatsStore:
    """Every scope the worker has resolved, by full prefix; scopes are never dropped."""

    def __init__(self) -> None:
        self._scopes: dict[str, _Scope] = {}
        # Per-host outcomes for outlier detection, shipped beside the stats report.
        self.outcomes = OutcomeStore()
        self.server = self._scopes["server.proxyd."] = WorkerServerStats()

    def _get(self, cls: type[_S], key: str, *args: str) -> _S:
        scope = self._scopes.get(key)
        if scope is None:
            new = self._scopes[key] = cls(*args)
            return new
        # Each key's prefix ("cluster.", "http.", ...) belongs to one scope class.
        assert isinstance(scope, cls)
        return scope

    def cluster(self, name: str) -> ClusterStats:
        return self._get(ClusterStats, "cluster." + name, name)

    def http(self, stat_prefix: str) -> HttpStats:
        return self._get(HttpStats, "http." + stat_prefix, stat_prefix)

    def tcp(self, stat_prefix: str) -> TcpStats:
        return self._get(TcpStats, "tcp." + stat_prefix, stat_prefix)

    def host(self, cluster: str, host: str) -> HostStats:
        """``host`` as /clusters prints it: ``ip:port``, or ``[ip6]:port``."""
        return self._get(HostStats, f"host.{cluster}{HOST_SEP}{host}", cluster, host)

    def listener(self, stat_name: str) -> ListenerStats:
        return self._get(ListenerStats, "listener." + stat_name, stat_name)

    def named(self, prefix: str) -> NamedStats:
        """A free-form scope under ``prefix`` (e.g. "http.ingress."), for filters."""
        scope = self._get(NamedStats, "named." + prefix, prefix)
        scope.store = self
        return scope

    def report(self) -> tuple[dict[str, int], dict[str, int]]:
        """Counter deltas since the previous call, and gauges as absolute values."""
        counters: dict[str, int] = {}
        gauges: dict[str, int] = {}
        for scope in self._scopes.values():
            scope.collect(counters, gauges)
        return counters, gauges

    def report_histograms(self) -> dict[str, dict[int, int]]:
        """The histogram bins recorded since the previous call, by full name."""
        out: dict[str, dict[int, int]] = {}
        for scope in self._scopes.values():
            scope.collect_histograms(out)
        return out


def note_unexpected(stats: StatsStore, exc: BaseException, where: str) -> None:
    """A catch-all handler at ``where`` caught ``exc``: count it in
    ``server.proxyd.worker_exceptions`` and log it with its traceback the first time
    this kind of exception is caught there (later ones are only counted, so a bug hit
    by every request cannot flood the log)."""
    server = stats.server
    server.worker_exceptions += 1
    key = (where, type(exc).__qualname__)
    if key in server._logged:
        return
    server._logged.add(key)
    log.error(
        "unexpected exception",
        where=where,
        error=repr(exc),
        exc_info=(type(exc), exc, exc.__traceback__),
        note="logged once per place and exception type; counted in " + WORKER_EXCEPTIONS_STAT,
    )
