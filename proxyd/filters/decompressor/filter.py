"""The decompressor filter on a stream: Envoy's ``DecompressorFilter``.

**Request.** When response decompression is enabled and ``advertise_accept_encoding``
(the default), the library's encoding is added to the request's ``accept-encoding``
(Envoy's ``addEncodingToAcceptEncoding``: the items are split on ``,`` and trimmed,
empty ones dropped, any item for the same coding — with its q-value — removed, and the
coding appended, joined with ``,``). A request with a body is then decompressed when
the request direction is enabled, ``cache-control`` has no ``no-transform`` (unless
``ignore_no_transform_header``) and the first coding of ``content-encoding`` is the
library's (trimmed, compared without case): the coding is taken off the header (the
header goes when it was the only one), ``content-length`` is removed and the body goes
upstream chunked, decoded piece by piece.

**Response.** The same test on a response that has a body; the body is decoded as it
streams, never held whole.

**Stats**, in ``http.<stat_prefix>.decompressor.<library name>.<gzip|brotli|zstd>.``:
``request.`` and ``response.`` ``decompressed``, ``not_decompressed``,
``total_compressed_bytes``, ``total_uncompressed_bytes``; errors in
``decompressor_library.<zlib_data_error|brotli_error|zstd_generic_error>``. A gzip piece
that would inflate to more than ``max_inflate_ratio`` times its size stops there
(``zlib_data_error``), as in Envoy. Envoy also adds trailers with the byte counts, which
HTTP/1 does not carry unless trailers are enabled (they are not, in proxyd): proxyd
sends none.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from proxyd.filters.api import CONTINUE, FilterStream, HttpFilter, ResponseView, Result, StatsScope
from proxyd.protocol.compression import DECOMPRESSOR_STATS, Decompressor, library_setup
from proxyd.protocol.runtime import EMPTY, Snapshot

STATS = ("decompressed", "not_decompressed", "total_compressed_bytes", "total_uncompressed_bytes")
_SPACE = " \t\n\v\f\r"


def add_encoding(accept_encoding: str, encoding: str) -> str:
    """Envoy's ``HeaderUtility::addEncodingToAcceptEncoding``."""
    kept = []
    for item in accept_encoding.split(","):
        item = item.strip(_SPACE)
        if item and item.split(";", 1)[0].strip(_SPACE) != encoding:
            kept.append(item)
    kept.append(encoding)
    return ",".join(kept)


def first_coding_matches(content_encoding: str | None, encoding: str) -> bool:
    if content_encoding is None:
        return False
    return content_encoding.split(",", 1)[0].strip(_SPACE).lower() == encoding.lower()


def remaining_codings(content_encoding: str) -> str | None:
    """The content-encoding without its first coding; None when nothing remains."""
    codings = content_encoding.strip(_SPACE)
    first, comma, rest = codings.partition(",")
    return rest.strip(_SPACE) if comma else None


def no_transform(cache_control: str | None) -> bool:
    if cache_control is None:
        return False
    return any(t.strip(_SPACE).lower() == "no-transform" for t in cache_control.split(","))


class Direction:
    __slots__ = ("enabled", "ignore_no_transform", "prefix")

    def __init__(self, settings: dict[str, Any], runtime: Snapshot, prefix: str) -> None:
        self.enabled = runtime.feature_flag(settings["enabled"])
        self.ignore_no_transform = bool(settings["ignore_no_transform_header"])
        self.prefix = prefix

    def applies(self, headers: Any) -> bool:
        return self.enabled and (
            self.ignore_no_transform or not no_transform(headers.get("cache-control"))
        )


