"""proxyd.worker.filter_chain with an in-memory codec: order, stop/buffer, local replies."""

from __future__ import annotations

from typing import Any

import trio

from proxyd.filters.api import (
    CONTINUE,
    STOP,
    STOP_AND_BUFFER,
    FilterStream,
    HttpFilter,
    LocalReply,
    ResponseView,
    Result,
)
from proxyd.protocol.http1 import RequestHeadParser, ResponseHeadParser
from proxyd.worker.filter_chain import FilterChain
from proxyd.worker.stream import Stream


class MemorySink:
    """A codec's sink over memory: the request body as chunks, the response recorded."""

    def __init__(self, body_chunks: list[bytes]) -> None:
        self.chunks = list(body_chunks)
        self.stream: Stream | None = None
        self.sent: list[tuple[str, Any]] = []

    def take_buffered_body(self) -> list[memoryview]:
        return []

    async def recv_body(self) -> list[memoryview]:
        await trio.lowlevel.checkpoint()
        assert self.stream is not None
        if not self.chunks:
            self.stream.request_complete = True
            return []
        chunk = self.chunks.pop(0)
        if not self.chunks:
            self.stream.request_complete = True
        return [memoryview(chunk)]

    async def send_continue(self) -> None:
        self.sent.append(("continue", None))

    async def send_headers(
        self, r: Any, service_ms: int, length: int, first: list, end: bool
    ) -> None:
        self.sent.append(("headers", (r.status, length, b"".join(bytes(p) for p in first), end)))

    async def send_data(self, parts: list, end_stream: bool) -> None:
        self.sent.append(("data", (b"".join(bytes(p) for p in parts), end_stream)))

    async def send_local_reply(self, status: int, body: str, extra: bytes = b"") -> None:
        assert self.stream is not None
        self.stream.status = status
        self.sent.append(("local", (status, body, extra)))

    def wants_close(self) -> bool:
        return False


class Factory:
    def __init__(self, make: Any, decodes: bool = True, encodes: bool = True) -> None:
        self.name = "test"
        self.wanted_headers: frozenset[str] = frozenset()
        self.decodes = decodes
        self.encodes = encodes
        self.make = make

    def create(self) -> HttpFilter:
        f: HttpFilter = self.make()
        return f


def make_stream(raw: bytes, sink: MemorySink) -> Stream:
    h = RequestHeadParser().parse(raw, {b"content-type": "content-type"})
    stream = Stream(h, sink)
    sink.stream = stream
    return stream


GET = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"
POST = b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"


class Recorder(HttpFilter):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        self.log.append(f"{self.name}:req-headers:{end_stream}")
        return CONTINUE

    async def on_request_data(self, stream: FilterStream, data: bytes, end: bool) -> Result:
        self.log.append(f"{self.name}:req-data:{data.decode()}:{end}")
        return CONTINUE

    async def on_response_headers(
        self, stream: FilterStream, response: ResponseView, end_stream: bool
    ) -> Result:
        self.log.append(f"{self.name}:resp-headers:{response.status}")
        stream.set_response_header(f"x-{self.name}", "seen")
        return CONTINUE

    def on_stream_complete(self, stream: FilterStream) -> None:
        self.log.append(f"{self.name}:complete")


class Buffering(HttpFilter):
    """Holds the head until the whole body is here, then sets its length."""

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        return CONTINUE if end_stream else STOP

    async def on_request_data(self, stream: FilterStream, data: bytes, end: bool) -> Result:
        if not end:
            return STOP_AND_BUFFER
        return CONTINUE


class Abort(HttpFilter):
    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        return LocalReply(418, "nope", headers=(("x-why", "test"),), flag="FI")


def response(status: int = 200) -> Any:
    return ResponseHeadParser().parse(b"HTTP/1.1 %d OK\r\ncontent-length: 2\r\n\r\n" % status, {})


def test_decoders_in_order_encoders_in_reverse() -> None:
    log: list[str] = []

    async def main() -> None:
        sink = MemorySink([])
        stream = make_stream(GET, sink)
        chain = FilterChain(
            stream,
            sink,
            (Factory(lambda: Recorder("one", log)), Factory(lambda: Recorder("two", log))),
            1024,
        )
        assert await chain.decode_headers() is None
        await chain.send_headers(response(), 1, 2, [memoryview(b"ok")], True)
        chain.complete()
        assert sink.sent == [("headers", (200, 2, b"ok", True))]
        assert stream.response_added == [b"x-two: seen\r\n", b"x-one: seen\r\n"]

    trio.run(main)
    assert log == [
        "one:req-headers:True",
        "two:req-headers:True",
        "two:resp-headers:200",
        "one:resp-headers:200",
        "one:complete",
        "two:complete",
    ]


