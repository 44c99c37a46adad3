"""Envoy's strictness in the HTTP/1 request codec: the request line, the head as it goes
upstream, and chunked framing, each fed whole and one byte at a time.

What Envoy 1.40 answers to each of these is checked against real Envoy by
tests/compat/test_http1_corpus_vs_envoy.py; these pin the codec pieces on their own.
"""

from __future__ import annotations

import pytest

from proxyd.errors import ProtocolError
from proxyd.protocol.http1 import (
    MAX_HEADERS_COUNT,
    ChunkedDecoder,
    RequestHeadParser,
    check_request_line,
    normalize_head,
)
from tests.unit.test_http1_corpus import drive

STEPS = pytest.mark.parametrize("step", [1, 1 << 20], ids=["bytewise", "whole"])

# -- the request line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "method", "target"),
    [
        (b"GET / HTTP/1.1", b"GET", b"/"),
        (b"GET  /a?b HTTP/1.1", b"GET", b"/a?b"),
        (b"GET\t/ HTTP/1.1", b"GET", b"/"),
        (b"GET / HTTP/1.1 ", b"GET", b"/"),
        (b"PROPFIND /x HTTP/1.1", b"PROPFIND", b"/x"),
        (b"GET /<a>{b}|c HTTP/1.1", b"GET", b"/<a>{b}|c"),
        (b"OPTIONS * HTTP/1.1", b"OPTIONS", b"*"),
    ],
)
def test_request_lines_envoy_accepts(line: bytes, method: bytes, target: bytes) -> None:
    assert check_request_line(line) == (method, target)


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"GET /", 426),  # HTTP/0.9
        (b"GET / HTTP/1.0", 426),
        (b"GET / HTTP/1.2", 426),
        (b"GET / HTTP/2.0", 426),
        (b"GET / HTTP/0.9", 426),
        (b"GET / http/1.1", 400),
        (b"GET / HTTP/1.10", 400),
        (b"GET / HTTP/1", 400),
        (b"GET  HTTP/1.1", 400),
        (b" GET / HTTP/1.1", 400),
        (b"get / HTTP/1.1", 400),
        (b"FOO / HTTP/1.1", 400),
        (b"M-SEARCH * HTTP/1.1", 400),
        (b"GET /a b HTTP/1.1", 400),
        (b"GET /a\x7fb HTTP/1.1", 400),
        (b"GET /a\x80b HTTP/1.1", 400),
        (b"GET /a\rb HTTP/1.1", 400),
        (b"GET / HTTP/1.1\rX", 400),
    ],
)
def test_request_lines_envoy_refuses(line: bytes, status: int) -> None:
    with pytest.raises(ProtocolError) as info:
        check_request_line(line)
    assert info.value.status == status


# -- the head as it goes upstream --------------------------------------------------------


@STEPS
@pytest.mark.parametrize(
    ("data", "raw"),
    [
        (
            b"GET /p HTTP/1.1\r\nUser-Agent: x\r\nHost: a\r\nX-Ows: \t v \t\r\nX-E:\r\n\r\n",
            b"GET /p HTTP/1.1\r\nhost: a\r\nuser-agent: x\r\nx-ows: v\r\nx-e: \r\n\r\n",
        ),
        (
            b"GET  http://b:8080/x?y HTTP/1.1 \r\nHost: a\r\n\r\n",
            b"GET /x?y HTTP/1.1\r\nhost: b:8080\r\n\r\n",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 \r\n\r\nhello",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\n",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX: 1\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nhost: a\r\nx: 1\r\n\r\n",
        ),
        (
            b"OPTIONS /o HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS /o HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            b"GET / HTTP/1.1\nHost: a\nX-F: one\n  two\nX-Cr: a\rb\n  \n\n",
            b"GET / HTTP/1.1\r\nhost: a\r\nx-f: one  two\r\nx-cr: ab\r\n\r\n",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: te\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: a,b\r\nconnection: te\r\nte: trailers\r\n\r\n",
        ),
        (
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: \r\n\r\n",
        ),
    ],
    ids=[
        "names-lowered-values-trimmed",
        "absolute-form",
        "content-length-ows",
        "transfer-encoding-left-for-the-end",
        "bodiless-options",
        "bare-lf-fold-bare-cr",
        "repeated-host-te-trailers",
        "empty-host",
    ],
)
def test_the_head_is_written_as_envoy_writes_it(data: bytes, raw: bytes, step: int) -> None:
    h, _, _ = drive(data, step)
    assert h.raw == raw


