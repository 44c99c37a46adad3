"""proxyd.protocol.h2_translate: the extended CONNECT (RFC 8441) an HTTP/2 client opens
a WebSocket with stands for Envoy's HTTP/1.1 upgrade request, and the setting that
allows it."""

from __future__ import annotations

import pytest

from proxyd.epoch import Http2Options
from proxyd.errors import ProtocolError
from proxyd.protocol.h2_translate import ExtendedConnectRefused, local_settings, request_head

WS = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
      (b":path", b"/chat?room=1"), (b":authority", b"ws.test"),
      (b"sec-websocket-version", b"13")]  # fmt: skip


def test_extended_connect_is_a_get_upgrade_without_body_framing():
    raw, has_body = request_head(WS, False, allow_connect=True)
    assert raw == (
        b"GET /chat?room=1 HTTP/1.1\r\nhost: ws.test\r\nsec-websocket-version: 13\r\n"
        b"connection: upgrade\r\nupgrade: websocket\r\n\r\n"
    )
    # What the client sends after it is the tunnel's: the stream has a "body".
    assert has_body


def test_extended_connect_without_allow_connect_is_refused():
    with pytest.raises(ExtendedConnectRefused):
        request_head(WS, False)


def test_a_plain_connect_is_the_http1_connect_to_its_authority():
    plain = [(b":method", b"CONNECT"), (b":authority", b"example.com:443"), (b"x-a", b"1")]
    raw, has_body = request_head(plain, False)
    assert raw == b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\nx-a: 1\r\n\r\n"
    assert has_body  # the tunnel's bytes follow, unframed


def test_a_connect_without_authority_is_malformed():
    with pytest.raises(ProtocolError) as e:
        request_head([(b":method", b"CONNECT")], False, allow_connect=True)
    assert e.value.status == 400 and not isinstance(e.value, ExtendedConnectRefused)


def test_the_setting_follows_allow_connect():
    assert local_settings(Http2Options())[0x8] == 0
    assert local_settings(Http2Options(allow_connect=True))[0x8] == 1
