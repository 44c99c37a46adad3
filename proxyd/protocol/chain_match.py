"""Choosing a listener's filter chain for a connection, as Envoy does, and reading what
the choice needs (the SNI) from the client's first bytes, as Envoy's ``tls_inspector``.

No I/O here. :func:`inspect_client_hello` looks at the bytes a client sent first (the
worker peeks them, leaving them in the socket for the handshake) and says: not TLS,
TLS with this server name and these ALPN protocols, or how many bytes it needs to
decide. :class:`ChainSelector` applies Envoy's filter chain match order for the criteria
proxyd supports: ``server_names`` first (an exact name, else the longest ``*.`` wildcard
that covers the SNI, else the chains without server names), then
``transport_protocol`` among those (the exact one, else the chains without one). Like
Envoy's match tree it never backs off to a less specific level: a chain whose server
name matched but whose transport protocol did not leaves the connection without a
chain (the default chain, if there is one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


class ChainSelector:
    """Envoy's filter chain choice over ``(server_names, transport_protocol)`` per
    chain (indexes into the listener's chains); ``default`` is the default chain's
    index, or None."""

    def __init__(self, matches: Sequence[tuple[tuple[str, ...], str]], default: int | None) -> None:
        self.default = default
        # server name ("" = the chains without server names) → [(transport, index)]
        self.by_name: dict[str, list[tuple[str, int]]] = {}
        for i, (names, transport) in enumerate(matches):
            for name in names or ("",):
                self.by_name.setdefault(name, []).append((transport, i))

    def select(self, sni: str, transport: str) -> int | None:
        group = self._by_server_name(sni)
        if group is not None:
            for t, i in group:
                if t == transport:
                    return i
            for t, i in group:
                if not t:
                    return i
        return self.default

    def _by_server_name(self, sni: str) -> list[tuple[str, int]] | None:
        by_name = self.by_name
        if sni:
            exact = by_name.get(sni)
            if exact is not None:
                return exact
            # The longest wildcard first: "*.b.example.com", then "*.example.com", ...
            labels = sni.split(".")
            for k in range(1, len(labels)):
                group = by_name.get("*." + ".".join(labels[k:]))
                if group is not None:
                    return group
        return by_name.get("")
