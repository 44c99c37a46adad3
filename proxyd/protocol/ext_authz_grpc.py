"""The ext_authz filter's gRPC messages, by hand (workers never import protobuf):
``envoy.service.auth.v3.CheckRequest`` encoded (:func:`check_request`) and
``CheckResponse`` decoded (:func:`check_response`), with no I/O.

Field numbers are xds-protos' (envoy/service/auth/v3/external_auth.proto and
attribute_context.proto, envoy/config/core/v3/address.proto and base.proto,
envoy/type/v3/http_status.proto, google/rpc/status.proto); the unit tests decode what
:func:`check_request` makes with the real message classes, and encode responses with
them for :func:`check_response`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from proxyd.protocol.otlp import _len, _str, _varint

METHOD = "/envoy.service.auth.v3.Authorization/Check"

# HeaderValueOption.append_action (config.core.v3.HeaderValueOption.HeaderAppendAction).
APPEND_IF_EXISTS_OR_ADD = 0
ADD_IF_ABSENT = 1
OVERWRITE_IF_EXISTS_OR_ADD = 2
OVERWRITE_IF_EXISTS = 3


class DecodeError(Exception):
    """The bytes are not a well-formed message of the expected shape."""


# -- encoding ---------------------------------------------------------------------------


def _int(num: int, value: int) -> bytes:
    """A varint field (int32/int64/uint32; a negative number as 10 bytes, as protobuf)."""
    if value < 0:
        value += 1 << 64
    return _varint(num << 3) + _varint(value)


def _map(num: int, pairs: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(_len(num, _str(1, k) + _str(2, v)) for k, v in pairs)


def _address(ip: str, port: int) -> bytes:
    """config.core.v3.Address with a socket_address (TCP)."""
    sa = _str(2, ip) + (_int(3, port) if port else b"")
    return _len(1, sa)


@dataclass(slots=True)
class HttpAttributes:
    """AttributeContext.HttpRequest's fields proxyd fills in."""

    id: str = ""
    method: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    path: str = ""
    host: str = ""
    scheme: str = ""
    protocol: str = ""
    size: int = -1
    body: bytes | None = None
    raw_body: bool = False


@dataclass(slots=True)
class TlsPeers:
    """What a TLS connection says of its two ends: the principals (a certificate's
    first URI SAN, else its first DNS SAN, else its subject; "" for none), the client's
    certificate (URL-encoded PEM, "" unless asked for), and the requested server name
    (None: no ``tls_session``)."""

    source_principal: str = ""
    source_certificate: str = ""
    destination_principal: str = ""
    sni: str | None = None


def _peer(address: tuple[str, int] | None, principal: str, certificate: str) -> bytes:
    """AttributeContext.Peer."""
    out = _len(1, _address(*address)) if address is not None else b""
    if principal:
        out += _str(4, principal)
    if certificate:
        out += _str(5, certificate)
    return out


def check_request(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    http: HttpAttributes,
    time_ns: int,
    context_extensions: Mapping[str, str] = {},  # noqa: B006 - read only
    tls: TlsPeers | None = None,
) -> bytes:
    """A CheckRequest: attributes {source, destination, request {time, http},
    context_extensions, metadata_context and route_metadata_context (empty), and with
    ``tls`` the peers' principals, the client certificate and the tls_session}. A header
    repeated in ``headers`` is sent once, its values joined with "," (as Envoy joins
    them in the map)."""
    joined: dict[str, str] = {}
    for k, v in http.headers:
        old = joined.get(k)
        joined[k] = v if old is None else f"{old},{v}"
    h = [_str(1, http.id) if http.id else b"", _str(2, http.method) if http.method else b""]
    h.append(_map(3, joined.items()))
    for num, text in ((4, http.path), (5, http.host), (6, http.scheme)):
        if text:
            h.append(_str(num, text))
    if http.size:
        h.append(_int(9, http.size))
    if http.protocol:
        h.append(_str(10, http.protocol))
    if http.body is not None and http.body:
        h.append(
            _len(12, http.body) if http.raw_body else _str(11, http.body.decode("utf-8", "replace"))
        )
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    timestamp = _int(1, seconds) + (_int(2, nanos) if nanos else b"")
    request = _len(1, timestamp) + _len(2, b"".join(h))
    attrs = []
    t = tls if tls is not None else _NO_TLS
    if source is not None or t.source_principal or t.source_certificate:
        attrs.append(_len(1, _peer(source, t.source_principal, t.source_certificate)))
    if destination is not None or t.destination_principal:
        attrs.append(_len(2, _peer(destination, t.destination_principal, "")))
    attrs.append(_len(4, request))
    attrs.append(_map(10, sorted(context_extensions.items())))
    attrs.append(_len(11, b""))  # metadata_context and route_metadata_context: empty,
    attrs.append(_len(13, b""))  # as Envoy sends them without metadata namespaces
    if t.sni is not None:
        attrs.append(_len(12, _str(1, t.sni) if t.sni else b""))
    return _len(1, b"".join(attrs))


