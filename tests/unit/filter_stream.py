"""An in-memory :class:`proxyd.filters.api.FilterStream` for driving filters directly.

It is the documented interface a filter sees of its stream, kept in memory: what the
filter changes (headers, the request length, flags) is recorded for the test to read.
:func:`run_request` feeds a filter the request the way the chain does (headers, then
each body piece, then trailers) and returns how it ended and what would go upstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxyd.filters.api import CONTINUE, STOP, STOP_AND_BUFFER, HttpFilter, LocalReply
from proxyd.filters.api import FilterStatus as Status


@dataclass
class Head:
    method: str = "GET"
    path: str = "/"
    host: str = "example.com"
    content_length: int = 0
    chunked: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length > 0


@dataclass
class MemoryStream:
    head: Head = field(default_factory=Head)
    route_name: str | None = "r"
    upstream_cluster: str | None = "svc"
    request_headers: dict[str, str] = field(default_factory=dict)
    removed_headers: list[str] = field(default_factory=list)
    response_headers: dict[str, str] = field(default_factory=dict)
    request_length: int | None = None
    flags: list[str] = field(default_factory=list)
    details: str = ""
    buffer_limit: int = 0
    # Lines add_request_header added, in order (name, value).
    added_request_headers: list[tuple[str, str]] = field(default_factory=list)
    # downstream_addresses(): (trusted client, peer, local ip, local port).
    addresses: tuple[str, str, str, int] = ("127.0.0.1", "127.0.0.1", "127.0.0.1", 8000)
    # downstream_tls(): the TLS session (sni, peer), None for a plaintext connection.
    tls: Any = None
    # The filters' shared state (dynamic metadata under "dynamic_metadata"), as Stream's.
    filter_state: dict[str, object] | None = None

    def set_request_header(self, name: str, value: str) -> None:
        self.request_headers[name] = value

    def remove_request_header(self, name: str) -> None:
        self.removed_headers.append(name)

    def add_request_header(self, name: str, value: str) -> None:
        self.added_request_headers.append((name, value))

    def set_request_path(self, path: str) -> None:
        self.head.path = path

    def downstream_addresses(self) -> tuple[str, str, str, int]:
        return self.addresses

    def downstream_tls(self) -> Any:
        return self.tls

    def set_request_length(self, length: int) -> None:
        self.request_length = length

    def set_response_header(self, name: str, value: str) -> None:
        self.response_headers[name] = value

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)

    def set_details(self, details: str) -> None:
        self.details = details

    def set_buffer_limit(self, limit: int) -> None:
        self.buffer_limit = limit


# What the chain (proxyd.worker.filter_chain) answers when a stream's held body goes
# over its buffer limit.
TOO_LARGE = LocalReply(413, "Payload Too Large", details="request_payload_too_large")


@dataclass
class Outcome:
    """How the request left the filter: ``reply`` when answered locally, else the body
    pieces that went on (kept pieces joined, as the chain sends them)."""

    reply: LocalReply | None
    forwarded: list[bytes]
    statuses: list[Status]


async def run_request(
    flt: HttpFilter, stream: MemoryStream, pieces: list[bytes], trailers: bool = False
) -> Outcome:
    """Headers (end_stream when there are no pieces and no trailers), each piece (the
    last with end_stream unless trailers follow), then the trailers."""
    statuses: list[Status] = []
    forwarded: list[bytes] = []
    kept = b""
    no_body = not pieces and not trailers
    result = await flt.on_request_headers(stream, no_body)
    if isinstance(result, LocalReply):
        return Outcome(result, forwarded, statuses)
    statuses.append(result)
    assert result in (CONTINUE, STOP)
    held = 0
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1 and not trailers
        held += len(piece)
        if result is STOP and stream.buffer_limit and held > stream.buffer_limit:
            # The head is held: the chain holds the body too, up to the limit.
            return Outcome(TOO_LARGE, forwarded, statuses)
        result = await flt.on_request_data(stream, piece, last)
        if isinstance(result, LocalReply):
            return Outcome(result, forwarded, statuses)
        statuses.append(result)
        kept += piece
        if result is CONTINUE:
            forwarded.append(kept)
            kept = b""
        else:
            assert result is STOP_AND_BUFFER
            result = STOP  # the head is still held
    if trailers:
        result = await flt.on_request_trailers(stream)
        if isinstance(result, LocalReply):
            return Outcome(result, forwarded, statuses)
        statuses.append(result)
        if kept:
            forwarded.append(kept)
    flt.on_stream_complete(stream)
    return Outcome(None, forwarded, statuses)
