"""The admin listener: a small HTTP/1.1 server (httptools) in the master.

Keep-alive, one request at a time per connection; a body is ignored unless it is a form
(application/x-www-form-urlencoded, up to :data:`MAX_FORM` bytes), whose values join
the query's, as Envoy's admin reads them (``/runtime_modify``). Pages come
from :class:`~proxyd.master.admin.pages.AdminPages`. When the bootstrap names an
``access_log_path`` (or an ``envoy.access_loggers.stdout`` admin access log), every
admin request gets a line in Envoy's default format.

The global connection limit of the runtime key ``overload.global_downstream_max_connections``
counts admin connections and refuses them over the limit (unless
``ignore_global_conn_limit``), as in Envoy; the overload manager's monitor never
counts them (:mod:`proxyd.cx_limit`).
"""

from __future__ import annotations

import email.utils
import errno
import os
import socket
import sys
import time
from typing import IO, TYPE_CHECKING, Any

import httptools
import trio

from proxyd.log import get_logger
from proxyd.master.admin.pages import AdminPages, Response, access_log_line, host_key

if TYPE_CHECKING:
    from proxyd.master.master import Master

IDLE_TIMEOUT_S = 60.0
MAX_HEAD = 64 * 1024
MAX_FORM = 64 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip

# The admin listener's histograms, shown from its first connection as Envoy shows them.
ADMIN_HISTOGRAMS = (
    "listener.admin.connections_accepted_per_socket_event",
    "listener.admin.downstream_cx_length_ms",
    "http.admin.downstream_cx_length_ms",
    "http.admin.downstream_rq_time",
)
log = get_logger("proxyd.master.admin")
STDOUT_LOG = "-"  # AdminConfig.access_log_path of Envoy's stdout access logger


class _Request:
    """httptools callbacks, collecting one request at a time."""

    def __init__(self) -> None:
        self.parser: Any = None
        self.url = bytearray()
        self.headers: dict[str, str] = {}
        self.head_size = 0
        self.body_size = 0
        self.form = bytearray()
        # (method, url, protocol, keep-alive, headers, bytes received, form body)
        self.complete: list[tuple[str, str, str, bool, dict[str, str], int, str]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value)
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        content_type = self.headers.get("content-type", "")
        if content_type.startswith("application/x-www-form-urlencoded"):
            if len(self.form) + len(body) <= MAX_FORM:
                self.form += body

    def on_message_complete(self) -> None:
        p = self.parser
        self.complete.append(
            (
                p.get_method().decode("latin-1"),
                self.url.decode("latin-1"),
                f"HTTP/{p.get_http_version()}",
                p.should_keep_alive(),
                self.headers,
                self.head_size + self.body_size,
                self.form.decode("latin-1"),
            )
        )
        self.form = bytearray()
        self.url = bytearray()
        self.headers = {}
        self.head_size = self.body_size = 0


