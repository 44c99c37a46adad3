"""proxyd.worker.filter_chain: a response head as lines (what the cache stores) and a
head made of lines (what a FilterResponse sends)."""

from __future__ import annotations

from proxyd.protocol.http1_response import ResponseHeadParser
from proxyd.worker.filter_chain import _Response, head_lines, response_head_of

RAW = (
    b"HTTP/1.1 200 OK\r\n"
    b"Date: Fri, 04 Dec 2026 20:00:00 GMT\r\n"
    b"Connection: keep-alive, x-hop\r\n"
    b"X-Hop: gone\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Cache-Control: max-age=60\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
    b"\r\n"
)


def test_head_lines_leave_out_hop_by_hop() -> None:
    r = ResponseHeadParser().parse(RAW, {})
    assert head_lines(r) == [
        ("date", "Fri, 04 Dec 2026 20:00:00 GMT"),
        ("cache-control", "max-age=60"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
    ]
    view = _Response(200, r.headers, r, 7)
    assert view.header_lines()[-1] == ("x-envoy-upstream-service-time", "7")
    assert _Response(200, {"content-length": "3"}).header_lines() == [("content-length", "3")]


def test_response_head_of_lines() -> None:
    lines = (("date", "x"), ("set-cookie", "a=1"), ("set-cookie", "b=2"), ("age", "3"))
    r = response_head_of(206, lines)
    assert r.raw == (
        b"HTTP/1.1 206 Partial Content\r\ndate: x\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n"
        b"age: 3\r\n\r\n"
    )
    assert r.status == 206 and r.has_date and r.headers["set-cookie"] == "a=1,b=2"
    assert not response_head_of(200, ()).has_date
