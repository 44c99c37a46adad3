"""An upstream's HTTP/1.1 response head, sans-IO: :class:`ResponseHeadParser` (llhttp
validates it; one regex scan finds the few lines the proxy needs) and what it yields,
:class:`ResponseHead`; with the value helpers the request parser
(:mod:`proxyd.protocol.http1`) shares.

Bad input raises :class:`proxyd.errors.ProtocolError` (502: the upstream's fault).
"""

from __future__ import annotations

import re

import httptools

from proxyd.errors import ProtocolError

__all__ = [
    "ResponseHead",
    "ResponseHeadParser",
    "connection_tokens",
    "parse_content_length",
    "response_has_body",
]


class ResponseHead:
    __slots__ = (
        "raw",
        "status",
        "content_length",
        "chunked",
        "keep_alive",
        "cuts",
        "has_date",
        "headers",
    )

    def __init__(self) -> None:
        self.raw = b""
        self.status = 0
        self.content_length = -1
        self.chunked = False
        self.keep_alive = True
        # Spans of ``raw`` (each "CRLF name: value") that must not go downstream.
        self.cuts: list[tuple[int, int]] = []
        self.has_date = False
        self.headers: dict[str, str] = {}


def connection_tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def parse_content_length(value: bytes) -> int:
    # llhttp already rejects other characters and duplicates; optional whitespace
    # around the value is allowed (RFC 9110 §5.5); this also bounds the size.
    value = value.strip(b" \t")
    if not value.isdigit() or len(value) > 18:
        raise ProtocolError("invalid content-length", 400)
    return int(value)


# The response header lines the proxy looks at, found in one scan of the lower-cased
# head: framing, the hop-by-hop ones it drops, server (overwritten) and date. Each
# alternative ends with a group of its own, so ``m.lastindex`` says which one matched
# (no name to read back and compare): 1 a content-length of 1-18 digits (optional
# whitespace around it), 2 date, 3 server, 4 connection, 5 transfer-encoding, 6 the
# other hop-by-hop lines, 7 any other content-length value (refused).
_RESPONSE_LINES = re.compile(
    rb"\r\n(?:content-length:[ \t]*([0-9]{1,18})[ \t]*(?=\r)"
    rb"|date:[^\r]*()"
    rb"|server:[^\r]*()"
    rb"|connection:([^\r]*)"
    rb"|transfer-encoding:([^\r]*)"
    rb"|(?:keep-alive|proxy-connection|upgrade|te):[^\r]*()"
    rb"|content-length:([^\r]*))"
)
_CONTENT_LENGTH = 1
_DATE = 2
_CONNECTION = 4
_TRANSFER_ENCODING = 5
_BAD_CONTENT_LENGTH = 7

_new = object.__new__


class ResponseHeadParser:
    """Parses one upstream response head: ``parse(view, wanted)``.

    llhttp validates the head; the few facts the proxy needs are then found by one
    regex scan of the lower-cased head for ``CRLF name:`` (llhttp guarantees there is
    no whitespace before a colon and no obs-fold, so that finds exactly the header
    lines). That costs less than one Python callback per header, and it yields the
    spans of the lines to drop, ready for splicing.
    """

    __slots__ = ("_done",)

    # httptools asks its protocol object for each callback with getattr(..., None); a
    # missing one costs an AttributeError (its message formatted) per new llhttp
    # parser, that is per response. None says "no callback" without one.
    on_message_begin = on_header = on_status = on_body = None
    on_message_complete = on_chunk_header = on_chunk_complete = None

    def __init__(self) -> None:
        self._done = False

    def on_headers_complete(self) -> None:
        self._done = True

    def parse(self, view: memoryview | bytes, wanted: dict[bytes, str]) -> ResponseHead:
        # A fresh llhttp parser per head: a response's framing depends on the request
        # (HEAD), which llhttp is not told, so its state after the head is not reused.
        self._done = False
        parser = httptools.HttpResponseParser(self)
        try:
            parser.feed_data(view)
        except httptools.HttpParserError as exc:
            raise ProtocolError(str(exc), 502) from None
        except httptools.HttpParserUpgrade:
            pass  # a 101 is treated like any other head; the caller refuses it
        if not self._done:
            raise ProtocolError("incomplete response head", 502)
        # (The fields of ResponseHead.__init__, set here without its call.)
        h = _new(ResponseHead)
        raw = h.raw = bytes(view)
        h.status = parser.get_status_code()
        # HTTP/1.1 keeps the connection unless told otherwise (llhttp checked the
        # version's digits and dot).
        h.keep_alive = True if raw[7] == 49 and raw[5] == 49 else parser.should_keep_alive()
        h.content_length = -1
        h.chunked = False
        h.has_date = False
        h.headers = {}
        cuts: list[tuple[int, int]] = []
        h.cuts = cuts
        low = raw.lower()
        tokens: list[bytes] | None = None
        # Each match is one whole line but its CRLF; lastindex says which line.
        for m in _RESPONSE_LINES.finditer(low):
            k = m.lastindex
            if k == _CONTENT_LENGTH:
                h.content_length = int(m[1])
            elif k == _DATE:
                h.has_date = True
            elif k == _BAD_CONTENT_LENGTH:
                raise ProtocolError("invalid content-length", 400)
            else:
                cuts.append(m.span())
                if k == _CONNECTION:
                    value = m[4].strip()
                    if value != b"keep-alive":
                        tokens = (tokens or []) + connection_tokens(value)
                elif k == _TRANSFER_ENCODING:
                    h.chunked = m[5].strip().endswith(b"chunked")
        if tokens:
            if b"close" in tokens:
                h.keep_alive = False
            for t in tokens:
                if t not in (b"close", b"keep-alive"):
                    pat = b"\r\n" + t + b":"
                    i = low.find(pat)
                    while i >= 0:
                        j = low.find(b"\r\n", i + 2)
                        cuts.append((i, j))
                        i = low.find(pat, j)
            # (The scan's own cuts are in order; these come after them.)
            if len(cuts) > 1:
                cuts.sort()
        if wanted:
            for name, key in wanted.items():
                pat = b"\r\n" + name + b":"
                i = low.find(pat)
                while i >= 0:
                    j = low.find(b"\r\n", i + 2)
                    v = raw[i + len(pat) : j].strip().decode("latin-1")
                    old = h.headers.get(key)
                    h.headers[key] = v if old is None else old + "," + v
                    i = low.find(pat, j)
        return h


def response_has_body(status: int, head_request: bool) -> bool:
    """RFC 9112 §6.3: HEAD responses, 1xx, 204 and 304 have no body."""
    return not (head_request or status < 200 or status == 204 or status == 304)
