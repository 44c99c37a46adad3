"""The HTTP filter chain of one stream: a sink around the codec's sink.

When a route has filters (``RoutePlan.filters``, compiled per epoch), the connection
manager makes a :class:`FilterChain` for the stream and makes it the stream's sink: the
decoder filters run on the request head first (:meth:`FilterChain.decode_headers`), then
on every body piece the router pulls (:meth:`FilterChain.take_buffered_body`,
:meth:`FilterChain.recv_body`); the encoder filters run, in reverse order, on what the
router (or a filter's local reply) sends back. The router sits at the end and cannot tell
the chain from the codec. A route whose chain is only the router gets no
:class:`FilterChain` at all.

Semantics follow Envoy's filter manager (see :mod:`proxyd.filters.api`): a filter that
returns ``STOP`` on the head gets the body as it arrives (through the filters before it)
and the head goes on when it returns ``CONTINUE``; ``STOP_AND_BUFFER`` keeps data in the
chain, bounded by the listener's buffer limit (413 beyond, as Envoy answers); a
:class:`~proxyd.filters.api.LocalReply` answers the stream and passes through the
encoder filters. Limits of this version: request trailers are not surfaced by the
HTTP/1 codec (``on_request_trailers`` is not called), and encoder filters can add
headers and see or hold body data but not replace it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn, cast

from proxyd.filters.api import (
    CONTINUE,
    FilterFactory,
    FilterStream,
    HttpFilter,
    LocalReply,
    Result,
)
from proxyd.worker.stream import DownstreamSink, LocalReplied, ResponseFlag, Stream

if TYPE_CHECKING:
    from proxyd.protocol.http1 import ResponseHead

PAYLOAD_TOO_LARGE = LocalReply(413, "Payload Too Large", details="request_payload_too_large")


class _Response:
    """What encoder filters see of a response head (a ResponseView)."""

    __slots__ = ("status", "headers")

    def __init__(self, status: int, headers: Any) -> None:
        self.status = status
        self.headers = headers


def local_reply_of(reply: LocalReply) -> tuple[int, str, bytes]:
    """A filter's LocalReply as (status, body, extra header lines)."""
    extra = b"".join(
        n.lower().encode("latin-1") + b": " + v.encode("latin-1") + b"\r\n"
        for n, v in reply.headers
    )
    if reply.grpc_status is not None:
        # gRPC answers in HTTP 200 with the status in grpc-status (Envoy: trailers-only).
        extra += b"content-type: application/grpc\r\ngrpc-status: %d\r\n" % reply.grpc_status
        if reply.body:
            extra += b"grpc-message: " + reply.body.encode("latin-1") + b"\r\n"
        return 200, "", extra
    return reply.status, reply.body, extra


def _overrides(f: HttpFilter, hook: str) -> bool:
    return getattr(type(f), hook) is not getattr(HttpFilter, hook)