class AdminServer:
    def __init__(
        self,
        master: Master,
        address: str,
        port: int,
        access_log_path: str = "",
        ignore_global_conn_limit: bool = False,
    ) -> None:
        self.master = master
        self.address = address
        self.port = port
        # STDOUT_LOG ("-"): Envoy's stdout access logger.
        self.access_log_path = access_log_path
        self.ignore_global_conn_limit = ignore_global_conn_limit
        self.pages = AdminPages(master)
        self._listeners: list[trio.SocketListener] = []
        self._access_log: IO[str] | None = None
        self._accepting = trio.CancelScope()

    async def bind(self, inherited: list[socket.socket] | None = None) -> None:
        """Bind the admin address, or serve ``inherited`` sockets (a hot-restart
        predecessor's); errors are the master's start errors."""
        if inherited:
            for sock in inherited:
                sock.setblocking(False)
                self._listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            self._open_access_log()
            self.port = self._listeners[0].socket.getsockname()[1]
            log.info("admin_listening", address=self.address, port=self.port, inherited=True)
            return
        try:
            self._listeners = await trio.open_tcp_listeners(self.port, host=self.address)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot bind admin address {self.address}:{self.port}: {exc.strerror}"
            ) from exc
        self._open_access_log()
        if self.port == 0:
            self.port = self._listeners[0].socket.getsockname()[1]
        log.info("admin_listening", address=self.address, port=self.port)

    def address_text(self) -> str:
        """The bound address as Envoy writes it: "127.0.0.1:9901", "[::1]:9901"."""
        return host_key(self.address, self.port)

    def write_address(self, path: str) -> None:
        """``--admin-address-path``: the bound address, as Envoy writes it (no newline).

        Written to a temporary file beside ``path`` and renamed over it, so a reader
        never sees half of it. OSError when it cannot be written (a start error)."""
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self.address_text())
            os.replace(tmp, path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass  # never created, or already gone
            raise OSError(
                exc.errno, f"cannot write the admin address to {path}: {exc.strerror}"
            ) from exc
        log.info("admin_address_written", path=path, address=self.address_text())

    def _open_access_log(self) -> None:
        if self.access_log_path == STDOUT_LOG:
            self._access_log = sys.stdout
        elif self.access_log_path:
            self._access_log = open(self.access_log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def sockets(self) -> list[tuple[str, int, int]]:
        """(address, port, fd) of each listening socket, for a hot-restart successor."""
        out = []
        for listener in self._listeners:
            address, port = listener.socket.getsockname()[:2]
            out.append((address, port, listener.socket.fileno()))
        return out

    def stop_accepting(self) -> None:
        """A successor serves the admin address now; answer what is open, accept nothing."""
        self._accepting.cancel()

    async def serve(self) -> None:
        async with trio.open_nursery() as connections:
            with self._accepting:
                async with trio.open_nursery() as acceptors:
                    for listener in self._listeners:
                        acceptors.start_soon(self._accept_loop, listener, connections)

    async def _accept_loop(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                    raise
                # Out of descriptors or memory: what is open keeps being served.
                log.warning("admin_accept_failed", error=str(exc))
                await trio.sleep(0.1)
                continue
            counted = False
            if self.master.loaded.overload.global_cx_count_all:
                counted = self._admit()
                if not counted:
                    self.master.stats.add_counter("listener.admin.downstream_global_cx_overflow")
                    await stream.aclose()  # closed at accept, as Envoy does
                    continue
            connections.start_soon(
                self._serve_counted if counted else self._serve_connection, stream
            )

    def _admit(self) -> bool:
        """The runtime-key limit: count this connection; False when it is over."""
        counts = self.master.cx_counts
        if self.ignore_global_conn_limit:
            counts.take()
            return True
        return counts.try_take(self.master.loaded.overload.global_cx_limit)

    async def _serve_counted(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve_connection(stream)
        finally:
            self.master.cx_counts.give()

    def close(self) -> None:
        for listener in self._listeners:
            listener.socket.close()
        if self._access_log is not None:
            if self._access_log is not sys.stdout:
                self._access_log.close()
            self._access_log = None

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        stats = self.master.stats
        stats.add_counter("listener.admin.downstream_cx_total")
        stats.add_counter("http.admin.downstream_cx_total")
        stats.ensure_histograms(ADMIN_HISTOGRAMS)
        # trio's listener accepts one connection per wait-and-accept: one an event.
        stats.record("listener.admin.connections_accepted_per_socket_event", 1)
        opened = time.monotonic()
        request = _Request()
        parser = httptools.HttpRequestParser(request)
        request.parser = parser
        try:
            while True:
                with trio.move_on_after(IDLE_TIMEOUT_S) as idle:
                    data = await stream.receive_some(65536)
                if idle.cancelled_caught or not data:
                    return
                started = time.time()
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError:
                    await self._respond(stream, "-", "-", "HTTP/1.1", Response(400, b"Bad Request\n"), {}, 0, started, close=True)  # fmt: skip
                    return
                if request.head_size > MAX_HEAD:
                    return
                while request.complete:
                    method, url, protocol, keep_alive, headers, received, form = request.complete.pop(0)  # fmt: skip
                    response = self._handle(method, url, form)
                    if response.before is not None:
                        await response.before()
                    await self._respond(
                        stream, method, url, protocol, response, headers,
                        received, started, close=not keep_alive,
                        head_only=method == "HEAD",
                    )  # fmt: skip
                    if response.after is not None:
                        response.after()
                    if not keep_alive:
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client went away
        finally:
            await stream.aclose()
            length_ms = int((time.monotonic() - opened) * 1000)
            stats.record("listener.admin.downstream_cx_length_ms", length_ms)
            stats.record("http.admin.downstream_cx_length_ms", length_ms)

    def _handle(self, method: str, url: str, form: str = "") -> Response:
        try:
            return self.pages.handle(method, url, form)
        except Exception:  # a bug in a page must not take the master down
            log.exception("admin_page_failed", method=method, path=url)
            return Response(500, b"internal error; see the proxyd log\n")

    async def _respond(
        self, stream: trio.SocketStream, method: str, url: str, protocol: str,
        response: Response, headers: dict[str, str], received: int, started: float,
        close: bool, head_only: bool = False,
    ) -> None:  # fmt: skip
        head = [
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}",
            f"content-type: {response.content_type}",
            "cache-control: no-cache, max-age=0",
            "x-content-type-options: nosniff",
            f"date: {email.utils.formatdate(usegmt=True)}",
            "server: envoy",
            f"content-length: {len(response.body)}",
        ]
        if close:
            head.append("connection: close")
        payload = ("\r\n".join(head) + "\r\n\r\n").encode() + (b"" if head_only else response.body)
        await stream.send_all(payload)
        stats = self.master.stats
        stats.add_counter("http.admin.downstream_rq_total")
        stats.add_counter(f"http.admin.downstream_rq_{response.status // 100}xx")
        stats.record("http.admin.downstream_rq_time", int((time.time() - started) * 1000))
        if self._access_log is not None:
            self._write_access_log(method, url, protocol, response, headers, received, len(payload), started)  # fmt: skip

    def _write_access_log(
        self, method: str, url: str, protocol: str, response: Response,
        headers: dict[str, Any], received: int, sent: int, started: float,
    ) -> None:  # fmt: skip
        assert self._access_log is not None
        duration_ms = int((time.time() - started) * 1000)
        line = access_log_line(method, url, protocol, response.status, received, sent, started, duration_ms, headers)  # fmt: skip
        try:
            self._access_log.write(line)
            self._access_log.flush()
        except OSError as exc:  # a full disk must not take the admin API down
            log.warning("admin_access_log_failed", path=self.access_log_path, error=str(exc))