def test_te_trailers_named_by_connection_stays() -> None:
    h, _, _ = drive(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: te\r\nTE: trailers\r\n\r\n", 1)
    assert b"te" not in h.remove and b"connection" in h.remove


def _headers(n: int) -> bytes:
    return b"".join(b"x-h%03d: a\r\n" % i for i in range(n))


@STEPS
@pytest.mark.parametrize(
    ("data", "status", "body"),
    [
        (b"GET /a#f HTTP/1.1\r\nHost: a\r\n\r\n", 400, ""),
        (b"GET http://a/x#f HTTP/1.1\r\n\r\n", 400, ""),
        (b"GET / HTTP/1.1\r\n\r\n", 400, ""),
        (b"GET # HTTP/1.1\r\nHost: a\r\n\r\n", 400, None),
        (b"GET ftp://a/x HTTP/1.1\r\nHost: a\r\n\r\n", 400, None),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, None),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, None),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, None),
        (b"GET / HTTP/1.1\r\nHost: a\r\n .org\r\n\r\n", 400, None),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n 5\r\n\r\nhello", 400, None),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-\rA: b\r\n\r\n", 400, None),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 400, None),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, None),
        (b"GET /\r\n\r\n", 426, None),
        (b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 400, None),
        (b"CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n", 400, None),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + _headers(MAX_HEADERS_COUNT) + b"\r\n", 431, None),
    ],
    ids=[
        "fragment",
        "absolute-form-fragment",
        "no-host",
        "target-hash",
        "absolute-form-not-http",
        "asterisk-not-options",
        "host-with-space",
        "host-with-slash",
        "fold-into-host",
        "fold-into-content-length",
        "bare-cr-in-name",
        "te-identity",
        "te-gzip",
        "http09",
        "connect-origin-form",
        "connect-without-port",
        "101-headers",
    ],
)
def test_heads_envoy_refuses(data: bytes, status: int, body: str | None, step: int) -> None:
    with pytest.raises(ProtocolError) as info:
        drive(data, step)
    assert (info.value.status, info.value.body) == (status, body)


