"""Header edits on raw heads, local replies, response heads, chunk framing, and a fuzz
of the request codec (bad input raises only ProtocolError)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from proxyd.errors import ProtocolError
from proxyd.protocol.http1 import (
    ChunkedDecoder,
    RequestHeadParser,
    ResponseHeadParser,
    response_has_body,
)
from proxyd.protocol.http1_headers import (
    RequestHeaderPolicy,
    RequestIdGenerator,
    head_without,
    local_reply,
    response_head,
    server_line,
)
from tests.unit.test_http1_corpus import Incomplete, drive, load

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def parse(raw: bytes):
    return RequestHeadParser().parse(raw, {})


def headers_of(head: bytes) -> list[tuple[str, str]]:
    lines = head.split(b"\r\n")[1:]
    out = []
    for line in lines:
        if line:
            name, _, value = line.partition(b":")
            out.append((name.decode().lower(), value.strip().decode()))
    return out


def test_head_without_cuts_named_lines_in_any_case_and_keeps_the_rest() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x\r\nX-A: 1\r\nconnection: y\r\nX-B: 2\r\n\r\n"
    assert (
        head_without(raw, [b"connection"]) == b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-B: 2\r\n"
    )
    assert head_without(raw, []) == raw[:-2]
    assert head_without(raw, [b"x-b", b"host"]) == (
        b"GET / HTTP/1.1\r\nConnection: x\r\nX-A: 1\r\nconnection: y\r\n"
    )
    # A name that is only a prefix of another header is not cut.
    assert (
        head_without(b"GET / HTTP/1.1\r\nX-AB: 1\r\n\r\n", [b"x-a"])
        == b"GET / HTTP/1.1\r\nX-AB: 1\r\n"
    )


def policy(**kw) -> RequestHeaderPolicy:
    args = dict(
        use_remote_address=False,
        xff_num_trusted_hops=0,
        generate_request_id=True,
        local_address="192.0.2.2",
        ids=RequestIdGenerator(),
    )
    args.update(kw)
    return RequestHeaderPolicy(**args)


def test_request_edits_without_use_remote_address() -> None:
    h = parse(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
        b"X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nTE: trailers\r\n\r\n"
    )
    head, rid, trusted, xff = policy().apply(
        h, "10.0.0.9", b"x-envoy-expected-rq-timeout-ms: 15000\r\n"
    )
    hdrs = headers_of(head)
    names = [n for n, _ in hdrs]
    assert "connection" not in names and "x-hop" not in names
    assert ("te", "trailers") in hdrs
    assert ("x-forwarded-for", "1.2.3.4") in hdrs  # not appended
    # Off the edge the x-forwarded-proto that came is kept (Envoy 1.40 does).
    assert ("x-forwarded-proto", "https") in hdrs and names.count("x-forwarded-proto") == 1
    assert ("x-envoy-expected-rq-timeout-ms", "15000") in hdrs
    assert UUID4.match(dict(hdrs)["x-request-id"]) and dict(hdrs)["x-request-id"] == rid
    assert trusted == "1.2.3.4" and xff == b"1.2.3.4"
    assert "x-envoy-external-address" not in names
    assert head.endswith(b"\r\n\r\n")


def test_request_edits_at_the_edge() -> None:
    h = parse(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nX-Request-Id: abc\r\n"
        b"X-Envoy-Expected-Rq-Timeout-Ms: 7\r\nX-Envoy-Internal: true\r\n"
        b"X-Envoy-Retry-On: 5xx\r\nX-Envoy-Foo: kept\r\nX-Forwarded-Proto: https\r\n\r\n"
    )
    head, rid, trusted, xff = policy(use_remote_address=True).apply(h, "10.0.0.9", b"")
    hdrs = headers_of(head)
    assert ("x-envoy-foo", "kept") in hdrs and ("x-forwarded-proto", "http") in hdrs
    assert "x-envoy-retry-on" not in dict(hdrs)
    assert ("x-forwarded-for", "1.2.3.4,10.0.0.9") in hdrs
    assert ("x-envoy-external-address", "10.0.0.9") in hdrs
    assert not any(n in ("x-envoy-internal", "x-envoy-expected-rq-timeout-ms") for n, _ in hdrs)
    # An edge request gets a fresh request id (Envoy does not trust an external one).
    assert rid != "abc" and UUID4.match(rid)
    assert trusted == "10.0.0.9" and xff == b"1.2.3.4,10.0.0.9"


def test_loopback_client_at_the_edge_appends_the_local_address() -> None:
    h = parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head, _, trusted, _ = policy(use_remote_address=True).apply(h, "127.0.0.1", b"")
    assert ("x-forwarded-for", "192.0.2.2") in headers_of(head)
    assert trusted == "127.0.0.1"


@pytest.mark.parametrize(
    ("use_remote", "hops", "xff", "remote", "trusted"),
    [
        (True, 1, b"1.1.1.1, 2.2.2.2", "3.3.3.3", "2.2.2.2"),
        (True, 2, b"1.1.1.1, 2.2.2.2", "3.3.3.3", "1.1.1.1"),
        (True, 3, b"1.1.1.1, 2.2.2.2", "3.3.3.3", "3.3.3.3"),
        (False, 0, b"1.1.1.1, 2.2.2.2", "3.3.3.3", "2.2.2.2"),
        (False, 1, b"1.1.1.1, 2.2.2.2", "3.3.3.3", "1.1.1.1"),
        (False, 0, b"not-an-ip", "3.3.3.3", "3.3.3.3"),
    ],
)
def test_trusted_client_address(use_remote, hops, xff, remote, trusted) -> None:
    h = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: " + xff + b"\r\n\r\n")
    p = policy(use_remote_address=use_remote, xff_num_trusted_hops=hops)
    assert p.apply(h, remote, b"")[2] == trusted


def test_trusted_hops_keep_an_incoming_forwarded_proto() -> None:
    h = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n")
    p = policy(use_remote_address=True, xff_num_trusted_hops=1)
    assert ("x-forwarded-proto", "https") in headers_of(p.apply(h, "1.1.1.1", b"")[0])
    h = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-Envoy-Internal: true\r\nX-Envoy-Foo: 1\r\n\r\n")
    hdrs = dict(headers_of(policy().apply(h, "1.1.1.1", b"")[0]))
    assert "x-envoy-internal" not in hdrs and hdrs["x-envoy-foo"] == "1"


def test_request_id_is_kept_when_present_off_the_edge_or_not_generated() -> None:
    h = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc\r\n\r\n")
    assert policy().apply(h, "1.1.1.1", b"")[1] == "abc"
    h = parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head, rid, _, _ = policy(generate_request_id=False).apply(h, "1.1.1.1", b"")
    assert rid == "" and b"x-request-id" not in head


def test_chunked_request_is_reframed_as_chunked() -> None:
    h = parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    head = policy().apply(h, "1.1.1.1", b"")[0]
    assert [n for n, _ in headers_of(head)].count("transfer-encoding") == 1


def resp(raw: bytes):
    return ResponseHeadParser().parse(raw, {b"x-log": "x-log"})


def test_response_head_edits() -> None:
    r = resp(
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: x\r\nConnection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\nContent-Length: 3\r\nX-Log: v\r\n\r\n"
    )
    assert (r.status, r.content_length, r.keep_alive, r.headers) == (200, 3, True, {"x-log": "v"})
    out = response_head(r, server_line("envoy"), 4, False, True)
    hdrs = headers_of(out)
    assert ("server", "envoy") in hdrs and ("server", "nginx") not in hdrs
    assert ("x-envoy-upstream-service-time", "4") in hdrs
    assert ("connection", "close") in hdrs and ("keep-alive", "timeout=5") not in hdrs
    assert ("content-length", "3") in hdrs and ("date", "x") in hdrs
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\n")


def test_response_framing() -> None:
    # llhttp refuses content-length beside transfer-encoding (a smuggling vector).
    with pytest.raises(ProtocolError):
        resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n")
    r = resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert r.chunked and r.content_length == -1
    out = response_head(r, server_line("envoy"), 0, True, False)
    assert [n for n, _ in headers_of(out)].count("transfer-encoding") == 1
    assert b"content-length" not in out.lower()
    r = resp(b"HTTP/1.0 200 OK\r\n\r\n")
    assert not r.keep_alive
    assert response_head(r, b"", 0, True, False).startswith(b"HTTP/1.1 200")
    r = resp(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    assert not r.keep_alive
    assert not response_has_body(204, False) and not response_has_body(304, False)
    assert not response_has_body(200, True) and not response_has_body(100, False)
    assert response_has_body(200, False)
    with pytest.raises(ProtocolError) as info:
        resp(b"HTTP/1.1 2x0 OK\r\n\r\n")
    assert info.value.status == 502


def test_local_replies_match_envoy() -> None:
    out = local_reply(503, "no healthy upstream", server_line("envoy"))
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    hdrs = dict(headers_of(head + b"\r\n"))
    assert hdrs["content-length"] == "19" and hdrs["content-type"] == "text/plain"
    assert hdrs["server"] == "envoy" and "date" in hdrs and body == b"no healthy upstream"
    out = local_reply(404, "", server_line("envoy"))
    assert b"content-length: 0\r\n" in out and b"content-type" not in out
    out = local_reply(400, "Bad Request", server_line("envoy"), close=True)
    assert b"connection: close\r\n" in out and out.endswith(b"\r\n\r\nBad Request")
    assert local_reply(503, "x", b"", head_request=True).endswith(b"\r\n\r\n")


@pytest.mark.parametrize("split", range(1, 30))
def test_chunked_decoder_any_split(split: int) -> None:
    data = b"5\r\nhello\r\n6;a=b\r\n world\r\n0\r\nT: 1\r\n\r\nREST"
    dec = ChunkedDecoder()
    body = bytearray()
    buf = bytearray()
    pos = 0
    for part in (data[:split], data[split:]):
        buf += part
        pieces, pos = dec.feed(buf, pos, len(buf))
        for off, n in pieces:
            body += buf[off : off + n]
        if dec.done:
            break
    assert dec.done and body == b"hello world" and buf[pos:] == b"REST"


def test_request_ids_are_uuid4_and_distinct() -> None:
    gen = RequestIdGenerator()
    pairs = [gen.next() for _ in range(1000)]
    ids = {i for i, _ in pairs}
    assert len(ids) == 1000 and all(UUID4.match(i) for i in ids)
    assert all(line == b"x-request-id: %s\r\n" % i.encode() for i, line in pairs)


def test_fuzz_request_codec_raises_only_protocol_errors() -> None:
    rng = random.Random(1234)
    corpus = Path(__file__).parent / "http1_corpus"
    seeds = [load(p) for p in sorted(corpus.glob("*/*.http"))]
    alphabet = b"\r\n :;,\x00\x7f\xff0aA-/\t"
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            i = rng.randrange(len(data) + 1)
            if op == 0:
                data[i:i] = bytes([rng.choice(alphabet)])
            elif op == 1 and i < len(data):
                del data[i]
            elif i < len(data):
                data[i] = rng.randrange(256)
        try:
            drive(bytes(data), rng.choice([1, 3, 1 << 20]))
        except (ProtocolError, Incomplete):
            pass
