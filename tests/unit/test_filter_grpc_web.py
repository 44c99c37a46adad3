"""The gRPC-Web filter's framing (proxyd.filters.grpc_web.filter)."""

from __future__ import annotations

import struct

from proxyd.filters.grpc_web.filter import trailer_frame


def test_trailer_frame_is_flag_length_and_lines() -> None:
    frame = trailer_frame([(b"grpc-status", b"0"), (b"Grpc-Message", b""), (b"x-t", b"v")])
    body = b"grpc-status:0\r\ngrpc-message:\r\nx-t:v\r\n"
    assert frame == b"\x80" + struct.pack(">I", len(body)) + body
