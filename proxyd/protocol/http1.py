"""HTTP/1.1 message framing, sans-IO, on httptools (llhttp).

It does three things, as strictly as Envoy 1.40's codec does (the corpus in
tests/compat/http1_corpus runs through both):

* :func:`find_head_end` finds where a head ends in a receive buffer (``CRLF CRLF``, or
  bare LFs, which Envoy accepts);
* :class:`RequestHeadParser` checks the request line
  (:mod:`proxyd.protocol.http1_request_line`), runs llhttp over the header lines of
  exactly one head, and collects what the proxy needs: framing (content-length,
  chunked), connection semantics, the names of headers that must be removed on the
  way through (hop-by-hop ones), and the values of the few headers routing and
  logging asked for. It writes the head the way Envoy's encoder sends it upstream
  (``RequestHead.raw``). :class:`ResponseHeadParser`
  (:mod:`proxyd.protocol.http1_response`) does the same for a response, whose head is
  forwarded as the bytes that arrived, less the lines that must go;
* :class:`ChunkedDecoder` (:mod:`proxyd.protocol.http1_chunked`) frames a chunked body
  strictly and hands back where its data is.

llhttp is fed heads only. A body is framed here (content-length is a count; chunked
is :class:`ChunkedDecoder`), because llhttp reports neither where a message ends in
its input nor can it be paused, and a pipelined next request must stay in the buffer.

Bad input raises :class:`proxyd.errors.ProtocolError` with the status the peer gets.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import httptools

from proxyd.errors import ProtocolError
from proxyd.protocol.http1_chunked import LAST_CHUNK, ChunkedDecoder, chunk_header
from proxyd.protocol.http1_options import original_names
from proxyd.protocol.http1_request_line import (
    BAD_AUTHORITY,
    BODILESS_METHODS,
    MAX_HEADERS_COUNT,
    METHODS,
    check_request_line,
    is_http10,
)
from proxyd.protocol.http1_response import (
    ResponseHead,
    ResponseHeadParser,
    connection_tokens,
    parse_content_length,
    response_has_body,
)

if TYPE_CHECKING:
    from proxyd.protocol.http1_options import Http1Format

__all__ = [
    "original_names",
    "CRLF2",
    "LAST_CHUNK",
    "MAX_HEADERS_COUNT",
    "ChunkedDecoder",
    "RequestHead",
    "RequestHeadParser",
    "ResponseHead",
    "ResponseHeadParser",
    "check_request_line",
    "chunk_header",
    "find_head_end",
    "normalize_head",
    "response_has_body",
    "skip_leading_crlf",
]

CRLF2 = b"\r\n\r\n"

# Request headers the proxy consumes itself. Values are the kind codes below.
_H_HOST = 1
_H_CL = 2
_H_TE = 3
_H_CONNECTION = 4
_H_EXPECT = 5
_H_XFF = 6
_H_RID = 7
_H_XFP = 8
_H_HOP = 9  # hop-by-hop: always removed (keep-alive, proxy-connection, upgrade)
_H_TE_HDR = 10  # TE: removed unless it is exactly "trailers"
_H_XFCC = 11  # x-forwarded-client-cert: kept for proxyd.protocol.xfcc

_REQUEST_SPECIAL = {
    b"host": _H_HOST,
    b"content-length": _H_CL,
    b"transfer-encoding": _H_TE,
    b"connection": _H_CONNECTION,
    b"expect": _H_EXPECT,
    b"x-forwarded-for": _H_XFF,
    b"x-request-id": _H_RID,
    b"x-forwarded-proto": _H_XFP,
    b"keep-alive": _H_HOP,
    b"proxy-connection": _H_HOP,
    b"upgrade": _H_HOP,
    b"te": _H_TE_HDR,
    b"x-forwarded-client-cert": _H_XFCC,
}


_ENVOY_PREFIX = b"x-envoy-"


def find_head_end(buf: bytes | bytearray, start: int, end: int) -> int:
    """Index just past the empty line that ends the head in ``buf[start:end]``, or -1.

    The empty line is CRLF or a bare LF, after a line that ends with either (Envoy
    accepts bare LFs too: such a head is rewritten with CRLF by :func:`normalize_head`).
    """
    m = HEAD_END.search(buf, start, end)
    return -1 if m is None else m.end()


# The first empty line: after CRLF or a bare LF, a line end of its own (CRLF or LF).
HEAD_END = re.compile(rb"\n\r?\n")


def normalize_head(head: bytes) -> bytes | None:
    """``head`` as Envoy 1.40 reads it, or None when there is nothing to change.

    Bare-LF line ends become CRLF; a bare CR in a header value is dropped; each
    obs-fold is unfolded (its CRLF dropped, its whitespace kept) and a line of only
    whitespace goes the same way (RFC 9112 §2.2 and §5.2 allow all of it). What is
    still wrong after that (a bare CR in a name, an unfolded Host with a space in it)
    is refused when the result is parsed.
    """
    fixed = _BARE_LF.sub(b"\r\n", head)
    if b"\r" in fixed.replace(b"\r\n", b""):
        lines = fixed.split(b"\r\n")
        for i in range(1, len(lines)):
            line = lines[i]
            colon = line.find(b":")
            if b"\r" in line and colon > 0 and b"\r" not in line[:colon]:
                lines[i] = line[:colon] + line[colon:].replace(b"\r", b"")
        fixed = b"\r\n".join(lines)
    fixed = _OBS_FOLD.sub(b"", fixed)
    return None if fixed == head else fixed


_BARE_LF = re.compile(rb"(?<!\r)\n")
_OBS_FOLD = re.compile(rb"\r\n(?=[ \t])")


def skip_leading_crlf(buf: bytes | bytearray, start: int, end: int) -> int:
    """RFC 9112 §2.2: a server ignores empty lines received before a request line."""
    while start + 1 < end and buf[start] == 13 and buf[start + 1] == 10:
        start += 2
    return start


class RequestHead:
    """What the proxy needs from one request head; ``raw`` is the head as Envoy would
    send it upstream (see :class:`RequestHeadParser`)."""

    __slots__ = (
        "raw",
        "method",
        "url",
        "path",
        "host",
        "content_length",
        "chunked",
        "keep_alive",
        "expect_continue",
        "remove",
        "xff",
        "request_id",
        "xfp",
        "xfcc",
        "envoy_headers",
        "headers",
        "rewrite",
        "has_body",
        "http10",
        "names",
        # The request's trace context (proxyd.worker.tracing.SpanState): set only on a
        # listener with tracing, left unset here so that other requests pay nothing.
        "trace",
        # The lower-case protocol an upgrade request asks for ("websocket"), "" for none.
        "upgrade",
    )

    trace: Any  # see __slots__

    def __init__(self) -> None:
        self.raw = b""
        self.upgrade = ""
        self.method = ""
        self.url = b""
        # The path as routing sees it (str; the query string included).
        self.path = ""
        self.host = ""
        # -1 when the request has no content-length.
        self.content_length = -1
        self.chunked = False
        self.keep_alive = True
        self.expect_continue = False
        # Lower-case names of header lines that must not go upstream.
        self.remove: list[bytes] = []
        self.xff = b""
        self.request_id = b""
        self.xfp = b""
        # x-forwarded-client-cert as the client sent it (b"": none; proxyd.protocol.xfcc).
        self.xfcc = b""
        # Lower-case names of incoming x-envoy-* headers (removed on edge requests).
        self.envoy_headers: list[bytes] = []
        # The headers routing and logging asked for: lower-case name -> value.
        self.headers: dict[str, str] = {}
        # Kept for the API: ``raw`` is always already the head as Envoy writes it
        # upstream (origin form, one Host line first), so this stays False.
        self.rewrite = False
        # ``chunked or content_length > 0``, set with them (read on every request).
        self.has_body = False
        # An HTTP/1.0 request (or one with no version), taken with accept_http_10.
        self.http10 = False
        # With preserve_case: lower-case name -> the spelling it arrived in.
        self.names: dict[bytes, bytes] | None = None


# The common request line, parsed by llhttp as it is: a target with none of what Envoy
# refuses in one (BAD_TARGET) and no "#" (a fragment, refused with its own answer once
# the head is parsed; excluding it here costs less than ``b"#" in target``, which
# first tries the needle as an integer and fails).
# The str of each method llhttp and Envoy accept (a dict lookup costs less than a decode).
_METHOD_NAMES = {m: m.decode("ascii") for m in METHODS}
_FAST_REQUEST_LINE = re.compile(rb"([^ \r\n]+) ([^\x00-\x20#\x7f-\xff]+) HTTP/1\.1\r\n")


# Hosts already checked against BAD_AUTHORITY, with their str: a worker sees the same
# few hosts again and again (bounded: cleared when full; long ones are not kept).
_HOSTS: dict[bytes, str] = {}
_HOSTS_CACHED = 256
_HOST_CACHED_LENGTH = 255


class RequestHeadParser:
    """Parses one request head at a time; one instance serves a whole connection.

    ``parse(view, wanted)`` takes a view of exactly one head (ending in CRLF CRLF, or
    bare LFs) and returns a :class:`RequestHead`. ``wanted`` maps lower-case header
    names (bytes) to the str keys under which their values are collected.

    The request line is checked here (:func:`check_request_line`); llhttp checks the
    header lines. The head is then written the way Envoy's encoder writes it upstream:
    ``METHOD origin-form HTTP/1.1``, ``host`` first, then every other header in the
    order it came as ``lower-case-name: value`` with the whitespace around the value
    trimmed, without ``transfer-encoding`` (added back at the end for a chunked body).
    """

    __slots__ = (
        "_parser",
        "_clean",
        "_head",
        "_wanted",
        "_conn_tokens",
        "_done",
        "_lines",
        "_count",
        "_host",
        "_upgrade",
        "_te_kept",
        "_max_headers",
    )

    def __init__(self) -> None:
        self._max_headers = MAX_HEADERS_COUNT
        self._parser: httptools.HttpRequestParser | None = None
        self._clean = False
        self._head = RequestHead()
        self._wanted: dict[bytes, str] = {}
        self._conn_tokens: list[bytes] = []
        self._done = False
        self._lines: list[bytes] = []
        self._count = 0
        self._host: bytes | None = None
        self._upgrade = b""
        self._te_kept = False

    # -- httptools callbacks ----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        # llhttp drops the whitespace before a value, not the whitespace after it.
        value = value.rstrip(b" \t")
        kind = _REQUEST_SPECIAL.get(lname)
        if kind is None:
            self._lines.append(lname + b": " + value + b"\r\n")
            if lname[0] == 120 and lname.startswith(_ENVOY_PREFIX):  # (120: "x")
                self._head.envoy_headers.append(lname)
            if lname in self._wanted:
                self._collect(lname, value)
            return
        h = self._head
        self._count += 1  # header lines not in _lines
        if kind == _H_HOST:
            if self._host is None:
                self._host = value
            else:
                # Envoy 1.40 joins a repeated Host into one authority, "a,b".
                self._host += b"," + value
        else:
            if kind == _H_CL:
                h.content_length = parse_content_length(value)
            elif kind == _H_TE:
                h.remove.append(lname)
                coding = value.lower()
                if coding != b"chunked":
                    if coding == b"identity":
                        raise ProtocolError("transfer-encoding identity", 400)
                    # Only "chunked" alone is accepted (Envoy answers 501 for others;
                    # llhttp rejects most). A list ending in chunked is refused too.
                    raise ProtocolError("unsupported transfer-encoding", 501)
                h.chunked = True
                return  # written back at the end of the head, as Envoy does
            elif kind == _H_CONNECTION:
                h.remove.append(lname)
                self._conn_tokens.extend(connection_tokens(value))
            elif kind == _H_EXPECT:
                if value.lower() == b"100-continue":
                    h.expect_continue = True
                    h.remove.append(lname)
            elif kind == _H_XFF:
                h.xff = value if not h.xff else h.xff + b"," + value
            elif kind == _H_RID:
                h.request_id = value
            elif kind == _H_XFP:
                h.xfp = value
            elif kind == _H_XFCC:
                h.xfcc = value if not h.xfcc else h.xfcc + b"," + value
            elif kind == _H_HOP:
                h.remove.append(lname)
                if lname == b"upgrade":
                    self._upgrade = value
            elif kind == _H_TE_HDR:
                if value.lower() == b"trailers":
                    self._te_kept = True
                else:
                    h.remove.append(lname)
            self._lines.append(lname + b": " + value + b"\r\n")
            self._count -= 1
        if lname in self._wanted:
            self._collect(lname, value)

    def _collect(self, lname: bytes, value: bytes) -> None:
        """A header routing or logging asked for (``lname`` is in ``_wanted``)."""
        key = self._wanted[lname]
        headers = self._head.headers
        v = value.decode("latin-1")
        old = headers.get(key)
        headers[key] = v if old is None else old + "," + v

    def on_headers_complete(self) -> None:
        self._done = True

    # -- API ----------------------------------------------------------------------------

    def parse(
        self,
        view: memoryview | bytes,
        wanted: dict[bytes, str],
        max_headers: int = MAX_HEADERS_COUNT,
        http1: Http1Format | None = None,
    ) -> RequestHead:
        """``http1`` is the listener's http_protocol_options (None: Envoy's defaults):
        HTTP/1.0 with accept_http_10, the names as they arrived with preserve_case."""
        self._max_headers = max_headers  # common_http_protocol_options.max_headers_count
        data = bytes(view)
        # The common request line, "METHOD SP target SP HTTP/1.1" CRLF, is checked here
        # with one regex and parsed by llhttp as it is; any other goes to
        # check_request_line.
        m = _FAST_REQUEST_LINE.match(data)
        if m is not None:
            method, target = m.groups()
            if method in METHODS:
                h = self._parse_headers(method, target, data, wanted, False)
                if http1 is not None and http1.preserve_request_case:
                    h.names = original_names(data)
                return h
        eol = data.find(b"\n")
        if eol < 0:
            raise ProtocolError("incomplete request head", 400)
        line = data[: eol - 1] if eol and data[eol - 1] == 13 else data[:eol]
        if http1 is None:
            method, target = check_request_line(line)
            return self._parse_headers(
                method, target, self._placeholder(method, data), wanted, True
            )
        method, target = check_request_line(line, http1.accept_http_10)
        http10 = is_http10(line)
        try:
            h = self._parse_headers(
                method,
                target,
                self._placeholder(method, data),
                wanted,
                True,
                http1 if http10 else None,
            )
        except ProtocolError as exc:
            exc.http10 = http10  # answered with an HTTP/1.0 status line
            raise
        if http1.preserve_request_case:
            h.names = original_names(data)
        return h

    @staticmethod
    def _placeholder(method: bytes, data: bytes) -> bytes:
        """``data`` with its request line made ``METHOD / HTTP/1.1``: the target and the
        version were checked by Envoy's rules, and llhttp's (stricter on the target's
        characters, on the separators) must not get a say."""
        return method + b" / HTTP/1.1\r\n" + data[data.find(b"\n") + 1 :]

    def _parse_headers(
        self,
        method: bytes,
        target: bytes,
        fed: bytes,
        wanted: dict[bytes, str],
        placeholder: bool,
        http10: Http1Format | None = None,
    ) -> RequestHead:
        """``http10``: the listener's options when the request is HTTP/1.0 (None for
        HTTP/1.1): its connection closes unless it asks for keep-alive, and it may
        take the default Host."""
        parser = self._parser
        if parser is None or not self._clean:
            parser = self._parser = httptools.HttpRequestParser(self)
        self._clean = False
        self._done = False
        self._head = h = RequestHead()
        self._wanted = wanted
        self._conn_tokens = []
        self._lines = []
        self._count = 0
        self._host = None
        self._upgrade = b""
        self._te_kept = False
        fixed = None
        try:
            parser.feed_data(fed)
        except ProtocolError:
            self._parser = None
            raise
        except httptools.HttpParserCallbackError as exc:
            self._parser = None
            cause = exc.__context__
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise
        except httptools.HttpParserUpgrade:
            # An upgrade (or CONNECT): llhttp stops after the head. Decided below.
            self._parser = None
        except httptools.HttpParserError as exc:
            self._parser = None
            if not placeholder:
                fixed = self._placeholder(method, fed)
                placeholder = True
            else:
                fixed = normalize_head(fed)
                if fixed is None:
                    self._raise_for(str(exc))
        if fixed is not None:
            # llhttp refused what Envoy takes: a target character, bare LF line ends,
            # obs-fold or a bare CR in a value. Parse the head again as Envoy reads it
            # (outside the except block, so the callbacks' own errors keep their cause).
            h = self._parse_headers(method, target, fixed, wanted, placeholder, http10)
            self._parser = None
            return h
        if not self._done:
            self._parser = None
            raise ProtocolError("incomplete request head", 400)
        lines = self._lines
        if len(lines) + self._count > self._max_headers:
            self._parser = None
            raise ProtocolError("too many headers", 431)
        h.method = smethod = _METHOD_NAMES.get(method) or method.decode("ascii")
        h.url = target
        host = self._host
        if smethod == "CONNECT":
            # Only connect_matcher routes take a CONNECT (Envoy answers 404 without
            # one), and the connection ends after it, or becomes its tunnel.
            # Its target must be host:port (Envoy: 400 otherwise).
            name, _, port = target.rpartition(b":")
            if not name or not port.isdigit() or BAD_AUTHORITY.search(target):
                raise ProtocolError("CONNECT target is not host:port", 400)
            h.path = target.decode("latin-1")
            h.keep_alive = False
            h.upgrade = "connect"  # routed by connect_matcher; a tunnel when taken
            self._parser = None
            path = target
        elif target[:1] == b"/":
            # (A target with "#" never takes the fast path: see _FAST_REQUEST_LINE.)
            if placeholder and b"#" in target:
                raise ProtocolError("fragment in the request target", 400, body="")
            h.path = target.decode("latin-1")
            path = target
        else:
            host = self._absolute_form(h, target) or host
            path = h.path.encode("latin-1")
        if host is None:
            if http10 is None or not http10.default_host:
                raise ProtocolError("missing host", 400, body="")
            host = http10.default_host  # default_host_for_http_10
        shost = _HOSTS.get(host)
        if shost is None:
            if BAD_AUTHORITY.search(host):
                raise ProtocolError("invalid host", 400)
            shost = host.decode("latin-1")
            if len(host) <= _HOST_CACHED_LENGTH:
                if len(_HOSTS) >= _HOSTS_CACHED:
                    _HOSTS.clear()
                _HOSTS[host] = shost
        h.host = shost
        tokens = self._conn_tokens
        if tokens:
            if b"close" in tokens:
                h.keep_alive = False
            if b"upgrade" in tokens and self._upgrade and self._upgrade.lower() != b"h2c":
                # An upgrade (websocket): the connection manager decides whether the
                # route takes it (else 403, as Envoy); both lines go upstream.
                # The connection and upgrade lines stay as they came.
                h.upgrade = self._upgrade.strip().lower().decode("latin-1")
                h.remove = [n for n in h.remove if n not in (b"connection", b"upgrade")]
            for t in tokens:
                if t in (b"close", b"keep-alive") or t in h.remove:
                    continue
                if t == b"upgrade" and h.upgrade:
                    continue
                if t == b"te" and self._te_kept:
                    continue  # "te: trailers" stays, as Envoy keeps it
                h.remove.append(t)
        if http10 is not None:
            # HTTP/1.0 closes after the response unless the request asks otherwise.
            h.http10 = True
            h.keep_alive = b"keep-alive" in tokens and b"close" not in tokens
        if h.chunked and h.content_length >= 0:
            raise ProtocolError("content-length with transfer-encoding", 400)
        if h.content_length < 0 and not h.chunked and smethod not in BODILESS_METHODS:
            lines.append(b"content-length: 0\r\n")
        h.raw = b"".join(
            (method, b" ", path, b" HTTP/1.1\r\nhost: ", host, b"\r\n", *lines, b"\r\n")
        )
        h.has_body = h.chunked or h.content_length > 0
        # llhttp finished the message iff it has no body: then the parser is reused
        # (one parser serves every connection of a worker, heads are parsed whole).
        # (After "connection: close" llhttp refuses more input: a fresh one then.)
        self._clean = self._parser is not None and not h.has_body and h.keep_alive
        return h

    @staticmethod
    def _raise_for(reason: str) -> None:
        """llhttp's error as the status Envoy answers it with."""
        if "`Transfer-Encoding`" in reason:
            # A coding other than chunked last (Envoy: 501 Not Implemented).
            raise ProtocolError(reason, 501) from None
        raise ProtocolError(reason, 400) from None

    @staticmethod
    def _absolute_form(h: RequestHead, url: bytes) -> bytes | None:
        """Sets ``h.path`` from an absolute-form target (or ``*``); returns the host
        the target names, which wins over a Host header (None for ``*``)."""
        if url == b"*":
            if h.method != "OPTIONS":
                raise ProtocolError("invalid request target", 400)
            h.path = "*"
            return None
        scheme = url[:8].lower()
        if not (scheme.startswith(b"http://") or scheme == b"https://"):
            raise ProtocolError("invalid request target", 400)
        if b"#" in url:
            raise ProtocolError("fragment in the request target", 400, body="")
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise ProtocolError("invalid request target", 400) from None
        if not parsed.host:
            raise ProtocolError("invalid request target", 400)
        path = parsed.path or b"/"
        if parsed.query:
            path += b"?" + parsed.query
        h.path = path.decode("latin-1")
        return parsed.host + (b":%d" % parsed.port if parsed.port else b"")
