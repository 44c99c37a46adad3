"""The TCP proxy tunnel's request head and POST response framing (proxyd.worker.tcp_tunnel)."""

from __future__ import annotations

import pytest

from proxyd.epoch import HeaderAdd, TcpTunnel
from proxyd.errors import ProtocolError
from proxyd.protocol.access_log import LogRecord
from proxyd.worker.tcp_tunnel import ResponseBody, TunnelPlan


def test_connect_head_with_formatted_host_and_headers() -> None:
    plan = TunnelPlan(
        TcpTunnel(
            hostname="%DOWNSTREAM_LOCAL_ADDRESS%",
            headers=(
                HeaderAdd("x-a", "1"),
                HeaderAdd("x-a", "2", "OVERWRITE_IF_EXISTS_OR_ADD"),
                HeaderAdd("x-e", ""),
            ),
        )
    )
    assert plan.needs_record
    rec = LogRecord()
    rec.downstream_local_address = "127.0.0.1:8443"
    assert plan.request_head(rec) == (
        b"CONNECT 127.0.0.1:8443 HTTP/1.1\r\nhost: 127.0.0.1:8443\r\nx-a: 2\r\nx-a: 1\r\n\r\n"
    )


def test_post_head() -> None:
    plan = TunnelPlan(TcpTunnel(hostname="h:1", use_post=True, post_path="/up"))
    assert not plan.needs_record
    assert plan.request_head(None) == (
        b"POST /up HTTP/1.1\r\nhost: h:1\r\ntransfer-encoding: chunked\r\n\r\n"
    )


def test_post_response_framings() -> None:
    chunked = ResponseBody(chunked=True, content_length=-1)
    assert chunked.feed(b"3\r\nabc\r\n2\r") == (b"abc", False)
    assert chunked.feed(b"\nde\r\n0\r\n\r\n") == (b"de", True)
    sized = ResponseBody(chunked=False, content_length=4)
    assert sized.feed(b"ab") == (b"ab", False)
    assert sized.feed(b"cdef") == (b"cd", True)
    until_close = ResponseBody(chunked=False, content_length=-1)
    assert until_close.feed(b"xyz") == (b"xyz", False)
    with pytest.raises(ProtocolError):
        ResponseBody(chunked=True, content_length=-1).feed(b"zz\r\n")
