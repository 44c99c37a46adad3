"""The request parser's cache of checked hosts never lets a bad one through."""

from __future__ import annotations

import pytest

from proxyd.errors import ProtocolError
from proxyd.protocol import http1
from proxyd.protocol.http1 import RequestHeadParser


def head(host: bytes) -> bytes:
    return b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"


def test_bad_host_refused_every_time_and_after_the_cache_fills() -> None:
    p = RequestHeadParser()
    for _ in range(2):
        with pytest.raises(ProtocolError) as exc:
            p.parse(head(b"bad host"), {})
        assert exc.value.status == 400
    for i in range(http1._HOSTS_CACHED + 10):
        assert p.parse(head(b"h%d.example:80" % i), {}).host == f"h{i}.example:80"
    assert len(http1._HOSTS) <= http1._HOSTS_CACHED
    with pytest.raises(ProtocolError):
        p.parse(head(b"bad\x01host"), {})
    assert p.parse(head(b"h1.example:80"), {}).host == "h1.example:80"


def test_long_host_is_checked_but_not_kept() -> None:
    p = RequestHeadParser()
    long_host = b"a" * (http1._HOST_CACHED_LENGTH + 1)
    assert p.parse(head(long_host), {}).host == long_host.decode()
    assert long_host not in http1._HOSTS
