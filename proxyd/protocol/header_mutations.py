"""Route header mutations: ``request_headers_to_add/remove`` and
``response_headers_to_add/remove`` of a route, its virtual host and its route
configuration, applied as Envoy's ``HeaderParser::evaluateHeaders`` does.

No I/O here. The config compiler checks values with :func:`parse_value` and stores one
:class:`~proxyd.epoch.HeaderMutations` per level on the route, in the order Envoy
evaluates them (route, virtual host, route configuration; the reverse with
``most_specific_header_mutations_wins``). :class:`MutationPlan` compiles those once per
epoch into byte names and values; a route without mutations has no plan and pays
nothing.

Each level, in turn (Envoy 1.40):

1. its ``*_headers_to_remove`` go, every line of each name;
2. each of its ``*_headers_to_add`` is evaluated against the headers as they are *now*
   (before this level's own additions): a value that comes out empty is skipped unless
   ``keep_empty_value``; ``APPEND_IF_EXISTS_OR_ADD`` adds a line, ``ADD_IF_ABSENT``
   adds one only when the name is absent, ``OVERWRITE_IF_EXISTS_OR_ADD`` replaces all
   lines of the name with one, ``OVERWRITE_IF_EXISTS`` does so only when it is present;
3. the overwrites are applied, then the additions (each at the end of the head).

Header values may use Envoy's ``%OPERATOR%`` substitutions and ``%%`` for a percent
sign (:mod:`proxyd.protocol.header_values`: the access log's operators, evaluated over
the record the worker's ``record`` hook makes for the stream, only for a value that has
an operator); an operator proxyd does not print is refused when the config loads.

Some header lines are the proxy's own and are never touched by a mutation (``protected``:
the message's framing, and on responses the ``server`` and ``date`` Envoy's connection
manager sets after the router); the config refuses mutations of the framing headers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxyd.epoch import HeaderMutations
from proxyd.protocol.header_values import ValueFormat, compile_value
from proxyd.protocol.http1 import ResponseHead
from proxyd.protocol.redirect import PathRewrite

# Header names whose lines carry the message's framing: proxyd frames each message
# itself, so a mutation may not name them (refused at load).
FRAMING = frozenset(
    {
        "connection",
        "content-length",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Envoy keeps these in its header maps' inline slots (built in, or registered by its
# extensions): one more value of a name already there is joined to that line with a
# comma rather than added as a line of its own (checked against Envoy 1.40).
JOINED_REQUEST = frozenset(
    n.encode()
    for n in (
        "accept accept-encoding access-control-request-method authorization cache-control "
        "content-type expect grpc-accept-encoding grpc-timeout if-none-match origin pragma "
        "referer user-agent via x-client-trace-id x-envoy-decorator-operation "
        "x-envoy-downstream-service-cluster x-envoy-downstream-service-node "
        "x-envoy-external-address x-envoy-original-path x-envoy-original-url "
        "x-forwarded-for x-forwarded-host x-forwarded-proto x-request-id x-envoy-attempt-count"
    ).split()
)
JOINED_RESPONSE = frozenset(
    n.encode()
    for n in (
        "content-type location x-envoy-upstream-service-time x-request-id "
        "x-envoy-attempt-count x-envoy-decorator-operation x-envoy-degraded "
        "x-envoy-immediate-health-check-fail x-envoy-ratelimited x-envoy-upstream-canary "
        "x-envoy-upstream-healthchecked-cluster"
    ).split()
)

APPEND_IF_EXISTS_OR_ADD = 0
ADD_IF_ABSENT = 1
OVERWRITE_IF_EXISTS_OR_ADD = 2
OVERWRITE_IF_EXISTS = 3
ACTIONS = {
    "APPEND_IF_EXISTS_OR_ADD": APPEND_IF_EXISTS_OR_ADD,
    "ADD_IF_ABSENT": ADD_IF_ABSENT,
    "OVERWRITE_IF_EXISTS_OR_ADD": OVERWRITE_IF_EXISTS_OR_ADD,
    "OVERWRITE_IF_EXISTS": OVERWRITE_IF_EXISTS,
}


def parse_value(value: str) -> bytes | ValueFormat:
    """A header value, compiled (:func:`proxyd.protocol.header_values.compile_value`);
    ValueError with Envoy's reason (or proxyd's, for an operator it refuses)."""
    return compile_value(value)


# One compiled addition: name (bytes, lower case), value (bytes when static, else its
# format), action, keep_empty_value.
_Add = tuple[bytes, bytes | ValueFormat, int, bool]
# One level: the names to remove, then the additions.
_Level = tuple[frozenset[bytes], tuple[_Add, ...]]


def _compile(levels: list[tuple[tuple[str, ...], tuple[Any, ...]]]) -> tuple[_Level, ...]:
    out = []
    for removes, adds in levels:
        if not removes and not adds:
            continue
        compiled: list[_Add] = []
        for a in adds:
            value = compile_value(a.value)
            compiled.append(
                (a.name.encode("latin-1", "replace"), value, ACTIONS[a.action], a.keep_empty)
            )
        out.append((frozenset(n.encode("latin-1", "replace") for n in removes), tuple(compiled)))
    return tuple(out)


def compile_adds(adds: tuple[Any, ...]) -> tuple[_Level, ...]:
    """One level of additions only (the TCP proxy tunnel's ``headers_to_add``)."""
    return _compile([((), adds)])


def _evaluate(value: bytes | ValueFormat, rec: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    assert rec is not None
    return value(rec).encode("latin-1", "replace")


# A header line: (lower-case name, the whole line without its CRLF).
Line = tuple[bytes, bytes]


def apply_levels(
    lines: list[Line],
    levels: tuple[_Level, ...],
    rec: Any,
    protected: frozenset[bytes],
    joined: frozenset[bytes] = frozenset(),
) -> list[Line]:
    """``lines`` after each level in turn (Envoy's evaluateHeaders); lines of a
    ``protected`` name are neither removed, replaced nor added; an added value of a
    ``joined`` name already present goes at the end of its first line."""
    for removes, adds in levels:
        if removes:
            lines = [ln for ln in lines if ln[0] not in removes or ln[0] in protected]
        if not adds:
            continue
        to_add: list[Line] = []
        to_overwrite: list[Line] = []
        for name, value, action, keep_empty in adds:
            if name in protected:
                continue
            v = _evaluate(value, rec)
            if not v and not keep_empty:
                continue
            line = (name, name + b": " + v)
            if action == APPEND_IF_EXISTS_OR_ADD:
                to_add.append(line)
            elif action == ADD_IF_ABSENT:
                if not any(ln[0] == name for ln in lines):
                    to_add.append(line)
            elif action == OVERWRITE_IF_EXISTS_OR_ADD or any(ln[0] == name for ln in lines):
                to_overwrite.append(line)
        for line in to_overwrite:
            lines = [ln for ln in lines if ln[0] != line[0]]
            lines.append(line)
        for line in to_add:
            name = line[0]
            if name in joined:
                at = next((k for k, ln in enumerate(lines) if ln[0] == name), -1)
                if at >= 0:
                    value = line[1][len(name) + 2 :]
                    if value:
                        old = lines[at][1]
                        sep = b"," if old.rstrip()[-1:] != b":" else b""
                        lines[at] = (name, old + sep + value)
                    continue
            lines.append(line)
    return lines


def split_head(head: bytes) -> tuple[bytes, list[Line], bytes]:
    """A head (start line, header lines, CRLF CRLF, maybe a body after) → its start
    line, its header lines and what follows the head."""
    end = head.find(b"\r\n\r\n")
    top = head[:end].split(b"\r\n")
    lines = [(ln[: ln.find(b":")].lower(), ln) for ln in top[1:]]
    return top[0], lines, head[end + 4 :]


def join_head(start: bytes, lines: list[Line], rest: bytes = b"") -> bytes:
    return b"\r\n".join([start, *(ln[1] for ln in lines)]) + b"\r\n\r\n" + rest


_TIMEOUT_HEADER = frozenset({b"x-envoy-expected-rq-timeout-ms"})
# Set by Envoy's connection manager after the router's mutations (server is
# overwritten, date set), and the framing lines of a local reply.
_RESPONSE_PROTECTED = frozenset({b"server", b"date"}) | frozenset(n.encode() for n in FRAMING)


class MutationPlan:
    """The header mutations of one route, compiled for the request path."""

    __slots__ = (
        "request", "response", "request_dynamic", "response_dynamic", "rewrite", "host",
        "host_header", "auto_host", "rewrites", "record", "request_names", "response_names",
        "host_regex",
    )  # fmt: skip

    def __init__(
        self,
        levels: tuple[HeaderMutations, ...],
        rewrite: PathRewrite | None = None,
        host: str = "",
        host_header: str = "",
        auto_host: bool = False,
        host_regex: PathRewrite | None = None,
    ) -> None:
        # RouteAction's path rewrite and host_rewrite_literal, applied after the
        # header mutations as Envoy's finalizeRequestHeaders does.
        self.rewrite = rewrite if rewrite is not None and rewrite.rewrites else None
        self.host = host.encode("latin-1", "replace")
        # Else host_rewrite_header (its first value, when not empty), else (with
        # auto_host_rewrite) the picked host's DNS name when it has one.
        self.host_header = host_header.encode("latin-1", "replace")
        self.auto_host = auto_host
        # Else host_rewrite_path_regex: the Host is the path (without its query) after
        # the regex substitution (a regex_rewrite of the path, used on the Host).
        self.host_regex = host_regex if host_regex is not None and host_regex.rewrites else None
        self.rewrites = bool(
            self.rewrite or self.host or self.host_header or auto_host or self.host_regex
        )
        self.request = _compile([(m.request_remove, m.request_add) for m in levels])
        self.response = _compile([(m.response_remove, m.response_add) for m in levels])
        self.request_dynamic = _dynamic(self.request)
        self.response_dynamic = _dynamic(self.response)
        # The header names the values read (the worker's parsers collect them).
        self.request_names: set[str] = set()
        self.response_names: set[str] = set()
        for levels_ in (self.request, self.response):
            for _, adds in levels_:
                for a in adds:
                    v = a[1]
                    if isinstance(v, ValueFormat):
                        self.request_names |= v.request_headers
                        self.response_names |= v.response_headers
        # (stream, connection) -> the stream's LogRecord; the worker sets it when a
        # value has operators (proxyd.worker.plan).
        self.record: Callable[[Any, Any], Any] = _no_record

    def request_head(self, head: bytes, rec: Any, timeout_header: bool = False) -> bytes:
        """The upstream request head after the route's request mutations
        (x-envoy-expected-rq-timeout-ms, set after them by Envoy's router, stays)."""
        if not self.request:
            return head
        start, lines, rest = split_head(head)
        protected = _TIMEOUT_HEADER if timeout_header else frozenset()
        lines = apply_levels(lines, self.request, rec, protected, JOINED_REQUEST)
        return join_head(start, lines, rest)

    def response_lines(self, head: bytes, rec: Any) -> bytes:
        """A response head (a local reply with its body, or an upstream head) after
        the route's response mutations."""
        if not self.response:
            return head
        start, lines, rest = split_head(head)
        lines = apply_levels(lines, self.response, rec, _RESPONSE_PROTECTED, JOINED_RESPONSE)
        return join_head(start, lines, rest)

    def upstream_response(self, r: ResponseHead, rec: Any, service_ms: int = -1) -> ResponseHead:
        """Upstream response head ``r`` after the route's response mutations (its cut
        lines cut first; ``x-envoy-upstream-service-time`` added first unless -1)."""
        raw = r.raw
        if r.cuts:
            out = []
            pos = 0
            for i, j in r.cuts:
                out.append(raw[pos:i])
                pos = j
            out.append(raw[pos:])
            raw = b"".join(out)
        if service_ms >= 0:
            raw = raw[:-2] + b"x-envoy-upstream-service-time: %d\r\n\r\n" % service_ms
        new = ResponseHead()
        new.raw = self.response_lines(raw, rec)
        new.status = r.status
        new.content_length = r.content_length
        new.chunked = r.chunked
        new.keep_alive = r.keep_alive
        new.has_date = r.has_date
        new.headers = r.headers
        return new

    # -- the worker's hooks (a stream and its connection, duck-typed) ----------------

    def on_request(
        self, head: bytes, stream: Any, conn: Any, timeout_header: bytes, upstream: Any = None
    ) -> bytes:
        """The upstream head of ``stream`` after the route's request mutations and
        rewrites (``upstream``: the picked host, for auto_host_rewrite)."""
        if self.request:
            rec = self.record(stream, conn) if self.request_dynamic else None
            head = self.request_head(head, rec, bool(timeout_header))
        if self.rewrites:
            hostname = getattr(upstream, "hostname", "") if self.auto_host else ""
            head = self.rewrite_head(head, stream.head, hostname)
        return head

    def rewrite_head(self, head: bytes, h: Any = None, hostname: str = "") -> bytes:
        """The head with host_rewrite_literal and the path rewrite applied; the old
        path goes in x-envoy-original-path (and ``h``, the request head, gets the new
        path for the access log)."""
        start, lines, rest = split_head(head)
        new_host = self.host
        if not new_host and self.host_header:
            name = self.host_header
            new_host = next((ln[1][len(name) + 1 :].strip() for ln in lines if ln[0] == name), b"")
        if not new_host and hostname:
            new_host = hostname.encode("latin-1", "replace")
        if not new_host and self.host_regex is not None:
            path = start.partition(b" ")[2].rpartition(b" ")[0].decode("latin-1")
            bare = path.partition("?")[0].partition("#")[0]
            new_host = self.host_regex.apply(bare).encode("latin-1", "replace")
        if new_host:
            # Envoy 1.40 keeps the Host it replaced in x-envoy-original-host.
            was = next((ln[1][5:].strip() for ln in lines if ln[0] == b"host"), b"")
            lines = [ln for ln in lines if ln[0] != b"host" and ln[0] != b"x-envoy-original-host"]
            lines.insert(0, (b"host", b"host: " + new_host))
            lines.append((b"x-envoy-original-host", b"x-envoy-original-host: " + was))
        if self.rewrite is not None:
            method, _, tail = start.partition(b" ")
            target, _, version = tail.rpartition(b" ")
            old = target.decode("latin-1")
            new = self.rewrite.apply(old)
            start = method + b" " + new.encode("latin-1", "replace") + b" " + version
            lines = [ln for ln in lines if ln[0] != b"x-envoy-original-path"]
            lines.append((b"x-envoy-original-path", b"x-envoy-original-path: " + target))
            if h is not None:
                h.headers["x-envoy-original-path"] = old
                h.path = new
        return join_head(start, lines, rest)

    def on_response(
        self, r: ResponseHead, stream: Any, conn: Any, service_ms: int
    ) -> tuple[ResponseHead, int]:
        """``r`` after the mutations, and the service time still to add (-1: Envoy's
        router sets x-envoy-upstream-service-time before the mutations, so it is in
        the head already, where a mutation could remove or append to it)."""
        if not self.response:
            return r, service_ms
        rec = self.record(stream, conn) if self.response_dynamic else None
        return self.upstream_response(r, rec, service_ms), -1

    def on_local_reply(self, data: bytes, stream: Any, conn: Any) -> bytes:
        rec = None
        if self.response_dynamic:
            # Envoy evaluates a local reply's mutations before it sets the code and
            # the body's headers: only :status is there (proxyd.protocol.header_values).
            rec = self.record(stream, conn)
            rec.resp_headers = {":status": str(stream.status)}
        return self.response_lines(data, rec)


def _no_record(stream: Any, conn: Any) -> Any:
    raise AssertionError("a plan with operators in its values needs the worker's record hook")


def _dynamic(levels: tuple[_Level, ...]) -> bool:
    return any(not isinstance(a[1], bytes) for _, adds in levels for a in adds)


def mutations_empty(m: HeaderMutations) -> bool:
    return not (m.request_add or m.request_remove or m.response_add or m.response_remove)
