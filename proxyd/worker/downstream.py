"""One downstream HTTP/1.1 connection: read heads, route, answer, log, repeat.

:meth:`DownstreamConnection.serve` owns the connection from accept to close and never
lets an exception out: bad input gets its status (400, 426, 431, ...) and the
connection closes; an unexpected error is logged and only this connection ends.

The receive buffer is reused for every request on the connection: ``buf[start:end]``
holds bytes received and not yet consumed (a pipelined next request stays there). A
request looks up its listener's plan when its head arrives and keeps that plan (and
so that epoch) to its end.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING

import structlog
import trio

from proxyd.errors import ProtocolError
from proxyd.protocol.access_log import LogRecord
from proxyd.protocol.http1 import RequestHead, RequestHeadParser, find_head_end, skip_leading_crlf
from proxyd.protocol.http1_headers import REASONS, local_reply
from proxyd.worker import io, router
from proxyd.worker.deadlines import HEADERS, IDLE, INF

if TYPE_CHECKING:
    from proxyd.worker.plan import ListenerPlan, RoutePlan
    from proxyd.worker.process import Worker

log = structlog.get_logger()

INITIAL_BUFFER = 16 * 1024
# Envoy's response flags.
NO_ROUTE = "NR"
NO_HEALTHY_UPSTREAM = "UH"
NO_CLUSTER = "NC"


class DownstreamConnection:
    __slots__ = (
        "worker",
        "listener_name",
        "sock",
        "remote_ip",
        "remote",
        "local",
        "buf",
        "view",
        "start",
        "end",
        "parser",
        "idle",
        # the watchdog's view: when this connection's current wait must end, and why
        "deadline",
        "deadline_kind",
        "expired",
        "upstream_sock",
        # per request, read by the router and the access log
        "status",
        "flags",
        "bytes_received",
        "bytes_sent",
        "upstream_host",
        "service_ms",
        "resp_headers",
        "response_started",
        "close_after",
        "listener_updated",
        "generation",
    )

    def __init__(
        self, worker: Worker, listener_name: str, sock: socket.socket, peer: tuple
    ) -> None:
        self.worker = worker
        self.listener_name = listener_name
        self.sock = sock
        self.remote_ip = peer[0]
        self.remote = f"{peer[0]}:{peer[1]}" if ":" not in peer[0] else f"[{peer[0]}]:{peer[1]}"
        try:
            local = sock.getsockname()
            self.local = f"{local[0]}:{local[1]}"
        except OSError:
            self.local = "-"
        self.buf = bytearray(INITIAL_BUFFER)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.parser = RequestHeadParser()
        self.idle = False
        self.deadline = INF
        self.deadline_kind = 0
        self.expired = 0
        self.upstream_sock: socket.socket | None = None
        # The listener's config changed since this connection was accepted: its
        # responses say "connection: close" (Envoy drains an updated listener).
        self.listener_updated = False
        self.generation: object = None  # the listener config it was accepted under
        self._reset_request()

    def _reset_request(self) -> None:
        self.status = 0
        self.flags = "-"
        self.bytes_received = 0
        self.bytes_sent = 0
        self.upstream_host: str | None = None
        self.service_ms: int | None = None
        self.resp_headers: dict[str, str] | None = None
        self.response_started = False
        self.close_after = False
        self.expired = 0

    # -- timeouts (see Worker._watchdog) -----------------------------------------------

    def arm(self, kind: int, seconds: float) -> None:
        """The current wait may last ``seconds`` (inf: no limit); ``kind`` says why."""
        self.deadline_kind = kind
        self.deadline = time.monotonic() + seconds if seconds != INF else INF

    def expire(self) -> None:
        """Called by the watchdog once the deadline passed: wake whatever this
        connection's tasks wait on; their waits raise trio.ClosedResourceError."""
        # The deadline stays: if no task of this connection was waiting just now (one
        # was runnable), the next tick wakes it again, until it moves on and re-arms.
        self.expired = self.deadline_kind
        if self.sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.sock)
        up = self.upstream_sock
        if up is not None and up.fileno() >= 0:
            trio.lowlevel.notify_closing(up)

    # -- life cycle -------------------------------------------------------------------

    async def serve(self, plan: ListenerPlan) -> None:
        lstats = plan.listener_stats
        hstats = plan.http_stats
        lstats.cx_total += 1
        lstats.cx_active += 1
        hstats.cx_total += 1
        hstats.cx_active += 1
        worker = self.worker
        worker.connections.add(self)
        self.generation = plan.generation
        try:
            # The request loop lives here rather than in a helper: every await level
            # is paid again at each wait of every request.
            while True:
                # A listener that left the epoch keeps its last plan for the requests of
                # the connections it still has; they close after their response.
                plan = worker.plans.get(self.listener_name) or plan
                try:
                    start = await self._read_head(plan)
                    if start < 0:
                        return
                    # The head is here: the request belongs to the epoch in place now.
                    current = worker.plans.get(self.listener_name)
                    if current is not None:
                        plan = current
                    if current is None or current.generation is not self.generation:
                        # Updated or removed since the connection was accepted: this
                        # response says "connection: close" (Envoy drains the listener).
                        self.listener_updated = True
                    h = self.parser.parse(self.view[start : self.start], plan.request_wanted)
                except ProtocolError as exc:
                    await self._reject(plan, exc)
                    return
                if not await self._handle(plan, h):
                    return
                if self.start == self.end:
                    self.start = self.end = 0
                else:
                    # A pipelined request is already here: let other tasks run first.
                    await io.checkpoint()
        except Exception:
            log.exception("downstream connection failed", remote=self.remote)
        finally:
            worker.connections.discard(self)
            io.close(self.sock)
            lstats.cx_active -= 1
            hstats.cx_active -= 1
            hstats.cx_destroy += 1
            worker.connection_closed()

    # -- request head -------------------------------------------------------------------

    async def _read_head(self, plan: ListenerPlan) -> int:
        """Wait for a complete head; its start, or -1 when the connection should close.

        On return the head is ``buf[start:self.start]``."""
        buf = self.buf
        start = self.start
        end = self.end
        head_armed = False
        if start < end:
            start = skip_leading_crlf(buf, start, end)
        searched = start
        while True:
            if start < end:
                he = find_head_end(buf, max(searched - 3, start), end)
                if he >= 0:
                    break
                searched = end
                if end - start > plan.max_head:
                    plan.http_stats.header_overflow += 1
                    raise ProtocolError("request headers too large", 431)
            if end == len(buf):
                if start > 0:
                    n = end - start
                    buf[:n] = buf[start:end]
                    searched -= start
                    start, end = 0, n
                else:
                    self._grow(plan.max_head + 8192)
                    buf = self.buf
            if start == end:
                self.idle = True
                self.arm(IDLE, plan.idle_timeout)
            elif not head_armed:
                head_armed = True
                self.arm(HEADERS, min(plan.headers_timeout, plan.request_timeout))
            try:
                if start == end:
                    # Nothing yet: the client sends once it has read our last answer.
                    # Let the other connections run first; by then it often has.
                    await io.yield_now()
                    if self.expired:
                        raise trio.ClosedResourceError()
                try:
                    n = self.sock.recv_into(self.view[end:])
                except BlockingIOError:
                    n = await io.recv_into(self.sock, self.view[end:])
                except (ConnectionResetError, ConnectionAbortedError):
                    n = 0
            except trio.ClosedResourceError:
                self.idle = False
                if self.expired == HEADERS:
                    plan.http_stats.rq_timeout += 1
                    raise ProtocolError("request header timeout", 408) from None
                return -1  # idle_timeout or drain: close quietly, as Envoy does
            self.idle = False
            if n == 0:
                return -1  # closed (or reset) before a complete head: nothing to answer
            end += n
            if buf[start] == 13:
                start = skip_leading_crlf(buf, start, end)
        if he - start > plan.max_head:
            plan.http_stats.header_overflow += 1
            raise ProtocolError("request headers too large", 431)
        self.start = he
        self.end = end
        return start

    def _grow(self, limit: int) -> None:
        size = len(self.buf)
        if size >= limit:
            raise ProtocolError("request headers too large", 431)
        new = bytearray(min(size * 4, limit))
        new[:size] = self.buf
        self.buf = new
        self.view = memoryview(new)

    async def _reject(self, plan: ListenerPlan, exc: ProtocolError) -> None:
        """Answer a request that could not be parsed, log it, and let the caller close."""
        status = exc.status
        stats = plan.http_stats
        stats.rq_total += 1
        stats.by_class[status // 100] += 1
        if status == 400 or status == 501:
            stats.cx_protocol_error += 1
        # Envoy's codec errors answer with the reason phrase as the body, except a
        # missing Host, which gets an empty 400.
        if status == 408:
            body = exc.reason
        elif exc.reason == "missing host":
            body = ""
        else:
            body = REASONS.get(status, "")
        self.status = status
        self.flags = "DPE" if status in (400, 426, 501) else "-"
        if status == 431:
            self.flags = "DPE"
        if status == 408:
            self.flags = "-"
        await self._send_local(local_reply(status, body, plan.server, close=True))
        if plan.logs:
            self._log(plan, None, time.time(), time.monotonic(), None, None, "", "")

    # -- one request --------------------------------------------------------------------

    async def _handle(self, plan: ListenerPlan, h: RequestHead) -> bool:
        """Serve one request; True to keep the connection for the next one."""
        if plan.logs:
            t_wall = time.time()
            t0 = time.monotonic()
        self._reset_request()
        stats = plan.http_stats
        stats.rq_total += 1
        stats.rq_active += 1
        route_name = None
        request_id = ""
        trusted = self.remote_ip
        xff = b""
        rp = None
        try:
            route = plan.routes.match(h.host, h.path, h.headers) if h.method != "CONNECT" else None
            if route is None:
                self.flags = NO_ROUTE
                keep = await self._local(plan, h, 404, "")
            else:
                rp = plan.route_plans[id(route)]
                route_name = rp.name
                cluster = rp.cluster
                if cluster is None:
                    self.flags = NO_CLUSTER
                    keep = await self._local(plan, h, 503, "")
                else:
                    host = cluster.balancer.pick()
                    if host is None:
                        self.flags = NO_HEALTHY_UPSTREAM
                        cluster.stats.count_response(503)
                        keep = await self._local(plan, h, 503, "no healthy upstream")
                    else:
                        head, request_id, trusted, xff = plan.policy.apply(
                            h, self.remote_ip, rp.timeout_header
                        )
                        keep = await router.Exchange(self, plan, h, rp, host, head).run()
        finally:
            # Whatever timeout belonged to this request is over with it.
            self.deadline = INF
            self.expired = 0
            stats.rq_active -= 1
            status = self.status
            if status:
                stats.by_class[status // 100 if status < 600 else 5] += 1
            if plan.logs:
                self._log(plan, h, t_wall, t0, rp, route_name, request_id, trusted, xff)
        return keep

    async def _local(self, plan: ListenerPlan, h: RequestHead, status: int, body: str) -> bool:
        """A reply made here; the connection survives only if no request body is left."""
        keep = (
            h.keep_alive
            and not h.has_body
            and not self.worker.draining
            and not self.listener_updated
        )
        self.status = status
        data = local_reply(
            status, body, plan.server, close=not keep, head_request=h.method == "HEAD"
        )
        return await self._send_local(data) and keep

    async def _send_local(self, data: bytes) -> bool:
        try:
            await io.send_all(self.sock, data)
        except (OSError, trio.ClosedResourceError):
            return False  # the client is gone (or would not read in time)
        self.bytes_sent += len(data) - data.find(b"\r\n\r\n") - 4
        return True

    # -- access log ---------------------------------------------------------------------

    def _log(
        self,
        plan: ListenerPlan,
        h: RequestHead | None,
        t_wall: float,
        t0: float,
        rp: RoutePlan | None,
        route_name: str | None,
        request_id: str,
        trusted: str,
        xff: bytes = b"",
    ) -> None:
        rec = LogRecord()
        rec.start_time = t_wall
        rec.response_code = self.status
        rec.response_flags = self.flags
        rec.bytes_received = self.bytes_received
        rec.bytes_sent = self.bytes_sent
        rec.duration_ms = int((time.monotonic() - t0) * 1000)
        rec.upstream_service_time_ms = self.service_ms
        rec.upstream_host = self.upstream_host
        rec.downstream_remote_address = (
            self.remote if not trusted or trusted == self.remote_ip else f"{trusted}:0"
        )
        rec.downstream_local_address = self.local
        rec.route_name = route_name
        if rp is not None:
            rec.upstream_cluster = rp.cluster_name
        if h is not None:
            rec.method = h.method
            rec.path = h.path
            rec.authority = h.host
            rec.request_id = request_id or None
            rec.x_forwarded_for = xff.decode("latin-1") if xff else None
            rec.user_agent = h.headers.get("user-agent")
            rec.req_headers = h.headers
        else:
            rec.protocol = None
        if self.resp_headers is not None:
            rec.resp_headers = self.resp_headers
        for fmt, writer in plan.logs:
            writer.write(fmt.format(rec))
