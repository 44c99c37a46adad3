"""RouteAction.request_mirror_policies: each request of the route is shadowed to other
clusters, fire and forget, as Envoy 1.40's router shadows it.

* :class:`MirrorPlan` is a route's policies, compiled per epoch (``RoutePlan.mirror``;
  None for a route without any, which then pays nothing). For each request
  :func:`start` picks the shadow clusters (``cluster``, or the cluster the
  ``cluster_header`` request header names when it exists; ``runtime_fraction`` drawn per
  request) and starts one task per shadow in the worker's nursery.
* The shadow's head is the upstream head the primary got (after the route's header
  mutations and rewrites), with Envoy's shadow edits: ``-shadow`` appended to the host
  part of Host (before a port: ``a.example-shadow:8080``, ``[::1]-shadow:8080``) unless
  ``disable_shadow_host_suffix_append``, ``x-envoy-internal: true``, and
  ``192.0.2.2`` appended to ``x-forwarded-for`` (the address Envoy's async client
  stream gives as its own; checked against Envoy 1.40).
* The request body streams to the shadows as the primary's router pulls it from the
  client: :class:`MirrorTap` wraps the stream's sink and copies each piece into every
  shadow's :class:`_Feed`. A shadow that falls behind by more than the listener's
  buffer limit (``per_connection_buffer_limit_bytes``) holds the client's body back
  until it has caught up, as Envoy's shadow streams do (they take the downstream's
  watermark callbacks), so a shadow never holds more than that in memory; a shadow that
  fails or ends stops taking copies at once, and when the stream ends before its body
  did, the shadows are abandoned (their connections closed).
* A shadow request goes through the shadow cluster's connection pool like any request:
  its circuit breakers (max_pending_requests, max_connections, max_requests) bound how
  many shadows wait or run, and a shadow beyond them is dropped at once (counted as
  Envoy counts an overflow). Its stats are the shadow cluster's (``upstream_rq_total``,
  ``upstream_rq_<code>``, ``upstream_cx_connect_fail``, ...). The route timeout applies
  from the end of the request. Its response is read and dropped; nothing of it, nor of
  its failure, reaches the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from proxyd.errors import ProtocolError
from proxyd.protocol.header_mutations import join_head, split_head
from proxyd.protocol.http1 import response_has_body
from proxyd.protocol.http1_framing import BodyReader
from proxyd.protocol.runtime import RANDOM, Snapshot
from proxyd.worker import io
from proxyd.worker.pool import ConnectFailure, Overflow, UpstreamConnection
from proxyd.worker.router import frame_request

if TYPE_CHECKING:
    from proxyd.epoch import MirrorPolicy
    from proxyd.worker.plan import ListenerPlan, RoutePlan
    from proxyd.worker.stream import Stream
    from proxyd.worker.upstream import ClusterState

SHADOW_XFF = b"192.0.2.2"
SUFFIX = b"-shadow"


class _Target:
    __slots__ = ("cluster", "header", "fraction", "suffix")

    def __init__(self, p: MirrorPolicy, runtime: Snapshot) -> None:
        self.cluster = p.cluster
        self.header = p.cluster_header
        self.fraction = runtime.runtime_fraction(p.fraction) if p.fraction is not None else None
        self.suffix = p.host_suffix


class MirrorPlan:
    """A route's request_mirror_policies for one epoch."""

    __slots__ = ("targets", "clusters", "headers")

    def __init__(
        self,
        policies: tuple[MirrorPolicy, ...],
        clusters: dict[str, ClusterState],
        runtime: Snapshot,
    ) -> None:
        self.targets = tuple(_Target(p, runtime) for p in policies)
        self.clusters = clusters
        # The request headers that name shadow clusters (the parser collects them).
        self.headers = frozenset(t.header for t in self.targets if t.header)

    def picks(self, headers: dict[str, str]) -> list[tuple[ClusterState, bool]]:
        """The shadow clusters of one request, with whether Host gets the suffix."""
        out = []
        for t in self.targets:
            name = t.cluster or headers.get(t.header, "")
            cluster = self.clusters.get(name) if name else None
            if cluster is None:
                continue
            if t.fraction is not None:
                numerator, denominator = t.fraction
                if RANDOM.getrandbits(64) % denominator >= numerator:
                    continue
            out.append((cluster, t.suffix))
        return out


def shadow_host(host: bytes) -> bytes:
    """Envoy's shadow Host: ``-shadow`` after the host, before any port."""
    if host.startswith(b"["):
        end = host.find(b"]")
        if end > 0:
            return host[: end + 1] + SUFFIX + host[end + 1 :]
        return host + SUFFIX
    name, colon, port = host.rpartition(b":")
    if colon and port.isdigit() and name:
        return name + SUFFIX + b":" + port
    return host + SUFFIX


