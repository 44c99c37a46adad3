"""Envoy's access-log command operators: what each one prints, or why proxyd refuses it.

:func:`compile_operator` turns one ``%NAME(param):length%`` into a getter over a
:class:`~proxyd.protocol.access_log.LogRecord`. A getter returns the operator's value:
a str, an int (rendered as a JSON number in ``json_format``), or None when the value is
not there (``-`` in text, ``null`` in JSON). A getter may carry ``inline``, a Python
expression over ``rec`` that renders the same value as text, which the text plan pastes
into its one formatting function (see ``access_log._inline``).

The list of operators is Envoy 1.40's for HTTP (every name its binary accepts, checked
with ``envoy --mode validate``). Every name is either in :data:`_PLAIN` / the parameter
operators below, or in :data:`REFUSED` with the reason proxyd gives at config time. A
name Envoy does not know gets Envoy's own message ("Not supported field in StreamInfo").

Values that proxyd knows to be absent for every config it accepts are implemented as
absent: proxyd has no virtual clusters and no filter-chain names, so
``VIRTUAL_CLUSTER_NAME`` and ``FILTER_CHAIN_NAME`` print ``-`` exactly as Envoy does for
the same config. Upstream TLS exists: its version, cipher and the host certificate's
subject, issuer and SANs are logged (access_log_tls); the session id, group, the PEM
certificate and the local SANs still print ``-``. ``TRACE_ID`` is the request's trace id on a listener with tracing
(``-`` elsewhere); ``SPAN_ID`` still prints ``-``. When one of those features arrives,
its operators must move out of :data:`_ABSENT`. Downstream TLS termination exists: the
requested server name, TLS version and cipher and the peer certificate's subject,
issuer, SANs, serial and fingerprints are printed (:mod:`.access_log_tls`); the other
downstream TLS operators (local certificate, session id, group, peer chain, handshake
duration) still print ``-`` on a TLS connection (docs/configuration.md lists it as a
difference).
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from proxyd.protocol.access_log_time import time_getter
from proxyd.protocol.access_log_tls import TLS_OPERATORS

Value = str | int | None
Getter = Callable[[Any], Value]


class OperatorError(ValueError):
    """A command operator proxyd cannot compile; the message names it."""


def _inline(getter: Getter, expr: str) -> Getter:
    """Mark ``getter`` as rendered in text by the Python expression ``expr`` over ``rec``
    (only fixed attribute names and repr()'d constants are ever pasted in)."""
    getter.inline = expr  # type: ignore[attr-defined]
    return getter


def _field(attr: str) -> Getter:
    def get(rec: Any) -> Value:
        return getattr(rec, attr)

    return _inline(get, f'("-" if rec.{attr} is None else rec.{attr})')


def _int(attr: str) -> Getter:
    def get(rec: Any) -> Value:
        return getattr(rec, attr)

    return _inline(get, f"rec.{attr}")


def _const(value: Value) -> Getter:
    def get(rec: Any) -> Value:
        return value

    return _inline(get, repr("-" if value is None else value))


def split_host_port(addr: str | None) -> tuple[str | None, int | None]:
    """``"1.2.3.4:80"`` / ``"[::1]:80"`` → (host, port); (addr, None) without a port."""
    if not addr:
        return None, None
    if addr.startswith("["):
        end = addr.find("]")
        if end > 0:
            rest = addr[end + 1 :]
            return addr[1:end], int(rest[1:]) if rest.startswith(":") else None
        return addr, None
    host, sep, port = addr.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return addr, None


def _address(attr: str) -> dict[str, Getter]:
    """The three operators of one address: X, X_WITHOUT_PORT and X_PORT."""

    def without_port(rec: Any) -> Value:
        return split_host_port(getattr(rec, attr))[0]

    def port(rec: Any) -> Value:
        p = split_host_port(getattr(rec, attr))[1]
        return None if p is None else p

    return {"": _field(attr), "_WITHOUT_PORT": without_port, "_PORT": port}


# Envoy's long response flag names (ResponseFlagUtils), by short name.
LONG_FLAGS = {
    "LH": "FailedLocalHealthCheck",
    "UH": "NoHealthyUpstream",
    "UT": "UpstreamRequestTimeout",
    "LR": "LocalReset",
    "UR": "UpstreamRemoteReset",
    "UF": "UpstreamConnectionFailure",
    "UC": "UpstreamConnectionTermination",
    "UO": "UpstreamOverflow",
    "URX": "UpstreamRetryLimitExceeded",
    "NR": "NoRouteFound",
    "DI": "DelayInjected",
    "FI": "FaultInjected",
    "RL": "RateLimited",
    "UAEX": "UnauthorizedExternalService",
    "RLSE": "RateLimitServiceError",
    "DC": "DownstreamConnectionTermination",
    "IH": "InvalidEnvoyRequestHeaders",
    "SI": "StreamIdleTimeout",
    "DPE": "DownstreamProtocolError",
    "UPE": "UpstreamProtocolError",
    "UMSDR": "UpstreamMaxStreamDurationReached",
    "RFCF": "ResponseFromCacheFilter",
    "NFCF": "NoFilterConfigFound",
    "DT": "DurationTimeout",
    "OM": "OverloadManagerTerminated",
    "DF": "DnsResolutionFailed",
    "DO": "DropOverload",
    "DR": "DownstreamRemoteReset",
    "UDO": "UnconditionalDropOverload",
    "NC": "NoClusterFound",
}


def _long_flags(rec: Any) -> Value:
    flags = rec.response_flags
    if not flags or flags == "-":
        return "-"
    return ",".join(LONG_FLAGS.get(f, f) for f in flags.split(","))


# gRPC status names (google.rpc.Code), CAMEL_STRING and SNAKE_STRING.
GRPC_CAMEL = (
    "Ok", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted", "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss",
    "Unauthenticated",
)  # fmt: skip
GRPC_SNAKE = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip

# Envoy's Grpc::Utility::httpToGrpcStatus.
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def grpc_status(rec: Any) -> int | None:
    """Envoy's Grpc::Common::getGrpcStatus: the response's grpc-status header, else the
    status inferred from the HTTP status (2, Unknown, when no rule maps it); None when
    there was no response. proxyd keeps no response trailers (HTTP/1 upstreams), so a
    trailers-carried status is not seen."""
    v = rec.resp_headers.get("grpc-status")
    if v is not None:
        v = v.strip()
        if v.isdigit():
            return int(v)
    if rec.response_code:
        return _HTTP_TO_GRPC.get(rec.response_code, 2)
    return None


def _is_grpc(rec: Any) -> bool:
    ct = rec.req_headers.get("content-type")
    return ct is not None and ct.startswith("application/grpc")


def _grpc_status_getter(param: str | None) -> Getter:
    style = param or "CAMEL_STRING"
    if style not in ("CAMEL_STRING", "SNAKE_STRING", "NUMBER"):
        raise OperatorError(
            f"GrpcStatusFormatter only supports CAMEL_STRING, SNAKE_STRING or NUMBER. Got: {style}"
        )
    names = GRPC_CAMEL if style == "CAMEL_STRING" else GRPC_SNAKE

    def get(rec: Any) -> Value:
        if not _is_grpc(rec):
            return None
        code = grpc_status(rec)
        if code is None:
            return None
        if style == "NUMBER":
            return code
        return names[code] if code < len(names) else str(code)

    return get


def _grpc_number(rec: Any) -> Value:
    return grpc_status(rec) if _is_grpc(rec) else None


def _query_string(rec: Any) -> Value:
    path = rec.path
    if path is None:
        return None
    q = path.find("?")
    return path[q + 1 :] if q >= 0 and q + 1 < len(path) else None


def _unique_id(rec: Any) -> Value:
    return str(uuid.uuid4())


_HOSTNAME = socket.gethostname()


# Operators without a parameter (Envoy's "does not take any parameters or length").
_PLAIN: dict[str, Getter] = {
    "PROTOCOL": _field("protocol"),
    "UPSTREAM_PROTOCOL": _field("upstream_protocol"),
    "RESPONSE_CODE": _int("response_code"),
    "RESPONSE_CODE_DETAILS": _field("details"),
    "CONNECTION_TERMINATION_DETAILS": _const(None),
    "RESPONSE_FLAGS": _field("response_flags"),
    "RESPONSE_FLAGS_LONG": _long_flags,
    "BYTES_RECEIVED": _int("bytes_received"),
    "BYTES_SENT": _int("bytes_sent"),
    "DURATION": _int("duration_ms"),
    "UPSTREAM_HOST": _field("upstream_host"),
    "UPSTREAM_CLUSTER": _field("upstream_cluster"),
    "UPSTREAM_CLUSTER_RAW": _field("upstream_cluster"),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": _field("transport_failure"),
    "ROUTE_NAME": _field("route_name"),
    "LISTENER_NAME": _field("listener_name"),
    "ACCESS_LOG_TYPE": _field("log_type"),
    "STREAM_ID": _field("request_id"),
    "TRACE_ID": _field("trace_id"),
    "UNIQUE_ID": _unique_id,
    "HOSTNAME": _const(_HOSTNAME),
    "QUERY_PARAMS": _query_string,
    "CUSTOM_FLAGS": _const(""),  # no proxyd filter sets custom flags
    "GRPC_STATUS_NUMBER": _grpc_number,
}
for _prefix, _attr in (
    ("DOWNSTREAM_REMOTE_ADDRESS", "downstream_remote_address"),
    ("DOWNSTREAM_DIRECT_REMOTE_ADDRESS", "downstream_direct_remote_address"),
    ("DOWNSTREAM_LOCAL_ADDRESS", "downstream_local_address"),
    # No original_dst / proxy protocol in proxyd: the direct local address is the local one.
    ("DOWNSTREAM_DIRECT_LOCAL_ADDRESS", "downstream_local_address"),
    ("UPSTREAM_REMOTE_ADDRESS", "upstream_remote_address"),
):
    for _suffix, _getter in _address(_attr).items():
        _name = _prefix + _suffix
        if _name.endswith("_ADDRESS_PORT"):
            _name = _name.replace("_ADDRESS_PORT", "_PORT")
        _PLAIN[_name] = _getter


def _host_name(rec: Any) -> Value:
    return rec.upstream_hostname or rec.upstream_host


def _host_name_without_port(rec: Any) -> Value:
    if rec.upstream_hostname:
        return split_host_port(rec.upstream_hostname)[0]
    return split_host_port(rec.upstream_host)[0]


_PLAIN["UPSTREAM_HOST_NAME"] = _host_name
_PLAIN["UPSTREAM_HOST_NAME_WITHOUT_PORT"] = _host_name_without_port


def _hosts_attempted(rec: Any) -> Value:
    """The hosts that got the request, comma-separated, each once (a refused connection
    is not one, as in Envoy 1.40); ``hosts_attempted`` None means the one picked host."""
    hosts = rec.hosts_attempted
    if hosts is None:
        return rec.upstream_host
    return ",".join(hosts) or None


def _hosts_attempted_without_port(rec: Any) -> Value:
    hosts = rec.hosts_attempted
    if hosts is None:
        hosts = [rec.upstream_host] if rec.upstream_host is not None else []
    return ",".join(split_host_port(h)[0] or "" for h in hosts) or None


def _host_names_attempted(rec: Any) -> Value:
    """The host names of the hosts that got the request, as UPSTREAM_HOST_NAME gives
    each (a DNS name, else the address), comma-separated."""
    names = rec.host_names_attempted
    if names is None:
        if rec.hosts_attempted is not None:
            names = rec.hosts_attempted
        else:
            return _host_name(rec)
    return ",".join(names) or None


def _host_names_attempted_without_port(rec: Any) -> Value:
    names = rec.host_names_attempted
    if names is None:
        if rec.hosts_attempted is not None:
            names = rec.hosts_attempted
        else:
            return _host_name_without_port(rec)
    return ",".join(split_host_port(n)[0] or "" for n in names) or None


_PLAIN["UPSTREAM_REQUEST_ATTEMPT_COUNT"] = _int("attempt_count")
_PLAIN["UPSTREAM_HOST_NAMES_ATTEMPTED"] = _host_names_attempted
_PLAIN["UPSTREAM_HOST_NAMES_ATTEMPTED_WITHOUT_PORT"] = _host_names_attempted_without_port
_PLAIN["UPSTREAM_HOSTS_ATTEMPTED"] = _hosts_attempted
_PLAIN["UPSTREAM_HOSTS_ATTEMPTED_WITHOUT_PORT"] = _hosts_attempted_without_port


def _upstream_endpoint_id(rec: Any) -> Value:
    # Endpoint ids belong to internal addresses, which proxyd has none of: Envoy prints
    # nothing for a connected IP upstream, and "-" when there is no upstream.
    return None if rec.upstream_remote_address is None else ""


_PLAIN["UPSTREAM_REMOTE_ADDRESS_ENDPOINT_ID"] = _upstream_endpoint_id
_PLAIN["DOWNSTREAM_LOCAL_ADDRESS_ENDPOINT_ID"] = _const("")
_PLAIN["DOWNSTREAM_DIRECT_LOCAL_ADDRESS_ENDPOINT_ID"] = _const("")

# Absent for every config proxyd accepts (see the module docstring): Envoy prints "-".
# (The downstream TLS ones here print "-" on a TLS connection too: not tracked yet.)
_ABSENT = (
    "SPAN_ID", "VIRTUAL_CLUSTER_NAME", "FILTER_CHAIN_NAME",
    "DOWNSTREAM_HANDSHAKE_DURATION", "UPSTREAM_SERVER_NAME",
    "DOWNSTREAM_LOCAL_IP_SAN", "DOWNSTREAM_LOCAL_EMAIL_SAN",
    "DOWNSTREAM_LOCAL_OTHERNAME_SAN",
    "DOWNSTREAM_PEER_OTHERNAME_SAN", "DOWNSTREAM_TLS_SESSION_ID", "DOWNSTREAM_TLS_GROUP",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1", "DOWNSTREAM_PEER_CHAIN_SERIALS",
    "DOWNSTREAM_PEER_ISSUER_FINGERPRINT_256", "DOWNSTREAM_PEER_ISSUER_SERIAL",
    "UPSTREAM_TLS_SESSION_ID", "UPSTREAM_TLS_GROUP",
    "UPSTREAM_PEER_CERT", "UPSTREAM_LOCAL_URI_SAN", "UPSTREAM_LOCAL_DNS_SAN",
    "UPSTREAM_LOCAL_IP_SAN", "TLS_JA3_FINGERPRINT", "TLS_JA4_FINGERPRINT",
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
)  # fmt: skip
for _name in _ABSENT:
    _PLAIN[_name] = _const(None)


_PLAIN.update(TLS_OPERATORS)  # the downstream TLS session's (access_log_tls)

# Envoy 1.40 operators proxyd refuses, with the reason given at config time.
_NOT_TRACKED = "proxyd does not track this value yet"
_UNTRACKED = (
    "REQUEST_HEADERS_BYTES", "RESPONSE_HEADERS_BYTES", "RESPONSE_TRAILERS_BYTES",
    "UPSTREAM_WIRE_BYTES_SENT", "UPSTREAM_WIRE_BYTES_RECEIVED",
    "UPSTREAM_HEADER_BYTES_SENT", "UPSTREAM_HEADER_BYTES_RECEIVED",
    "UPSTREAM_DECOMPRESSED_HEADER_BYTES_SENT",
    "UPSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED", "DOWNSTREAM_WIRE_BYTES_SENT",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED", "DOWNSTREAM_HEADER_BYTES_SENT",
    "DOWNSTREAM_HEADER_BYTES_RECEIVED", "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_SENT",
    "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED", "REQUEST_DURATION",
    "REQUEST_TX_DURATION", "RESPONSE_DURATION", "RESPONSE_TX_DURATION",
    "ROUNDTRIP_DURATION", "UPSTREAM_CONNECTION_POOL_READY_DURATION", "COMMON_DURATION",
    "UPSTREAM_LOCAL_ADDRESS", "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_LOCAL_PORT", "CONNECTION_ID", "UPSTREAM_CONNECTION_ID",
    "UPSTREAM_CONNECTION_IDS_ATTEMPTED", "DOWNSTREAM_CX_RTT", "BYTES_RETRANSMITTED",
    "DOWNSTREAM_DETECTED_CLOSE_TYPE", "UPSTREAM_DETECTED_CLOSE_TYPE",
    "DOWNSTREAM_LOCAL_CLOSE_REASON", "UPSTREAM_LOCAL_CLOSE_REASON", "LOCAL_REPLY_BODY",
    "ROUTE_RESOLUTION_COUNT", "ROUTE_RESOLUTION_TIME_US", "STREAM_INFO_REQ",
)  # fmt: skip
REFUSED: dict[str, str] = {
    **{n: _NOT_TRACKED for n in _UNTRACKED},
    # Response trailers: proxyd does not keep them.
    "TRAILER": "response trailers are not kept by proxyd",
    "RESPONSE_TRAILER": "response trailers are not kept by proxyd",
    # Metadata and filter state: no proxyd filter sets them, and route/cluster/host
    # metadata does not reach the workers.
    "CLUSTER_METADATA": "cluster metadata is not implemented by proxyd",
    "UPSTREAM_METADATA": "upstream host metadata is not implemented by proxyd",
    "METADATA": "metadata is not implemented by proxyd",
    "FILTER_STATE": "filter state is not implemented by proxyd",
    "UPSTREAM_FILTER_STATE": "upstream filter state is not implemented by proxyd",
    "CEL": "CEL expressions are not implemented by proxyd",
    "COALESCE": "COALESCE is not implemented by proxyd",
    "DOWNSTREAM_PEER_CERT_V_START": "TLS certificate dates are not implemented by proxyd",
    "DOWNSTREAM_PEER_CERT_V_END": "TLS certificate dates are not implemented by proxyd",
    "UPSTREAM_PEER_CERT_V_START": "TLS certificate dates are not implemented by proxyd",
    "UPSTREAM_PEER_CERT_V_END": "TLS certificate dates are not implemented by proxyd",
}

# Operators with a parameter (compiled by compile_operator below).
PARAMETER_OPERATORS = (
    "REQ", "REQUEST_HEADER", "RESP", "RESPONSE_HEADER", "START_TIME", "START_TIME_LOCAL",
    "EMIT_TIME", "EMIT_TIME_LOCAL", "ENVIRONMENT", "QUERY_PARAM", "PATH", "GRPC_STATUS",
    "DYNAMIC_METADATA",
)  # fmt: skip


def implemented() -> frozenset[str]:
    """Every operator name proxyd prints."""
    return frozenset(_PLAIN) | frozenset(PARAMETER_OPERATORS)


# -- headers --------------------------------------------------------------------------------

# Request pseudo-headers and the headers kept in LogRecord fields, by lower-case name.
_REQ_FIELDS = {
    ":method": "method",
    ":path": "path",
    ":authority": "authority",
    "host": "authority",
    ":scheme": "scheme",
    "x-forwarded-for": "x_forwarded_for",
    "user-agent": "user_agent",
    "x-request-id": "request_id",
}
_HEADER_NAME = re.compile(r"^:?[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")


def _header_getter(header: str, response: bool, req: set[str], resp: set[str]) -> Getter:
    name = header.lower()
    if response:
        if name == ":status":
            return _inline(
                lambda rec: str(rec.response_code) if rec.response_code else None,
                '(rec.response_code or "-")',
            )
        if name == "x-envoy-upstream-service-time":

            def service_time(rec: Any) -> Value:
                v = rec.upstream_service_time_ms
                return None if v is None else str(v)

            return _inline(
                service_time,
                '("-" if rec.upstream_service_time_ms is None else rec.upstream_service_time_ms)',
            )
        if name == "server":  # the proxy overwrites it (server_name)
            return _field("server")
        if name.startswith(":"):
            return _const(None)  # a response has no other pseudo-header
        resp.add(name)
        return _inline(
            lambda rec: rec.resp_headers.get(name), f'rec.resp_headers.get({name!r}, "-")'
        )
    attr = _REQ_FIELDS.get(name)
    if attr is not None:
        return _inline(
            lambda rec: getattr(rec, attr), f'("-" if rec.{attr} is None else rec.{attr})'
        )
    if name.startswith(":"):
        return _const(None)  # :protocol and the like: not in an HTTP/1 request
    req.add(name)
    return _inline(lambda rec: rec.req_headers.get(name), f'rec.req_headers.get({name!r}, "-")')


def _headers_operator(
    name: str, param: str | None, length: int | None, req: set[str], resp: set[str]
) -> Getter:
    if not param:
        raise OperatorError(f"{name} requires parameters")
    names = param.split("?")
    if len(names) > 2:
        raise OperatorError(f"More than 1 alternative header specified in token: {param}")
    for h in names:
        if h and not _HEADER_NAME.match(h):
            raise OperatorError(
                "Invalid header configuration. Format string contains invalid characters."
            )
    response = name in ("RESP", "RESPONSE_HEADER")
    getters = [_header_getter(h, response, req, resp) for h in names if h]
    first = getters[0] if getters else None
    second = getters[1] if len(getters) > 1 else None
    if first is not None and second is None and length is None:
        return first

    def get(rec: Any) -> Value:
        v = first(rec) if first is not None else None
        if v is None and second is not None:
            v = second(rec)
        if v is None or length is None:
            return v
        return v[:length]  # type: ignore[index]

    if first is not None and second is not None and length is None:
        # The default format's REQ(X-ENVOY-ORIGINAL-PATH?:PATH): text without a wrapper.
        def text(rec: Any) -> str:
            v = first(rec)
            if v is None:
                v = second(rec)
            return "-" if v is None else v  # type: ignore[return-value]

        get.text = text  # type: ignore[attr-defined]
    return get


# -- the others with a parameter -------------------------------------------------------------


def _path_getter(param: str | None, req: set[str]) -> Getter:
    with_query, _, option = (param or "").partition(":")
    if with_query not in ("", "WQ", "NQ"):
        raise OperatorError(f"Invalid PATH option: '{with_query}', only 'WQ'/'NQ' are allowed")
    if option not in ("", "ORIG", "PATH", "ORIG_OR_PATH"):
        raise OperatorError(
            f"Invalid PATH option: '{option}', only 'ORIG'/'PATH'/'ORIG_OR_PATH' are allowed"
        )
    strip = with_query == "NQ"
    option = option or "ORIG_OR_PATH"
    if option != "PATH":
        req.add("x-envoy-original-path")

    def get(rec: Any) -> Value:
        if option == "PATH":
            v = rec.path
        else:
            v = rec.req_headers.get("x-envoy-original-path")
            if v is None and option == "ORIG_OR_PATH":
                v = rec.path
        if v is None:
            return None
        if strip:
            q = v.find("?")
            if q >= 0:
                v = v[:q]
        return v

    return get


def _query_param_getter(param: str | None) -> Getter:
    if not param:
        raise OperatorError("QUERY_PARAM requires parameters")
    key = param

    def get(rec: Any) -> Value:
        path = rec.path
        if path is None:
            return None
        q = path.find("?")
        if q < 0:
            return None
        for k, v in parse_qsl(path[q + 1 :], keep_blank_values=True):
            if k == key:
                return v
        return None

    return get


def _truncate(getter: Getter, length: int) -> Getter:
    def get(rec: Any) -> Value:
        v = getter(rec)
        return v[:length] if isinstance(v, str) else v

    return get


_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%")


def _metadata_text(value: object) -> str:
    """A metadata value as Envoy prints it in a text log: a string as it is, a number
    without a fraction when it has none, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, separators=(",", ":"))


def _dynamic_metadata_getter(param: str | None) -> Getter:
    """%DYNAMIC_METADATA(NAMESPACE:KEY*)%: what filters set on the stream (the
    header_to_metadata filter), a key's value or the namespace's whole object."""
    if not param:
        raise OperatorError("DYNAMIC_METADATA requires parameters")
    namespace, *keys = param.split(":")

    def get(rec: Any) -> Value:
        metadata = rec.dynamic_metadata
        value: object = None if metadata is None else metadata.get(namespace)
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return None if value is None else _metadata_text(value)

    return get


def compile_operator(
    name: str, param: str | None, length: str | None, req: set[str], resp: set[str]
) -> Getter:
    """The getter for ``%name(param):length%``. Request / response header names the
    getter reads are added to ``req`` / ``resp`` (lower case), so the worker collects
    them. Raises :class:`OperatorError` naming the operator."""
    limit = int(length) if length is not None else None
    if name in ("REQ", "REQUEST_HEADER", "RESP", "RESPONSE_HEADER"):
        return _headers_operator(name, param, limit, req, resp)
    if name in REFUSED:
        raise OperatorError(f"%{name}% is not supported by proxyd: {REFUSED[name]}")
    if name in ("START_TIME", "START_TIME_LOCAL", "EMIT_TIME", "EMIT_TIME_LOCAL"):
        if limit is not None:
            raise OperatorError(f"{name} does not allow length to be specified.")
        return time_getter(name, param)
    getter: Getter
    if name == "ENVIRONMENT":
        if not param:
            raise OperatorError("ENVIRONMENT requires parameters")
        getter = _const(os.environ.get(param))
    elif name == "QUERY_PARAM":
        getter = _query_param_getter(param)
    elif name == "PATH":
        getter = _path_getter(param, req)
    elif name == "DYNAMIC_METADATA":
        getter = _dynamic_metadata_getter(param)
    elif name == "GRPC_STATUS":
        if limit is not None:
            raise OperatorError(f"{name} does not take any parameters or length")
        return _grpc_status_getter(param)
    else:
        plain = _PLAIN.get(name)
        if plain is None:
            raise OperatorError(f"Not supported field in StreamInfo: {name}")
        if param or limit is not None:
            raise OperatorError(f"{name} does not take any parameters or length")
        return plain
    return getter if limit is None else _truncate(getter, limit)


def parse(fmt: str) -> list[str | tuple[str, str | None, str | None]]:
    """Split an Envoy format string into literal text and (name, param, length)
    commands, as Envoy's parser does; raise :class:`OperatorError` where it would."""
    out: list[str | tuple[str, str | None, str | None]] = []
    text: list[str] = []
    i = 0
    n = len(fmt)
    while i < n:
        pct = fmt.find("%", i)
        if pct < 0:
            text.append(fmt[i:])
            break
        text.append(fmt[i:pct])
        if fmt.startswith("%%", pct):
            text.append("%")
            i = pct + 2
            continue
        m = _COMMAND.match(fmt, pct)
        if m is None:
            raise OperatorError(
                f"Incorrect configuration: {fmt}. Couldn't find valid command at position {pct}"
            )
        literal = "".join(text)
        text.clear()
        if literal:
            out.append(literal)
        out.append((m.group(1), m.group(2), m.group(3)))
        i = m.end()
    literal = "".join(text)
    if literal:
        out.append(literal)
    return out
