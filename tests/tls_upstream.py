"""An HTTPS upstream for upstream-TLS tests: a threaded stdlib HTTP/1.1 server behind
CPython's ``ssl``, answering every request with JSON about the TLS connection it came
on: the SNI the client sent, the TLS version, the client certificate's SANs (when one
was presented), how many requests the connection has carried, and the path.

The handshake runs in the connection's own thread (a client that never finishes one
does not hold up the others); a failed handshake just closes the connection.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SNI_ATTRIBUTE = "test_sni"


def _remember_sni(ssock: Any, name: str | None, ctx: Any) -> None:
    setattr(ssock, SNI_ATTRIBUTE, name)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        sock = self.connection
        self.requests_on_connection = getattr(self, "requests_on_connection", 0) + 1
        peer = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
        body = json.dumps(
            {
                "server": self.server.label,  # type: ignore[attr-defined]
                "path": self.path,
                "sni": getattr(sock, SNI_ATTRIBUTE, None),
                "version": sock.version() if isinstance(sock, ssl.SSLSocket) else None,
                "client_sans": [v for _, v in (peer or {}).get("subjectAltName", ())],
                "request_on_connection": self.requests_on_connection,
                "host": self.headers.get("host"),
            },
            sort_keys=True,
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], ctx: ssl.SSLContext, label: str) -> None:
        super().__init__(address, _Handler)
        self.ctx = ctx
        self.label = label

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(5)
            request = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)


class TlsUpstream:
    """``with TlsUpstream(certs, ...) as up:`` serves on 127.0.0.1:``up.port``.

    ``verify_clients``: ask for a client certificate (optional) from the test CA;
    ``max_version``: the newest TLS version offered."""

    def __init__(
        self,
        certs: Any,
        label: str = "tls",
        verify_clients: bool = False,
        max_version: ssl.TLSVersion | None = None,
    ) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs.server, certs.server_key)
        ctx.sni_callback = _remember_sni
        if verify_clients:
            ctx.load_verify_locations(certs.ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        if max_version is not None:
            ctx.maximum_version = max_version
        self._server = _TlsServer(("127.0.0.1", 0), ctx, label)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> TlsUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


def get(port: int, path: str, host: str = "a", address: str = "127.0.0.1") -> dict[str, Any]:
    """One plaintext HTTP/1.1 request (connection: close): status and JSON or body."""
    with socket.create_connection((address, port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode())
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except OSError:
            pass
    if not data:
        return {"outcome": "closed"}
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    out: dict[str, Any] = {"status": status}
    if body.startswith(b"{"):
        out["json"] = json.loads(body)
    else:
        out["body"] = body.decode("latin-1")
    out["flags"] = headers.get("x-test-flags")
    return out