def shadow_head(head: bytes, suffix: bool) -> bytes:
    """The upstream head as the shadow gets it (see the module docstring)."""
    start, lines, rest = split_head(head)
    out = []
    xff = b""
    for name, line in lines:
        if name == b"host" and suffix:
            line = b"host: " + shadow_host(line[5:].strip())
        elif name == b"x-forwarded-for":
            value = line[16:].strip()
            xff = value if not xff else xff + b"," + value
            continue
        elif name == b"x-envoy-internal":
            continue
        out.append((name, line))
    xff = xff + b"," + SHADOW_XFF if xff else SHADOW_XFF
    out.append((b"x-forwarded-for", b"x-forwarded-for: " + xff))
    out.append((b"x-envoy-internal", b"x-envoy-internal: true"))
    return join_head(start, out, rest)


class _Feed:
    """The body pieces one shadow has yet to send."""

    __slots__ = ("pieces", "size", "done", "abandoned", "wake", "drained", "limit", "scope")

    def __init__(self, limit: int) -> None:
        self.pieces: list[bytes] = []
        self.size = 0
        self.done = False  # the request body is complete
        self.abandoned = False  # fell behind, or the stream ended first
        self.wake = trio.Event()
        self.drained = trio.Event()  # set when the shadow took what was waiting
        self.limit = limit
        # The shadow's cancel scope: abandoning it ends the shadow wherever it waits
        # (a shadow upstream that stops reading blocks its sends).
        self.scope: trio.CancelScope | None = None

    def push(self, pieces: list, last: bool) -> None:
        if self.abandoned:
            return
        for p in pieces:
            if len(p):
                self.pieces.append(bytes(p))
                self.size += len(p)
        if last:
            self.done = True
        self.wake.set()

    def abandon(self) -> None:
        self.abandoned = True
        self.pieces = []
        self.size = 0
        self.wake.set()
        self.drained.set()
        if self.scope is not None:
            self.scope.cancel()

    async def wait_caught_up(self) -> None:
        """Wait while more than the buffer limit waits for the shadow."""
        while self.size > self.limit and not self.abandoned:
            self.drained = trio.Event()
            await self.drained.wait()

    async def take(self) -> list[bytes]:
        """The pieces waiting (at least one, or none once done); raises _Abandoned."""
        while not self.pieces and not self.done and not self.abandoned:
            self.wake = trio.Event()
            await self.wake.wait()
        if self.abandoned:
            raise _Abandoned()
        out = self.pieces
        self.pieces = []
        self.size = 0
        self.drained.set()
        return out


class _Abandoned(Exception):
    """The shadow's body cannot be sent whole (see :class:`_Feed`)."""


class MirrorTap:
    """The stream's sink, copying the request body to the shadows' feeds."""

    __slots__ = ("inner", "stream", "feeds")

    def __init__(self, inner: Any, stream: Stream, feeds: list[_Feed]) -> None:
        self.inner = inner
        self.stream = stream
        self.feeds = feeds

    def _copy(self, pieces: list) -> None:
        last = self.stream.request_complete
        for f in self.feeds:
            f.push(pieces, last)

    def take_buffered_body(self) -> list[memoryview]:
        pieces = self.inner.take_buffered_body()
        self._copy(pieces)
        return pieces

    async def recv_body(self) -> list[memoryview]:
        for f in self.feeds:
            if f.size > f.limit:
                await f.wait_caught_up()
        pieces = await self.inner.recv_body()
        self._copy(pieces)
        return pieces

    async def send_continue(self) -> None:
        await self.inner.send_continue()

    def wants_close(self) -> bool:
        return bool(self.inner.wants_close())

    async def send_headers(
        self, r: Any, service_ms: int, length: int, first: list, end_stream: bool
    ) -> None:
        await self.inner.send_headers(r, service_ms, length, first, end_stream)

    async def send_data(self, parts: list, end_stream: bool) -> None:
        await self.inner.send_data(parts, end_stream)

    async def send_local_reply(
        self, status: int, body: str | bytes, extra: bytes = b"", chunked: bool = False
    ) -> None:
        await self.inner.send_local_reply(status, body, extra, chunked)

    def complete(self) -> None:
        """The stream ended: a shadow still waiting for body it will never get ends."""
        for f in self.feeds:
            if not f.done:
                f.abandon()
        complete = getattr(self.inner, "complete", None)
        if complete is not None:
            complete()


def start(stream: Stream, plan: ListenerPlan, conn: Any, rp: RoutePlan, head: bytes) -> None:
    """Shadow ``stream`` (whose upstream head is ``head``) as its route says."""
    mirror = rp.mirror
    assert mirror is not None
    h = stream.head
    assert h is not None
    picks = mirror.picks(h.headers)
    worker = getattr(conn, "worker", None)
    if not picks or worker is None:
        return
    feeds: list[_Feed] = []
    for cluster, suffix in picks:
        feed = None
        if h.has_body:
            feed = _Feed(plan.buffer_limit)
            feeds.append(feed)
        shadow = Shadow(cluster, shadow_head(head, suffix), feed, h.chunked, rp.timeout_s)
        shadow.method_head = h.method == "HEAD"
        worker.spawn(shadow.run)
    if feeds:
        stream.sink = MirrorTap(stream.sink, stream, feeds)


