"""The router with a retry policy: attempts, per-try timeouts and back-off.

A route with a ``retry_policy`` (its own or its virtual host's), or whose virtual host
includes the attempt count, gets :class:`RetryingExchange` instead of the plain
:class:`~proxyd.worker.router.Exchange` (the route's plan names the class, so a route
without one pays nothing). Each attempt picks a host from the cluster's balancer (the
first one was picked by the connection manager), sends the request, and reads the
response head; the outcome (a status, or a reset of a kind: connect failure,
connection termination, per-try timeout) goes to the request's
:class:`~proxyd.protocol.retry.RetryState`, which says whether to retry. A retry passes
the cluster's max_retries or retry_budget circuit breaker (``retry_allowed``) and is
outstanding there until its attempt's outcome (``retry_done``), as in Envoy, then waits
Envoy's jittered back-off. The route timeout (armed once, when the request is complete)
spans all attempts and the waits; the per-try timeout bounds each attempt, the response
included, and a last attempt that runs out answers 504 ``UT``.

An internal request (``internal_address_config``) may add conditions with
``x-envoy-retry-on`` (also on a route without a policy: the manager hands such a request
here through :func:`header_retry_exchange`), and set the retries
(``x-envoy-max-retries``) and the per-try timeout
(``x-envoy-upstream-rq-per-try-timeout-ms``), as Envoy lets it; other requests'
are dropped unread, as Envoy drops them.

A request body is kept to be replayed: the whole body is read before the first attempt
(copied, up to the listener's per_connection_buffer_limit_bytes). A body that does not
fit is sent as it comes and the request is not retried (``retry_or_shadow_abandoned``),
as Envoy abandons its retry buffer. Envoy starts the first attempt while the body still
arrives; proxyd waits for it, which only an upstream that answers before reading the
whole request could tell.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import trio

from proxyd.protocol.http1 import ResponseHead
from proxyd.protocol.priority import load_without
from proxyd.protocol.retry import (
    RETRY_ENVOY_RATE_LIMITED,
    RETRY_RETRIABLE_HEADERS,
    Decision,
    JitteredBackOff,
    Reset,
    RetryState,
    parse_retry_on,
)
from proxyd.protocol.routing import compile_headers, headers_match
from proxyd.protocol.runtime import RANDOM
from proxyd.worker import io
from proxyd.worker.deadlines import INF, DeadlineKind
from proxyd.worker.pool import ConnectFailure, Overflow, UpstreamConnection
from proxyd.worker.router import (
    ENDINGS,
    RESET_BEFORE_HEADERS,
    Exchange,
    frame_request,
    record_budget,
    record_try_budget,
)
from proxyd.worker.stream import (
    ResponseFlag,
    UpstreamReset,
)

if TYPE_CHECKING:
    from proxyd.epoch import RetryPolicy
    from proxyd.protocol.hash_lb import HashBalancer
    from proxyd.worker.deadlines import Deadline, Timers
    from proxyd.worker.plan import ListenerPlan, RoutePlan
    from proxyd.worker.stream import Stream
    from proxyd.worker.upstream import HostState

_ATTEMPT_COUNT_LINE = re.compile(rb"\r\nx-envoy-attempt-count:[^\r\n]*", re.IGNORECASE)
# (Any case: with preserve_case the head may spell it X-Envoy-Expected-Rq-Timeout-Ms.)
_EXPECTED_TIMEOUT_LINE = re.compile(
    rb"(\r\nx-envoy-expected-rq-timeout-ms):[^\r\n]*", re.IGNORECASE
)


_INTERNAL_LINE = b"\r\nx-envoy-internal: true\r\n"
_RETRY_HEADER_LINE = re.compile(
    rb"\r\n(x-envoy-retry-on|x-envoy-max-retries|x-envoy-upstream-rq-per-try-timeout-ms):"
    rb"[ \t]*([^\r\n]*)"
)


def internal_retry_headers(raw: bytes, head: bytes) -> dict[str, str] | None:
    """An internal request's x-envoy-retry-on, x-envoy-max-retries and
    x-envoy-upstream-rq-per-try-timeout-ms (the first of each), read from its head;
    None for a request that is not internal (its upstream head says so), whose Envoy
    drops them unread."""
    if _INTERNAL_LINE not in head and _INTERNAL_LINE not in head.lower():
        return None  # (lower(): preserve_case may have written X-Envoy-Internal)
    out: dict[str, str] = {}
    for m in _RETRY_HEADER_LINE.finditer(raw):
        out.setdefault(m.group(1).decode(), m.group(2).strip().decode("latin-1"))
    return out


def header_int(value: str | None) -> int | None:
    """A non-negative integer as Envoy's ``SimpleAtoi`` reads one (None: not one)."""
    if value is None:
        return None
    v = value[1:] if value.startswith("+") else value
    return int(v) if v.isascii() and v.isdigit() else None