_NO_TLS = TlsPeers()


# -- decoding ---------------------------------------------------------------------------


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = 0
    value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise DecodeError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field: an int for varint and fixed
    fields, bytes for length-delimited ones. Groups are refused."""
    i = 0
    n = len(buf)
    while i < n:
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if num == 0:
            raise DecodeError("field number 0")
        if wire == 0:
            value, i = _read_varint(buf, i)
            yield num, wire, value
        elif wire == 1:
            if i + 8 > n:
                raise DecodeError("truncated fixed64")
            yield num, wire, struct.unpack_from("<Q", buf, i)[0]
            i += 8
        elif wire == 5:
            if i + 4 > n:
                raise DecodeError("truncated fixed32")
            yield num, wire, struct.unpack_from("<I", buf, i)[0]
            i += 4
        elif wire == 2:
            length, i = _read_varint(buf, i)
            if i + length > n:
                raise DecodeError("truncated length-delimited field")
            yield num, wire, buf[i : i + length]
            i += length
        else:
            raise DecodeError(f"wire type {wire} not supported")


def _bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise DecodeError("a message field is not length-delimited")
    return value


def _number(value: int | bytes) -> int:
    if isinstance(value, bytes):
        raise DecodeError("a number field is length-delimited")
    return value


def _text(value: int | bytes) -> str:
    try:
        return _bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("a string field is not UTF-8") from None


@dataclass(frozen=True, slots=True)
class HeaderOption:
    """A HeaderValueOption: ``append`` None when unset (a BoolValue)."""

    key: str
    value: str
    append: bool | None
    action: int


def _header_option(buf: bytes) -> HeaderOption:
    key = value = ""
    append: bool | None = None
    action = APPEND_IF_EXISTS_OR_ADD
    for num, _, v in fields(buf):
        if num == 1:
            raw_value: bytes | None = None
            for n2, _, v2 in fields(_bytes(v)):
                if n2 == 1:
                    key = _text(v2)
                elif n2 == 2:
                    value = _text(v2)
                elif n2 == 3:
                    raw_value = _bytes(v2)
            if raw_value is not None and not value:
                value = raw_value.decode("latin-1")
        elif num == 2:
            append = False
            for n2, _, v2 in fields(_bytes(v)):
                if n2 == 1:
                    append = bool(_number(v2))
        elif num == 3:
            action = _number(v)
    return HeaderOption(key, value, append, action)


@dataclass(slots=True)
class CheckResult:
    """What a CheckResponse says: ``code`` is its google.rpc.Status code (0: OK)."""

    code: int = 0
    # ok_response
    headers: list[HeaderOption] = field(default_factory=list)
    headers_to_remove: list[str] = field(default_factory=list)
    response_headers_to_add: list[HeaderOption] = field(default_factory=list)
    # denied_response: 0 when unset
    status: int = 0
    denied_headers: list[HeaderOption] = field(default_factory=list)
    body: str = ""
    denied: bool = False
    # ok_response's query_parameters_to_set / _to_remove were given (proxyd does not
    # apply them: the check counts as an error, never silently passes).
    query_changes: bool = False


def check_response(buf: bytes) -> CheckResult:
    out = CheckResult()
    for num, _, v in fields(buf):
        if num == 1:
            for n2, _, v2 in fields(_bytes(v)):
                if n2 == 1:
                    code = _number(v2)
                    out.code = code - (1 << 64) if code >= 1 << 63 else code
        elif num == 2:
            out.denied = True
            for n2, _, v2 in fields(_bytes(v)):
                if n2 == 1:
                    for n3, _, v3 in fields(_bytes(v2)):
                        if n3 == 1:
                            out.status = _number(v3)
                elif n2 == 2:
                    out.denied_headers.append(_header_option(_bytes(v2)))
                elif n2 == 3:
                    out.body = _text(v2)
        elif num == 3:
            for n2, _, v2 in fields(_bytes(v)):
                if n2 == 2:
                    out.headers.append(_header_option(_bytes(v2)))
                elif n2 == 5:
                    out.headers_to_remove.append(_text(v2))
                elif n2 == 6:
                    out.response_headers_to_add.append(_header_option(_bytes(v2)))
                elif n2 in (7, 8):
                    out.query_changes = True
    return out
