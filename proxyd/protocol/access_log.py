"""Envoy's text access-log format, compiled once into a plan of literals and getters.

The worker fills one :class:`LogRecord` per request; a :class:`LogFormat` built once per
epoch turns it into a line with one ``%`` interpolation of small getter results. What
the getters return follows Envoy 1.40 (checked against the real binary):

* a value that is not there renders as ``-``; a request header that is present but
  empty renders as the empty string (so ``LogRecord`` uses None for "absent");
* ``RESPONSE_CODE`` is ``0`` when no response was sent;
* ``REQ(X?Y):Z`` takes header X, else Y, truncated to Z characters; ``REQ(HOST)`` is the
  authority; only ``REQ`` and ``RESP`` take a length, and the other operators take no
  parameter (``%PROTOCOL()%`` is allowed, ``%PROTOCOL(x)%`` and ``%PROTOCOL:3%`` are not);
* ``START_TIME`` is UTC, ``2016-04-15T20:17:00.310Z`` by default; ``START_TIME(fmt)``
  is strftime plus Envoy's ``%s``, ``%f`` / ``%1f`` … ``%9f``, ``%E<n>S`` and ``%E*S``.

Every other operator raises :class:`ValueError` naming it, so configuration validation
can reject it by name.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)


class LogRecord:
    """What the worker knows about one request when it is logged.

    String fields use None for "not there" (rendered ``-``); a request header that was
    sent empty is "". ``req_headers`` / ``resp_headers`` hold only the lower-case names
    listed in :attr:`LogFormat.request_headers` / :attr:`LogFormat.response_headers`,
    several values joined with ",".
    """

    __slots__ = (
        "start_time",
        "method",
        "path",
        "protocol",
        "response_code",
        "response_flags",
        "bytes_received",
        "bytes_sent",
        "duration_ms",
        "upstream_service_time_ms",
        "upstream_host",
        "upstream_cluster",
        "downstream_remote_address",
        "downstream_local_address",
        "request_id",
        "authority",
        "user_agent",
        "x_forwarded_for",
        "req_headers",
        "resp_headers",
        "route_name",
    )

    def __init__(self, **fields: Any) -> None:
        self.start_time: float = time.time()
        self.method: str | None = None
        self.path: str | None = None
        self.protocol: str | None = "HTTP/1.1"
        self.response_code: int = 0
        self.response_flags: str = "-"
        self.bytes_received: int = 0
        self.bytes_sent: int = 0
        self.duration_ms: int = 0
        self.upstream_service_time_ms: int | None = None
        self.upstream_host: str | None = None
        self.upstream_cluster: str | None = None
        self.downstream_remote_address: str | None = None
        self.downstream_local_address: str | None = None
        self.request_id: str | None = None
        self.authority: str | None = None
        self.user_agent: str | None = None
        self.x_forwarded_for: str | None = None
        self.req_headers: dict[str, str] = {}
        self.resp_headers: dict[str, str] = {}
        self.route_name: str | None = None
        for name, value in fields.items():
            setattr(self, name, value)


Getter = Callable[[LogRecord], str]

# Envoy's command syntax: %NAME%, %NAME(param)%, %NAME(param):length%.
_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%")

# Request headers that live in LogRecord fields rather than in ``req_headers``.
_REQ_FIELDS = {
    ":method": "method",
    ":path": "path",
    ":authority": "authority",
    "host": "authority",
    "x-forwarded-for": "x_forwarded_for",
    "user-agent": "user_agent",
    "x-request-id": "request_id",
}

# Milliseconds suffixes for the default START_TIME, so rendering does no formatting.
_MS_SUFFIX = tuple(f".{i:03d}Z" for i in range(1000))


_G = TypeVar("_G", bound=Callable[[LogRecord], str | None])


def _inline(getter: _G, expr: str) -> _G:
    """Mark ``getter`` as equivalent to the Python expression ``expr`` over ``rec``.

    The compiled format inlines such expressions instead of calling the getter. Only
    expressions built here from fixed attribute names and repr()'d header names are
    ever inlined; nothing from the format string is pasted in unquoted.
    """
    # A function attribute, which mypy cannot declare; LogFormat reads it with getattr().
    getter.inline = expr  # type: ignore[attr-defined]
    return getter


def _field_or_dash(attr: str) -> Getter:
    def get(rec: LogRecord) -> str:
        v = getattr(rec, attr)
        return v if v else "-"

    return _inline(get, f'(rec.{attr} or "-")')


def _int_field(attr: str) -> Getter:
    def get(rec: LogRecord) -> str:
        return str(getattr(rec, attr))

    return _inline(get, f"rec.{attr}")  # "%s" renders the int as str() would


def _without_port(rec: LogRecord) -> str:
    addr = rec.downstream_remote_address
    if not addr:
        return "-"
    if addr.startswith("["):  # "[::1]:80"
        end = addr.find("]")
        return addr[1:end] if end > 0 else addr
    host, sep, _port = addr.rpartition(":")
    return host if sep else addr


# Operators that take no parameter and no length.
_PLAIN: dict[str, Getter] = {
    "PROTOCOL": _field_or_dash("protocol"),
    "RESPONSE_CODE": _int_field("response_code"),
    "RESPONSE_FLAGS": _field_or_dash("response_flags"),
    "BYTES_RECEIVED": _int_field("bytes_received"),
    "BYTES_SENT": _int_field("bytes_sent"),
    "DURATION": _int_field("duration_ms"),
    "UPSTREAM_HOST": _field_or_dash("upstream_host"),
    "UPSTREAM_CLUSTER": _field_or_dash("upstream_cluster"),
    "DOWNSTREAM_REMOTE_ADDRESS": _field_or_dash("downstream_remote_address"),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _without_port,
    "DOWNSTREAM_LOCAL_ADDRESS": _field_or_dash("downstream_local_address"),
    "ROUTE_NAME": _field_or_dash("route_name"),
}


# -- START_TIME -------------------------------------------------------------------------


def _split_usec(t: float) -> tuple[int, int]:
    """Whole seconds and microseconds of a time.time() value (rounded to 1 µs)."""
    us = round(t * 1_000_000)
    return us // 1_000_000, us % 1_000_000


class _DefaultStartTime:
    """``2016-04-15T20:17:00.310Z``; the part up to the seconds is cached per second."""

    __slots__ = ("_sec", "_prefix")

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""

    def __call__(self, rec: LogRecord) -> str:
        sec, us = _split_usec(rec.start_time)
        if sec != self._sec:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._sec = sec
        return self._prefix + _MS_SUFFIX[us // 1000]


# Pieces of a custom START_TIME format: strftime text, or one of Envoy's extensions.
_STRFTIME, _EPOCH_SECONDS, _FRACTION, _SECONDS_FRACTION = range(4)
_START_SPEC = re.compile(r"%(?:(s)|([1-9]?)f|E([0-9]+|\*)S|(.))", re.DOTALL)


def _fraction(us: int, digits: int) -> str:
    """The first ``digits`` (1-9) digits of the fraction, truncated like Envoy."""
    return f"{us * 1000:09d}"[:digits]


class _CustomStartTime:
    __slots__ = ("_pieces", "_sec", "_rendered")

    def __init__(self, fmt: str) -> None:
        pieces: list[tuple[int, Any]] = []
        text: list[str] = []

        def flush() -> None:
            if text:
                pieces.append((_STRFTIME, "".join(text)))
                text.clear()

        pos = 0
        for m in _START_SPEC.finditer(fmt):
            text.append(fmt[pos : m.start()])
            pos = m.end()
            epoch, frac, sec_frac, other = m.groups()
            if epoch:
                flush()
                pieces.append((_EPOCH_SECONDS, None))
            elif other is not None:
                text.append(m.group(0))  # plain strftime, "%%" included
            elif sec_frac is not None:
                flush()
                pieces.append((_SECONDS_FRACTION, None if sec_frac == "*" else int(sec_frac)))
            else:
                flush()
                pieces.append((_FRACTION, int(frac) if frac else 9))
        text.append(fmt[pos:])
        flush()
        self._pieces = tuple(pieces)
        self._sec = -1
        self._rendered: tuple[str, ...] = ()

    def _render_second(self, sec: int) -> tuple[str, ...]:
        tm = time.gmtime(sec)
        out = []
        for kind, arg in self._pieces:
            if kind == _STRFTIME:
                out.append(time.strftime(arg, tm))
            elif kind == _EPOCH_SECONDS:
                out.append(str(sec))
            elif kind == _SECONDS_FRACTION:
                out.append(f"{tm.tm_sec:02d}")
            else:
                out.append("")
        return tuple(out)

    def __call__(self, rec: LogRecord) -> str:
        sec, us = _split_usec(rec.start_time)
        if sec != self._sec:
            self._rendered = self._render_second(sec)
            self._sec = sec
        parts = []
        for (kind, arg), fixed in zip(self._pieces, self._rendered, strict=True):
            if kind == _FRACTION:
                parts.append(_fraction(us, arg))
            elif kind == _SECONDS_FRACTION:
                if arg is None:  # %E*S: as many digits as needed
                    digits = f"{us * 1000:09d}".rstrip("0")
                    parts.append(f"{fixed}.{digits}" if digits else fixed)
                elif arg == 0:
                    parts.append(fixed)
                else:
                    parts.append(f"{fixed}.{f'{us * 1000:09d}'[:arg].ljust(arg, '0')}")
            else:
                parts.append(fixed)
        return "".join(parts)


# -- REQ / RESP ---------------------------------------------------------------------------


def _header_source(name: str, response: bool) -> tuple[str, str]:
    """Where a header's value comes from: ("field", attr) or ("dict", lower-case name)."""
    if response:
        if name == ":status":
            return ("status", "")
        if name == "x-envoy-upstream-service-time":
            return ("service_time", "")
        if name.startswith(":"):
            raise ValueError(f"access log: RESP({name.upper()}) is not supported by proxyd")
        return ("dict", name)
    if name in _REQ_FIELDS:
        return ("field", _REQ_FIELDS[name])
    if name.startswith(":"):
        raise ValueError(f"access log: REQ({name.upper()}) is not supported by proxyd")
    return ("dict", name)


