"""Filter chain choice (proxyd.protocol.chain_match): the ClientHello inspector on real
ClientHellos (made by CPython's ssl over memory BIOs), whole and cut short, and Envoy's
match order over server names and transport protocols."""

from __future__ import annotations

import ssl

import pytest

from proxyd.epoch import ChainMatch
from proxyd.protocol.chain_match import (
    NOT_TLS,
    ChainSelector,
    ClientHelloTooLarge,
    Connection,
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
    ChainMatch(server_names=("example.com",)),  # 0
    ChainMatch(server_names=("*.example.org",)),  # 1
    ChainMatch(server_names=("www.example.org",), transport_protocol="tls"),  # 2
    ChainMatch(server_names=("*.b.example.org",)),  # 3
    ChainMatch(transport_protocol="raw_buffer"),  # 4
    ChainMatch(transport_protocol="tls"),  # 5
    ChainMatch(server_names=("plain.test",), transport_protocol="raw_buffer"),  # 6
]


def conn(
    sni: str = "",
    transport: str = "raw_buffer",
    alpn: tuple[str, ...] = (),
    dst: tuple[str, int] = ("127.0.0.1", 10000),
    src: tuple[str, int] = ("10.1.2.3", 40000),
) -> Connection:
    return Connection(dst[0], dst[1], src[0], src[1], Inspected(transport == "tls", sni, alpn))


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
    assert ChainSelector(CHAINS, 9).select(conn(sni, transport)) == chosen


def test_without_a_default_nothing_is_chosen() -> None:
    selector = ChainSelector([ChainMatch(server_names=("example.com",))], None)
    assert selector.select(conn("example.com", "tls")) == 0
    assert selector.select(conn("other.test", "tls")) is None
    assert selector.select(conn("", "raw_buffer")) is None


ADDRESS_CHAINS = [
    ChainMatch(destination_port=8443),  # 0
    ChainMatch(prefix_ranges=("127.0.0.0/8",)),  # 1
    ChainMatch(prefix_ranges=("127.0.0.2/32",)),  # 2
    ChainMatch(prefix_ranges=("127.0.0.0/8",), source_prefix_ranges=("10.0.0.0/8",)),  # 3
    ChainMatch(
        prefix_ranges=("127.0.0.0/8",),
        source_prefix_ranges=("10.1.0.0/16",),
        source_ports=(1234,),
    ),  # 4
    ChainMatch(prefix_ranges=("127.0.0.0/8",), source_prefix_ranges=("10.1.0.0/16",)),  # 5
    ChainMatch(source_type="SAME_IP_OR_LOOPBACK", prefix_ranges=("192.0.2.0/24",)),  # 6
    ChainMatch(application_protocols=("h2", "http/1.1"), prefix_ranges=("198.51.100.0/24",)),
    ChainMatch(prefix_ranges=("198.51.100.0/24",)),  # 8
    ChainMatch(direct_source_prefix_ranges=("172.16.0.0/12",), prefix_ranges=("::/0",)),  # 9
    ChainMatch(prefix_ranges=("127.0.0.3/32",), source_prefix_ranges=("10.0.0.0/8",)),  # 10
]


@pytest.mark.parametrize(
    ("c", "chosen"),
    [
        (conn(dst=("127.0.0.5", 8443)), 0),  # the port comes first, whatever the rest
        (conn(dst=("127.0.0.5", 10000), src=("10.9.9.9", 5)), 3),  # 127/8, then 10/8
        (conn(dst=("127.0.0.2", 10000)), 2),  # /32 beats /8
        (conn(dst=("127.0.0.5", 10000), src=("10.1.9.9", 1234)), 4),  # the exact port
        (conn(dst=("127.0.0.5", 10000), src=("10.1.9.9", 1235)), 5),  # longest, any port
        (conn(dst=("127.0.0.5", 10000), src=("192.168.1.1", 5)), 1),  # no source range
        (conn(dst=("127.0.0.3", 10000), src=("10.9.9.9", 5)), 10),
        (conn(dst=("127.0.0.3", 10000), src=("192.168.1.1", 5)), None),  # no back-off to /8
        (conn(dst=("192.0.2.1", 10000), src=("127.0.0.1", 5)), 6),  # loopback: local
        (conn(dst=("192.0.2.1", 10000), src=("127.0.0.2", 5)), None),  # not 127.0.0.1
        (conn(dst=("192.0.2.1", 10000), src=("192.0.2.1", 5)), 6),  # the same IP: local
        (conn(dst=("192.0.2.1", 10000), src=("203.0.113.1", 5)), None),  # external
        (conn(dst=("198.51.100.1", 1), alpn=("http/1.1",)), 7),
        (conn(dst=("198.51.100.1", 1), alpn=("spdy", "h2")), 7),
        (conn(dst=("198.51.100.1", 1), alpn=("spdy",)), 8),
        (conn(dst=("198.51.100.1", 1)), 8),
        (conn(dst=("::1", 1), src=("::1", 2)), None),  # the direct source: no match
    ],
)
def test_address_criteria_in_envoy_order(c: Connection, chosen: int | None) -> None:
    assert ChainSelector(ADDRESS_CHAINS, 99).select(c) == (99 if chosen is None else chosen)