class Factory:
    """One per epoch and route (the filter has no per-route config)."""

    __slots__ = (
        "name",
        "wanted_headers",
        "response_headers",
        "decodes",
        "encodes",
        "stats",
        "library",
        "encoding",
        "request",
        "response",
        "advertise",
        "library_prefix",
        "library_shown",
    )

    def __init__(
        self,
        name: str,
        config: Any,
        per_route: Any,
        stats: StatsScope,
        runtime: Snapshot = EMPTY,
    ) -> None:
        self.name = name
        self.stats = stats
        self.library, self.encoding, prefix = library_setup("decompressor", config)
        self.library_prefix = prefix + "decompressor_library."
        self.library_shown = False  # Envoy makes the library's stats with a decompressor
        self.request = Direction(config["request"], runtime, prefix + "request.")
        self.response = Direction(config["response"], runtime, prefix + "response.")
        self.advertise = self.response.enabled and bool(
            config["request"]["advertise_accept_encoding"]
        )
        self.wanted_headers = frozenset(("accept-encoding", "content-encoding", "cache-control"))
        self.response_headers = frozenset(("content-encoding", "cache-control"))
        self.decodes = True
        self.encodes = True
        for stat in STATS:  # shown at 0 from the start, as Envoy does
            stats.inc(self.request.prefix + stat, 0)
            stats.inc(self.response.prefix + stat, 0)

    def create(self) -> DecompressorFilter:
        return DecompressorFilter(self)

    def begin(
        self,
        direction: Direction,
        headers: Any,
        unframe: Callable[[], None],
        set_header: Callable[[str, str], None],
        remove_header: Callable[[str], None],
    ) -> Decompressor | None:
        """A message with a body, request or response: its decompressor when it is to be
        decoded, with its framing dropped (``unframe``: it goes chunked) and its first
        coding taken off ``content-encoding``; else None. Counted either way."""
        coding = headers.get("content-encoding")
        if not (direction.applies(headers) and first_coding_matches(coding, self.encoding)):
            self.stats.inc(direction.prefix + "not_decompressed")
            return None
        assert coding is not None
        self.stats.inc(direction.prefix + "decompressed")
        codec = self.decompressor()
        unframe()
        rest = remaining_codings(coding)
        if rest is None:
            remove_header("content-encoding")
        else:
            set_header("content-encoding", rest)
        return codec

    def decompressor(self) -> Decompressor:
        if not self.library_shown:
            self.library_shown = True
            for stat in DECOMPRESSOR_STATS[self.library["library"]]:
                self.stats.inc(self.library_prefix + stat, 0)
        return Decompressor(self.library)


class DecompressorFilter(HttpFilter):
    __slots__ = ("factory", "request_codec", "response_codec")

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.request_codec: Decompressor | None = None
        self.response_codec: Decompressor | None = None

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        f = self.factory
        headers = stream.head.headers
        if f.advertise:
            value = add_encoding(headers.get("accept-encoding", ""), f.encoding)
            stream.set_request_header("accept-encoding", value)
        if not end_stream:
            self.request_codec = f.begin(
                f.request,
                headers,
                stream.set_request_chunked,
                stream.set_request_header,
                stream.remove_request_header,
            )
        return CONTINUE

    async def on_request_data(
        self, stream: FilterStream, data: bytearray, end_stream: bool
    ) -> Result:
        if self.request_codec is not None:
            self._decompress(self.request_codec, data, self.factory.request.prefix)
        return CONTINUE

    async def on_response_headers(
        self, stream: FilterStream, response: ResponseView, end_stream: bool
    ) -> Result:
        if not end_stream:
            self.response_codec = self.factory.begin(
                self.factory.response,
                response.headers,
                partial(stream.remove_response_header, "content-length"),
                stream.set_response_header,
                stream.remove_response_header,
            )
        return CONTINUE

    async def on_response_data(
        self, stream: FilterStream, data: bytearray, end_stream: bool
    ) -> Result:
        if self.response_codec is not None:
            self._decompress(self.response_codec, data, self.factory.response.prefix)
        return CONTINUE

    def _decompress(self, codec: Decompressor, data: bytearray, prefix: str) -> None:
        f = self.factory
        taken = len(data)
        data[:] = codec.decompress(data)
        f.stats.inc(prefix + "total_compressed_bytes", taken)
        f.stats.inc(prefix + "total_uncompressed_bytes", len(data))
        if codec.error:
            f.stats.inc(f.library_prefix + codec.error)
