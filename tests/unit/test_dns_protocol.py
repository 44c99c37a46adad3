"""proxyd.master.dns_protocol: DNS answers, search names and hosts files, without I/O."""

from __future__ import annotations

import socket

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from proxyd.master.dns_protocol import (
    Answer,
    DnsLookupError,
    Truncated,
    is_reply,
    make_query,
    names_to_try,
    read_answer,
    read_hosts,
)


def _reply(query: dns.message.Message, *rrsets: tuple[str, int, str, list[str]], rcode: int = 0):
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    for owner, ttl, rdtype, values in rrsets:
        reply.answer.append(dns.rrset.from_text_list(owner, ttl, "IN", rdtype, values))
    return reply


def test_addresses_in_answer_order_with_the_smallest_ttl_of_the_cname_chain() -> None:
    query = make_query("www.example.test.", socket.AF_INET)
    reply = _reply(
        query,
        ("www.example.test.", 30, "CNAME", ["edge.example.test."]),
        ("edge.example.test.", 7, "CNAME", ["pool.example.test."]),
        ("pool.example.test.", 60, "A", ["10.0.0.2", "10.0.0.1"]),
    )
    # Through the wire and back, as the client sees it.
    parsed = is_reply(query, reply.to_wire(want_shuffle=False))
    assert parsed is not None
    assert read_answer(query, parsed, udp=True) == Answer(("10.0.0.2", "10.0.0.1"), 7)


def test_aaaa_query_reads_aaaa_records_only() -> None:
    query = make_query("v6.test.", socket.AF_INET6)
    reply = _reply(query, ("v6.test.", 5, "AAAA", ["::1"]), ("v6.test.", 5, "A", ["10.0.0.1"]))
    assert read_answer(query, reply, udp=True) == Answer(("::1",), 5)


def test_nxdomain_and_nodata_are_answers_without_addresses() -> None:
    query = make_query("gone.test.", socket.AF_INET)
    assert read_answer(query, _reply(query, rcode=dns.rcode.NXDOMAIN), udp=True) == Answer(())
    other = _reply(query, ("gone.test.", 5, "AAAA", ["::1"]))
    assert read_answer(query, other, udp=True) == Answer(())


@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.FORMERR])
def test_server_errors_raise(rcode: int) -> None:
    query = make_query("svc.test.", socket.AF_INET)
    with pytest.raises(DnsLookupError, match=dns.rcode.to_text(rcode)):
        read_answer(query, _reply(query, rcode=rcode), udp=True)


def test_truncated_udp_answer_asks_for_tcp() -> None:
    query = make_query("big.test.", socket.AF_INET)
    reply = _reply(query, ("big.test.", 5, "A", ["10.0.0.1"]))
    reply.flags |= dns.flags.TC
    with pytest.raises(Truncated):
        read_answer(query, reply, udp=True)
    assert read_answer(query, reply, udp=False).addresses == ("10.0.0.1",)


def test_is_reply_ignores_other_ids_and_garbage() -> None:
    query = make_query("svc.test.", socket.AF_INET)
    other = make_query("svc.test.", socket.AF_INET)
    other.id = (query.id + 1) % 65536
    assert is_reply(query, dns.message.make_response(other).to_wire()) is None
    assert is_reply(query, b"\x00\x01garbage") is None
    assert is_reply(query, b"") is None


def test_names_to_try_follow_ndots_and_search() -> None:
    search = ("corp.test", "test.")
    assert names_to_try("svc", search, 1) == ["svc.corp.test.", "svc.test.", "svc."]
    assert names_to_try("svc.ns", search, 1) == ["svc.ns.", "svc.ns.corp.test.", "svc.ns.test."]
    assert names_to_try("svc.ns", search, 5)[-1] == "svc.ns."
    assert names_to_try("abs.test.", search, 1) == ["abs.test."]
    assert names_to_try("svc", (), 1) == ["svc."]


def test_hosts_file_keeps_file_order_and_both_families() -> None:
    text = """# comment
127.0.0.1   localhost
::1         localhost ip6-localhost  # trailing comment
10.0.0.5    Svc.Internal svc
10.0.0.6    svc
fe80::1%eth0 linklocal
not-an-ip   broken
10.0.0.7
"""
    hosts = read_hosts(text)
    assert hosts["localhost"] == ("127.0.0.1", "::1")
    assert hosts["svc.internal"] == ("10.0.0.5",)
    assert hosts["svc"] == ("10.0.0.5", "10.0.0.6")
    assert hosts["linklocal"] == ("fe80::1",)
    assert "broken" not in hosts
