"""Envoy's access-log formats (``SubstitutionFormatString``), compiled once into plans.

The worker fills one :class:`LogRecord` per request (or per connection, for a
listener's access log); a format built once per epoch turns it into a line.

* :class:`LogFormat` is a text format: one ``%`` interpolation of small getter results,
  compiled into a single function (the common operators are pasted in as expressions,
  so the default format calls no getter at all).
* :class:`JsonLogFormat` is ``json_format``: a dict whose string values hold operators.
  A value that is exactly one operator keeps the operator's type (numbers stay numbers,
  an absent value is ``null``); other strings are text formats. Keys come out sorted and
  the line is compact JSON with a newline, as Envoy 1.40 writes it.
* ``omit_empty_values``: in text an absent value renders as the empty string instead of
  ``-``; in JSON a key whose value is absent is left out (and so is a nested object left
  empty by that), while an empty string stays.

What the operators print is :mod:`proxyd.protocol.access_log_operators`. What the
getters return follows Envoy 1.40 (checked against the real binary): a value that is
not there renders as ``-``; a request header that is present but empty renders as the
empty string (so ``LogRecord`` uses None for "absent"); ``RESPONSE_CODE`` is ``0`` when
no response was sent. A bad format raises :class:`OperatorError` (a ValueError) naming
the operator, so configuration validation rejects it by name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from proxyd.protocol.access_log_operators import (
    Getter,
    OperatorError,
    Value,
    compile_operator,
    parse,
)

__all__ = ["DEFAULT_FORMAT", "JsonLogFormat", "LogFormat", "LogRecord", "OperatorError"]

DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

# ACCESS_LOG_TYPE values (Envoy's AccessLogType names).
DOWNSTREAM_END = "DownstreamEnd"
DOWNSTREAM_START = "DownstreamStart"
DOWNSTREAM_PERIODIC = "DownstreamPeriodic"
NOT_SET = "NotSet"  # a listener's connection log
TCP_CONNECTION_END = "TcpConnectionEnd"  # a TCP proxy's line at the connection's end
TCP_UPSTREAM_CONNECTED = "TcpUpstreamConnected"  # ... and when its upstream connected


class LogRecord:
    """What the worker knows about one request (or one connection) when it is logged.

    String fields use None for "not there" (rendered ``-``); a request header that was
    sent empty is "". ``req_headers`` / ``resp_headers`` hold the lower-case names the
    formats and filters asked for (several values joined with ",").
    """

    __slots__ = (
        "start_time",
        "method",
        "path",
        "scheme",
        "protocol",
        "response_code",
        "response_flags",
        "details",
        "bytes_received",
        "bytes_sent",
        "duration_ms",
        "upstream_service_time_ms",
        "upstream_host",
        "upstream_hostname",
        "upstream_remote_address",
        "upstream_protocol",
        "upstream_cluster",
        "attempt_count",
        "hosts_attempted",
        "host_names_attempted",
        "dynamic_metadata",
        "transport_failure",
        "downstream_remote_address",
        "downstream_direct_remote_address",
        "downstream_local_address",
        "request_id",
        "authority",
        "user_agent",
        "x_forwarded_for",
        "req_headers",
        "resp_headers",
        "route_name",
        "listener_name",
        "log_type",
        "server",
        "tls",
        "upstream_tls",
        "trace_id",
    )

    def __init__(self, **fields: Any) -> None:
        self.start_time: float = time.time()
        self.method: str | None = None
        self.path: str | None = None
        self.scheme: str | None = "http"
        self.protocol: str | None = "HTTP/1.1"
        self.response_code: int = 0
        self.response_flags: str = "-"
        self.details: str | None = None
        self.bytes_received: int = 0
        self.bytes_sent: int = 0
        self.duration_ms: int = 0
        self.upstream_service_time_ms: int | None = None
        self.upstream_host: str | None = None
        self.upstream_hostname: str | None = None
        self.upstream_remote_address: str | None = None
        self.upstream_protocol: str | None = None
        self.upstream_cluster: str | None = None
        self.attempt_count: int = 0
        # The hosts that got the request (None: the one in upstream_host).
        self.hosts_attempted: list[str] | None = None
        # Their host names (a DNS name, else the address), when a format prints them
        # (None: the one host's, upstream_hostname or upstream_host).
        self.host_names_attempted: list[str] | None = None
        # Dynamic metadata filters set (namespace -> key -> value; None: none).
        self.dynamic_metadata: dict[str, Any] | None = None
        self.transport_failure: str | None = None
        self.downstream_remote_address: str | None = None
        self.downstream_direct_remote_address: str | None = None
        self.downstream_local_address: str | None = None
        self.request_id: str | None = None
        self.authority: str | None = None
        self.user_agent: str | None = None
        self.x_forwarded_for: str | None = None
        self.req_headers: dict[str, str] = {}
        self.resp_headers: dict[str, str] = {}
        self.route_name: str | None = None
        self.listener_name: str | None = None
        self.log_type: str = DOWNSTREAM_END
        # The downstream TLS session (proxyd.worker.tls.TlsSocket: version, cipher, sni,
        # peer, ssl), None on a plaintext connection.
        self.tls: Any = None
        # The upstream TLS session the request (or TCP connection) went over
        # (proxyd.worker.tls.TlsSocket), None to a plaintext cluster.
        self.upstream_tls: Any = None
        # The request's trace id on a listener with tracing (%TRACE_ID%), else None.
        self.trace_id: str | None = None
        # The server header the client got (the HCM's server_name), None: no response.
        self.server: str | None = None
        for name, value in fields.items():
            setattr(self, name, value)


def _text(getter: Getter, empty: str) -> Callable[[LogRecord], str]:
    """``getter``'s value as text: None as ``empty`` ("-", or "" with omit_empty_values)."""

    def get(rec: LogRecord) -> str:
        v = getter(rec)
        if v is None:
            return empty
        return v if isinstance(v, str) else str(v)

    return get