class RetryPlan:
    """A route's retry policy compiled for the worker."""

    __slots__ = (
        "retry_on",
        "num_retries",
        "per_try_s",
        "base_ms",
        "max_ms",
        "status_codes",
        "attempt_count",
        "timeout_s",
        "host_picks",
        "per_try_idle_s",
        "priority_update",
        "response_tests",
        "request_tests",
        "reset_headers",
        "reset_max_ms",
    )

    def __init__(self, policy: RetryPolicy, timeout_s: float) -> None:
        self.retry_on = parse_retry_on(policy.retry_on)[0]
        self.num_retries = policy.num_retries
        per_try = policy.per_try_timeout_s
        if timeout_s and per_try >= timeout_s:
            per_try = 0.0  # Envoy: a per-try timeout not below the route timeout is none
        self.per_try_s = per_try
        self.per_try_idle_s = policy.per_try_idle_timeout_s
        # retry_priority previous_priorities: update_frequency (0: none).
        self.priority_update = policy.priority_update_frequency
        self.base_ms = policy.base_interval_ms
        self.max_ms = policy.max_interval_ms
        self.status_codes = frozenset(policy.retriable_status_codes)
        self.attempt_count = policy.include_attempt_count
        self.timeout_s = timeout_s
        # Picks of a retry's host: 1, or with previous_hosts one more per
        # host_selection_retry_max_attempts while the pick is a host already tried.
        self.host_picks = (
            1 + policy.host_selection_retry_max_attempts if policy.avoid_previous_hosts else 1
        )
        # retriable_headers / retriable_request_headers: one test each (any may match).
        self.response_tests = tuple((t,) for t in compile_headers(policy.retriable_headers))
        self.request_tests = tuple((t,) for t in compile_headers(policy.retriable_request_headers))
        # rate_limited_retry_back_off: (name, format) in order, and the longest wait.
        self.reset_headers = policy.reset_headers
        self.reset_max_ms = policy.reset_max_interval_ms

    def response_names(self) -> set[str]:
        """The response header names the policy reads (the parser collects them)."""
        # (x-envoy-ratelimited also for an internal request's x-envoy-retry-on.)
        names = {t[0][0] for t in self.response_tests} | {n for n, _ in self.reset_headers}
        return names | {"x-envoy-ratelimited"}

    def request_names(self) -> set[str]:
        return {t[0][0] for t in self.request_tests}

    def reset_interval_ms(self, headers: dict[str, str]) -> int:
        """rate_limited_retry_back_off: the wait the first usable reset header names
        (0: none; a value over max_interval is passed over, as Envoy does)."""
        for name, fmt in self.reset_headers:
            value = headers.get(name)
            if value is None:
                continue
            value = value.split(",", 1)[0].strip()
            if not value.isascii() or not value.isdigit():
                continue
            if fmt == "UNIX_TIMESTAMP":
                ms = int((int(value) - time.time()) * 1000)
            else:
                ms = int(value) * 1000
            if 0 < ms <= self.reset_max_ms:
                return ms
        return 0

    def state(self, headers: dict[str, str] | None = None) -> tuple[RetryState, float]:
        """A new request's retry state and per-try timeout (0: none), with an internal
        request's retry headers."""
        retry_on = self.retry_on
        retries = self.num_retries
        per_try = self.per_try_s
        if headers:
            retry_on |= parse_retry_on(headers.get("x-envoy-retry-on", ""))[0]
            n = header_int(headers.get("x-envoy-max-retries"))
            if n is not None:
                retries = n
            ms = header_int(headers.get("x-envoy-upstream-rq-per-try-timeout-ms"))
            if ms is not None:
                per_try = ms / 1000.0
                if self.timeout_s and per_try >= self.timeout_s:
                    per_try = 0.0
        backoff = JitteredBackOff(self.base_ms, self.max_ms)
        return RetryState(retry_on, retries, self.status_codes, backoff), per_try

    def expected_timeout_ms(self, per_try_s: float | None = None) -> int:
        """x-envoy-expected-rq-timeout-ms: the per-try timeout when there is one."""
        per_try = self.per_try_s if per_try_s is None else per_try_s
        return int(round((per_try or self.timeout_s) * 1000))


