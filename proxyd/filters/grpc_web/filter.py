"""The gRPC-Web filter on a stream: Envoy's ``GrpcWebFilter`` (compared with Envoy 1.40
by tests/compat/test_grpc_web_compat.py).

A request whose ``content-type`` is ``application/grpc-web[+proto]`` or
``application/grpc-web-text[+proto]`` goes upstream as ``application/grpc`` with
``te: trailers`` (the text form's body base64-decoded as it streams, 4 characters at a
time; bad base64 is answered 400 with ``grpc-status`` 13, as Envoy answers it). Other
requests pass untouched.

The response of such a request comes back as gRPC-Web: ``content-type``
``application/grpc-web+proto``, or ``application/grpc-web-text+proto`` (each piece of
body base64-encoded on its own) when the request's ``accept`` asked for
``application/grpc-web-text``; the upstream's trailers become the body's last frame
(flag ``0x80``, then ``name:value`` CRLF lines); a response that is not gRPC (a local
reply, an upstream's error page) keeps its HTTP status, gets ``grpc-status`` mapped from
it and ``grpc-message`` from its body, and loses the body.

Stats: ``cluster.<cluster>.grpc-web.<service>.<method>.{total,success,failure,<code>}``
for the statuses upstreams answer with, as Envoy counts them (not its local replies).
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Any

from proxyd.filters.api import (
    CONTINUE,
    GRPC_WEB_STATE,
    FilterStream,
    HttpFilter,
    LocalReply,
    Result,
    StatsScope,
)
from proxyd.protocol.runtime import EMPTY, Snapshot

WANTED = frozenset({"content-type", "accept"})
RESPONSE_WANTED = frozenset({"content-type", "grpc-status", "grpc-message"})
BINARY = "application/grpc-web+proto"
TEXT = "application/grpc-web-text+proto"
# Envoy's mapping of an HTTP status to a gRPC one (Grpc::Utility::httpToGrpcStatus).
HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
BAD_BASE64 = LocalReply(
    400,
    "Bad gRPC-web request, invalid base64 data.",
    details="grpc_base64_decode_failed",
    grpc_status=13,
)


class Factory:
    """One per epoch and route (the filter has no settings)."""

    __slots__ = ("name", "wanted_headers", "response_headers", "decodes", "encodes", "stats")

    def __init__(
        self, name: str, config: Any, per_route: Any, stats: StatsScope, runtime: Snapshot = EMPTY
    ) -> None:
        self.name = name
        self.stats = stats
        self.decodes = True
        self.encodes = True
        self.wanted_headers = WANTED
        self.response_headers = RESPONSE_WANTED

    def create(self) -> GrpcWebFilter:
        return GrpcWebFilter(self)


def trailer_frame(trailers: list[tuple[bytes, bytes]]) -> bytes:
    """gRPC-Web's trailer frame: flag 0x80, the length, then ``name:value`` CRLF lines."""
    body = b"".join(n.lower() + b":" + v + b"\r\n" for n, v in trailers)
    return b"\x80" + struct.pack(">I", len(body)) + body


class GrpcWebFilter(HttpFilter):
    __slots__ = ("factory", "active", "text_in", "text_out", "pending", "method", "local")

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.active = False
        self.text_in = False  # the request body is base64
        self.text_out = False  # the response body goes out as base64
        self.pending = b""  # base64 characters short of a group of 4
        self.method = ""  # "service.method" for the stats ("" when the path is not one)
        self.local = False  # the response is not gRPC: its body is dropped

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        h = stream.head
        ctype = h.headers.get("content-type", "")
        if not ctype.startswith("application/grpc-web"):
            return CONTINUE
        self.active = True
        if stream.filter_state is None:
            stream.filter_state = {}
        stream.filter_state[GRPC_WEB_STATE] = True
        self.text_in = ctype.startswith("application/grpc-web-text")
        self.text_out = "application/grpc-web-text" in h.headers.get("accept", "")
        stream.set_request_header("content-type", "application/grpc")
        stream.set_request_header("te", "trailers")
        if self.text_in and h.has_body:
            stream.set_request_chunked()  # decoding changes the length
        parts = h.path.split("?", 1)[0].split("/")
        if len(parts) == 3 and parts[0] == "" and parts[1] and parts[2]:
            self.method = f"{parts[1]}.{parts[2]}"
        return CONTINUE

    async def on_request_data(
        self, stream: FilterStream, data: bytearray, end_stream: bool
    ) -> Result:
        if not self.active or not self.text_in:
            return CONTINUE
        text = self.pending + bytes(data)
        cut = len(text) - len(text) % 4
        self.pending = text[cut:]
        if end_stream and self.pending:
            return BAD_BASE64
        try:
            decoded = base64.b64decode(text[:cut], validate=True)
        except (binascii.Error, ValueError):
            return BAD_BASE64
        data[:] = decoded
        return CONTINUE

    async def on_response_headers(
        self, stream: FilterStream, response: Any, end_stream: bool
    ) -> Result:
        if not self.active:
            return CONTINUE
        headers = response.headers
        stream.set_response_header("content-type", TEXT if self.text_out else BINARY)
        grpc_status = headers.get("grpc-status")
        if not str(headers.get("content-type", "")).startswith("application/grpc"):
            # Not a gRPC response (a local reply, an error page): gRPC status headers
            # from its HTTP status and its body, which goes.
            self.local = True
            code = (
                grpc_status
                if grpc_status is not None
                else str(HTTP_TO_GRPC.get(response.status, 2))
            )
            stream.set_response_header("grpc-status", code)
            body = getattr(response, "body", b"")
            if body and "grpc-message" not in headers:
                stream.set_response_header("grpc-message", body.decode("latin-1"))
            stream.remove_response_header("content-length")
            return CONTINUE  # (Envoy counts only what the upstream answered)
        # The body changes length (base64, the trailer frame): it goes out chunked.
        stream.remove_response_header("content-length")
        if end_stream and grpc_status is not None:
            self._count(stream, str(grpc_status))  # trailers-only
        return CONTINUE

    async def on_response_data(
        self, stream: FilterStream, data: bytearray, end_stream: bool
    ) -> Result:
        if not self.active:
            return CONTINUE
        if self.local:
            data.clear()
        elif self.text_out and data:
            data[:] = base64.b64encode(bytes(data))
        return CONTINUE

    async def on_response_trailers(
        self, stream: FilterStream, trailers: list[tuple[bytes, bytes]], data: bytearray
    ) -> Result:
        if not self.active:
            return CONTINUE
        status = next((v for n, v in trailers if n.lower() == b"grpc-status"), None)
        if status is not None:
            self._count(stream, status.decode("latin-1"))
        data += trailer_frame(trailers)
        trailers.clear()  # they travel in the body
        return CONTINUE

    def _count(self, stream: FilterStream, code: str) -> None:
        cluster = stream.upstream_cluster
        if not self.method or cluster is None:
            return
        stats = self.factory.stats.root(f"cluster.{cluster}.grpc-web.{self.method}.")
        stats.inc("total")
        stats.inc("success" if code == "0" else "failure")
        stats.inc(code)
