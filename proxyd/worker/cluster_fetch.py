"""One HTTP/1.1 GET from a worker to a host of a cluster, for filters that fetch
something through a cluster (the jwt_authn filter's ``remote_jwks``).

The request goes the way a routed one does, less the filters: the host the cluster's
balancer picks, a connection of the cluster's ``DEFAULT`` pool in this worker (an idle
keep-alive one, else a new one, within the circuit breakers), counted in the cluster's
and the host's ``upstream_rq_*`` stats; the response is read whole with llhttp (up to
:data:`MAX_BODY`) and the connection goes back to the pool when the exchange ended
cleanly. Given to filters as :attr:`proxyd.filters.api.EpochFacts.http_get`."""

from __future__ import annotations

from collections.abc import Mapping

import httptools
import trio

from proxyd.worker import io
from proxyd.worker.pool import ConnectFailure, Overflow
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
    clusters: Mapping[str, ClusterState], cluster: str, authority: str, path: str, timeout_s: float
) -> tuple[int, bytes]:
    """(status, body) of ``GET path`` with Host ``authority`` from a host of ``cluster``
    within ``timeout_s`` seconds. Raises :class:`FetchError`."""
    state = clusters.get(cluster)
    if state is None:
        raise FetchError(f"no cluster {cluster!r}")
    host = state.balancer.pick()
    if host is None:
        raise FetchError(f"no host in cluster {cluster!r}")
    pool = state.pool("DEFAULT")
    request = (f"GET {path} HTTP/1.1\r\nhost: {authority}\r\n\r\n").encode("latin-1", "replace")
    with trio.move_on_after(timeout_s):
        conn = pool.take_idle(host)
        if conn is None:
            try:
                conn = await pool.acquire(host)
            except (ConnectFailure, Overflow) as exc:
                raise FetchError(f"no connection to {host.label}: {exc!r}") from None
        if not pool.attach():
            pool.put_back(conn)
            raise FetchError(f"cluster {cluster!r} is at max_requests")
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
        pool.stats.count_response(status)
        # Without a length the body ends with the connection (the loop's EOF).
        return status, bytes(response.body)
    raise FetchError("timed out")