class Shadow:
    """One shadow request (a task of the worker's nursery)."""

    __slots__ = ("cluster", "head", "feed", "chunked", "timeout_s", "method_head", "conn")

    def __init__(
        self,
        cluster: ClusterState,
        head: bytes,
        feed: _Feed | None,
        chunked: bool,
        timeout_s: float,
    ) -> None:
        self.cluster = cluster
        self.head = head
        self.feed = feed
        self.chunked = chunked
        self.timeout_s = timeout_s
        self.method_head = False
        self.conn: UpstreamConnection | None = None

    async def run(self) -> None:
        cluster = self.cluster
        pool = cluster.pool("DEFAULT")
        cstats = pool.stats
        host = cluster.balancer.pick()
        if host is None:
            cstats.count_response(503)  # no healthy upstream: nothing is sent
            if self.feed is not None:
                self.feed.abandon()
            return
        attached = False
        scope = trio.CancelScope()
        feed = self.feed
        if feed is not None:
            if feed.abandoned:
                return
            feed.scope = scope
        host.active_requests += 1
        try:
            with scope:
                # auto_sni: the shadow's Host (with its -shadow suffix) keys it.
                tls = host.tls
                key = tls.key_of(self.head) if tls is not None and tls.keyed else None
                conn = pool.take_idle(host, key)
                if conn is None:
                    try:
                        conn = await pool.acquire(host, key)
                    except ConnectFailure:
                        cstats.count_response(503)
                        host.stats.rq_error += 1
                        host.outcomes.connect_failed()
                        return
                    except Overflow:
                        cstats.count_response(503)
                        return
                self.conn = conn
                if not pool.attach():
                    pool.put_back(conn)
                    self.conn = None
                    cstats.count_response(503)
                    return
                attached = True
                cstats.rq_active += 1
                host.stats.rq_active += 1
                cstats.rq_total += 1
                host.stats.rq_total += 1
                await io.send_all(conn.sock, self.head)
                if self.feed is not None:
                    while True:
                        pieces = await self.feed.take()
                        done = self.feed.done and not self.feed.pieces
                        parts: list = []
                        frame_request(parts, pieces, self.chunked, done)
                        if parts:
                            await io.send_parts(conn.sock, parts)
                        if done:
                            break
                if self.timeout_s:
                    scope.deadline = trio.current_time() + self.timeout_s
                status, reusable = await self._read_response(conn)
                cstats.count_response(status)
                if status < 500:
                    host.stats.rq_success += 1
                else:
                    host.stats.rq_error += 1
                host.outcomes.response(status)
                self.conn = None
                pool.release(conn, reusable)
            if scope.cancelled_caught and not (feed is not None and feed.abandoned):
                cstats.rq_timeout += 1  # the route timeout
                cstats.count_response(504)
        except (OSError, ProtocolError, _Abandoned, _Closed):
            pass  # the shadow failed or was given up: nobody waits for it
        finally:
            host.active_requests -= 1
            if attached:
                pool.requests -= 1
                cstats.rq_active -= 1
                host.stats.rq_active -= 1
            if self.conn is not None:
                pool.destroy(self.conn)
                self.conn = None
            if feed is not None:
                feed.scope = None
                if not feed.done:
                    feed.abandon()

    async def _read_response(self, conn: UpstreamConnection) -> tuple[int, bool]:
        """Read the response (head and body) and drop it: (status, reusable)."""
        rb = conn.rb
        while True:
            view = rb.next_head() if rb.start != rb.end else None
            if view is not None:
                r = conn.parser.parse(view, {})
                if 100 <= r.status < 200:
                    continue
                break
            await self._receive(conn)
        if not response_has_body(r.status, self.method_head):
            return r.status, r.keep_alive
        if r.chunked:
            body = BodyReader(chunked=True)
        elif r.content_length >= 0:
            body = BodyReader(r.content_length)
        else:
            body = BodyReader(until_close=True)
        body.read(rb)
        while not body.done:
            try:
                await self._receive(conn)
            except _Closed:
                if r.content_length < 0 and not r.chunked:
                    return r.status, False
                raise
            body.read(rb)
        return r.status, r.keep_alive and (r.chunked or r.content_length >= 0)

    @staticmethod
    async def _receive(conn: UpstreamConnection) -> None:
        rb = conn.rb
        while True:
            n = rb.receive(conn.sock.recv_into)
            if n > 0:
                return
            if n == 0:
                raise _Closed()
            await io.wait_readable(conn.sock)


class _Closed(Exception):
    """The shadow's upstream closed the connection mid-response."""