class FilterChain:
    """One stream's decoder and encoder filters around the codec's sink."""

    __slots__ = (
        "stream",
        "fs",
        "inner",
        "filters",
        "decoders",
        "data_decoders",
        "encoders",
        "data_encoders",
        "limit",
        "kept",
        "pending",
        "first_taken",
    )

    def __init__(
        self,
        stream: Stream,
        inner: DownstreamSink,
        factories: tuple[FilterFactory, ...],
        limit: int,
    ) -> None:
        self.stream = stream
        # What the filters see of the stream (proxyd.filters.api.FilterStream).
        self.fs = cast(FilterStream, stream)
        self.inner = inner
        self.filters = [f.create() for f in factories]
        self.decoders = [f for f, fac in zip(self.filters, factories, strict=True) if fac.decodes]
        self.data_decoders = any(_overrides(f, "on_request_data") for f in self.decoders)
        encoders = [f for f, fac in zip(self.filters, factories, strict=True) if fac.encodes]
        encoders.reverse()
        self.encoders = encoders
        self.data_encoders = any(_overrides(f, "on_response_data") for f in encoders)
        self.limit = limit
        # Data a filter keeps (STOP_AND_BUFFER), by its index in decoders.
        self.kept: dict[int, bytearray] = {}
        # Body that came out of the filters before the router asked: (data, from index).
        self.pending: list[tuple[bytes, int]] = []
        self.first_taken = False

    # -- decoding -----------------------------------------------------------------------

    async def decode_headers(self) -> LocalReply | None:
        """Run the decoder filters on the request head; a LocalReply to answer with."""
        stream = self.stream
        decoders = self.decoders
        i = 0
        while i < len(decoders):
            res = await decoders[i].on_request_headers(
                self.fs, stream.request_complete and not self.pending
            )
            if isinstance(res, LocalReply):
                return res
            i += 1
            if res is CONTINUE or stream.request_complete:
                continue
            # The head waits at filter i-1: the body goes through filters [0, i) until
            # data comes out of filter i-1 (it continued), or the body ends.
            while True:
                pieces = await self._next_pieces()
                data = b"".join(pieces) if len(pieces) != 1 else bytes(pieces[0])
                out = await self._run_data(data, self.stream.request_complete, 0, i)
                if isinstance(out, LocalReply):
                    return out
                if out is not None:
                    self.pending.append((out, i))
                    break
                if stream.request_complete:
                    break
        return None

    async def _next_pieces(self) -> list[memoryview]:
        if not self.first_taken:
            self.first_taken = True
            pieces = self.inner.take_buffered_body()
            if pieces or self.stream.request_complete:
                return pieces
        return await self.inner.recv_body()

    async def _run_data(
        self, data: bytes, end: bool, lo: int, hi: int
    ) -> bytes | LocalReply | None:
        """``data`` through decoders[lo:hi]: what comes out, or None while kept."""
        decoders = self.decoders
        for j in range(lo, hi):
            res: Result = await decoders[j].on_request_data(self.fs, data, end)
            if isinstance(res, LocalReply):
                return res
            kept = self.kept.get(j)
            if res is CONTINUE:
                if kept is not None:
                    kept += data
                    data = bytes(kept)
                    del self.kept[j]
                continue
            # STOP / STOP_AND_BUFFER: the chain keeps it until the filter continues.
            if kept is None:
                kept = self.kept[j] = bytearray()
            kept += data
            if sum(len(k) for k in self.kept.values()) > self.limit:
                return PAYLOAD_TOO_LARGE
            if end:
                # Nothing more will come: what the filter kept goes on.
                data = bytes(kept)
                del self.kept[j]
                continue
            return None
        return data

    def take_buffered_body(self) -> list[memoryview]:
        if self.pending:
            return []  # recv_body delivers it (it may still have filters to pass)
        if not self.data_decoders:
            self.first_taken = True
            return self.inner.take_buffered_body()
        return []

    async def recv_body(self) -> list[memoryview]:
        n = len(self.decoders)
        while True:
            if self.pending:
                data, at = self.pending.pop(0)
                out = await self._run_data(data, self.stream.request_complete, at, n)
                if isinstance(out, LocalReply):
                    await self._reply_mid_stream(out)
                if out is not None:
                    return [memoryview(out)]
                continue
            if self.stream.request_complete and self.first_taken:
                return []
            pieces = await self._next_pieces()
            if not self.data_decoders:
                return pieces
            data = b"".join(pieces)
            if not data and not self.stream.request_complete:
                continue
            out = await self._run_data(data, self.stream.request_complete, 0, n)
            if isinstance(out, LocalReply):
                await self._reply_mid_stream(out)
            if out is not None:
                return [memoryview(out)]
            if self.stream.request_complete:
                return []

    async def _reply_mid_stream(self, reply: LocalReply) -> NoReturn:
        await self.send_filter_reply(reply)
        raise LocalReplied(reply.details or str(reply.status))

    async def send_continue(self) -> None:
        await self.inner.send_continue()

    def wants_close(self) -> bool:
        return self.inner.wants_close()

    # -- encoding -----------------------------------------------------------------------

    async def _encode_headers(
        self, status: int, headers: Any, end_stream: bool
    ) -> LocalReply | None:
        view = _Response(status, headers)
        for f in self.encoders:
            res = await f.on_response_headers(self.fs, view, end_stream)
            if isinstance(res, LocalReply):
                return res
        return None

    async def _encode_data(self, parts: list, end_stream: bool) -> list:
        if not self.data_encoders:
            return parts
        data = b"".join(parts)
        for f in self.encoders:
            res = await f.on_response_data(self.fs, data, end_stream)
            if isinstance(res, LocalReply):
                raise LocalReplied(res.details or str(res.status))  # too late to answer
        return parts

    async def send_headers(
        self, r: ResponseHead, service_ms: int, length: int, first: list, end_stream: bool
    ) -> None:
        reply = await self._encode_headers(r.status, r.headers, end_stream and not first)
        if reply is not None:
            await self._reply_mid_stream(reply)
        if first:
            first = await self._encode_data(first, end_stream)
        await self.inner.send_headers(r, service_ms, length, first, end_stream)

    async def send_data(self, parts: list, end_stream: bool) -> None:
        parts = await self._encode_data(parts, end_stream)
        await self.inner.send_data(parts, end_stream)

    async def send_local_reply(self, status: int, body: str, extra: bytes = b"") -> None:
        reply = await self._encode_headers(status, {}, not body)
        if reply is not None:
            await self.send_filter_reply(reply, encode=False)
            return
        await self.inner.send_local_reply(status, body, extra)

    async def send_filter_reply(self, reply: LocalReply, encode: bool = True) -> None:
        """Answer with a filter's local reply, through the encoder filters."""
        stream = self.stream
        if reply.flag:
            stream.set_flag(reply.flag)
        if reply.details:
            stream.details = reply.details
        if reply is PAYLOAD_TOO_LARGE and stream.flags is ResponseFlag.NONE:
            stream.details = reply.details
        status, body, extra = local_reply_of(reply)
        if encode:
            await self.send_local_reply(status, body, extra)
        else:
            await self.inner.send_local_reply(status, body, extra)

    def complete(self) -> None:
        for f in self.filters:
            f.on_stream_complete(self.fs)
