"""The buffer filter on a stream: hold the request body until it has all arrived.

As Envoy's ``BufferFilter``: a request with a body stops at its headers; each body piece
is kept by the chain (``STOP_AND_BUFFER``) until the last one, and the whole body then
goes upstream with a ``content-length`` of its size (a chunked request is sent with a
length instead). The filter sets the stream's buffer limit to ``max_request_bytes``; once
more has arrived, the chain answers 413 "Payload Too Large" and counts it in
``http.<stat_prefix>.downstream_rq_too_large``, as Envoy's connection manager does when
a filter's buffer overflows. A request without a
body, and any request on a route whose ``BufferPerRoute`` disables the filter, passes
untouched.
"""

from __future__ import annotations

from typing import Any

from proxyd.filters.api import (
    CONTINUE,
    STOP,
    STOP_AND_BUFFER,
    FilterStream,
    HttpFilter,
    LocalReply,
    Result,
    StatsScope,
)

# Counted in the filter's stats scope (``http.<stat_prefix>.``): Envoy counts an
# overflowing buffer in the connection manager's own stats.
TOO_LARGE_STAT = "downstream_rq_too_large"
TOO_LARGE = LocalReply(413, "Payload Too Large", details="request_payload_too_large")


class Factory:
    """One per epoch and route: the route's ``BufferPerRoute`` replaces the filter's."""

    __slots__ = ("name", "wanted_headers", "decodes", "encodes", "max_request_bytes", "stats")

    def __init__(
        self, name: str, config: Any, per_route: Any, stats: StatsScope, runtime: Any = None
    ) -> None:
        settings = per_route if per_route is not None else config
        self.name = name
        self.wanted_headers: frozenset[str] = frozenset()
        disabled = bool(settings.get("disabled", False))
        self.decodes = not disabled
        self.encodes = False
        self.max_request_bytes: int = 0 if disabled else int(settings["max_request_bytes"])
        self.stats = stats
        stats.inc(TOO_LARGE_STAT, 0)  # shown at 0 from the start, as Envoy does

    def create(self) -> BufferFilter:
        return BufferFilter(self)


class BufferFilter(HttpFilter):
    __slots__ = ("factory", "received")

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.received = 0

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        if end_stream or not self.factory.decodes or not stream.head.has_body:
            return CONTINUE
        # The chain keeps up to max_request_bytes for this stream and answers 413
        # beyond it (counted in downstream_rq_too_large), as Envoy's connection
        # manager does for the buffer filter's decoder buffer limit.
        stream.set_buffer_limit(self.factory.max_request_bytes)
        return STOP

    async def on_request_data(
        self, stream: FilterStream, data: bytearray, end_stream: bool
    ) -> Result:
        if not self.factory.decodes:
            return CONTINUE
        self.received += len(data)
        if not end_stream:
            return STOP_AND_BUFFER
        stream.set_request_length(self.received)
        return CONTINUE

    async def on_request_trailers(self, stream: FilterStream) -> Result:
        if self.factory.decodes:
            stream.set_request_length(self.received)
        return CONTINUE
