"""Authorization servers for the ext_authz compat tests: a plain HTTP one and a grpcio
one (``envoy.service.auth.v3.Authorization``), each recording every check it got.

Both decide from the checked request's path (the HTTP server sees it after the
filter's ``path_prefix``):

* ``.../deny...``: denied, 403 (``.../deny401...``: 401) with the body
  ``denied by authz`` and headers ``x-deny-reason``, ``www-authenticate`` and
  ``x-unlisted``;
* ``.../authz500...``: 500 (an error);
* ``.../slow...``: answered after :data:`SLOW_S` (longer than the filter's timeout);
* anything else: allowed, with headers for the upstream (``x-auth-user``,
  ``x-auth-append``, ``x-unlisted``) and for the client (``x-client-ok``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SLOW_S = 1.5
DENY_BODY = b"denied by authz"


class _HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        server: AuthHttpServer = self.server.owner  # type: ignore[attr-defined]
        server.record(
            {
                "method": self.command,
                "path": self.path,
                "headers": sorted([k.lower(), v] for k, v in self.headers.items()),
                "body": body.decode("latin-1"),
            }
        )
        if "slow" in self.path:
            time.sleep(SLOW_S)
        if "authz500" in self.path:
            self.send_response(500)
            self.send_header("content-length", "4")
            self.end_headers()
            self.wfile.write(b"oops")
            return
        if "deny" in self.path:
            status = 401 if "deny401" in self.path else 403
            self.send_response(status)
            self.send_header("x-deny-reason", "nope")
            self.send_header("www-authenticate", 'Bearer realm="test"')
            self.send_header("x-unlisted", "hidden")
            self.send_header("content-type", "text/x-authz")
            self.send_header("content-length", str(len(DENY_BODY)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(DENY_BODY)
            return
        self.send_response(200)
        self.send_header("x-auth-user", "alice")
        self.send_header("x-auth-append", "from-authz")
        self.send_header("x-unlisted", "hidden")
        self.send_header("x-client-ok", "yes")
        self.send_header("content-length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class AuthHttpServer:
    """``with AuthHttpServer() as a: a.port``; ``a.checks`` are the requests it got."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _HttpHandler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.checks: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def record(self, check: dict[str, Any]) -> None:
        with self._lock:
            self.checks.append(check)

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            out, self.checks = self.checks, []
        return out

    def __enter__(self) -> AuthHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Authorization:
    """The grpcio servicer (``external_auth_pb2_grpc.AuthorizationServicer``)."""

    def __init__(self, owner: AuthGrpcServer) -> None:
        self.owner = owner

    def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - the RPC's name
        from envoy.service.auth.v3 import external_auth_pb2 as pb
        from google.protobuf.json_format import MessageToDict

        self.owner.record(
            {
                "request": MessageToDict(request),
                "metadata": sorted(
                    [k, v] for k, v in context.invocation_metadata() if not k.startswith("grpc-")
                ),
            }
        )
        path = request.attributes.request.http.path
        if "slow" in path:
            time.sleep(SLOW_S)
        if "grpcerror" in path:
            context.abort(grpc_status("UNAVAILABLE"), "authz down")
        resp = pb.CheckResponse()
        if "deny" in path:
            resp.status.code = 7  # PERMISSION_DENIED
            if "deny401" in path:
                resp.denied_response.status.code = 401
            h = resp.denied_response.headers.add()
            h.header.key, h.header.value = "x-deny-reason", "nope"
            h = resp.denied_response.headers.add()
            h.header.key, h.header.value = "content-type", "text/x-authz"
            resp.denied_response.body = DENY_BODY.decode()
            return resp
        ok = resp.ok_response
        h = ok.headers.add()
        h.header.key, h.header.value = "x-auth-user", "alice"
        h = ok.headers.add()
        h.header.key, h.header.value = "x-auth-append", "from-authz"
        h.append.value = True
        h = ok.headers.add()
        h.header.key, h.header.value = "x-auth-replace", "from-authz"
        h.append.value = False
        ok.headers_to_remove.append("x-remove-me")
        h = ok.response_headers_to_add.add()
        h.header.key, h.header.value = "x-client-ok", "yes"
        return resp


def grpc_status(name: str) -> Any:
    import grpc

    return getattr(grpc.StatusCode, name)


class AuthGrpcServer:
    """A grpcio ``envoy.service.auth.v3.Authorization`` server:
    ``with AuthGrpcServer() as a: a.port``; ``a.take()`` the checks it got, each the
    CheckRequest as ``MessageToDict`` gives it and the call's metadata."""

    def __init__(self) -> None:
        import grpc
        from envoy.service.auth.v3 import external_auth_pb2_grpc

        self.checks: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            _Authorization(self), self._server
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def record(self, check: dict[str, Any]) -> None:
        with self._lock:
            self.checks.append(check)

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            out, self.checks = self.checks, []
        return out

    def __enter__(self) -> AuthGrpcServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(None)


@contextmanager
def both() -> Iterator[tuple[AuthHttpServer, AuthGrpcServer]]:
    with AuthHttpServer() as http, AuthGrpcServer() as grpc_server:
        yield http, grpc_server
