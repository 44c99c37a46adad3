"""DNS for the master without I/O: queries, answers with TTLs, search names, hosts files.

dnspython builds and parses the messages; :mod:`proxyd.master.dns_client` moves the
bytes over trio sockets. What an answer means follows Envoy's c-ares resolver:

* NOERROR with addresses: the addresses in the order of the answer section (after any
  CNAME chain from the query name), and the smallest TTL of the chain;
* NOERROR without addresses (NODATA) and NXDOMAIN: a successful answer with no
  addresses (c-ares' ``ARES_ENODATA``/``ARES_ENOTFOUND``: a STRICT_DNS cluster then
  has no hosts from that name);
* SERVFAIL, REFUSED and every other rcode: :class:`DnsLookupError`, the caller keeps
  the last good answer;
* a truncated UDP answer: :class:`Truncated`, the caller asks again over TCP.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

from proxyd.errors import ProxydError

# The longest CNAME chain followed inside one answer.
MAX_CNAME_CHAIN = 16
# EDNS(0) payload advertised in queries (the DNS flag day 2020 value).
EDNS_PAYLOAD = 1232

_RDTYPE: dict[int, dns.rdatatype.RdataType] = {
    socket.AF_INET: dns.rdatatype.A,
    socket.AF_INET6: dns.rdatatype.AAAA,
}


class DnsLookupError(ProxydError):
    """The name servers gave no usable answer (timeout, SERVFAIL, REFUSED, ...)."""


class Truncated(DnsLookupError):
    """The UDP answer had the TC bit: ask again over TCP."""


@dataclass(frozen=True, slots=True)
class Answer:
    """Addresses for one name and family (possibly none) and how long they are good."""

    addresses: tuple[str, ...]
    # Seconds; 0 when unknown (hosts file) or not given: the refresh rate applies.
    ttl: int = 0


def make_query(name: str, family: int) -> dns.message.QueryMessage:
    """An A (AF_INET) or AAAA (AF_INET6) query for the absolute name ``name``."""
    qname = dns.name.from_text(name)
    return dns.message.make_query(
        qname, _RDTYPE[family], use_edns=0, payload=EDNS_PAYLOAD, want_dnssec=False
    )


def is_reply(query: dns.message.Message, wire: bytes) -> dns.message.Message | None:
    """The reply in ``wire`` when it answers ``query``; None for anything else (a late
    reply to an earlier query, garbage), which the caller ignores."""
    try:
        reply = dns.message.from_wire(wire, ignore_trailing=True)
    except dns.exception.DNSException:
        return None
    return reply if query.is_response(reply) else None


def read_answer(query: dns.message.Message, reply: dns.message.Message, *, udp: bool) -> Answer:
    """What ``reply`` says about ``query``'s name (see the module docstring)."""
    if udp and reply.flags & dns.flags.TC:
        raise Truncated("truncated answer")
    rcode = reply.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return Answer(())
    if rcode != dns.rcode.NOERROR:
        raise DnsLookupError(f"name server answered {dns.rcode.to_text(rcode)}")
    question = query.question[0]
    name, rdtype = question.name, question.rdtype
    ttl = math.inf
    for _ in range(MAX_CNAME_CHAIN):
        cname = _find(reply, name, dns.rdatatype.CNAME)
        if cname is None:
            break
        ttl = min(ttl, cname.ttl)
        name = cname[0].target
    rrset = _find(reply, name, rdtype)
    if rrset is None:
        return Answer(())
    addresses = tuple(dict.fromkeys(rr.address for rr in rrset))
    return Answer(addresses, int(min(ttl, rrset.ttl)))


def _find(reply: dns.message.Message, name: dns.name.Name, rdtype: int) -> dns.rrset.RRset | None:
    for rrset in reply.answer:
        if rrset.name == name and rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN:
            return rrset
    return None


# -- names to try ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SystemConfig:
    """What /etc/resolv.conf says: name servers (ip, port), search list and ndots."""

    nameservers: tuple[tuple[str, int], ...]
    search: tuple[str, ...] = ()
    ndots: int = 1
    timeout_s: float = 2.0


def read_resolv_conf(path: str = "/etc/resolv.conf") -> SystemConfig:
    """Read ``path`` with dnspython's parser; no name servers when there is none."""
    try:
        r = dns.resolver.Resolver(filename=path, configure=True)
    except (dns.resolver.NoResolverConfiguration, OSError):
        return SystemConfig(())
    servers = tuple((str(ns), r.port) for ns in r.nameservers if _is_ip(str(ns)))
    search = tuple(n.to_text() for n in r.search)
    if not search and r.domain != dns.name.root:
        search = (r.domain.to_text(),)
    return SystemConfig(servers, search, r.ndots if r.ndots is not None else 1, r.timeout)


def names_to_try(name: str, search: tuple[str, ...], ndots: int) -> list[str]:
    """Absolute names to ask for, in order, as a stub resolver does: a name ending in
    a dot as it is; one with at least ``ndots`` dots as it is, then with each search
    domain; any other with each search domain first, then as it is."""
    if name.endswith("."):
        return [name]
    searched = [f"{name}.{domain.rstrip('.')}." for domain in search if domain.strip(".")]
    if name.count(".") >= ndots:
        return [f"{name}.", *searched]
    return [*searched, f"{name}."]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# -- hosts file -----------------------------------------------------------------------


def read_hosts(text: str) -> dict[str, tuple[str, ...]]:
    """/etc/hosts: lower-case name → addresses in file order (both families)."""
    hosts: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or not _is_ip(fields[0].split("%", 1)[0]):
            continue
        address = fields[0].split("%", 1)[0]
        for host in fields[1:]:
            entry = hosts.setdefault(host.lower().rstrip("."), [])
            if address not in entry:
                entry.append(address)
    return {name: tuple(addresses) for name, addresses in hosts.items()}


def of_family(addresses: tuple[str, ...], family: int) -> tuple[str, ...]:
    version = 4 if family == socket.AF_INET else 6
    return tuple(a for a in addresses if ipaddress.ip_address(a).version == version)
