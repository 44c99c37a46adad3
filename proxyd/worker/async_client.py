"""Calls a filter makes to a cluster of the epoch (Envoy's async client): one per
worker and epoch, given to filters as ``EpochFacts.client``
(:class:`proxyd.filters.api.AsyncClient`).

* :meth:`AsyncClient.http_call` sends one HTTP/1.1 request through the cluster's
  connection pool (``DEFAULT`` priority: its circuit breakers, keep-alive connections
  and stats are the cluster's, as for any request) and reads the whole response, to
  whose headers it adds ``x-envoy-upstream-service-time`` as Envoy's router does.
* :meth:`AsyncClient.grpc_call` makes one unary gRPC call to a host of the cluster
  (:mod:`proxyd.worker.grpc_unary`: on a kept HTTP/2 connection to the host, one call
  at a time on each).

Either raises :class:`~proxyd.filters.api.CallFailed` when no answer came within the
time given: no such cluster, no healthy host, connect failure, overflow, reset,
timeout (counted as the cluster's ``upstream_rq_timeout``) or a broken response.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from proxyd.errors import ProtocolError
from proxyd.filters.api import CallFailed, HttpAnswer
from proxyd.protocol.http1 import response_has_body
from proxyd.protocol.http1_framing import BodyReader
from proxyd.worker import io
from proxyd.worker.grpc_unary import GrpcCallError, GrpcConnections
from proxyd.worker.pool import ConnectFailure, Overflow, UpstreamConnection

if TYPE_CHECKING:
    from proxyd.worker.upstream import ClusterState

MAX_BODY = 1 << 20  # a side call's response body beyond this is a failure
# This worker's kept gRPC connections (the epochs' clients share them).
GRPC_CONNECTIONS = GrpcConnections()


class _Closed(Exception):
    pass


def header_lines(raw: bytes) -> tuple[tuple[str, str], ...]:
    """The header lines of a response head (lower-case names, in order)."""
    end = raw.find(b"\r\n\r\n")
    out = []
    for line in raw[: end if end >= 0 else len(raw)].split(b"\r\n")[1:]:
        i = line.find(b":")
        if i > 0:
            out.append(
                (line[:i].lower().decode("latin-1"), line[i + 1 :].strip().decode("latin-1"))
            )
    return tuple(out)


class AsyncClient:
    __slots__ = ("clusters",)

    def __init__(self, clusters: dict[str, ClusterState]) -> None:
        self.clusters = clusters

    async def http_call(
        self, cluster: str, head: bytes, body: bytes, timeout_s: float
    ) -> HttpAnswer:
        state = self.clusters.get(cluster)
        if state is None:
            raise CallFailed(f"cluster '{cluster}' is not defined")
        if state.cluster.http2:
            # proxyd's upstream pools speak HTTP/1.1 (docs/configuration.md, ext_authz).
            raise CallFailed(f"cluster '{cluster}' is an HTTP/2 cluster")
        pool = state.pool("DEFAULT")
        cstats = pool.stats
        host = state.balancer.pick()
        if host is None:
            cstats.count_response(503)
            raise CallFailed("no healthy upstream")
        attached = False
        conn: UpstreamConnection | None = None
        host.active_requests += 1
        try:
            with trio.move_on_after(timeout_s):
                conn = pool.take_idle(host)
                if conn is None:
                    try:
                        conn = await pool.acquire(host)
                    except ConnectFailure:
                        cstats.count_response(503)
                        host.stats.rq_error += 1
                        host.outcomes.connect_failed()
                        raise CallFailed("upstream connect failure") from None
                    except Overflow:
                        cstats.count_response(503)
                        raise CallFailed("upstream overflow") from None
                if not pool.attach():
                    pool.put_back(conn)
                    conn = None
                    cstats.count_response(503)
                    raise CallFailed("upstream overflow")
                attached = True
                cstats.rq_active += 1
                host.stats.rq_active += 1
                cstats.rq_total += 1
                host.stats.rq_total += 1
                sent = trio.current_time()
                await io.send_all(conn.sock, head + body if body else head)
                answer, reusable = await _read_response(conn, head.startswith(b"HEAD "), sent)
                cstats.count_response(answer.status)
                if answer.status < 500:
                    host.stats.rq_success += 1
                else:
                    host.stats.rq_error += 1
                host.outcomes.response(answer.status)
                pool.release(conn, reusable)
                conn = None
                return answer
            cstats.rq_timeout += 1
            cstats.count_response(504)
            raise CallFailed("timeout")
        except (OSError, ProtocolError, _Closed) as exc:
            raise CallFailed(f"upstream reset: {exc}") from None
        finally:
            host.active_requests -= 1
            if attached:
                pool.requests -= 1
                cstats.rq_active -= 1
                host.stats.rq_active -= 1
            if conn is not None:
                pool.destroy(conn)

    async def grpc_call(
        self,
        cluster: str,
        authority: str,
        method: str,
        message: bytes,
        timeout_s: float,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> tuple[int, bytes]:
        state = self.clusters.get(cluster)
        if state is None:
            raise CallFailed(f"cluster '{cluster}' is not defined")
        host = state.balancer.pick()
        if host is None:
            raise CallFailed("no healthy upstream")
        try:
            with trio.fail_after(timeout_s):
                return await GRPC_CONNECTIONS.call(
                    host.address, host.port, authority, method, message, metadata
                )
        except (OSError, trio.TooSlowError, GrpcCallError) as exc:
            raise CallFailed(f"gRPC call failed: {exc!r}") from None


async def _read_response(
    conn: UpstreamConnection, head_request: bool, sent: float
) -> tuple[HttpAnswer, bool]:
    rb = conn.rb
    while True:
        view = rb.next_head() if rb.start != rb.end else None
        if view is not None:
            r = conn.parser.parse(view, {})
            if 100 <= r.status < 200:
                continue
            break
        await _receive(conn)
    # Envoy's async client has a router, which adds the upstream's service time.
    service_ms = int((trio.current_time() - sent) * 1000)
    headers = (*header_lines(r.raw), ("x-envoy-upstream-service-time", str(service_ms)))
    if not response_has_body(r.status, head_request):
        return HttpAnswer(r.status, headers, b""), r.keep_alive
    if r.chunked:
        reader = BodyReader(chunked=True)
    elif r.content_length >= 0:
        reader = BodyReader(r.content_length)
    else:
        reader = BodyReader(until_close=True)
    body = bytearray()
    for piece in reader.read(rb):
        body += piece
    keep = r.keep_alive and (r.chunked or r.content_length >= 0)
    while not reader.done:
        if len(body) > MAX_BODY:
            raise ProtocolError("side call response body too large", 502)
        try:
            await _receive(conn)
        except _Closed:
            if r.content_length < 0 and not r.chunked:
                keep = False
                break
            raise
        for piece in reader.read(rb):
            body += piece
    return HttpAnswer(r.status, headers, bytes(body)), keep


async def _receive(conn: UpstreamConnection) -> None:
    rb = conn.rb
    while True:
        n = rb.receive(conn.sock.recv_into)
        if n > 0:
            return
        if n == 0:
            raise _Closed("connection closed")
        await io.wait_readable(conn.sock)
