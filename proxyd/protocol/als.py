"""The gRPC access log service's messages (``envoy.service.accesslog.v3``), encoded by
hand from a :class:`~proxyd.protocol.access_log.LogRecord`, without I/O and without
protobuf (workers never import it). Field numbers are xds-protos'
(envoy/service/accesslog/v3/als.proto, envoy/data/accesslog/v3/accesslog.proto,
envoy/config/core/v3/base.proto and address.proto, google/protobuf/struct.proto).

* :func:`stream_message`: a ``StreamAccessLogsMessage`` of HTTP or TCP entries, with
  the ``Identifier`` (node id and cluster, log name) when it opens a stream.
* :func:`http_entry` / :func:`tcp_entry`: one ``HTTPAccessLogEntry`` /
  ``TCPAccessLogEntry``. What proxyd knows of a request goes in, as Envoy fills it:
  addresses, start time and duration, the upstream cluster and host, the attempt
  count, the response flags, the route name, the stream id (the request id), the
  downstream TLS properties (version, cipher suite, SNI, the local certificate's
  subject and URI SANs, the peer certificate's subject, issuer and URI SANs: Envoy
  logs no DNS SANs), dynamic metadata; the request's
  method, scheme, authority, path, user agent, referer, x-forwarded-for, request id,
  body bytes and the additional headers; the response's code, details, body bytes and
  additional headers. What proxyd does not measure (the byte-level times, header and
  wire byte counts, the upstream local address) is left out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

from proxyd.protocol.otlp import _len, _str, _varint
from proxyd.protocol.tls_context import peer_sans, peer_subject

# config.core.v3.RequestMethod
METHODS = {
    "GET": 1, "HEAD": 2, "POST": 3, "PUT": 4, "DELETE": 5, "CONNECT": 6, "OPTIONS": 7,
    "TRACE": 8, "PATCH": 9,
}  # fmt: skip
# HTTPAccessLogEntry.HTTPVersion
HTTP_VERSIONS = {"HTTP/1.0": 1, "HTTP/1.1": 2, "HTTP/2": 3, "HTTP/3": 4}
# TLSProperties.TLSVersion
TLS_VERSIONS = {"TLSv1": 1, "TLSv1.1": 2, "TLSv1.2": 3, "TLSv1.3": 4}
# data.accesslog.v3.AccessLogType
LOG_TYPES = {
    "NotSet": 0, "TcpUpstreamConnected": 1, "TcpPeriodic": 2, "TcpConnectionEnd": 3,
    "DownstreamStart": 4, "DownstreamPeriodic": 5, "DownstreamEnd": 6,
}  # fmt: skip
# ResponseFlags' bool fields by short flag (UAEX is the unauthorized_details message).
RESPONSE_FLAGS = {
    "LH": 1, "UH": 2, "UT": 3, "LR": 4, "UR": 5, "UF": 6, "UC": 7, "UO": 8, "NR": 9,
    "DI": 10, "FI": 11, "RL": 12, "RLSE": 14, "DC": 15, "URX": 16, "SI": 17, "IH": 18,
    "DPE": 19, "UMSDR": 20, "RFCF": 21, "NFCF": 22, "DT": 23, "UPE": 24, "NC": 25, "OM": 26,
    "DF": 27, "DR": 28,
}  # fmt: skip
UNAUTHORIZED_EXTERNAL = 13


def _uint(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n) if n else b""


def _opt_str(field: int, text: str | None) -> bytes:
    return _str(field, text) if text else b""


def _seconds(field: int, t: float) -> bytes:
    """A Timestamp or Duration of ``t`` seconds."""
    seconds = int(t)
    nanos = int(round((t - seconds) * 1e9))
    if nanos >= 1_000_000_000:
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    return _len(field, _uint(1, seconds) + _uint(2, nanos))


def _address(field: int, label: str | None) -> bytes:
    """Address{socket_address} of "ip:port" or "[ip6]:port" (nothing for anything else)."""
    if not label:
        return b""
    host, sep, port = label.rpartition(":")
    if not sep or not port.isdigit():
        return b""
    if host.startswith("["):
        host = host[1:-1]
    return _len(field, _len(1, _str(2, host) + _uint(3, int(port))))


def _map(field: int, pairs: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(_len(field, _str(1, k) + _str(2, v)) for k, v in pairs)


def _value(v: Any) -> bytes:
    """google.protobuf.Value."""
    if v is None:
        return b"\x08\x00"  # null_value
    if isinstance(v, bool):
        return b"\x20" + (b"\x01" if v else b"\x00")
    if isinstance(v, int | float):
        return b"\x11" + struct.pack("<d", float(v))
    if isinstance(v, str):
        return _len(3, v.encode("utf-8"))
    if isinstance(v, dict):
        return _len(5, _struct(v))
    if isinstance(v, list | tuple):
        return _len(6, b"".join(_len(1, _value(x)) for x in v))
    return _len(3, str(v).encode("utf-8"))


def _struct(d: dict[str, Any]) -> bytes:
    return b"".join(_len(1, _str(1, str(k)) + _len(2, _value(v))) for k, v in d.items())


def _metadata(field: int, md: dict[str, Any] | None) -> bytes:
    """Metadata{filter_metadata: namespace -> Struct}."""
    if not md:
        return b""
    entries = b"".join(
        _len(1, _str(1, ns) + _len(2, _struct(values)))
        for ns, values in md.items()
        if isinstance(values, dict)
    )
    return _len(field, entries) if entries else b""


def _response_flags(flags: str) -> bytes:
    if not flags or flags == "-":
        return b""
    out = []
    for flag in flags.split(","):
        number = RESPONSE_FLAGS.get(flag)
        if number is not None:
            out.append(_varint(number << 3) + b"\x01")
        elif flag == "UAEX":  # Unauthorized{reason: EXTERNAL_SERVICE}
            out.append(_len(UNAUTHORIZED_EXTERNAL, _uint(1, 1)))
    return _len(16, b"".join(out)) if out else b""


# The IANA number of an OpenSSL cipher name (the low 16 bits of OpenSSL's id), filled
# on first use from the ssl module's own table.
_CIPHER_IDS: dict[str, int] = {}


def cipher_id(name: str) -> int:
    if not _CIPHER_IDS:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        for c in ctx.get_ciphers():
            _CIPHER_IDS[c["name"]] = c["id"] & 0xFFFF
    return _CIPHER_IDS.get(name, 0)


def _tls_properties(tls: Any) -> bytes:
    """TLSProperties of the downstream session (rec.tls: proxyd.worker.tls.TlsSocket,
    ``local`` the certificate it presented, ``peer`` the client's)."""
    out = [_uint(1, TLS_VERSIONS.get(tls.version, 0))]
    cid = cipher_id(tls.cipher) if tls.cipher else 0
    if cid:
        out.append(_len(2, _uint(1, cid)))
    out.append(_opt_str(3, tls.sni))
    local = tls.local
    if local is not None:
        props = [_len(1, _str(1, s)) for s in local.uri_sans]
        props.append(_opt_str(2, local.subject))
        out.append(_len(4, b"".join(props)))
    peer = tls.peer
    if peer:
        props = [_len(1, _str(1, s)) for s in peer_sans(peer, "URI").split(",") if s]
        props.append(_opt_str(2, peer_subject(peer)))
        props.append(_opt_str(3, peer_subject(peer, "issuer")))
        out.append(_len(5, b"".join(props)))
    return _len(4, b"".join(out))


def _common(
    rec: Any, stream_id: str | None, tcp: bool = False, tags: Sequence[tuple[str, str]] = ()
) -> bytes:
    """AccessLogCommon (``tcp``: of a TCP proxy's connection, whose one upstream
    connection is its one attempt; ``tags`` the custom tags)."""
    out = [
        _address(2, rec.downstream_remote_address),
        _address(3, rec.downstream_local_address),
    ]
    if rec.tls is not None:
        out.append(_tls_properties(rec.tls))
    out.append(_seconds(5, rec.start_time))
    out.append(_address(13, rec.upstream_host or rec.upstream_remote_address))
    out.append(_opt_str(15, rec.upstream_cluster))
    out.append(_response_flags(rec.response_flags))
    out.append(_metadata(17, rec.dynamic_metadata))
    out.append(_opt_str(18, rec.transport_failure))
    out.append(_opt_str(19, rec.route_name))
    out.append(_address(20, rec.downstream_direct_remote_address))
    out.append(_map(22, tags))
    out.append(_seconds(23, rec.duration_ms / 1000))
    attempts = rec.attempt_count
    if tcp and not attempts and rec.upstream_host:
        attempts = 1
    out.append(_uint(24, attempts))
    out.append(_opt_str(26, stream_id))
    out.append(_uint(33, LOG_TYPES.get(rec.log_type, 0)))
    return b"".join(out)


def http_entry(
    rec: Any,
    request_headers: Sequence[str] = (),
    response_headers: Sequence[str] = (),
    tags: Sequence[tuple[str, str]] = (),
) -> bytes:
    """HTTPAccessLogEntry of ``rec``; ``request_headers`` / ``response_headers`` are the
    additional headers to log (lower-case names; a header the message lacks is left
    out), ``tags`` the custom tags (tag, value)."""
    req_headers = rec.req_headers
    request = [
        _uint(1, METHODS.get(rec.method or "", 0)),
        _opt_str(2, rec.scheme if rec.method else None),
        _opt_str(3, rec.authority),
        _opt_str(5, rec.path),
        _opt_str(6, rec.user_agent),
        _opt_str(7, req_headers.get("referer")),
        _opt_str(8, rec.x_forwarded_for),
        _opt_str(9, rec.request_id),
        _uint(12, rec.bytes_received),
        _map(13, ((h, req_headers[h]) for h in request_headers if h in req_headers)),
    ]
    resp_headers = rec.resp_headers
    response = []
    if rec.response_code:
        response.append(_len(1, _uint(1, rec.response_code)))
    response.append(_uint(3, rec.bytes_sent))
    response.append(_map(4, ((h, resp_headers[h]) for h in response_headers if h in resp_headers)))
    response.append(_opt_str(6, rec.details))
    return b"".join(
        (
            _len(1, _common(rec, rec.request_id, tags=tags)),
            _uint(2, HTTP_VERSIONS.get(rec.protocol or "", 0)),
            _len(3, b"".join(request)),
            _len(4, b"".join(response)),
        )
    )


def tcp_entry(rec: Any, stream_id: str, tags: Sequence[tuple[str, str]] = ()) -> bytes:
    """TCPAccessLogEntry of ``rec`` (a TCP proxy's connection)."""
    connection = _uint(1, rec.bytes_received) + _uint(2, rec.bytes_sent)
    return _len(1, _common(rec, stream_id, tcp=True, tags=tags)) + _len(2, connection)


def identifier(node_id: str, node_cluster: str, log_name: str) -> bytes:
    """StreamAccessLogsMessage.Identifier."""
    node = _opt_str(1, node_id) + _opt_str(2, node_cluster) + _str(6, "proxyd")
    return _len(1, node) + _str(2, log_name)


def stream_message(ident: bytes | None, entries: Sequence[bytes], tcp: bool) -> bytes:
    """StreamAccessLogsMessage with ``entries`` (encoded by :func:`http_entry`, or by
    :func:`tcp_entry` when ``tcp``), and ``ident`` when the message opens a stream."""
    body = b"".join(_len(1, e) for e in entries)
    out = _len(1, ident) if ident is not None else b""
    return out + _len(3 if tcp else 2, body)
