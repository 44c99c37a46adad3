"""The router with a retry policy, for a route whose cluster speaks HTTP/2.

:class:`H2RetryingExchange` is :class:`~proxyd.worker.retrying.RetryingExchange`
(attempts, per-try timeouts, back-off, the retry budget and every retry condition)
with each attempt made on a stream of the cluster's :class:`~proxyd.worker.h2_pool.H2Pool`
by :class:`~proxyd.worker.h2_upstream.H2Streaming`: the kept request body goes out on
the stream, and a stream the host resets before the response head is an attempt that
ended without a response, ``refused-stream`` when the reset was REFUSED_STREAM (or the
stream was above the last stream id of the host's GOAWAY), which ``retry_on``
``refused-stream``, ``reset``, ``5xx`` and ``gateway-error`` retry, as in Envoy. A
retried response's stream is reset (CANCEL). Hedging (``hedge_on_per_try_timeout``) on
such routes is refused by the config.
"""

from __future__ import annotations

from typing import Any

from proxyd.protocol.h2_upstream import REFUSED_STREAM, reset_reason
from proxyd.protocol.retry import Reset
from proxyd.worker.h2_pool import StreamGone
from proxyd.worker.h2_upstream import H2Streaming
from proxyd.worker.pool import ConnectFailure, Overflow, UpstreamConnection
from proxyd.worker.retrying import RetryingExchange, _AttemptFailed, _Retry
from proxyd.worker.upstream import HostState


class H2RetryingExchange(H2Streaming, RetryingExchange):
    __slots__ = ("h2pool", "up", "h2conn")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cluster = self.rp.cluster
        assert cluster is not None
        self.h2pool = cluster.h2pools[self.pool.priority]
        self.pool = self.h2pool
        self.up = None
        self.h2conn = None
        self.chunked_up = False  # the kept body goes as DATA, unframed

    async def _attempt_connection(self, host: HostState, key: str | None) -> UpstreamConnection:
        pool = self.h2pool
        self.reused = False
        try:
            conn = await pool.acquire_stream(host, key)
        except ConnectFailure as exc:
            host.outcomes.connect_failed()
            raise _AttemptFailed(Reset.CONNECT_FAILURE, exc.reason) from None
        if not self.attached:
            if not pool.attach():
                pool.stream_done(conn)
                raise Overflow()
            self.attached = True
            pool.stats.rq_active += 1
            host.stats.rq_active += 1
        self.h2conn = conn
        return conn.uc

    async def _exchange_once(self, uc: UpstreamConnection) -> bool:
        conn = self.h2conn
        assert conn is not None
        stream = self.stream
        try:
            try:
                up = await self._open_stream(conn, self._attempt_head(), self.body_parts)
            except StreamGone:
                # (GOAWAY or the host's limit between the pick and the stream: it never
                # went out)
                raise _AttemptFailed(
                    Reset.REFUSED_STREAM,
                    "remote refused stream reset",
                    "upstream_reset_before_response_started{remote_refused_stream_reset}",
                ) from None
            if not stream.request_complete:
                # The body did not fit the buffer: streamed once, never retried.
                return await self._duplex_h2(conn, up, continued=True)
            r = await self._response_head(conn, up)
            if r is None:
                self.host.outcomes.reset()
                reason, detail = reset_reason(up.reset_code)
                refused = up.reset_code == REFUSED_STREAM
                raise _AttemptFailed(
                    Reset.REFUSED_STREAM if refused else Reset.CONNECTION_TERMINATION,
                    reason,
                    f"upstream_reset_before_response_started{{{detail}}}",
                    remote=up.reset_code is not None,
                )
            if self._retry_response(r):
                raise _Retry()
            return await self._relay_h2(conn, up, r)
        finally:
            self.conn = None
            await self._end_stream()
