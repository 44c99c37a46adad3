"""The ext_authz filter's two kinds of authorization service: what a check sends and
how the answer reads, as Envoy 1.40 does it.

**HTTP** (``http_service``): the check is the client's method and
``path_prefix`` + path (query included), to the ``server_uri.cluster`` through the
worker's pool, with the client's Host, its ``authorization`` header and the headers
``allowed_headers`` matches, ``content-length`` (0, or the buffered body's length with
the body), ``authorization_request.headers_to_add``, ``x-envoy-internal: true`` and
``x-envoy-expected-rq-timeout-ms``. A 200 allows: the response's headers that
``allowed_upstream_headers`` match replace the request's, those
``allowed_upstream_headers_to_append`` match are added, those
``allowed_client_headers_on_success`` match go to the client. A 5xx (or no answer) is
an error. Any other status denies, with the service's body and the headers
``allowed_client_headers`` matches (and ``:status``, ``content-length``,
``www-authenticate``, ``location``), or every header but ``host`` without that list.

**gRPC** (``grpc_service.envoy_grpc``): a ``CheckRequest``
(:mod:`proxyd.protocol.ext_authz_grpc`) with the source and destination addresses, the
request's time, method, headers (every one, or those ``allowed_headers`` matches,
with the ``:authority``, ``:method``, ``:path`` and ``:scheme`` pseudo-headers), path,
host, scheme, protocol, its size and the buffered body, and the route's
``context_extensions``. A status OK allows with ``ok_response``'s changes
(``headers``: ``append`` true adds a line, else the header is replaced;
``headers_to_remove``; ``response_headers_to_add`` to the client); any other status
denies with ``denied_response`` (status 403 unless set, headers, body). A gRPC error is
an error.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from proxyd.epoch import StringMatch, from_wire
from proxyd.filters.api import AsyncClient, CallFailed, FilterStream
from proxyd.protocol import ext_authz_grpc as pb
from proxyd.protocol.access_log_tls import url_encoded_peer_certificate
from proxyd.protocol.routing import compile_string_match
from proxyd.protocol.runtime import RANDOM
from proxyd.protocol.tls_context import peer_sans, peer_subject, principal

Matcher = Callable[[str], bool]
# The address Envoy's async client gives as its own (x-forwarded-for of its calls).
ASYNC_CLIENT_ADDRESS = "192.0.2.2"
# Headers of the check Envoy makes itself, never copied from the request.
_OWN = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                  "te", "upgrade", "proxy-connection", "expect"})  # fmt: skip
_DENIED_DEFAULTS = frozenset({":status", "content-length", "www-authenticate", "location"})
# Not copied from a denial's headers: the local reply frames its own body.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
# Nor these: the proxy's own replace them, as Envoy's connection manager sets them.
_REPLY_OWN = _FRAMING | {"date", "server"}


# A header name (RFC 9110 token) and the characters a header value cannot carry.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_BAD_VALUE = re.compile(r"[\x00\r\n]")


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Allowed:
    set: tuple[tuple[str, str], ...] = ()
    append: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()
    # Values appended to the request's header of that name, in one line (gRPC).
    join: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Denied:
    status: int
    body: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str


Outcome = Allowed | Denied | Failed


def _matcher(wire: list[Any] | None) -> Matcher | None:
    """One predicate over header names for a ListStringMatcher (None stays None)."""
    if wire is None:
        return None
    tests = tuple(compile_string_match(from_wire(StringMatch, m)) for m in wire)
    return lambda name: any(t(name) for t in tests)


def _never(name: str) -> bool:
    return False


class Service:
    """A configured authorization service (one per epoch and route)."""

    client_headers = False

    async def check(self, stream: FilterStream, body: bytes, with_body: bool) -> Outcome:
        raise NotImplementedError


def make_service(config: dict[str, Any], extensions: dict[str, str], client: Any) -> Service:
    if config["service"] == "grpc":
        return GrpcService(config, extensions, client)
    return HttpService(config, client)


def _partial(h: Any, body: bytes) -> str:
    """x-envoy-auth-partial-body: the check has less than the whole body."""
    return "true" if 0 <= len(body) < h.content_length else "false"


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


class HttpService(Service):
    __slots__ = (
        "client", "cluster", "timeout_s", "prefix", "allowed", "to_add", "upstream",
        "upstream_append", "to_client", "on_success", "client_headers", "trailer",
    )  # fmt: skip

    def __init__(self, config: dict[str, Any], client: AsyncClient | None) -> None:
        self.client = client
        self.cluster: str = config["cluster"]
        self.timeout_s = config["timeout_ms"] / 1000
        self.prefix: str = config["path_prefix"]
        self.allowed: Matcher = _matcher(config["allowed_headers"]) or _never
        self.to_add: tuple[tuple[str, str], ...] = tuple(
            (n, v) for n, v in config["headers_to_add"]
        )
        self.upstream = _matcher(config["upstream"]) or _never
        self.upstream_append = _matcher(config["upstream_append"]) or _never
        self.to_client = _matcher(config["client"])
        self.on_success = _matcher(config["client_on_success"]) or _never
        self.client_headers = bool(config["client_on_success"])
        # The check's last lines, the same for every request.
        self.trailer = (
            "".join(f"{n}: {v}\r\n" for n, v in self.to_add)
            + f"x-envoy-expected-rq-timeout-ms: {config['timeout_ms']}\r\n"
            + "x-envoy-internal: true\r\n\r\n"
        )

    def head(self, stream: FilterStream, body: bytes, with_body: bool) -> bytes:
        h = stream.head
        added = {n for n, _ in self.to_add}
        lines = [f"{h.method} {self.prefix}{h.path} HTTP/1.1\r\nhost: {h.host}\r\n"]
        allowed = self.allowed
        for name, value in stream.request_header_lines():
            if name in _OWN or name in added or name.startswith(":"):
                continue
            if name == "authorization" or allowed(name):
                lines.append(f"{name}: {value}\r\n")
        lines.append(f"content-length: {len(body)}\r\n")
        if with_body:
            lines.append(f"x-envoy-auth-partial-body: {_partial(h, body)}\r\n")
        lines.append(self.trailer)
        return "".join(lines).encode("latin-1", "replace")

    async def check(self, stream: FilterStream, body: bytes, with_body: bool) -> Outcome:
        if self.client is None:
            return Failed("no async client")
        try:
            answer = await self.client.http_call(
                self.cluster, self.head(stream, body, with_body), body, self.timeout_s
            )
        except CallFailed as exc:
            return Failed(str(exc))
        status = answer.status
        if status >= 500:
            return Failed(f"authorization service answered {status}")
        headers = answer.headers
        if status == 200:
            up, app, cl = self.upstream, self.upstream_append, self.on_success
            return Allowed(
                set=tuple((n, v) for n, v in headers if up(n) and n not in _OWN),
                append=tuple((n, v) for n, v in headers if app(n) and n not in _OWN),
                client=tuple((n, v) for n, v in headers if cl(n) and n not in _REPLY_OWN),
            )
        to_client = self.to_client
        if to_client is None:
            kept = tuple((n, v) for n, v in headers if n != "host" and n not in _REPLY_OWN)
        else:
            kept = tuple(
                (n, v)
                for n, v in headers
                if (to_client(n) or n in _DENIED_DEFAULTS) and n not in _REPLY_OWN
            )
        return Denied(status, _text(answer.body), kept)


def _options(
    options: Sequence[pb.HeaderOption],
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(to set, to append) of HeaderValueOptions: ``append`` true appends, false (or
    unset) replaces, as Envoy reads them in an ok_response."""
    to_set: list[tuple[str, str]] = []
    to_append: list[tuple[str, str]] = []
    for o in options:
        name = o.key.lower()
        if name.startswith(":") or name == "host" or name in _FRAMING:
            continue
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(o.value):
            continue  # a header that cannot be written on the wire is dropped
        if not o.value.isascii() and not _latin1(o.value):
            continue
        (to_append if o.append else to_set).append((name, o.value))
    return to_set, to_append


