"""The router with ``hedge_policy.hedge_on_per_try_timeout``: attempts side by side.

A route whose retry policy (its own or its virtual host's) is hedged gets
:class:`HedgingExchange` (the route's plan names the class, so no other route pays for
it). It differs from :class:`~proxyd.worker.retrying.RetryingExchange` in what a per-try
timeout does, as Envoy's router does it (``onSoftPerTryTimeout``):

* the attempt is not ended: its connection stays open and its response may still win;
  the timeout counts for outlier detection, and when a retry is left (and the circuit
  breaker allows one) a retry starts after the usual back-off, beside it, whatever the
  ``retry_on`` conditions (there must be some, as for any retry). A timed-out attempt
  is not retried again;
* the first response head that is used wins; the other attempts' connections are
  closed and a retry still waiting for its back-off is dropped;
* a response or a reset that would be retried but cannot be (no retry left, or the
  attempt already timed out) is dropped while another attempt, or a retry, is still
  outstanding; the client gets it only when nothing else is;
* only the route timeout ends the request then (504 ``UT``): with hedging no attempt
  ends by its per-try timeout.

``upstream_rq_per_try_timeout`` is not counted for a hedged per-try timeout (Envoy
counts it only when it ends an attempt). A request body too large to be kept
(``retry_or_shadow_abandoned``) is sent once, as without hedging.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio

from proxyd.protocol.http1 import ResponseHead
from proxyd.protocol.retry import Reset
from proxyd.worker import io
from proxyd.worker.deadlines import INF
from proxyd.worker.pool import ConnectFailure, Overflow, UpstreamConnection
from proxyd.worker.retrying import (
    _BY_HEADERS,
    RetryingExchange,
    _AttemptFailed,
    _overloaded,
)
from proxyd.worker.stream import (
    DownstreamReset,
    LocalReplied,
    UpstreamProtocolError,
    UpstreamReset,
)

if TYPE_CHECKING:
    from proxyd.worker.upstream import HostState


class _Try:
    """One attempt: its host and connection, when its per-try timeout passes (trio
    time; inf: none or passed), and whether a retry started when it passed (Envoy's
    ``retried()``: its own outcome is then never retried)."""

    __slots__ = ("host", "conn", "per_try_at", "timed_out", "t_sent", "number")

    def __init__(self, host: HostState, conn: UpstreamConnection, per_try_at: float) -> None:
        self.host = host
        self.conn = conn
        self.per_try_at = per_try_at
        self.timed_out = False
        self.t_sent = 0.0
        self.number = 0


class _Overflowed(Exception):
    """A circuit breaker refused the attempt (answered 503 UO)."""


class HedgingExchange(RetryingExchange):
    """:class:`RetryingExchange` for a route whose hedge_policy hedges on per-try
    timeouts."""

    __slots__ = ("tries", "events", "retry_at")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.tries: list[_Try] = []
        # Outcomes that arrived together with the one being handled, in order.
        self.events: list[tuple[str, _Try | None, ResponseHead | None]] = []
        # When the retry waiting for its back-off starts (trio time; None: none waits).
        self.retry_at: float | None = None

    async def run(self) -> bool:
        stream = self.stream
        pool = self.pool
        h = stream.head
        assert h is not None
        stream.upstream_host = self.host.label
        self.arm_start()
        try:
            if h.has_body:
                await self._keep_body()
            if not self.replayable:
                # The body did not fit: one attempt, streamed (no retry, no hedge).
                self.host.active_requests += 1
                try:
                    return await self._attempt()
                except _AttemptFailed as failed:
                    return await self._give_up(failed)
                finally:
                    self.host.active_requests -= 1
            return await self._hedged()
        except _Overflowed:
            return False
        except trio.Cancelled:
            self._deadline_fired()
            raise
        except (UpstreamProtocolError, DownstreamReset, UpstreamReset, LocalReplied) as exc:
            return await self._ended_by(exc)
        finally:
            for t in self.tries:
                t.host.active_requests -= 1
                pool.destroy(t.conn)
            self.tries.clear()
            if self.attached:
                pool.requests -= 1  # ResourceManager.detach(), inline
                pool.stats.rq_active -= 1
                self.host.stats.rq_active -= 1
            if self.retrying:
                pool.retry_done(success=False)
            if self.conn is not None:
                pool.destroy(self.conn)
                self.conn = None

    # -- the attempts -------------------------------------------------------------------

    async def _hedged(self) -> bool:
        failed = await self._start(self.host)
        while True:
            if failed is not None:
                if not self._outstanding():
                    return await self._give_up(failed)
                failed = None
            kind, t, r = await self._next_event()
            if kind == "timer":
                failed = await self._timers_passed()
                continue
            assert t is not None
            if kind == "error":
                if not self._outstanding_besides(t):
                    raise UpstreamProtocolError("bad response head")
                self._drop(t)
                continue
            if r is None:
                failed = self._reset(t)
                continue
            if self._use(t, r):
                return await self._win(t, r)

    def _outstanding(self) -> bool:
        return bool(self.tries) or self.retry_at is not None

    async def _start(self, host: HostState) -> _AttemptFailed | None:
        """A new attempt to ``host``: connected and sent (None), or how it failed."""
        pool = self.pool
        stream = self.stream
        stream.attempts += 1  # %UPSTREAM_REQUEST_ATTEMPT_COUNT%
        if self.rplan.priority_update:
            self.attempted.append(host.priority)
        if host is not self.host:
            if self.attached:
                self.host.stats.rq_active -= 1
                host.stats.rq_active += 1
            self.host = host
            stream.upstream_host = host.label
        conn = pool.take_idle(host)
        if conn is None:
            try:
                conn = await pool.acquire(host)
            except ConnectFailure as exc:
                host.outcomes.connect_failed()
                return self._failed(None, _AttemptFailed(Reset.CONNECT_FAILURE, exc.reason))
            except Overflow:
                if self._outstanding():
                    return None  # (Envoy never retries an overflow; the others may answer)
                await self._overflow()
                raise _Overflowed() from None
        if not self.attached:
            if not pool.attach():
                pool.put_back(conn)
                if self._outstanding():
                    return None
                await self._overflow()
                raise _Overflowed()
            self.attached = True
            pool.stats.rq_active += 1
            host.stats.rq_active += 1
        pool.stats.rq_total += 1
        host.stats.rq_total += 1
        self.attempts += 1
        if stream.hosts_tried is None:
            stream.hosts_tried = [host.label]
        elif host.label not in stream.hosts_tried:
            stream.hosts_tried.append(host.label)
        now = trio.current_time()
        t = _Try(host, conn, now + self.per_try_s if self.per_try_s else INF)
        t.number = self.attempts
        host.active_requests += 1
        self.tries.append(t)
        head = self.head
        if self.attempts > 1 and self.rp.timeout_header:
            head = self._expected_timeout_now(head)
        if self.rplan.attempt_count:
            head = head[:-2] + b"x-envoy-attempt-count: %d\r\n\r\n" % self.attempts
        t.t_sent = time.monotonic()
        try:
            if self.body_parts:
                await io.send_parts(conn.sock, [head, *self.body_parts])
            else:
                await io.send_all(conn.sock, head)
        except OSError:
            host.outcomes.reset()
            return self._failed(t, _AttemptFailed(Reset.CONNECTION_TERMINATION))
        return None

    async def _next_event(self) -> tuple[str, _Try | None, ResponseHead | None]:
        """The next outcome: an attempt's response head (None: its connection closed
        first), or ``timer`` (a per-try timeout or the waiting retry's back-off)."""
        if self.events:
            return self.events.pop(0)
        wake = min((t.per_try_at for t in self.tries), default=INF)
        if self.retry_at is not None:
            wake = min(wake, self.retry_at)
        got = self.events

        async def read(t: _Try, scope: trio.CancelScope) -> None:
            try:
                r = await self._read_response_head(t.conn)
            except UpstreamProtocolError:
                got.append(("error", t, None))
            else:
                got.append(("head", t, r))
            scope.cancel()

        async with trio.open_nursery() as nursery:
            scope = nursery.cancel_scope
            for t in self.tries:
                nursery.start_soon(read, t, scope)
            if wake != INF:
                scope.deadline = wake
        if not got:
            return ("timer", None, None)
        return got.pop(0)

    async def _timers_passed(self) -> _AttemptFailed | None:
        """Per-try timeouts that passed (soft: the attempt goes on), then the waiting
        retry once its back-off is over."""
        now = trio.current_time()
        for t in self.tries:
            if t.per_try_at <= now:
                t.per_try_at = INF
                t.host.outcomes.timeout()  # outlier detection, as Envoy records it
                # Envoy's shouldHedgeRetryPerTryTimeout: retried if a retry is left
                # (whatever retry_on says, as long as it says something); only then is
                # the attempt marked retried.
                if self.retry.retry_on and self._outcome(True):
                    t.timed_out = True
                    self._schedule_retry()
        if self.retry_at is not None and self.retry_at <= now:
            self.retry_at = None
            host = self._retry_host()
            if host is None:
                return _AttemptFailed(Reset.CONNECT_FAILURE, "no healthy upstream")
            return await self._start(host)
        return None

    def _outcome(self, would: bool) -> bool:
        """Envoy's shouldRetry on an outcome: the retry outstanding is done (a success
        when this one is not retriable), then one more if granted."""
        if would and self.retrying and self.retry.retries_left <= 0:
            # No retry left: Envoy 1.40 counts upstream_rq_retry_limit_exceeded and the
            # retry outstanding stays so (a later response may count its success).
            return self._retry_granted(True)
        if self.retrying:
            self.retrying = False
            self.pool.retry_done(success=not would)
        return self._retry_granted(would)

    def _schedule_retry(self) -> None:
        if not self.retrying:
            return
        self.pool.stats.rq_retry_backoff_exponential += 1
        self.retry_at = trio.current_time() + self.retry.next_backoff_s()

    def _failed(self, t: _Try | None, failed: _AttemptFailed) -> _AttemptFailed | None:
        """An attempt ended without a response: retried as its reset says (not one
        that timed out: it was retried then); the failure when nothing else is left."""
        if t is not None:
            self._drop(t)
            if t.timed_out:
                return failed
        if self._outcome(self.retry.would_retry_reset(failed.reset)):
            self._schedule_retry()
            return None
        return failed

    def _reset(self, t: _Try) -> _AttemptFailed | None:
        t.host.outcomes.reset()
        return self._failed(t, _AttemptFailed(Reset.CONNECTION_TERMINATION))

    def _drop(self, t: _Try) -> None:
        self.tries.remove(t)
        t.host.active_requests -= 1
        self.pool.destroy(t.conn)

    def _use(self, t: _Try, r: ResponseHead) -> bool:
        """Whether the response head is the one the client gets."""
        on = self.retry.retry_on
        would = self.retry.would_retry_status(r.status, _overloaded(r))
        if not would and on & _BY_HEADERS and not _overloaded(r):
            would = self._retriable_by_headers(r, on)
        if t.timed_out:
            # Already retried: used unless retriable while something else may answer.
            if would and self._outstanding_besides(t):
                self._drop_response(t, r)
                return False
            return True
        if self._outcome(would):
            self._drop_response(t, r)
            self._schedule_retry()
            return False
        if would and self._outstanding_besides(t):
            self._drop_response(t, r)
            return False
        return True

    def _outstanding_besides(self, t: _Try) -> bool:
        return self.retry_at is not None or any(o is not t for o in self.tries)

    def _drop_response(self, t: _Try, r: ResponseHead) -> None:
        t.host.stats.rq_error += 1
        t.host.outcomes.response(r.status)
        self._drop(t)

    async def _win(self, t: _Try, r: ResponseHead) -> bool:
        """The response the client gets: the other attempts and a waiting retry end."""
        for other in list(self.tries):
            if other is not t:
                self._drop(other)
        self.retry_at = None
        self.tries.remove(t)
        t.host.active_requests -= 1
        if t.host is not self.host:
            if self.attached:
                self.host.stats.rq_active -= 1
                t.host.stats.rq_active += 1
            self.host = t.host
        self.stream.upstream_host = t.host.label
        self.conn = t.conn
        self.t_sent = t.t_sent
        return await self._relay(t.conn, r)
