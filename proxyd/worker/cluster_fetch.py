"""One HTTP/1.1 GET from a worker to a host of a cluster, for filters that fetch
something through a cluster (the jwt_authn filter's ``remote_jwks``).

The request goes the way a routed one does, less the filters: the host the cluster's
balancer picks, a connection of the cluster's ``DEFAULT`` pool in this worker (an idle
keep-alive one, else a new one, within the circuit breakers), counted in the cluster's
and the host's ``upstream_rq_*`` stats, retried as asked; the response is read whole with llhttp (up to
:data:`MAX_BODY`) and the connection goes back to the pool when the exchange ended
cleanly. Given to filters as :attr:`proxyd.filters.api.EpochFacts.http_get`."""

from __future__ import annotations

from collections.abc import Mapping

import httptools
import trio

from proxyd.protocol.retry import JitteredBackOff
from proxyd.worker import io
from proxyd.worker.pool import ConnectFailure, ConnPool, Overflow
from proxyd.worker.upstream import ClusterState

MAX_BODY = 1 << 20


class FetchError(Exception):
    """The fetch did not give a complete response (the message says why)."""


class _Response:
    """httptools' callbacks: the body, and whether the message (and only it) came."""

    on_header = on_status = on_chunk_header = on_chunk_complete = None

    def __init__(self) -> None:
        self.body = bytearray()
        self.head_done = False
        self.done = False
        self.keep_alive = False  # llhttp says so only until the message is complete
        self.extra = False  # bytes after the response: the connection is not reused
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        self.body += data
        if len(self.body) > MAX_BODY:
            raise FetchError("response body too large")

    def on_message_complete(self) -> None:
        self.done = True
        self.keep_alive = self.parser.should_keep_alive()


async def http_get(
    clusters: Mapping[str, ClusterState],
    cluster: str,
    authority: str,
    path: str,
    timeout_s: float,
    retry: tuple[int, float, float] | None = None,
) -> tuple[int, bytes]:
    """(status, body) of ``GET path`` with Host ``authority`` from a host of ``cluster``
    within ``timeout_s`` seconds (all attempts together). ``retry`` is (retries, base
    back-off s, max back-off s): a 5xx, a failed connect or a reset before a response
    is tried again on a host picked again, after Envoy's jittered back-off, within the
    cluster's retry circuit breaker, counted as the router counts retries. Raises
    :class:`FetchError`."""
    state = clusters.get(cluster)
    if state is None:
        raise FetchError(f"no cluster {cluster!r}")
    pool = state.pool("DEFAULT")
    request = (f"GET {path} HTTP/1.1\r\nhost: {authority}\r\n\r\n").encode("latin-1", "replace")
    retries_left = retry[0] if retry is not None else 0
    backoff = (
        JitteredBackOff(max(1, int(retry[1] * 1000)), max(1, int(retry[2] * 1000)))
        if retry is not None
        else None
    )
    retrying = False
    with trio.move_on_after(timeout_s):
        try:
            while True:
                result: tuple[int, bytes] | FetchError
                try:
                    result = await _exchange(
                        state, pool, request, retry is not None, retries_left > 0
                    )
                except FetchError as exc:
                    result = exc
                again = isinstance(result, FetchError) or result[0] >= 500
                if retrying:
                    retrying = False
                    pool.retry_done(success=not again)
                if not again or retries_left <= 0 or backoff is None:
                    break
                if not pool.retry_allowed():  # counts upstream_rq_retry (or _overflow)
                    break
                retrying = True
                retries_left -= 1
                pool.stats.rq_retry_backoff_exponential += 1
                await trio.sleep(backoff.next_backoff_ms() / 1000)
        finally:
            if retrying:
                pool.retry_done(success=False)
        if isinstance(result, FetchError):
            raise result
        return result
    raise FetchError("timed out")


async def _exchange(
    state: ClusterState, pool: ConnPool, request: bytes, retried: bool, may_retry: bool
) -> tuple[int, bytes]:
    """One attempt: a host, a connection of the pool, the request and its response.
    Under a retry policy (``retried``) a 5xx closes its connection, as Envoy's router
    resets it (the last attempt's too); one that will be retried (``may_retry``) is
    not counted by status."""
    host = state.balancer.pick()
    if host is None:
        raise FetchError(f"no host in cluster {state.name!r}")
    conn = pool.take_idle(host)
    if conn is None:
        try:
            conn = await pool.acquire(host)
        except (ConnectFailure, Overflow) as exc:
            raise FetchError(f"no connection to {host.label}: {exc!r}") from None
    if not pool.attach():
        pool.put_back(conn)
        raise FetchError(f"cluster {state.name!r} is at max_requests")
    pool.stats.rq_total += 1
    host.stats.rq_total += 1
    pool.stats.rq_active += 1
    host.stats.rq_active += 1
    response = _Response()
    parser = response.parser
    clean = False
    try:
        await io.send_all(conn.sock, request)
        view = memoryview(bytearray(65536))
        while not response.done:
            n = await io.recv_into(conn.sock, view)
            if n == 0:
                break
            parser.feed_data(bytes(view[:n]))
        clean = response.done and not response.extra and response.keep_alive
        if retried and response.head_done and parser.get_status_code() >= 500:
            clean = False
    except (OSError, httptools.HttpParserError) as exc:
        raise FetchError(f"fetch from {host.label} failed: {exc!r}") from None
    finally:
        pool.detach()
        pool.stats.rq_active -= 1
        host.stats.rq_active -= 1
        if clean:
            pool.release(conn, True)
        else:
            pool.destroy(conn)
    if not response.head_done:
        raise FetchError("the connection closed before a response")
    status = parser.get_status_code()
    if not (may_retry and status >= 500):
        pool.stats.count_response(status)
    # Without a length the body ends with the connection (the loop's EOF).
    return status, bytes(response.body)
