"""Per-host request outcomes for outlier detection, kept by a worker for the master.

Outlier detection is global (DESIGN.md, shared-nothing): a worker only records what
happened to each request it sent to a host of a cluster that has
``outlier_detection``, and ships it to the master in :class:`proxyd.ipc.HostOutcomes`
on the same timer as its StatsReport, and at its next watchdog tick (50 ms) when a
failure was recorded, so the master's consecutive detectors are not a second late. The master (:mod:`proxyd.master.outlier`) runs
Envoy's detectors on the outcomes of all workers, decides ejections and publishes
them in a new epoch (``Endpoint.ejected``).

**Form on the wire: run-length, in order.** The consecutive detectors need the order
of outcomes, so the worker does not count streaks itself (a streak may span workers'
reports and an ejection resets it) but sends each host's outcomes since the last
report as ``[kind, count, kind, count, ...]``: a run of the same kind is one pair, so a
healthy host under load costs one pair per report, and recording is a compare and an
increment (an append when the kind changes). The master replays the runs of each
worker's report in order; runs from different workers within one report period
interleave in the order the reports arrive, which is as close as two processes get
to Envoy's shared atomic counters.

**Kinds** are what the router knows when a request ends, each standing for the
results Envoy's router and connection pool report for it (``putResult`` and
``putHttpResponseCode``):

* :data:`OK`, :data:`ERROR_5XX`, :data:`GATEWAY_ERROR`: a connection was obtained
  (LocalOriginConnectSuccess), then a response below 500, a 5xx other than 502-504,
  or a 502/503/504 (the HTTP code);
* :data:`CONNECT_FAILED`: no connection (refused, reset, connect timeout):
  LocalOriginConnectFailed, which is 503 unless local-origin errors are split;
* :data:`RESET`: connected, then the connection broke or the response was malformed
  before a response head: LocalOriginConnectSuccess, then LocalOriginConnectFailed;
* :data:`TIMEOUT`: connected, then the route timeout fired before a response head:
  LocalOriginConnectSuccess, then LocalOriginTimeout (504 when not split).
"""

from __future__ import annotations

from collections.abc import Callable

OK = 0
ERROR_5XX = 1
GATEWAY_ERROR = 2
CONNECT_FAILED = 3
RESET = 4
TIMEOUT = 5
KINDS = (OK, ERROR_5XX, GATEWAY_ERROR, CONNECT_FAILED, RESET, TIMEOUT)


class OutcomeLog:
    """One host's outcomes since the last report, run-length encoded."""

    __slots__ = ("runs", "store")

    def __init__(self, store: OutcomeStore | None = None) -> None:
        self.runs: list[int] = []
        self.store = store

    def add(self, kind: int) -> None:
        runs = self.runs
        if runs and runs[-2] == kind:
            runs[-1] += 1
        else:
            runs.append(kind)
            runs.append(1)
        if kind != OK and self.store is not None:
            store = self.store
            if not store.failures_pending:
                store.failures_pending = True
                if store.on_failure is not None:
                    store.on_failure()

    def response(self, status: int) -> None:
        """The upstream answered with ``status`` (a final response head)."""
        if status < 500:
            self.add(OK)
        elif 502 <= status <= 504:
            self.add(GATEWAY_ERROR)
        else:
            self.add(ERROR_5XX)

    def connect_failed(self) -> None:
        self.add(CONNECT_FAILED)

    def reset(self) -> None:
        self.add(RESET)

    def timeout(self) -> None:
        self.add(TIMEOUT)

    def take(self) -> list[int]:
        runs = self.runs
        self.runs = []
        return runs


class _NoLog(OutcomeLog):
    """For hosts of clusters without outlier detection: records nothing."""

    __slots__ = ()

    def add(self, kind: int) -> None:
        return

    def response(self, status: int) -> None:
        return


NO_LOG = _NoLog()


class OutcomeStore:
    """Every host log of the worker by (cluster, host), kept for the life of the
    worker: a request in flight on a replaced ClusterState still reports to the same
    log as the new one."""

    def __init__(self) -> None:
        self._logs: dict[str, dict[str, OutcomeLog]] = {}
        # A failure was recorded since the last report: ``on_failure`` (set by the
        # worker) has the outcomes sent within milliseconds instead of waiting for the
        # stats timer, so the master's consecutive detectors see a failing host soon.
        self.failures_pending = False
        self.on_failure: Callable[[], None] | None = None

    def log(self, cluster: str, host: str) -> OutcomeLog:
        """``host`` as /clusters prints it (``ip:port`` or ``[ip6]:port``)."""
        hosts = self._logs.setdefault(cluster, {})
        log = hosts.get(host)
        if log is None:
            log = hosts[host] = OutcomeLog(self)
        return log

    def report(self) -> dict[str, dict[str, list[int]]]:
        """The runs of every host with outcomes since the last call, by cluster."""
        out: dict[str, dict[str, list[int]]] = {}
        self.failures_pending = False
        for cluster, hosts in self._logs.items():
            for host, log in hosts.items():
                if log.runs:
                    out.setdefault(cluster, {})[host] = log.take()
        return out