def test_connect_to_host_and_port() -> None:
    h, _, _ = drive(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", 1)
    assert (h.method, h.path, h.keep_alive) == ("CONNECT", "a.example:443", False)


def test_100_headers_pass() -> None:
    h, _, _ = drive(b"GET / HTTP/1.1\r\n" + _headers(MAX_HEADERS_COUNT - 1) + b"Host: a\r\n\r\n", 1)
    assert h.raw.count(b"\r\n") == MAX_HEADERS_COUNT + 2


@STEPS
def test_a_websocket_upgrade_keeps_its_lines(step: int) -> None:
    # The connection manager decides (403 unless upgrade_configs take it; the
    # websocket compat test shows both); the lines go upstream as they came.
    h, _, _ = drive(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\n", step
    )
    assert h.upgrade == "websocket"
    assert b"connection: Upgrade\r\nupgrade: WebSocket\r\n" in h.raw and not h.remove


def test_h2c_upgrade_is_served_as_http1() -> None:
    h, _, _ = drive(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMA\r\n\r\n",
        1,
    )
    assert {b"connection", b"upgrade", b"http2-settings"} <= set(h.remove)


def test_the_parser_is_reused_after_a_folded_head() -> None:
    parser = RequestHeadParser()
    h, _, _ = drive(b"GET /1 HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", 1, parser)
    assert b"x: 1 2\r\n" in h.raw
    h, _, _ = drive(b"GET /2 HTTP/1.1\r\nHost: b\r\n\r\n", 1, parser)
    assert (h.path, h.host) == ("/2", "b")


def test_normalize_head_leaves_a_clean_head_alone() -> None:
    assert normalize_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") is None


# -- chunked framing ----------------------------------------------------------------------


def decode(data: bytes, step: int) -> tuple[bytes, bytes]:
    """Feed ``data`` ``step`` bytes at a time, as the worker does (unconsumed bytes are
    kept and fed again with the next ones). Returns (body, what follows the body);
    raises ProtocolError, or AssertionError when the input ran out first."""
    dec = ChunkedDecoder()
    buf = bytearray()
    body = bytearray()
    pos = 0
    for i in range(0, len(data), step):
        buf += data[i : i + step]
        pieces, pos = dec.feed(buf, pos, len(buf))
        for off, n in pieces:
            body += buf[off : off + n]
        if dec.done:
            return bytes(body), bytes(buf[pos:]) + data[i + step :]
    raise AssertionError("incomplete chunked body")


@pytest.mark.parametrize("step", [1, 2, 3, 1 << 20], ids=["bytewise", "by2", "by3", "whole"])
@pytest.mark.parametrize(
    ("data", "body", "rest"),
    [
        (b"5\r\nhello\r\n0\r\n\r\n", b"hello", b""),
        (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET", b"hello world", b"GET"),
        (b"A\r\n0123456789\r\n0000\r\n\r\n", b"0123456789", b""),
        (b"5 \r\nhello\r\n0\r\n\r\n", b"hello", b""),
        (b'5;a=b;c="d e"\r\nhello\r\n0;x\r\n\r\n', b"hello", b""),
        (b"5;a\x01b\r\nhello\r\n0\r\n\r\n", b"hello", b""),
        (b"5\r\nhello\r\n0\r\nX-T: v\r\nY:\r\n\r\n", b"hello", b""),
        (b"5\r\nhello\r\n0\r\nX-T: v\n\r\n", b"hello", b""),
        (b"5\r\nhello\r\n0\r\nX-T: v\n\n", b"hello", b""),
        (b"0\r\n\r\n", b"", b""),
    ],
    ids=[
        "one",
        "two-then-pipelined",
        "upper-hex-and-zeros",
        "size-trailing-space",
        "extensions",
        "extension-control-char",
        "trailers",
        "trailer-bare-lf",
        "trailers-all-bare-lf",
        "empty",
    ],
)
def test_chunked_bodies(data: bytes, body: bytes, rest: bytes, step: int) -> None:
    assert decode(data, step) == (body, rest)


@pytest.mark.parametrize("step", [1, 1 << 20], ids=["bytewise", "whole"])
@pytest.mark.parametrize(
    "data",
    [
        b"5\nhello\r\n0\r\n\r\n",
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"ffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhel\r\n0\r\n\r\n",
        b"5\r\nhelloXX\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhello\rX0\r\n\r\n",
        b"5;a\rb\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\nnocolon\r\n\r\n",
        b"5\r\nhello\r\n0\r\nX-T : v\r\n\r\n",
        b"5\r\nhello\r\n0\r\n v\r\n\r\n",
        b"5\r\nhello\r\n0\r\nX-T: a\x01b\r\n\r\n",
    ],
    ids=[
        "bare-lf-after-size",
        "size-not-hex",
        "size-0x",
        "size-negative",
        "size-empty",
        "size-leading-space",
        "size-16-hex-digits",
        "data-shorter-than-size",
        "data-longer-than-size",
        "bare-lf-after-data",
        "bare-cr-after-data",
        "cr-in-extension",
        "trailer-without-colon",
        "trailer-space-before-colon",
        "trailer-fold",
        "trailer-control-char",
    ],
)
def test_chunk_framing_errors_are_400(data: bytes, step: int) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(data, step)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "data",
    [b"5\n", b"5;a\rb\r\n", b"5\r\nhello\n", b"5\r\nhelloX", b"5\r\nhello\r\n0\r\nX : v\r\n"],
    ids=["bare-lf-after-size", "cr-in-extension", "bare-lf-after-data", "data-too-long", "trailer"],
)
def test_a_framing_error_is_seen_without_waiting_for_more(data: bytes) -> None:
    """The error is raised from the bytes in hand: a client that sends them and then
    waits is answered, not left hanging."""
    dec = ChunkedDecoder()
    with pytest.raises(ProtocolError):
        pos = 0
        for i in range(len(data)):
            _, pos = dec.feed(data[: i + 1], pos, i + 1)


def test_max_headers_count_is_per_parse() -> None:
    """common_http_protocol_options.max_headers_count: the limit each parse is given."""
    parser = RequestHeadParser()
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + _headers(5) + b"\r\n"
    with pytest.raises(ProtocolError) as info:
        parser.parse(head, {}, 5)
    assert info.value.status == 431
    assert parser.parse(head, {}, 6).method == "GET"
    big = b"GET / HTTP/1.1\r\nHost: a\r\n" + _headers(MAX_HEADERS_COUNT + 20) + b"\r\n"
    assert parser.parse(big, {}, MAX_HEADERS_COUNT + 21).method == "GET"
    with pytest.raises(ProtocolError):
        parser.parse(big, {})
