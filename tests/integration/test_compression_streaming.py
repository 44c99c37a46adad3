"""The compressor and decompressor filters stream: a piece reaches the client compressed
(or decompressed) while the upstream has not sent the rest yet.

The upstream sends its head and a first chunk, then waits until the client has decoded
that chunk's text from what proxyd forwarded; only then does it send the last chunk.
If proxyd held the body (to compress it whole) the client would wait forever and the
test would fail on the client's timeout. Nothing here measures time.
"""

from __future__ import annotations

import socket
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import ProxydProcess

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
FIRST = b"first piece of the response, long enough to be worth compressing. " * 4
LAST = b"the last piece, sent only after the client decoded the first one. " * 4


class GatedUpstream:
    """Answers each connection with a chunked head and FIRST, then LAST once ``gate``
    is set. ``encode`` gzips the body (for the decompressor)."""

    def __init__(self, encode: bool) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.gate = threading.Event()
        self.encode = encode
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            z = zlib.compressobj(6, zlib.DEFLATED, 31)
            first, last = FIRST, LAST
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n"
            if self.encode:
                head += b"content-encoding: gzip\r\n"
                first = z.compress(FIRST) + z.flush(zlib.Z_SYNC_FLUSH)
                last = z.compress(LAST) + z.flush(zlib.Z_FINISH)
            conn.sendall(head + b"\r\n" + b"%x\r\n%s\r\n" % (len(first), first))
            self.gate.wait(20)
            conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(last), last))

    def close(self) -> None:
        self.gate.set()
        self.sock.close()
        self.thread.join(5)


def _config(port: int, filters: list[dict]) -> str:
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": HCM,
                                        "stat_prefix": "s",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {"cluster": "up"},
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            *filters,
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy."
                                                    "extensions.filters.http.router.v3.Router"
                                                },
                                            },
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "up",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "up",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


COMPRESSOR = {
    "name": "gz",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor",
        "compressor_library": {
            "name": "gz",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
            },
        },
    },
}
DECOMPRESSOR = {
    "name": "dgz",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor",
        "decompressor_library": {
            "name": "dgz",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip"
            },
        },
    },
}


class ChunkedReader:
    """Reads a chunked response body off a socket, chunk by chunk."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return head.lower()

    def chunk(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        size_line, rest = self.buf.split(b"\r\n", 1)
        size = int(size_line, 16)
        while len(rest) < size + 2:
            self._fill()
            size_line, rest = self.buf.split(b"\r\n", 1)
        self.buf = rest[size + 2 :]
        return rest[:size]


@pytest.fixture
def gated(request: pytest.FixtureRequest) -> Iterator[GatedUpstream]:
    up = GatedUpstream(encode=request.param)
    yield up
    up.close()


@pytest.mark.parametrize("gated", [False], indirect=True)
def test_compressed_piece_reaches_client_before_the_upstream_finishes(
    tmp_path: Path, gated: GatedUpstream
) -> None:
    with ProxydProcess(tmp_path, _config(gated.port, [COMPRESSOR]), concurrency=1) as p:
        with socket.create_connection(("127.0.0.1", p.listener_port("l")), timeout=20) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\naccept-encoding: gzip\r\n\r\n")
            reader = ChunkedReader(s)
            head = reader.head()
            assert b"content-encoding: gzip" in head and b"transfer-encoding: chunked" in head
            z = zlib.decompressobj(31)
            seen = b""
            while seen != FIRST:  # the first piece, flushed, decodes whole by itself
                seen += z.decompress(reader.chunk())
            gated.gate.set()
            while True:
                piece = reader.chunk()
                if not piece:
                    break
                seen += z.decompress(piece)
            assert seen == FIRST + LAST and z.eof


@pytest.mark.parametrize("gated", [True], indirect=True)
def test_decompressed_piece_reaches_client_before_the_upstream_finishes(
    tmp_path: Path, gated: GatedUpstream
) -> None:
    with ProxydProcess(tmp_path, _config(gated.port, [DECOMPRESSOR]), concurrency=1) as p:
        with socket.create_connection(("127.0.0.1", p.listener_port("l")), timeout=20) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            reader = ChunkedReader(s)
            head = reader.head()
            assert b"content-encoding" not in head
            seen = b""
            while seen != FIRST:
                seen += reader.chunk()
            gated.gate.set()
            while True:
                piece = reader.chunk()
                if not piece:
                    break
                seen += piece
            assert seen == FIRST + LAST
