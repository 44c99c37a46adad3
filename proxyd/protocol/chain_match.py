"""Choosing a listener's filter chain for a connection, as Envoy does, and reading what
the choice needs (the SNI) from the client's first bytes, as Envoy's ``tls_inspector``.

No I/O here. :func:`inspect_client_hello` looks at the bytes a client sent first (the
worker peeks them, leaving them in the socket for the handshake) and says: not TLS,
TLS with this server name and these ALPN protocols, or how many bytes it needs to
decide. :class:`ChainSelector` applies Envoy's filter chain match order over every
``filter_chain_match`` criterion (see its docstring). Like Envoy's match tree it never
backs off to a less specific level: a chain whose server name matched but whose
transport protocol did not leaves the connection without a chain (the default chain,
if there is one).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from proxyd.epoch import ChainMatch

# Envoy's tls_inspector max_client_hello_size default.
MAX_CLIENT_HELLO = 64 * 1024
_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SNI = 0
_EXT_ALPN = 16


@dataclass(frozen=True, slots=True)
class Inspected:
    """What the first bytes said: ``tls`` with the SNI ("" without one) and ALPN."""

    tls: bool
    sni: str = ""
    alpn: tuple[str, ...] = ()

    @property
    def transport(self) -> str:
        return "tls" if self.tls else "raw_buffer"


NOT_TLS = Inspected(False)


class ClientHelloTooLarge(Exception):
    """Over MAX_CLIENT_HELLO bytes before the ClientHello ended."""


def inspect_client_hello(data: bytes) -> Inspected | int:
    """An :class:`Inspected`, or the total number of bytes needed to decide."""
    if not data:
        return 1
    if data[0] != _HANDSHAKE:
        return NOT_TLS
    # The handshake message may span several records: gather their payloads.
    body = bytearray()
    pos = 0
    need_len = -1
    while True:
        if len(data) < pos + 5:
            return _need(pos + 5)
        if data[pos] != _HANDSHAKE or data[pos + 1] != 3:
            return NOT_TLS
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if len(data) < pos + 5 + length:
            return _need(pos + 5 + length)
        body += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if need_len < 0 and len(body) >= 4:
            if body[0] != _CLIENT_HELLO:
                return NOT_TLS
            need_len = 4 + int.from_bytes(body[1:4], "big")
        if need_len >= 0 and len(body) >= need_len:
            return _parse_hello(bytes(body[4:need_len]))


def _need(n: int) -> int:
    if n > MAX_CLIENT_HELLO:
        raise ClientHelloTooLarge()
    return n


def _parse_hello(b: bytes) -> Inspected:
    """ClientHello body: version, random, session id, suites, compression, extensions."""
    try:
        pos = 2 + 32
        pos += 1 + b[pos]
        pos += 2 + int.from_bytes(b[pos : pos + 2], "big")
        pos += 1 + b[pos]
        if pos + 2 > len(b):
            return Inspected(True)  # no extensions
        end = min(len(b), pos + 2 + int.from_bytes(b[pos : pos + 2], "big"))
        pos += 2
        sni = ""
        alpn: list[str] = []
        while pos + 4 <= end:
            kind = int.from_bytes(b[pos : pos + 2], "big")
            size = int.from_bytes(b[pos + 2 : pos + 4], "big")
            ext = b[pos + 4 : pos + 4 + size]
            pos += 4 + size
            if kind == _EXT_SNI and len(ext) >= 5 and ext[2] == 0:
                n = int.from_bytes(ext[3:5], "big")
                sni = ext[5 : 5 + n].decode("ascii", "replace").lower()
            elif kind == _EXT_ALPN and len(ext) >= 2:
                i = 2
                while i < len(ext):
                    n = ext[i]
                    alpn.append(ext[i + 1 : i + 1 + n].decode("ascii", "replace"))
                    i += 1 + n
        return Inspected(True, sni, tuple(alpn))
    except IndexError:
        return Inspected(True)


@dataclass(frozen=True, slots=True)
class Connection:
    """What the chain choice knows of a new connection: the local (destination) and
    peer (source) addresses and ports, and what the TLS inspector found."""

    destination_ip: str
    destination_port: int
    source_ip: str
    source_port: int
    found: Inspected = NOT_TLS


_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(ranges: Sequence[str]) -> tuple[_Net, ...]:
    return tuple(ipaddress.ip_network(r) for r in ranges)


class _Chain:
    __slots__ = ("index", "match", "dst", "direct", "src")

    def __init__(self, index: int, match: ChainMatch) -> None:
        self.index = index
        self.match = match
        self.dst = _networks(match.prefix_ranges)
        self.direct = _networks(match.direct_source_prefix_ranges)
        self.src = _networks(match.source_prefix_ranges)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None  # a pipe listener's peer: no IP


def _longest(
    chains: list[_Chain], nets_of: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
) -> list[_Chain]:
    """The chains whose ranges hold ``ip`` with the longest prefix (no ranges: a prefix
    of length 0 that holds every address, as Envoy's catch-all entry)."""
    best = -1
    out: list[_Chain] = []
    for c in chains:
        nets: tuple[_Net, ...] = getattr(c, nets_of)
        if not nets:
            length = 0
        else:
            length = -1
            if ip is not None:
                for n in nets:
                    if n.version == ip.version and ip in n and n.prefixlen > length:
                        length = n.prefixlen
        if length > best:
            best, out = length, [c]
        elif length == best and length >= 0:
            out.append(c)
    return out


_LOOPBACK = frozenset({"127.0.0.1", "::1"})


class ChainSelector:
    """Envoy's filter chain choice over each chain's :class:`ChainMatch` (indexes into
    the listener's chains); ``default`` is the default chain's index, or None.

    The criteria are applied in Envoy's order: destination port, destination IP,
    server name, transport protocol, application protocols, direct source IP, source
    type (a client at 127.0.0.1, ::1 or the connection's own local address is
    ``SAME_IP_OR_LOOPBACK``, any other ``EXTERNAL``), source IP, source port. At each level the most specific match among the
    chains left wins (an exact port or name, the longest prefix, the first offered
    ALPN protocol a chain lists), else the chains without that criterion; none: the
    default chain. Like Envoy's match tree it never backs off to a less specific
    level."""

    def __init__(self, matches: Sequence[ChainMatch], default: int | None) -> None:
        self.default = default
        self.chains = [_Chain(i, m) for i, m in enumerate(matches)]
        self.needs_client_hello = any(m.needs_client_hello for m in matches)

    def select(self, conn: Connection) -> int | None:
        chains = self.chains
        port = conn.destination_port
        chains = [c for c in chains if c.match.destination_port == port] or [
            c for c in chains if not c.match.destination_port
        ]
        if chains:
            chains = _longest(chains, "dst", _address(conn.destination_ip))
        if chains:
            chains = _by_server_name(chains, conn.found.sni)
        if chains:
            t = conn.found.transport
            chains = [c for c in chains if c.match.transport_protocol == t] or [
                c for c in chains if not c.match.transport_protocol
            ]
        if chains:
            chains = _by_alpn(chains, conn.found.alpn)
        source = _address(conn.source_ip)
        if chains:
            chains = _longest(chains, "direct", source)
        if chains:
            # Envoy's isSameIpOrLoopback: the canonical loopback address only (not all
            # of 127/8), or the connection's own local address.
            local = conn.source_ip in _LOOPBACK or conn.source_ip == conn.destination_ip
            kind = "SAME_IP_OR_LOOPBACK" if local else "EXTERNAL"
            chains = [c for c in chains if c.match.source_type == kind] or [
                c for c in chains if c.match.source_type == "ANY"
            ]
        if chains:
            chains = _longest(chains, "src", source)
        if chains:
            sport = conn.source_port
            chains = [c for c in chains if sport in c.match.source_ports] or [
                c for c in chains if not c.match.source_ports
            ]
        return chains[0].index if chains else self.default


def _by_server_name(chains: list[_Chain], sni: str) -> list[_Chain]:
    if sni:
        exact = [c for c in chains if sni in c.match.server_names]
        if exact:
            return exact
        # The longest wildcard first: "*.b.example.com", then "*.example.com", ...
        labels = sni.split(".")
        for k in range(1, len(labels)):
            wildcard = "*." + ".".join(labels[k:])
            group = [c for c in chains if wildcard in c.match.server_names]
            if group:
                return group
    return [c for c in chains if not c.match.server_names]


def _by_alpn(chains: list[_Chain], offered: tuple[str, ...]) -> list[_Chain]:
    for proto in offered:
        group = [c for c in chains if proto in c.match.application_protocols]
        if group:
            return group
    return [c for c in chains if not c.match.application_protocols]
