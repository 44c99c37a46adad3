"""proxyd.protocol.h2_translate: the HTTP/1.1 heads HTTP/2 streams stand for, with bytes
and values, no sockets."""

from __future__ import annotations

import pytest

from proxyd.epoch import Http2Options
from proxyd.errors import ProtocolError
from proxyd.protocol.h2_translate import (
    PREFACE,
    local_settings,
    preface_state,
    request_head,
    response_headers,
)
from proxyd.protocol.http1 import RequestHeadParser

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/a?b=1")]


def test_request_head_puts_the_authority_first_as_host() -> None:
    head, has_body = request_head([*GET, (b":authority", b"example.com"), (b"x-a", b"1")], True)
    assert head == b"GET /a?b=1 HTTP/1.1\r\nhost: example.com\r\nx-a: 1\r\n\r\n"
    assert not has_body


def test_request_head_takes_host_without_authority_and_joins_cookies() -> None:
    head, _ = request_head(
        [*GET, (b"cookie", b"a=1"), (b"host", b"h.test"), (b"cookie", b"b=2")], True
    )
    assert head == b"GET /a?b=1 HTTP/1.1\r\nhost: h.test\r\ncookie: a=1; b=2\r\n\r\n"


def test_a_body_without_length_goes_chunked_and_one_with_keeps_it() -> None:
    post = [(b":method", b"POST"), (b":path", b"/p"), (b":authority", b"x")]
    head, has_body = request_head(post, False)
    assert head.endswith(b"transfer-encoding: chunked\r\n\r\n") and has_body
    head, has_body = request_head([*post, (b"content-length", b"3")], False)
    assert b"transfer-encoding" not in head and b"content-length: 3\r\n" in head and has_body


@pytest.mark.parametrize(
    "headers",
    [
        [(b":method", b"GET"), (b":authority", b"x")],  # no :path
        [(b":method", b"CONNECT")],  # a CONNECT without its authority
        [*GET, (b"x-a", b"1\r\nx-b: 2")],  # would split the line
        [*GET, (b"x-a", b"a\x00b")],
    ],
)
def test_what_a_head_cannot_carry_is_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(ProtocolError) as err:
        request_head(headers, True)
    assert err.value.status == 400


def test_the_worker_parser_reads_the_translated_head() -> None:
    head, _ = request_head([*GET, (b":authority", b"example.com"), (b"x-a", b"1")], True)
    h = RequestHeadParser().parse(head, {b"x-a": "x-a"})
    assert (h.method, h.path, h.host, h.headers) == ("GET", "/a?b=1", "example.com", {"x-a": "1"})


def test_response_headers_leave_connection_specific_lines_out() -> None:
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nConnection: close\r\n"
        b"transfer-encoding: chunked\r\nkeep-alive: 5\r\nX-Up: a: b\r\n\r\nbody"
    )
    assert response_headers(head) == [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"x-up", b"a: b"),
    ]


def test_preface_whole_and_one_byte_at_a_time() -> None:
    assert preface_state(PREFACE + b"\x00\x00") is True
    for i in range(len(PREFACE)):
        assert preface_state(PREFACE[:i]) is None
    assert preface_state(b"GET / HTTP/1.1\r\n") is False
    assert preface_state(b"PRX") is False


def test_settings_are_envoys_four() -> None:
    assert local_settings(Http2Options()) == {1: 4096, 8: 0, 3: 1024, 4: 16 * 1024 * 1024}
    assert local_settings(Http2Options(max_concurrent_streams=7))[3] == 7