def test_stop_and_buffer_holds_the_head_until_the_body_is_complete() -> None:
    log: list[str] = []

    async def main() -> None:
        sink = MemorySink([b"ab", b"cd", b"ef"])
        stream = make_stream(POST, sink)
        chain = FilterChain(
            stream,
            sink,
            (Factory(Buffering), Factory(lambda: Recorder("after", log))),
            1024,
        )
        assert await chain.decode_headers() is None
        # The filter after the buffering one saw the head only once the body was whole.
        assert stream.request_complete
        assert log == ["after:req-headers:False", "after:req-data:abcdef:True"]
        # The router gets the whole body at once, as it starts.
        body = chain.take_buffered_body()
        assert b"".join(bytes(p) for p in body) == b"abcdef"
        assert await chain.recv_body() == []

    trio.run(main)


def test_buffer_over_the_limit_is_413_counted_and_closes() -> None:
    from proxyd.worker.stats import StatsStore

    async def main() -> None:
        store = StatsStore()
        stats = store.http("ingress")
        sink = MemorySink([b"x" * 600, b"y" * 600, b"z"])
        stream = make_stream(POST, sink)
        chain = FilterChain(stream, sink, (Factory(Buffering),), 1000, stats)
        reply = await chain.decode_headers()
        assert isinstance(reply, LocalReply) and reply.status == 413
        assert stream.close_connection
        assert store.report()[0]["http.ingress.downstream_rq_too_large"] == 1

    trio.run(main)


def test_local_reply_passes_the_encoders_and_skips_later_decoders() -> None:
    log: list[str] = []

    async def main() -> None:
        sink = MemorySink([])
        stream = make_stream(GET, sink)
        chain = FilterChain(
            stream,
            sink,
            (
                Factory(lambda: Recorder("before", log)),
                Factory(Abort),
                Factory(lambda: Recorder("after", log)),
            ),
            1024,
        )
        reply = await chain.decode_headers()
        assert isinstance(reply, LocalReply)
        await chain.send_filter_reply(reply)
        assert sink.sent == [("local", (418, "nope", b"x-why: test\r\n"))]
        assert stream.flag_text() == "FI"

    trio.run(main)
    # The filter after the one that answered never saw the request; every encoder
    # saw the reply, in reverse order.
    assert log == [
        "before:req-headers:True",
        "after:resp-headers:418",
        "before:resp-headers:418",
    ]


GRPC = b"POST /s/M HTTP/1.1\r\nhost: a\r\ncontent-type: application/grpc\r\n\r\n"


def test_local_replies_to_grpc_requests_are_grpc() -> None:
    """A gRPC request gets HTTP 200 with grpc-status (its own, or the HTTP status
    mapped as Envoy maps it); a plain request gets the plain reply."""

    async def reply(raw: bytes, local: LocalReply) -> tuple[int, str, bytes]:
        sink = MemorySink([])
        stream = make_stream(raw, sink)
        await FilterChain(stream, sink, (), 1024).send_filter_reply(local)
        result: tuple[int, str, bytes] = sink.sent[0][1]
        return result

    async def main() -> None:
        status, body, extra = await reply(GRPC, LocalReply(503, "down"))
        assert (status, body) == (200, "")
        assert b"grpc-status: 14\r\n" in extra and b"grpc-message: down\r\n" in extra
        status, body, extra = await reply(GRPC, LocalReply(200, "abort", grpc_status=4))
        assert b"grpc-status: 4\r\n" in extra
        status, body, extra = await reply(GET, LocalReply(200, "abort", grpc_status=4))
        assert (status, body, extra) == (200, "abort", b"")

    trio.run(main)


def test_request_header_edits_reach_the_upstream_head() -> None:
    from proxyd.protocol.http1_headers import RequestHeaderPolicy, RequestIdGenerator

    sink = MemorySink([])
    stream = make_stream(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\nx-a: 1\r\n\r\n", sink)
    stream.set_request_header("x-a", "2")
    stream.remove_request_header("x-gone")
    stream.set_request_length(3)
    assert stream.head is not None
    policy = RequestHeaderPolicy(False, 0, False, "127.0.0.1", RequestIdGenerator())
    head, *_ = policy.apply(stream.head, "127.0.0.1", b"", stream.request_added)
    lines = head.split(b"\r\n")
    assert b"x-a: 2" in lines and b"x-a: 1" not in lines
    assert lines.count(b"content-length: 3") == 1


class RaisesLimit(Buffering):
    """The buffer filter's way: the stream's limit becomes max_request_bytes."""

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        stream.set_buffer_limit(5000)
        return await super().on_request_headers(stream, end_stream)


def test_a_filter_may_raise_the_streams_buffer_limit() -> None:
    async def main() -> None:
        sink = MemorySink([b"x" * 900, b"y" * 900, b"z" * 900])
        stream = make_stream(POST, sink)
        chain = FilterChain(stream, sink, (Factory(RaisesLimit),), 1000)
        assert await chain.decode_headers() is None  # 2,700 bytes held: over 1000, under 5000
        body = b"".join(bytes(p) for p in chain.take_buffered_body())
        assert body == b"x" * 900 + b"y" * 900 + b"z" * 900
        assert not stream.close_connection

    trio.run(main)