def tls_peers(tls: Any, with_certificate: bool, with_session: bool) -> pb.TlsPeers:
    """The TLS facts of a CheckRequest, as Envoy fills them, from the connection's TLS
    session (proxyd.worker.tls.TlsSocket: ``peer`` the verified client certificate as
    getpeercert() gives it, ``local`` the certificate the server presented)."""
    peers = pb.TlsPeers()
    peer = tls.peer
    if peer:
        uris = [s for s in peer_sans(peer, "URI").split(",") if s]
        dns = [s for s in peer_sans(peer, "DNS").split(",") if s]
        peers.source_principal = principal(peer_subject(peer), uris, dns)
        if with_certificate:
            peers.source_certificate = url_encoded_peer_certificate(tls)
    local = tls.local
    if local is not None:
        peers.destination_principal = principal(local.subject, local.uri_sans, local.dns_sans)
    if with_session:
        peers.sni = tls.sni or ""
    return peers


class GrpcService(Service):
    __slots__ = (
        "client", "cluster", "authority", "timeout_s", "allowed", "extensions", "metadata",
        "raw_body", "peer_certificate", "tls_session",
    )  # fmt: skip

    client_headers = True

    def __init__(
        self, config: dict[str, Any], extensions: dict[str, str], client: AsyncClient | None
    ) -> None:
        self.client = client
        self.cluster: str = config["cluster"]
        self.authority: str = config["authority"]
        self.timeout_s = config["timeout_ms"] / 1000
        self.allowed = _matcher(config["allowed_headers"])
        self.extensions = extensions
        # The call's metadata: the configured initial_metadata, then what Envoy's
        # async client adds to each call.
        self.metadata = (
            *((n, v) for n, v in config["metadata"]),
            ("x-envoy-internal", "true"),
            ("x-forwarded-for", ASYNC_CLIENT_ADDRESS),
            ("x-envoy-expected-rq-timeout-ms", str(config["timeout_ms"])),
        )
        self.raw_body = bool(config["body"] and config["body"][2])
        self.peer_certificate: bool = config.get("peer_certificate", False)
        self.tls_session: bool = config.get("tls_session", False)

    def message(self, stream: FilterStream, body: bytes, with_body: bool) -> bytes:
        h = stream.head
        tls = stream.downstream_tls()
        scheme = "https" if tls is not None else "http"
        path = h.path
        headers = [(":authority", h.host), (":path", path), (":method", h.method),
                   (":scheme", scheme)]  # fmt: skip
        xfp = False
        for name, value in stream.request_header_lines():
            if name == "host":
                continue
            xfp = xfp or name == "x-forwarded-proto"
            headers.append((name, value))
        if not xfp:  # the connection manager has set it by the time Envoy's filters run
            headers.append(("x-forwarded-proto", scheme))
        size = h.content_length if h.content_length >= 0 else 0
        allowed = self.allowed
        if allowed is not None:
            headers = [(n, v) for n, v in headers if allowed(n)]
        if with_body:  # added after allowed_headers chose, as Envoy adds it
            headers.append(("x-envoy-auth-partial-body", _partial(h, body)))
        remote, direct, local_ip, local_port = stream.downstream_addresses()
        peer_port = stream.downstream_peer_port()
        http = pb.HttpAttributes(
            id=str(RANDOM.getrandbits(64)),
            method=h.method,
            headers=headers,
            path=path,
            host=h.host,
            scheme=scheme,
            protocol="HTTP/1.0" if getattr(h, "http10", False) else "HTTP/1.1",
            size=size,
            body=body if with_body else None,
            raw_body=self.raw_body,
        )
        return pb.check_request(
            (remote, peer_port if remote == direct else 0),
            (local_ip, local_port),
            http,
            time.time_ns(),
            self.extensions,
            tls_peers(tls, self.peer_certificate, self.tls_session) if tls is not None else None,
        )

    async def check(self, stream: FilterStream, body: bytes, with_body: bool) -> Outcome:
        if self.client is None:
            return Failed("no async client")
        try:
            status, reply = await self.client.grpc_call(
                self.cluster,
                self.authority,
                pb.METHOD,
                self.message(stream, body, with_body),
                self.timeout_s,
                self.metadata,
            )
        except CallFailed as exc:
            return Failed(str(exc))
        if status != 0:
            return Failed(f"grpc-status {status}")
        try:
            result = pb.check_response(reply)
        except pb.DecodeError as exc:
            return Failed(f"malformed CheckResponse: {exc}")
        if result.code == 0:
            if result.query_changes:
                return Failed("query parameter changes not supported by proxyd")
            to_set, to_append = _options(result.headers)
            client_set, client_append = _options(result.response_headers_to_add)
            remove = tuple(
                n.lower()
                for n in result.headers_to_remove
                if n and not n.startswith(":") and n.lower() != "host"
            )
            return Allowed(
                set=tuple(to_set),
                remove=remove,
                client=(*client_set, *client_append),
                join=tuple(to_append),
            )
        status = result.status if 200 <= result.status <= 599 else 403
        to_set, to_append = _options(result.denied_headers)
        kept = tuple((n, v) for n, v in (*to_set, *to_append) if n not in _REPLY_OWN)
        return Denied(status, result.body, kept)