async def wait_back_off(state: RetryState) -> float:
    """Wait the request's next back-off on trio's clock; the seconds waited."""
    seconds = state.next_backoff_s()
    await trio.sleep(seconds)
    return seconds


def header_retry_exchange(
    stream: Stream,
    plan: ListenerPlan,
    rp: RoutePlan,
    host: HostState,
    head: bytes,
    deadline: tuple[Timers, Deadline],
) -> Exchange:
    """The router for a request with x-envoy-* headers on a route without a retry
    policy: one that retries when the request is internal and says x-envoy-retry-on."""
    h = stream.head
    assert h is not None
    if b"x-envoy-retry-on" in h.envoy_headers and _INTERNAL_LINE in head:
        return RetryingExchange(stream, plan, rp, host, head, deadline)
    return Exchange(stream, plan, rp, host, head, deadline)


class _AttemptFailed(Exception):
    """An attempt ended without a response head (internal to :class:`RetryingExchange`)."""

    def __init__(
        self, reset: Reset, reason: str = "", details: str = "", remote: bool = False
    ) -> None:
        super().__init__(reset.value)
        self.reset = reset
        self.reason = reason
        self.details = details  # %RESPONSE_CODE_DETAILS% ("": the flag's)
        self.remote = remote  # an HTTP/2 upstream's RST_STREAM (flag UR, not UC)