class LogFormat:
    """A compiled Envoy text format; ``""`` is Envoy's default format."""

    def __init__(self, fmt: str, omit_empty_values: bool = False) -> None:
        self.source = fmt or DEFAULT_FORMAT
        req: set[str] = set()
        resp: set[str] = set()
        literals: list[str] = []
        getters: list[Getter] = []
        text = ""
        for piece in parse(self.source):
            if isinstance(piece, str):
                text += piece
                continue
            getters.append(compile_operator(*piece, req, resp))
            literals.append(text)
            text = ""
        literals.append(text)
        self.getters = tuple(getters)
        self.request_headers: frozenset[str] = frozenset(req)
        self.response_headers: frozenset[str] = frozenset(resp)
        empty = "" if omit_empty_values else "-"
        template = "%s".join(lit.replace("%", "%%") for lit in literals)
        # The plan becomes one function: ``T % (expr0, g1(rec), ...)``.
        args = []
        namespace: dict[str, Any] = {"T": template}
        for i, g in enumerate(getters):
            inline = getattr(g, "inline", None)
            if inline is not None and not omit_empty_values:
                args.append(inline)
            elif getattr(g, "text", None) is not None and not omit_empty_values:
                namespace[f"g{i}"] = g.text  # type: ignore[attr-defined]
                args.append(f"g{i}(rec)")
            elif getattr(g, "text_safe", False):
                namespace[f"g{i}"] = g
                args.append(f"g{i}(rec)")
            else:
                namespace[f"g{i}"] = _text(g, empty)
                args.append(f"g{i}(rec)")
        if getters:
            src = f"def format(rec):\n    return T % ({', '.join(args)},)\n"
        else:
            namespace["C"] = literals[0]
            src = "def format(rec):\n    return C\n"
        exec(compile(src, "<access log format>", "exec"), namespace)
        # An instance attribute: it shadows the method below, which documents it.
        self.format: Callable[[LogRecord], str] = namespace["format"]  # type: ignore[method-assign]

    def format(self, rec: LogRecord) -> str:
        """The log line for ``rec`` (replaced per instance by the compiled plan)."""
        raise NotImplementedError  # never called: __init__ sets the instance attribute


# -- json_format ------------------------------------------------------------------------


class _Omit:
    """A JSON value left out (omit_empty_values)."""


_OMIT = _Omit()

JsonPlan = Callable[[LogRecord], Any]


class JsonLogFormat:
    """A compiled ``json_format`` (given as the JSON text of the Struct)."""

    def __init__(self, source: str, omit_empty_values: bool = False) -> None:
        self.source = source
        self._req: set[str] = set()
        self._resp: set[str] = set()
        self._omit = omit_empty_values
        struct = json.loads(source)
        if not isinstance(struct, dict):
            raise OperatorError("json_format must be an object")
        self._plan = self._compile_value(struct)
        self.request_headers: frozenset[str] = frozenset(self._req)
        self.response_headers: frozenset[str] = frozenset(self._resp)
        self._encode = json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), sort_keys=True
        ).encode

    def _compile_value(self, value: Any) -> JsonPlan:
        if isinstance(value, dict):
            items = [(k, self._compile_value(v)) for k, v in sorted(value.items())]
            omit = self._omit

            def obj(rec: LogRecord) -> Any:
                out = {}
                for k, plan in items:
                    v = plan(rec)
                    if v is not _OMIT:
                        out[k] = v
                if omit and not out:
                    return _OMIT
                return out

            return obj
        if isinstance(value, list):
            plans = [self._compile_value(v) for v in value]

            def array(rec: LogRecord) -> Any:
                return [v for v in (p(rec) for p in plans) if v is not _OMIT]

            return array
        if isinstance(value, str):
            return self._compile_string(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # a Struct holds doubles; Envoy prints 5, not 5.0
        return lambda rec: value  # a number, bool or null as configured

    def _compile_string(self, s: str) -> JsonPlan:
        pieces = parse(s)
        if not any(isinstance(p, tuple) for p in pieces):
            literal = "".join(p for p in pieces if isinstance(p, str))
            return lambda rec: literal
        first = pieces[0]
        if len(pieces) == 1 and isinstance(first, tuple):
            name, param, length = first
            getter = compile_operator(name, param, length, self._req, self._resp)
            typed = name not in ("START_TIME", "START_TIME_LOCAL", "EMIT_TIME", "EMIT_TIME_LOCAL")
            omit = self._omit

            def single(rec: LogRecord) -> Any:
                v: Value = getter(rec)
                if v is None and omit:
                    return _OMIT
                return v if typed or v is None else str(v)

            return single
        fmt = LogFormat(s, self._omit)
        self._req |= fmt.request_headers
        self._resp |= fmt.response_headers
        return fmt.format

    def format(self, rec: LogRecord) -> str:
        value = self._plan(rec)
        return self._encode({} if value is _OMIT else value) + "\n"


def make_format(
    text: str, json_format: str = "", omit_empty_values: bool = False
) -> LogFormat | JsonLogFormat:
    """The format an access log's ``log_format`` describes (the epoch's plain data)."""
    if json_format:
        return JsonLogFormat(json_format, omit_empty_values)
    return LogFormat(text, omit_empty_values)
