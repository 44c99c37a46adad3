"""Filter chain choice (proxyd.protocol.chain_match): the ClientHello inspector on real
ClientHellos (made by CPython's ssl over memory BIOs), whole and cut short, and Envoy's
match order over server names and transport protocols."""

from __future__ import annotations

import ssl

import pytest

from proxyd.protocol.chain_match import (
    NOT_TLS,
    ChainSelector,
    ClientHelloTooLarge,
    Inspected,
    inspect_client_hello,
)


def client_hello(sni: str | None, alpn: list[str] | None = None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_sni_and_alpn_are_read() -> None:
    hello = client_hello("Www.Example.org", ["h2", "http/1.1"])
    assert inspect_client_hello(hello) == Inspected(True, "www.example.org", ("h2", "http/1.1"))
    assert inspect_client_hello(client_hello(None)) == Inspected(True, "", ())


def test_a_hello_cut_short_asks_for_the_bytes_it_needs() -> None:
    hello = client_hello("example.com")
    for n in range(len(hello)):
        need = inspect_client_hello(hello[:n])
        assert isinstance(need, int) and n < need <= len(hello), n
    # Split over two records, as a client may send it.
    body = hello[5:]
    two = b"\x16\x03\x01" + (10).to_bytes(2, "big") + body[:10]
    two += b"\x16\x03\x01" + (len(body) - 10).to_bytes(2, "big") + body[10:]
    assert inspect_client_hello(two) == Inspected(True, "example.com", ())


def test_other_bytes_are_not_tls() -> None:
    assert inspect_client_hello(b"GET / HTTP/1.1\r\n") is NOT_TLS
    assert inspect_client_hello(b"\x16\x02\x00\x00\x01x") is NOT_TLS
    assert inspect_client_hello(b"") == 1


def test_a_hello_over_the_limit_is_refused() -> None:
    assert inspect_client_hello(b"\x16\x03\x01\xff\xf0") == 5 + 0xFFF0  # within 64 KiB
    with pytest.raises(ClientHelloTooLarge):
        inspect_client_hello(b"\x16\x03\x01\xff\xff")  # 65540 bytes


CHAINS = [
    (("example.com",), ""),  # 0
    (("*.example.org",), ""),  # 1
    (("www.example.org",), "tls"),  # 2
    (("*.b.example.org",), ""),  # 3
    ((), "raw_buffer"),  # 4
    ((), "tls"),  # 5
    (("plain.test",), "raw_buffer"),  # 6
]


@pytest.mark.parametrize(
    ("sni", "transport", "chosen"),
    [
        ("example.com", "tls", 0),
        ("a.example.org", "tls", 1),
        ("www.example.org", "tls", 2),  # exact beats the wildcard
        ("www.example.org", "raw_buffer", 9),  # no back-off to the wildcard: the default
        ("x.b.example.org", "tls", 3),  # the longest wildcard
        ("x.y.example.org", "tls", 1),  # a wildcard covers several labels
        ("unknown.test", "tls", 5),  # the chains without server names
        ("", "raw_buffer", 4),
        ("", "tls", 5),
        ("plain.test", "tls", 9),
    ],
)
def test_envoy_match_order(sni: str, transport: str, chosen: int) -> None:
    assert ChainSelector(CHAINS, 9).select(sni, transport) == chosen


def test_without_a_default_nothing_is_chosen() -> None:
    selector = ChainSelector([(("example.com",), "")], None)
    assert selector.select("example.com", "tls") == 0
    assert selector.select("other.test", "tls") is None
    assert selector.select("", "raw_buffer") is None
