"""The HTTP/1 request corpus (tests/unit/http1_corpus), fed whole and one byte at a time.

The driver below frames requests the way the worker does: find the end of the head,
parse it with :class:`RequestHeadParser`, then take the body by content-length or with
:class:`ChunkedDecoder`, leaving anything after the message in the buffer.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pytest

from proxyd.errors import ProtocolError
from proxyd.protocol.http1 import (
    ChunkedDecoder,
    RequestHead,
    RequestHeadParser,
    find_head_end,
    skip_leading_crlf,
)

CORPUS = Path(__file__).parent / "http1_corpus"
WANTED = {b"user-agent": "user-agent", b"x-custom": "x-custom"}
MAX_HEAD = 60 * 1024


class Incomplete(Exception):
    pass


def load(path: Path) -> bytes:
    text = path.read_text().replace("\n", "")
    return codecs.decode(text, "unicode_escape").encode("latin-1")


def drive(data: bytes, step: int, parser: RequestHeadParser | None = None):
    """Frame one request from ``data`` fed ``step`` bytes at a time.

    Returns (head, body, rest).
    """
    parser = parser or RequestHeadParser()
    chunks = iter([data[i : i + step] for i in range(0, len(data), step)])
    buf = bytearray()

    def more() -> None:
        chunk = next(chunks, None)
        if chunk is None:
            raise Incomplete()
        buf.extend(chunk)

    start = 0
    while True:
        start = skip_leading_crlf(buf, start, len(buf))
        he = find_head_end(buf, start, len(buf))
        if he >= 0:
            break
        if len(buf) - start > MAX_HEAD:
            raise ProtocolError("too large", 431)
        more()
    h = parser.parse(memoryview(bytes(buf))[start:he], WANTED)
    body = bytearray()
    pos = he
    if h.content_length > 0:
        while len(buf) - pos < h.content_length:
            more()
        body += buf[pos : pos + h.content_length]
        pos += h.content_length
    elif h.chunked:
        dec = ChunkedDecoder()
        while True:
            pieces, pos = dec.feed(buf, pos, len(buf))
            for off, n in pieces:
                body += buf[off : off + n]
            if dec.done:
                break
            more()
    rest = bytes(buf[pos:]) + b"".join(chunks)
    return h, bytes(body), rest


def _cases(kind: str) -> list[Path]:
    return sorted((CORPUS / kind).glob("*.http"))


DEFAULTS = {
    "method": "GET",
    "path": "/",
    "content_length": -1,
    "chunked": False,
    "keep_alive": True,
    "expect_continue": False,
    "remove": [],
    "xff": "",
    "request_id": "",
    "envoy_headers": [],
    "headers": {},
    "body": "",
    "next": "",
}


def _check(h: RequestHead, body: bytes, rest: bytes, expected: dict) -> None:
    want = {**DEFAULTS, **expected}
    assert h.method == want["method"]
    assert h.path == want["path"]
    assert h.host == want["host"]
    assert h.content_length == want["content_length"]
    assert h.chunked == want["chunked"]
    assert h.keep_alive == want["keep_alive"]
    assert h.expect_continue == want["expect_continue"]
    assert sorted(set(h.remove)) == sorted(n.encode() for n in want["remove"])
    assert h.xff == want["xff"].encode()
    assert h.request_id == want["request_id"].encode()
    assert h.envoy_headers == [n.encode() for n in want["envoy_headers"]]
    assert h.headers == want["headers"]
    assert body == want["body"].encode()
    assert rest == codecs.decode(want["next"], "unicode_escape").encode("latin-1")


@pytest.mark.parametrize("step", [1, 7, 1 << 20], ids=["bytewise", "by7", "whole"])
@pytest.mark.parametrize("case", _cases("valid"), ids=lambda p: p.stem)
def test_valid(case: Path, step: int) -> None:
    expected = json.loads(case.with_suffix(".json").read_text())
    h, body, rest = drive(load(case), step)
    _check(h, body, rest, expected)
    assert h.raw.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("step", [1, 1 << 20], ids=["bytewise", "whole"])
@pytest.mark.parametrize("case", _cases("malformed"), ids=lambda p: p.stem)
def test_malformed(case: Path, step: int) -> None:
    expected = json.loads(case.with_suffix(".json").read_text())
    with pytest.raises(ProtocolError) as info:
        drive(load(case), step)
    assert info.value.status == expected["status"]


def test_parser_is_reused_across_pipelined_requests() -> None:
    parser = RequestHeadParser()
    data = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\n"
    h1, _, rest = drive(data, 1 << 20, parser)
    h2, _, rest2 = drive(rest, 1, parser)
    assert (h1.path, h1.host, h2.path, h2.host, rest2) == ("/1", "a", "/2", "b", b"")


def test_parser_recovers_after_a_body_and_after_an_error() -> None:
    parser = RequestHeadParser()
    drive(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok", 1 << 20, parser)
    h, _, _ = drive(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 1 << 20, parser)
    assert h.path == "/x"
    with pytest.raises(ProtocolError):
        drive(b"GET / HTTP/1.1\r\nHost a\r\n\r\n", 1 << 20, parser)
    h, _, _ = drive(b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n", 1 << 20, parser)
    assert h.path == "/y"


def test_every_corpus_case_has_its_expectation() -> None:
    for kind in ("valid", "malformed"):
        cases = _cases(kind)
        assert cases, kind
        for case in cases:
            assert case.with_suffix(".json").exists(), case