# The ``inline`` expressions below render a missing value as "-" (the getters return
# None for it, so that REQ(X?Y) can fall back to Y).
def _header_value_getter(source: tuple[str, str]) -> Callable[[LogRecord], str | None]:
    kind, key = source
    if kind == "field":
        return _inline(lambda rec: getattr(rec, key), f'("-" if rec.{key} is None else rec.{key})')
    if kind == "status":
        return _inline(
            lambda rec: str(rec.response_code) if rec.response_code else None,
            '(rec.response_code or "-")',
        )
    if kind == "service_time":

        def service_time(rec: LogRecord) -> str | None:
            v = rec.upstream_service_time_ms
            return None if v is None else str(v)

        return _inline(
            service_time,
            '("-" if rec.upstream_service_time_ms is None else rec.upstream_service_time_ms)',
        )
    if kind == "dict":
        return _inline(lambda rec: rec.req_headers.get(key), f'rec.req_headers.get({key!r}, "-")')
    raise AssertionError(kind)


def _resp_dict_getter(key: str) -> Callable[[LogRecord], str | None]:
    return _inline(lambda rec: rec.resp_headers.get(key), f'rec.resp_headers.get({key!r}, "-")')


class LogFormat:
    """A compiled Envoy text format; ``""`` is Envoy's default format."""

    def __init__(self, fmt: str) -> None:
        self.source = fmt or DEFAULT_FORMAT
        req: set[str] = set()
        resp: set[str] = set()
        literals: list[str] = []
        getters: list[Getter] = []
        text: list[str] = []
        s = self.source
        i = 0
        n = len(s)
        while i < n:
            pct = s.find("%", i)
            if pct < 0:
                text.append(s[i:])
                break
            text.append(s[i:pct])
            if s.startswith("%%", pct):
                text.append("%")
                i = pct + 2
                continue
            m = _COMMAND.match(s, pct)
            if m is None:
                raise ValueError(
                    f"access log format {s!r}: no valid command operator at position {pct}"
                )
            getters.append(self._compile(m.group(1), m.group(2), m.group(3), req, resp))
            literals.append("".join(text))
            text.clear()
            i = m.end()
        literals.append("".join(text))
        self.request_headers: frozenset[str] = frozenset(req)
        self.response_headers: frozenset[str] = frozenset(resp)
        self._getters = tuple(getters)
        self._template = "%s".join(lit.replace("%", "%%") for lit in literals)
        # The plan becomes one function: ``T % (expr0, g1(rec), ...)``.
        args = [getattr(g, "inline", None) or f"g{i}(rec)" for i, g in enumerate(getters)]
        namespace: dict[str, Any] = {f"g{i}": g for i, g in enumerate(getters)}
        namespace["T"] = self._template
        if getters:
            src = f"def format(rec):\n    return T % ({', '.join(args)},)\n"
        else:
            namespace["C"] = literals[0]
            src = "def format(rec):\n    return C\n"
        exec(compile(src, "<access log format>", "exec"), namespace)
        # An instance attribute: it shadows the method below, which documents it.
        self.format: Callable[[LogRecord], str] = namespace["format"]  # type: ignore[method-assign]

    @staticmethod
    def _compile(
        name: str, param: str | None, length: str | None, req: set[str], resp: set[str]
    ) -> Getter:
        if name in ("REQ", "RESP"):
            return _compile_header(name, param, length, req, resp)
        if length is not None:
            raise ValueError(f"access log: {name} does not take a length")
        if name == "START_TIME":
            return _CustomStartTime(param) if param else _DefaultStartTime()
        getter = _PLAIN.get(name)
        if getter is None:
            raise ValueError(f"access log: unsupported command operator %{name}%")
        if param:
            raise ValueError(f"access log: {name} does not take any parameters")
        return getter

    def format(self, rec: LogRecord) -> str:
        """The log line for ``rec`` (replaced per instance by the compiled plan)."""
        return self._template % tuple([g(rec) for g in self._getters])


def _compile_header(
    name: str, param: str | None, length: str | None, req: set[str], resp: set[str]
) -> Getter:
    if not param:
        raise ValueError(f"access log: {name} requires a header name, as {name}(X?Y):Z")
    names = param.split("?")
    if len(names) > 2:
        raise ValueError(f"access log: more than one alternative header in {name}({param})")
    response = name == "RESP"
    getters = []
    for header in names:
        if not header:
            continue  # Envoy accepts "X?" and "?Y"
        source = _header_source(header.lower(), response)
        if source[0] == "dict":
            (resp if response else req).add(source[1])
            getters.append(
                _resp_dict_getter(source[1]) if response else _header_value_getter(source)
            )
        else:
            getters.append(_header_value_getter(source))
    limit = int(length) if length is not None else None
    first = getters[0] if getters else None
    second = getters[1] if len(getters) > 1 else None
    inline = getattr(first, "inline", None)

    def get(rec: LogRecord) -> str:
        v = first(rec) if first is not None else None
        if v is None and second is not None:
            v = second(rec)
        if v is None:
            return "-"
        return v if limit is None else v[:limit]

    if inline is not None and second is None and limit is None:
        return _inline(get, inline)
    return get
