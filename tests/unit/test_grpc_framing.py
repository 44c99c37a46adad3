"""The sans-IO parts of the xDS gRPC transport: message framing, status, request headers."""

from __future__ import annotations

import struct

import pytest

from proxyd.master.xds.grpc import (
    GrpcError,
    MessageDecoder,
    Status,
    encode_message,
    request_headers,
    status_from_headers,
)

MESSAGES = [b"", b"x", b"hello world" * 100, bytes(range(256)) * 300]
BODY = b"".join(encode_message(m) for m in MESSAGES)


def test_encode_message_prefixes_flag_and_length() -> None:
    assert encode_message(b"abc") == b"\x00\x00\x00\x00\x03abc"


def test_decoder_whole_body() -> None:
    decoder = MessageDecoder()
    assert decoder.feed(BODY) == MESSAGES
    assert decoder.pending_bytes == 0


def test_decoder_one_byte_at_a_time() -> None:
    decoder = MessageDecoder()
    out: list[bytes] = []
    for i in range(len(BODY)):
        out += decoder.feed(BODY[i : i + 1])
    assert out == MESSAGES
    assert decoder.pending_bytes == 0


def test_decoder_keeps_an_incomplete_message() -> None:
    decoder = MessageDecoder()
    assert decoder.feed(encode_message(b"abcdef")[:-1]) == []
    assert decoder.pending_bytes == 10
    assert decoder.feed(b"f") == [b"abcdef"]


def test_decoder_refuses_compressed_and_bad_flags() -> None:
    with pytest.raises(GrpcError) as compressed:
        MessageDecoder().feed(struct.pack(">BI", 1, 1) + b"z")
    assert compressed.value.status == Status.INTERNAL
    with pytest.raises(GrpcError, match="invalid compressed flag 2"):
        MessageDecoder().feed(struct.pack(">BI", 2, 0))


def test_decoder_refuses_an_oversized_message_from_its_prefix() -> None:
    decoder = MessageDecoder(max_message_bytes=100)
    assert decoder.feed(encode_message(bytes(100))) == [bytes(100)]
    with pytest.raises(GrpcError) as too_big:
        decoder.feed(struct.pack(">BI", 0, 101))  # refused before any body arrives
    assert too_big.value.status == Status.RESOURCE_EXHAUSTED


def test_status_from_headers() -> None:
    assert status_from_headers({b":status": b"200"}) is None
    ok = status_from_headers({b"grpc-status": b"0"})
    assert ok is not None and (ok.status, ok.message) == (0, "")
    err = status_from_headers({b"grpc-status": b"14", b"grpc-message": b"down%20for%3A 100%25"})
    assert err is not None and (err.status, err.message) == (Status.UNAVAILABLE, "down for: 100%")
    assert str(err) == "gRPC status UNAVAILABLE: down for: 100%"
    bad = status_from_headers({b"grpc-status": b"x"})
    assert bad is not None and bad.status == Status.UNKNOWN
    assert str(GrpcError(99)) == "gRPC status 99"


def test_request_headers() -> None:
    headers = request_headers("svc.S/M", "cp:18000", [("X-Node", "n1")])
    assert headers[:6] == [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/svc.S/M"),
        (":authority", "cp:18000"),
        ("te", "trailers"),
        ("content-type", "application/grpc"),
    ]
    assert headers[-1] == ("x-node", "n1")
    for name in (":path", "te", "Content-Type", "grpc-timeout"):
        with pytest.raises(ValueError, match="reserved"):
            request_headers("/svc.S/M", "cp", [(name, "v")])
