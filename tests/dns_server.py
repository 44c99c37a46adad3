"""A tiny authoritative DNS server for tests, on 127.0.0.1 (UDP and TCP, same port).

It answers A and AAAA questions from a table the test changes while it runs::

    with DnsServer() as dns:
        dns.set("svc.test", ["127.0.0.1", "127.0.0.2"], ttl=1)
        ... dns.port ...
        dns.set("svc.test", ["127.0.0.2"], ttl=1)

Names not in the table get NXDOMAIN; a name with addresses of the other family only
gets NOERROR with no answer (NODATA). ``fail`` makes it answer SERVFAIL (or, with
``silent``, not at all); ``truncate`` sets the TC bit on UDP answers so clients must
ask again over TCP. It counts the questions per (name, type) it was asked.
"""

from __future__ import annotations

import ipaddress
import selectors
import socket
import struct
import threading
from collections import Counter

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def _bind_pair(host: str, attempts: int = 20) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same free port (DNS answers on both). The port the
    kernel picks for UDP may be taken for TCP by some other test: then try another."""
    for _ in range(attempts):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        return udp, tcp
    raise OSError(f"no port free for both UDP and TCP on {host} after {attempts} tries")


class DnsServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._udp, self._tcp = _bind_pair(host)
        self.port = self._udp.getsockname()[1]
        self._tcp.listen(16)
        self._lock = threading.Lock()
        self._records: dict[str, tuple[list[str], int]] = {}
        self._cnames: dict[str, tuple[str, int]] = {}
        self.asked: Counter[tuple[str, str]] = Counter()
        self.tcp_asked = 0
        self.fail = False
        self.silent = False
        self.truncate = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    # -- what tests call ---------------------------------------------------------------

    def set(self, name: str, addresses: list[str], ttl: int = 300) -> None:
        """Answer ``name`` with ``addresses`` (IPv4 for A, IPv6 for AAAA) and ``ttl``."""
        with self._lock:
            self._records[_key(name)] = (list(addresses), ttl)

    def set_cname(self, name: str, target: str, ttl: int = 300) -> None:
        with self._lock:
            self._cnames[_key(name)] = (_key(target), ttl)

    def remove(self, name: str) -> None:
        with self._lock:
            self._records.pop(_key(name), None)

    def count(self, name: str, rdtype: str = "A") -> int:
        with self._lock:
            return self.asked[(_key(name), rdtype)]

    def start(self) -> DnsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        for s in (self._udp, self._tcp, self._wake_r, self._wake_w):
            s.close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -----------------------------------------------------------------------

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._udp, selectors.EVENT_READ, "udp")
            sel.register(self._tcp, selectors.EVENT_READ, "tcp")
            sel.register(self._wake_r, selectors.EVENT_READ, "stop")
            while True:
                for key, _ in sel.select():
                    if key.data == "stop":
                        return
                    if key.data == "udp":
                        wire, peer = self._udp.recvfrom(65535)
                        reply = self._reply(wire, udp=True)
                        if reply is not None:
                            self._udp.sendto(reply, peer)
                    else:
                        conn, _ = self._tcp.accept()
                        with conn:
                            self._serve_tcp(conn)

    def _serve_tcp(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        try:
            (length,) = struct.unpack("!H", _recv_exactly(conn, 2))
            reply = self._reply(_recv_exactly(conn, length), udp=False)
            if reply is not None:
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except (OSError, struct.error):  # a client that went away: nothing to answer
            return

    def _reply(self, wire: bytes, udp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        question = query.question[0]
        name = _key(question.name.to_text())
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.asked[(name, rdtype)] += 1
            if not udp:
                self.tcp_asked += 1
            if self.silent:
                return None
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            if self.fail:
                reply.set_rcode(dns.rcode.SERVFAIL)
                return reply.to_wire(want_shuffle=False)
            if udp and self.truncate:
                reply.flags |= dns.flags.TC
                return reply.to_wire(want_shuffle=False)
            owner = name
            while owner in self._cnames:
                target, ttl = self._cnames[owner]
                reply.answer.append(
                    dns.rrset.from_text(owner, ttl, dns.rdataclass.IN, dns.rdatatype.CNAME, target)
                )
                owner = target
            if owner not in self._records:
                reply.set_rcode(dns.rcode.NXDOMAIN)
                return reply.to_wire(want_shuffle=False)
            addresses, ttl = self._records[owner]
            version = 4 if rdtype == "A" else 6
            matching = [a for a in addresses if ipaddress.ip_address(a).version == version]
            if rdtype in ("A", "AAAA") and matching:
                reply.answer.append(
                    dns.rrset.from_text_list(owner, ttl, dns.rdataclass.IN, rdtype, matching)
                )
            return reply.to_wire(want_shuffle=False)


def _key(name: str) -> str:
    return name.lower().rstrip(".") + "."


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data
