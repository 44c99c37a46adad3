"""A small trio DNS client for the master: A/AAAA lookups that know their TTLs.

:class:`DnsClient` asks the name servers of one resolver configuration (Envoy's
``typed_dns_resolver_config`` with c-ares' ``resolvers``, else /etc/resolv.conf) over
UDP, and again over TCP when an answer is truncated (or always, with
``use_tcp_for_dns_lookups``). Each server gets ``timeout_s`` per try, the servers are
tried in order, twice; the caller bounds the whole lookup.

/etc/hosts is honoured before DNS, as c-ares does by default (``lookups fb``): a name
found there is answered from the file alone (TTL 0, so the refresh rate applies), by
the families of ``dns_lookup_family`` in order. The file is read again when it
changes. This holds with configured resolvers too, like Envoy's c-ares resolver.

``dns_lookup_family`` (Envoy's semantics with c-ares): ``V4_ONLY`` asks A,
``V6_ONLY`` AAAA, ``AUTO`` AAAA then A when there is no AAAA address,
``V4_PREFERRED`` A then AAAA, ``ALL`` both (IPv4 addresses first). The TTL of the
answer is the smallest of the records used.
"""

from __future__ import annotations

import os
import socket
import struct

import dns.message
import trio

from proxyd.epoch import DnsSettings
from proxyd.master.dns_protocol import (
    Answer,
    DnsLookupError,
    SystemConfig,
    Truncated,
    is_reply,
    make_query,
    names_to_try,
    of_family,
    read_answer,
    read_hosts,
    read_resolv_conf,
)

HOSTS_PATH = "/etc/hosts"
RESOLV_CONF_PATH = "/etc/resolv.conf"
# Rounds over the server list before a lookup fails.
ROUNDS = 2
MAX_UDP_REPLY = 65535

# dns_lookup_family → families to ask in order; "both" merges instead of falling back.
_ORDER: dict[str, tuple[tuple[int, ...], bool]] = {
    "V4_ONLY": ((socket.AF_INET,), False),
    "V6_ONLY": ((socket.AF_INET6,), False),
    "AUTO": ((socket.AF_INET6, socket.AF_INET), False),
    "V4_PREFERRED": ((socket.AF_INET, socket.AF_INET6), False),
    "ALL": ((socket.AF_INET, socket.AF_INET6), True),
}


class HostsFile:
    """/etc/hosts, read again whenever its modification time or size changes."""

    def __init__(self, path: str = HOSTS_PATH) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._hosts: dict[str, tuple[str, ...]] = {}

    def lookup(self, name: str) -> tuple[str, ...] | None:
        """Addresses for ``name`` (both families), or None when the file lacks it."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    self._hosts = read_hosts(f.read())
                self._stamp = stamp
        except OSError:  # no hosts file (a container, say): DNS alone answers
            self._hosts, self._stamp = {}, None
        return self._hosts.get(name.lower().rstrip("."))


class DnsClient:
    """Lookups through one resolver configuration."""

    def __init__(
        self,
        settings: DnsSettings | None = None,
        *,
        system: SystemConfig | None = None,
        hosts: HostsFile | None = None,
    ) -> None:
        settings = settings or DnsSettings()
        system = system if system is not None else read_resolv_conf(RESOLV_CONF_PATH)
        servers = system.nameservers
        if settings.resolvers and not (settings.resolvers_as_fallback and servers):
            servers = settings.resolvers
        self.servers: tuple[tuple[str, int], ...] = servers
        self.search = () if settings.no_default_search_domain else system.search
        self.ndots = system.ndots
        self.timeout_s = system.timeout_s
        self.use_tcp = settings.use_tcp
        self.hosts = hosts or HostsFile()

    async def lookup(self, hostname: str, lookup_family: str) -> Answer:
        """Addresses of ``hostname`` per ``dns_lookup_family`` with their TTL.

        Raises DnsLookupError (or OSError) when no server gave a usable answer."""
        families, merge = _ORDER.get(lookup_family, _ORDER["AUTO"])
        from_file = self.hosts.lookup(hostname)
        if from_file is not None:
            return _combine([Answer(of_family(from_file, f)) for f in families], merge)
        answers: list[Answer] = []
        for family in families:
            answer = await self._lookup_family(hostname, family)
            answers.append(answer)
            if answer.addresses and not merge:
                break
        return _combine(answers, merge)

    async def _lookup_family(self, hostname: str, family: int) -> Answer:
        answer = Answer(())
        for name in names_to_try(hostname, self.search, self.ndots):
            answer = await self._ask(name, family)
            if answer.addresses:
                return answer
        return answer

    async def _ask(self, name: str, family: int) -> Answer:
        if not self.servers:
            raise DnsLookupError("no name servers (resolv.conf has none, none configured)")
        query = make_query(name, family)
        wire = query.to_wire()
        last: Exception | None = None
        for _ in range(ROUNDS):
            for server in self.servers:
                try:
                    with trio.fail_after(self.timeout_s):
                        if self.use_tcp:
                            return read_answer(query, await _tcp(server, wire, query), udp=False)
                        try:
                            return read_answer(query, await _udp(server, wire, query), udp=True)
                        except Truncated:
                            return read_answer(query, await _tcp(server, wire, query), udp=False)
                except (DnsLookupError, OSError, trio.TooSlowError) as exc:
                    last = exc  # this server failed us: the next one may not
        assert last is not None
        if isinstance(last, trio.TooSlowError):
            raise DnsLookupError(f"no answer for {name} within {self.timeout_s:g}s per try")
        raise last


def _combine(answers: list[Answer], merge: bool) -> Answer:
    if not merge:
        for answer in answers:
            if answer.addresses:
                return answer
        return answers[-1] if answers else Answer(())
    addresses = tuple(a for answer in answers for a in answer.addresses)
    ttls = [answer.ttl for answer in answers if answer.addresses]
    return Answer(addresses, min(ttls) if ttls else 0)


def _family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def _udp(server: tuple[str, int], wire: bytes, query: dns.message.Message) -> dns.message.Message:  # fmt: skip
    with trio.socket.socket(_family_of(server[0]), socket.SOCK_DGRAM) as sock:
        await sock.connect(server)
        await sock.send(wire)
        while True:  # bounded by the caller's deadline
            reply = is_reply(query, await sock.recv(MAX_UDP_REPLY))
            if reply is not None:
                return reply


async def _tcp(server: tuple[str, int], wire: bytes, query: dns.message.Message) -> dns.message.Message:  # fmt: skip
    stream = await trio.open_tcp_stream(*server)
    async with stream:
        await stream.send_all(struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", await _receive_exactly(stream, 2))
        reply = is_reply(query, await _receive_exactly(stream, length))
    if reply is None:
        raise DnsLookupError("the TCP answer does not match the query")
    return reply


async def _receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise DnsLookupError("the name server closed the TCP connection mid-answer")
        data += chunk
    return bytes(data)