class RetryingExchange(Exchange):
    """:class:`Exchange` for a route with a retry policy."""

    __slots__ = (
        "rplan", "retry", "per_try_s", "attempts", "body_parts", "reused", "replayable", "tried",
        "idle_scope", "attempted", "excluded", "reset_ms",
    )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        rplan = self.rp.retry or self.rp.header_retry
        assert rplan is not None
        self.rplan = rplan
        h = self.stream.head
        assert h is not None
        headers = internal_retry_headers(h.raw, self.head) if h.envoy_headers else None
        self.retry, self.per_try_s = rplan.state(headers)
        if rplan.request_tests and not any(
            headers_match(t, h.headers, h.host, h.path) for t in rplan.request_tests
        ):
            self.retry.retry_on = 0  # retriable_request_headers: this one is never retried
        # rate_limited_retry_back_off: the wait the response to retry asked for (0: none).
        self.reset_ms = 0
        if self.per_try_s != rplan.per_try_s:
            # x-envoy-expected-rq-timeout-ms says the request's per-try timeout.
            ms = rplan.expected_timeout_ms(self.per_try_s)
            line = b"\r\nx-envoy-expected-rq-timeout-ms: %d" % ms
            head, n = _EXPECTED_TIMEOUT_LINE.subn(line, self.head, count=1)
            if not n and ms:
                head = head[:-4] + line + b"\r\n\r\n"
            self.head = head
        self.attempts = 0
        # The request body as the upstream gets it, kept for each attempt.
        self.body_parts: list = []
        self.reused = False
        # False once the body went over the buffer limit: no retry then.
        self.replayable = True
        # The hosts attempts went to (kept for previous_hosts only).
        self.tried: set[HostState] = set()
        # The running attempt's per_try_idle_timeout (None: the policy has none).
        self.idle_scope: trio.CancelScope | None = None
        # previous_priorities: the priority level of each attempt's host, and the levels
        # a retry's pick leaves out.
        self.attempted: list[int] = []
        self.excluded: frozenset[int] = frozenset()
        if rplan.attempt_count and b"x-envoy-attempt-count" in h.envoy_headers:
            self.head = _ATTEMPT_COUNT_LINE.sub(b"", self.head)

    async def run(self) -> bool:
        stream = self.stream
        pool = self.pool
        h = stream.head
        assert h is not None
        self.host.active_requests += 1
        stream.upstream_host = self.host.label
        self.arm_start()
        try:
            if h.has_body:
                await self._keep_body()
            legacy_retried = False
            while True:
                try:
                    return await self._attempt()
                except _Retry:
                    pass
                except _AttemptFailed as failed:
                    if "budgets" in pool.stats.tracked:
                        record_try_budget(self, time.monotonic())
                    would = self.retry.would_retry_reset(failed.reset)
                    if self.retrying:
                        self.retrying = False
                        pool.retry_done(success=not would)
                    if (
                        not would
                        and failed.reset is Reset.CONNECTION_TERMINATION
                        and self.reused
                        and not legacy_retried
                        and self.replayable
                    ):
                        # As without a policy: a reused connection that died before any
                        # response byte is tried once more on a new one, at once.
                        legacy_retried = True
                        if pool.retry_allowed():
                            self.retrying = True
                            continue
                    if not self._retry_granted(would):
                        return await self._give_up(failed)
                await self._back_off()
        except trio.Cancelled:
            self._deadline_fired()
            raise
        except ENDINGS as exc:
            return await self._ended_by(exc)
        finally:
            self.host.active_requests -= 1
            if self.t_sent and "budgets" in pool.stats.tracked:
                record_try_budget(self, time.monotonic())  # an attempt that failed
            if self.attached:
                pool.requests -= 1  # ResourceManager.detach(), inline
                pool.stats.rq_active -= 1
                self.host.stats.rq_active -= 1
            if self.retrying:
                pool.retry_done(success=False)
            if self.conn is not None:
                pool.destroy(self.conn)
                self.conn = None

    def _retry_granted(self, would: bool) -> bool:
        """Envoy's shouldRetry: the retries left (upstream_rq_retry_limit_exceeded),
        then the circuit breaker (upstream_rq_retry or upstream_rq_retry_overflow)."""
        if not self.replayable:
            return False
        decision = self.retry.decide(would)
        if decision is Decision.NO_RETRY:
            return False
        if decision is Decision.LIMIT_EXCEEDED:
            self.pool.stats.rq_retry_limit_exceeded += 1
            self.stream.set_flag("URX")  # UpstreamRetryLimitExceeded, beside the outcome's
            return False
        if not self.pool.retry_allowed():
            return False
        self.retrying = True  # outstanding until the next attempt's outcome
        return True

    async def _back_off(self) -> None:
        """Envoy's jittered back-off, then a host for the retry (the balancer's pick)."""
        reset_ms, self.reset_ms = self.reset_ms, 0
        if reset_ms:
            # rate_limited_retry_back_off: Envoy's jittered lower bound, [ms, 1.5 ms).
            self.pool.stats.rq_retry_backoff_ratelimited += 1
            await trio.sleep((reset_ms + RANDOM.randrange(max(reset_ms // 2, 1))) / 1000)
        else:
            self.pool.stats.rq_retry_backoff_exponential += 1
            await wait_back_off(self.retry)
        host = self._retry_host()
        if host is not None and host is not self.host:
            self.host.active_requests -= 1
            if self.attached:
                self.host.stats.rq_active -= 1
                host.stats.rq_active += 1
            host.active_requests += 1
            self.host = host
            self.stream.upstream_host = host.label

    def _retry_host(self) -> HostState | None:
        """A retry's host: the balancer's pick (None: no host is usable)."""
        cluster = self.rp.cluster
        assert cluster is not None
        picks = self.rplan.host_picks
        balancer = cluster.balancer
        if cluster.hashing is not None:
            host = self._hash_pick(cluster.hashing, picks)
        else:
            if self.rplan.priority_update:
                balancer = self._priority_balancer(cluster)
            host = balancer.pick()
        if picks > 1 and cluster.hashing is None:
            # previous_hosts: pick again while it is a host an attempt went to (the last
            # pick stands, as in Envoy).
            tried = self.tried
            tried.add(self.host)
            while host is not None and host in tried and picks > 1:
                picks -= 1
                host = balancer.pick()
        return host

    def _hash_pick(self, hashing: HashBalancer[HostState], picks: int) -> HostState | None:
        """RING_HASH, MAGLEV: the request's hash again (a new random one when it has
        none), and with previous_hosts Envoy's further attempts (1, 2, ...) of the same
        hash while the host is one an attempt went to; the last stands."""
        h = self.stream.lb_hash
        if h is None:
            return hashing.pick()
        host = hashing.pick_hash(h)
        if picks > 1:
            tried = self.tried
            tried.add(self.host)
            attempt = 1
            while host is not None and host in tried and attempt < picks:
                host = hashing.pick_hash(h, attempt)
                attempt += 1
        return host

    def _priority_balancer(self, cluster: Any) -> Any:
        """retry_priority previous_priorities (Envoy's PreviousPrioritiesRetryPriority):
        every update_frequency attempts, the levels attempted so far are left out of the
        priority load; once every level is, Envoy forgets them and the original load
        applies again."""
        n = len(self.attempted)
        every = self.rplan.priority_update
        if n < every:
            return cluster.balancer
        if n % every == 0:
            excluded = self.excluded | frozenset(self.attempted)
            hosts = cluster.hosts
            counts = [(0, 0)] * (max((h.priority for h in hosts), default=0) + 1)
            for h in hosts:
                usable, total = counts[h.priority]
                counts[h.priority] = (usable + (1 if h.usable else 0), total + 1)
            factor = cluster.cluster.overprovisioning_factor
            if load_without(counts, excluded, factor) is None:
                excluded = frozenset()  # nothing left: Envoy starts over
            self.excluded = excluded
        return cluster.balancer_without(self.excluded) if self.excluded else cluster.balancer

    async def _give_up(self, failed: _AttemptFailed) -> bool:
        stream = self.stream
        cstats = self.pool.stats
        # Envoy's words once the request was retried.
        before = RETRIED_RESET_BEFORE_HEADERS if stream.attempts > 1 else RESET_BEFORE_HEADERS
        if failed.reset is Reset.CONNECT_FAILURE:
            stream.flags = ResponseFlag.UPSTREAM_CONNECTION_FAILURE
            cstats.count_response(503)
            self.host.stats.rq_error += 1
            return await self._reply(503, before + failed.reason)
        if failed.reset is Reset.PER_TRY_TIMEOUT:
            if "budgets" in cstats.tracked:  # Envoy's onUpstreamTimeoutAbort
                record_budget(self, time.monotonic())
            stream.flags = ResponseFlag.UPSTREAM_REQUEST_TIMEOUT
            stream.details = failed.reason or "upstream_per_try_timeout"
            cstats.count_response(504)
            self.host.stats.rq_error += 1
            return await self._reply(504, "upstream request timeout")
        self.stream.flags = (
            ResponseFlag.UPSTREAM_REMOTE_RESET
            if failed.remote
            else ResponseFlag.UPSTREAM_CONNECTION_TERMINATION
        )
        if failed.details:  # an HTTP/2 stream's reset (worker/h2_retrying.py)
            stream.details = failed.details
        cstats.count_response(503)
        self.host.stats.rq_error += 1
        return await self._reply(503, before + (failed.reason or "connection termination"))

    # -- one attempt ----------------------------------------------------------------------

    async def _attempt(self) -> bool:
        pool = self.pool
        host = self.host
        self.stream.attempts += 1  # %UPSTREAM_REQUEST_ATTEMPT_COUNT%
        if self.rplan.priority_update:
            self.attempted.append(host.priority)  # Envoy's onHostAttempted
        self.t_sent = time.monotonic()
        # auto_sni / auto_san_validation: the request's Host keys its connection.
        tls = host.tls
        key = tls.key_of(self.head) if tls is not None and tls.keyed else None
        try:
            conn = await self._attempt_connection(host, key)
        except Overflow:
            return await self._overflow()  # Envoy never retries an overflow
        pool.stats.rq_total += 1
        host.stats.rq_total += 1
        self.conn = conn
        if tls is not None:
            self.stream.upstream_tls = conn.sock
        self.attempts += 1
        # %UPSTREAM_HOSTS_ATTEMPTED%: each host that got the request, once (Envoy 1.40
        # lists neither a refused connection nor a host twice).
        stream = self.stream
        if stream.hosts_tried is None:
            stream.hosts_tried = [host.label]
        elif host.label not in stream.hosts_tried:
            stream.hosts_tried.append(host.label)
        per_try = self.per_try_s
        idle = self.rplan.per_try_idle_s
        if not per_try and not idle:
            return await self._exchange_once(conn)
        now = trio.current_time()
        idle_fired = False
        with trio.CancelScope(deadline=now + per_try if per_try else INF) as scope:
            if not idle:
                return await self._exchange_once(conn)
            # per_try_idle_timeout: moved on by every read from the upstream (_touch).
            with trio.CancelScope(deadline=now + idle) as self.idle_scope:
                return await self._exchange_once(conn)
            idle_fired = True
        self.idle_scope = None
        if idle_fired:
            # Envoy's upstream_rq_per_try_idle_timeout: a per-try timeout of its own kind.
            pool.stats.rq_per_try_idle_timeout += 1
            reason = "upstream_per_try_idle_timeout"
        else:
            # The per-try timeout passed (Envoy's upstream_rq_per_try_timeout).
            assert scope.cancelled_caught
            pool.stats.rq_per_try_timeout += 1
            reason = ""
        self._drop_attempt()
        if self.stream.response_started:
            # Too late to answer or retry: the client's stream is reset.
            self.stream.flags = ResponseFlag.UPSTREAM_REQUEST_TIMEOUT
            raise UpstreamReset("per try timeout")
        host.outcomes.timeout()
        raise _AttemptFailed(Reset.PER_TRY_TIMEOUT, reason)

    async def _attempt_connection(self, host: HostState, key: str | None) -> UpstreamConnection:
        """An attempt's connection (attached to the max_requests breaker); raises
        Overflow (a breaker tripped) or _AttemptFailed (connect failure)."""
        pool = self.pool
        conn = pool.take_idle(host, key)
        self.reused = conn is not None
        if conn is None:
            try:
                conn = await pool.acquire(host, key)
            except ConnectFailure as exc:
                host.outcomes.connect_failed()
                raise _AttemptFailed(Reset.CONNECT_FAILURE, exc.reason) from None
        if not self.attached:
            if not pool.attach():
                pool.put_back(conn)
                raise Overflow()
            self.attached = True
            pool.stats.rq_active += 1
            host.stats.rq_active += 1
        return conn

    def _drop_attempt(self) -> None:
        """The attempt's connection is given up (a per-try timeout)."""
        if self.conn is not None:
            self.pool.destroy(self.conn)
            self.conn = None

    def _touch(self) -> None:
        """Bytes came from the upstream: the stream idle and per-try idle timers start
        over."""
        super()._touch()
        scope = self.idle_scope
        if scope is not None:
            scope.deadline = trio.current_time() + self.rplan.per_try_idle_s

    def _attempt_head(self) -> bytes:
        """The upstream head of this attempt (its timeout and attempt count)."""
        head = self.head
        if self.attempts > 1 and self.rp.timeout_header:
            head = self._expected_timeout_now(head)
        if self.rplan.attempt_count:
            head = head[:-2] + b"x-envoy-attempt-count: %d\r\n\r\n" % self.attempts
        return head

    def _retry_response(self, r: ResponseHead) -> bool:
        """Whether the response ``r`` is retried (the retry granted, its outcome
        counted); False: it goes to the client."""
        on = self.retry.retry_on
        would = self.retry.would_retry_status(r.status, _overloaded(r))
        if not would and on & _BY_HEADERS and not _overloaded(r):
            would = self._retriable_by_headers(r, on)
        if would and self.rplan.reset_headers:
            self.reset_ms = self.rplan.reset_interval_ms(r.headers)
        if self.retrying:
            self.retrying = False
            self.pool.retry_done(success=not would)
        if would and self._retry_granted(True):
            self.host.stats.rq_error += 1
            self.host.outcomes.response(r.status)
            return True
        return False

    async def _exchange_once(self, conn: UpstreamConnection) -> bool:
        stream = self.stream
        pool = self.pool
        head = self._attempt_head()
        parts = self.body_parts
        try:
            if parts:
                await io.send_parts(conn.sock, [head, *parts])
            else:
                await io.send_all(conn.sock, head)
        except OSError:
            r = None
        else:
            if not stream.request_complete:
                return await self._duplex(conn)  # the body did not fit: streamed once
            r = await self._read_response_head(conn)
        if r is None:
            pool.destroy(conn)
            self.conn = None
            self.host.outcomes.reset()
            raise _AttemptFailed(Reset.CONNECTION_TERMINATION)
        if self._retry_response(r):
            # The response is dropped with its connection (Envoy resets the stream).
            pool.destroy(conn)
            self.conn = None
            raise _Retry()
        return await self._relay(conn, r)

    def _retriable_by_headers(self, r: ResponseHead, on: int) -> bool:
        """retry_on envoy-ratelimited (the response says x-envoy-ratelimited) and
        retriable-headers (it matches one of retriable_headers)."""
        if on & RETRY_ENVOY_RATE_LIMITED and "x-envoy-ratelimited" in r.headers:
            return True
        return bool(on & RETRY_RETRIABLE_HEADERS) and any(
            headers_match(t, r.headers, "", "") for t in self.rplan.response_tests
        )

    def _expected_timeout_now(self, head: bytes) -> bytes:
        """A retry's x-envoy-expected-rq-timeout-ms: the per-try timeout or what is left
        of the route timeout, whichever is less (at least 1 ms), as Envoy sets it."""
        ms = self.rplan.expected_timeout_ms(self.per_try_s)
        d = self.deadline
        if self.rplan.timeout_s and d.kind is DeadlineKind.ROUTE and d.at != INF:
            left = int((d.at - self.timers.now()) * 1000)
            ms = max(1, min(ms, left))
        return _EXPECTED_TIMEOUT_LINE.sub(lambda m: m[1] + b": %d" % ms, head, count=1)

    # -- the body ---------------------------------------------------------------------------

    async def _keep_body(self) -> None:
        """Read and keep the request body (framed for the upstream) to send it with each
        attempt; one over the buffer limit is kept as far as read and streamed."""
        stream = self.stream
        sink = self.sink
        h = stream.head
        assert h is not None
        limit = self.plan.buffer_limit
        pieces = [bytes(p) for p in sink.take_buffered_body()]
        size = sum(len(p) for p in pieces)
        if not stream.request_complete and h.expect_continue:
            await sink.send_continue()
        while not stream.request_complete and size <= limit:
            for p in await sink.recv_body():
                pieces.append(bytes(p))
                size += len(p)
        parts: list = []
        frame_request(parts, pieces, self.chunked_up, stream.request_complete)
        self.body_parts = parts
        if stream.request_complete:
            self.arm_route()
            if size <= limit:
                return
        # Over the limit: no retry (the upstream gets what was read, then the rest).
        self.pool.stats.retry_or_shadow_abandoned += 1
        self.replayable = False


_BY_HEADERS = RETRY_RETRIABLE_HEADERS | RETRY_ENVOY_RATE_LIMITED
# Flags an UpstreamReset keeps (a per-try timeout's; an HTTP/2 upstream's RST_STREAM).
RETRIED_RESET_BEFORE_HEADERS = (
    "upstream connect error or disconnect/reset before headers. retried and the latest "
    "reset reason: "
)


class _Retry(Exception):
    """The response was one to retry and a retry was allowed."""


def _overloaded(r: ResponseHead) -> bool:
    return "x-envoy-overloaded" in r.headers
