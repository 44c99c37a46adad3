"""The compressor and decompressor filters in proxyd.worker.filter_chain, in memory:
what the codec's sink is handed (length, header cuts, body), and the stats."""

from __future__ import annotations

import zlib
from typing import Any

import trio

from proxyd.filters.compressor.filter import Factory as CompressorFactory
from proxyd.filters.decompressor.filter import Factory as DecompressorFactory
from proxyd.protocol.compression import GZIP, GZIP_DEFAULTS
from proxyd.protocol.http1 import RequestHeadParser, ResponseHeadParser
from proxyd.protocol.http1_headers import response_head
from proxyd.worker.filter_chain import FilterChain
from proxyd.worker.stats import NamedStats
from proxyd.worker.stream import Stream
from tests.unit.test_filter_chain import MemorySink

FLAG = {"default": True, "runtime_key": ""}
COMPRESSOR = {
    "library_name": "lib",
    "library": {"library": GZIP, **GZIP_DEFAULTS},
    "has_response": False,
    "choose_first": False,
    "response": {
        "enabled": FLAG,
        "min_content_length": 30,
        "content_type": ["text/plain"],
        "disable_on_etag_header": False,
        "remove_accept_encoding_header": True,
        "uncompressible_response_codes": [],
    },
    "request": None,
}
DECOMPRESSOR = {
    "library_name": "d",
    "library": {"library": GZIP, "window_bits": 15, "max_inflate_ratio": 100},
    "request": {
        "enabled": FLAG,
        "ignore_no_transform_header": False,
        "advertise_accept_encoding": True,
    },
    "response": {"enabled": FLAG, "ignore_no_transform_header": False},
}
WANTED_RESPONSE = {
    n.encode(): n
    for n in ("content-length", "content-type", "content-encoding", "etag", "vary", "cache-control")
}


class Sink(MemorySink):
    """Keeps the head as the codec would write it."""

    async def send_headers(
        self, r: Any, service_ms: int, length: int, first: list, end: bool
    ) -> None:
        assert self.stream is not None
        head = response_head(r, b"", -1, length < 0, False, self.stream.response_added)
        self.sent.append(("headers", (head, length, b"".join(bytes(p) for p in first), end)))


def _stream(raw: bytes, sink: Sink, wanted: tuple[str, ...]) -> Stream:
    h = RequestHeadParser().parse(raw, {n.encode(): n for n in wanted})
    stream = Stream(h, sink)
    sink.stream = stream
    return stream


def test_compressed_response_loses_its_length_and_strong_etag_and_streams() -> None:
    stats = NamedStats("http.t.")
    factory = CompressorFactory("gz", COMPRESSOR, None, stats)
    body = b"hello, compressed world! " * 20

    async def main() -> None:
        sink = Sink([])
        stream = _stream(
            b"GET / HTTP/1.1\r\nhost: a\r\naccept-encoding: gzip\r\n\r\n",
            sink,
            tuple(factory.wanted_headers),
        )
        chain = FilterChain(stream, sink, (factory,), 1 << 20)
        assert await chain.decode_headers() is None
        assert b"accept-encoding" in stream.head.remove  # remove_accept_encoding_header
        r = ResponseHeadParser().parse(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
            b'etag: "strong"\r\nvary: Origin\r\n\r\n' % len(body),
            WANTED_RESPONSE,
        )
        await chain.send_headers(r, 0, len(body), [memoryview(body[:100])], False)
        await chain.send_data([memoryview(body[100:])], True)
        (_, (head, length, first, end)), (_, (rest, last)) = sink.sent
        assert length == -1 and not end and last
        assert b"content-length" not in head and b"etag" not in head
        assert b"transfer-encoding: chunked" in head
        assert b"content-encoding: gzip" in head and b"vary: Origin, Accept-Encoding" in head
        z = zlib.decompressobj(31)
        assert z.decompress(first) == body[:100]  # flushed: decodes before the rest comes
        assert z.decompress(rest) == body[100:] and z.eof

    trio.run(main)
    counters = stats.counters
    assert counters["compressor.lib.gzip.compressed"] == 1
    assert counters["compressor.lib.gzip.header_compressor_used"] == 1
    assert counters["compressor.lib.gzip.total_uncompressed_bytes"] == len(body)
    assert counters["compressor.lib.gzip.request.not_compressed"] == 1


def test_head_response_is_not_compressed_but_varies() -> None:
    stats = NamedStats("http.t.")
    factory = CompressorFactory("gz", COMPRESSOR, None, stats)

    async def main() -> None:
        sink = Sink([])
        stream = _stream(
            b"HEAD / HTTP/1.1\r\nhost: a\r\naccept-encoding: gzip\r\n\r\n",
            sink,
            tuple(factory.wanted_headers),
        )
        chain = FilterChain(stream, sink, (factory,), 1 << 20)
        await chain.decode_headers()
        r = ResponseHeadParser().parse(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 500\r\n\r\n",
            WANTED_RESPONSE,
        )
        await chain.send_headers(r, 0, 0, [], True)
        ((_, (head, length, _, end)),) = sink.sent
        assert b"content-length: 500" in head and b"content-encoding" not in head
        assert b"vary: Accept-Encoding" in head and length == 0 and end

    trio.run(main)
    assert stats.counters["compressor.lib.gzip.not_compressed"] == 1
    assert stats.counters["compressor.lib.gzip.no_accept_header"] == 0


def test_decompressor_advertises_and_decodes_the_response() -> None:
    stats = NamedStats("http.t.")
    factory = DecompressorFactory("dgz", DECOMPRESSOR, None, stats)
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    plain = b"the upstream's text " * 50
    coded = z.compress(plain) + z.flush()

    async def main() -> None:
        sink = Sink([])
        stream = _stream(
            b"GET / HTTP/1.1\r\nhost: a\r\naccept-encoding: br;q=0.5, gzip;q=0.1\r\n\r\n",
            sink,
            tuple(factory.wanted_headers),
        )
        chain = FilterChain(stream, sink, (factory,), 1 << 20)
        await chain.decode_headers()
        assert stream.request_added == [b"accept-encoding: br;q=0.5,gzip\r\n"]
        r = ResponseHeadParser().parse(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(coded),
            {b"content-encoding": "content-encoding", b"cache-control": "cache-control"},
        )
        half = len(coded) // 2
        await chain.send_headers(r, 0, len(coded), [memoryview(coded[:half])], False)
        await chain.send_data([memoryview(coded[half:])], True)
        (_, (head, length, first, _)), (_, (rest, _)) = sink.sent
        assert b"content-encoding" not in head and b"content-length" not in head and length == -1
        assert first + rest == plain

    trio.run(main)
    assert stats.counters["decompressor.d.gzip.response.decompressed"] == 1
    assert stats.counters["decompressor.d.gzip.response.total_uncompressed_bytes"] == len(plain)
    assert stats.counters["decompressor.d.gzip.decompressor_library.zlib_data_error"] == 0
