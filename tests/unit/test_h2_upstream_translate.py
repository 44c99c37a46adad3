"""proxyd.protocol.h2_upstream: HTTP/1.1 request heads as HTTP/2 header blocks, HTTP/2
response blocks as HTTP/1.1 heads (what an HTTP/2 cluster's hosts get and send)."""

from __future__ import annotations

import pytest

from proxyd.errors import ProtocolError
from proxyd.protocol.h2_upstream import (
    request_headers,
    reset_reason,
    response_head,
    trailer_block,
)
from proxyd.protocol.http1 import ResponseHeadParser


def test_request_block_pseudo_headers_first_and_hop_by_hop_lines_gone() -> None:
    head = (
        b"POST /a?b=1 HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, x-hop\r\n"
        b"X-Hop: 1\r\nKeep-Alive: 5\r\nTransfer-Encoding: chunked\r\nUpgrade: foo\r\n"
        b"Proxy-Connection: x\r\nTE: trailers\r\ncontent-type: application/grpc\r\n"
        b"X-Multi: 1\r\nx-multi: 2\r\n\r\n"
    )
    assert request_headers(head, b"http") == [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"app.test"),
        (b":path", b"/a?b=1"),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
        (b"x-multi", b"1"),
        (b"x-multi", b"2"),
    ]


def test_te_other_than_trailers_is_dropped_and_no_host_no_authority() -> None:
    block = request_headers(b"GET / HTTP/1.1\r\nte: gzip\r\n\r\n", b"https")
    assert block == [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")]


def test_a_malformed_head_is_a_400() -> None:
    with pytest.raises(ProtocolError) as err:
        request_headers(b"GET /\r\n\r\n", b"http")
    assert err.value.status == 400
    with pytest.raises(ProtocolError):
        request_headers(b"GET / HTTP/1.1\r\nno colon\r\n\r\n", b"http")


def test_response_head_reads_back_with_the_http1_parser() -> None:
    status, raw = response_head([(b":status", b"404"), (b"content-length", b"3"), (b"x-a", b"b")])
    assert status == 404
    assert raw == b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\nx-a: b\r\n\r\n"
    r = ResponseHeadParser().parse(raw, {b"x-a": "x-a"})
    assert (r.status, r.content_length, r.headers) == (404, 3, {"x-a": "b"})
    assert response_head([(b":status", b"299")])[1].startswith(b"HTTP/1.1 299 Unknown\r\n")


@pytest.mark.parametrize(
    "block",
    [
        [(b"x-a", b"b")],  # no :status
        [(b":status", b"20")],
        [(b":status", b"200"), (b"x-a", b"b\r\nx-b: c")],
        [(b":status", b"200"), (b"x-a", b"b\x00")],
    ],
)
def test_a_response_http1_cannot_carry_is_a_502(block: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(ProtocolError) as err:
        response_head(block)
    assert err.value.status == 502


def test_trailers_and_reset_reasons() -> None:
    assert trailer_block([(b"grpc-status", b"0"), (b"connection", b"x")]) == [
        (b"grpc-status", b"0")
    ]
    assert reset_reason(None) == ("connection termination", "connection_termination")
    assert reset_reason(7) == ("remote refused stream reset", "remote_refused_stream_reset")
    assert reset_reason(2) == ("remote reset", "remote_reset")
