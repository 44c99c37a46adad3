"""The compressor filter on a stream: Envoy's ``CompressorFilter``.

**Response.** On the response head, with the settings of the route (``CompressorPerRoute``
``disabled`` turns it off, ``overrides.response_direction_config`` turns it on and may
change ``remove_accept_encoding_header``) or else the filter's:

* *compressible*: enabled (the ``enabled`` runtime flag, resolved per epoch), the
  ``content-length`` (when there is one) at least ``min_content_length``, the status not
  in ``uncompressible_response_codes``, the media type in ``content_type``, no
  ``cache-control: no-transform``, no ``etag`` when ``disable_on_etag_header``, and no
  ``content-encoding`` at all;
* compressed when compressible, the head is not the whole response (HEAD, 204, 304 and
  empty bodies are not), ``Accept-Encoding`` chose this filter's encoding
  (:mod:`.negotiation`, decided once per stream for all compressor filters) and no
  ``transfer-encoding`` coding is a compression. Then a strong ``etag`` is removed (a
  weak one, ``W/"..."``, is kept), ``content-length`` is removed (the body goes out
  chunked), ``content-encoding`` is set, and every body piece is compressed and flushed
  as it passes (:class:`proxyd.protocol.compression.Compressor`), the last one finished:
  nothing is held back;
* a compressible response gets ``Vary: Accept-Encoding`` (added to an existing ``vary``
  unless it has the token) whether or not it is compressed, so caches keep the variants
  apart.

**Chain.** Envoy's compressors register in the stream's filter state when the stream's
filters are made; here each factory learns the compressors of its route's chain when the
epoch is compiled (``link_chain``), and the stream's decision is kept in
``stream.filter_state``.

**Request.** The ``Accept-Encoding`` header is read, then removed when compression is
enabled and ``remove_accept_encoding_header``. With ``request_direction_config`` (and its
flag enabled), a request body is compressed the same way when its ``content-length`` (if
any) is at least the minimum, its media type is allowed and it has no
``content-encoding``; it then goes upstream chunked with ``content-encoding`` set.

**Stats**, in ``http.<stat_prefix>.compressor.<library name>.<gzip|brotli|zstd>.``:
``[response.]compressed``, ``not_compressed``, ``total_uncompressed_bytes``,
``total_compressed_bytes``, ``content_length_too_small`` (the ``response.`` part only with
``response_direction_config``), ``request.`` the same for requests, and
``no_accept_header``, ``header_identity``, ``header_compressor_used``,
``header_compressor_overshadowed``, ``header_wildcard``, ``header_not_valid``,
``not_compressed_etag``.
"""

from __future__ import annotations

from typing import Any

from proxyd.filters.api import CONTINUE, FilterStream, HttpFilter, ResponseView, Result, StatsScope
from proxyd.filters.compressor.negotiation import (
    Candidate,
    Decision,
    HeaderStat,
    choose,
    media_type,
)
from proxyd.protocol.compression import Compressor, library_setup
from proxyd.protocol.runtime import EMPTY, Snapshot

# Envoy's StreamInfo filter state key of the stream's decision.
DECISION_KEY = "encoding_decision"

# Transfer codings that mean the message is compressed already (Envoy's list).
_COMPRESSED_TE = frozenset(("gzip", "br", "deflate", "compress", "zstd"))
_SPACE = " \t\n\v\f\r"

COMMON_STATS = (
    "compressed",
    "not_compressed",
    "total_uncompressed_bytes",
    "total_compressed_bytes",
    "content_length_too_small",
)
RESPONSE_STATS = (
    "no_accept_header",
    "header_identity",
    "header_compressor_used",
    "header_compressor_overshadowed",
    "header_wildcard",
    "header_not_valid",
    "not_compressed_etag",
)

RESPONSE_HEADERS = frozenset(
    (
        "content-length",
        "content-type",
        "content-encoding",
        "cache-control",
        "etag",
        "transfer-encoding",
        "vary",
    )
)


def _tokens(value: str) -> list[str]:
    return [t.strip(_SPACE) for t in value.split(",")]


def _min_length_ok(length: str | None, minimum: int) -> bool | None:
    """None when there is no content-length; else whether it is at least ``minimum``
    (a value that is not a number is too small, as ``absl::SimpleAtoi`` fails)."""
    if length is None:
        return None
    text = length.strip(_SPACE)
    if text.startswith("+"):
        text = text[1:]
    return text.isascii() and text.isdigit() and int(text) >= minimum


class Direction:
    """One direction's ``CommonDirectionConfig``, resolved for an epoch."""

    __slots__ = ("enabled", "min_length", "content_types", "prefix")

    def __init__(self, settings: dict[str, Any], runtime: Snapshot, prefix: str) -> None:
        self.enabled = runtime.feature_flag(settings["enabled"])
        self.min_length: int = settings["min_content_length"]
        self.content_types = frozenset(t.lower() for t in settings["content_type"])
        self.prefix = prefix

    def type_allowed(self, content_type: str | None) -> bool:
        if content_type is None or not self.content_types:
            return True
        return media_type(content_type) in self.content_types


class Factory:
    """One per epoch and route."""

    __slots__ = (
        "name",
        "wanted_headers",
        "response_headers",
        "decodes",
        "encodes",
        "stats",
        "encoding",
        "library",
        "candidate",
        "response",
        "request",
        "response_enabled",
        "remove_accept_encoding",
        "disable_on_etag",
        "uncompressible",
        "prefix",
        "chain",
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
        self.library, self.encoding, self.prefix = library_setup("compressor", config)
        resp = config["response"]
        self.response = Direction(
            resp, runtime, self.prefix + ("response." if config["has_response"] else "")
        )
        self.request: Direction | None = None
        if config["request"] is not None:
            self.request = Direction(config["request"], runtime, self.prefix + "request.")
        self.candidate = Candidate(
            self.encoding, self.response.content_types, bool(config["choose_first"])
        )
        self.disable_on_etag = bool(resp["disable_on_etag_header"])
        self.uncompressible = frozenset(resp["uncompressible_response_codes"])
        enabled = self.response.enabled
        remove = bool(resp["remove_accept_encoding_header"])
        if per_route is not None:
            if per_route.get("disabled"):
                enabled = False
            elif per_route.get("response_direction_config") is not None:
                enabled = True
                override = per_route["response_direction_config"]["remove_accept_encoding_header"]
                if override is not None:
                    remove = bool(override)
        self.response_enabled = enabled
        self.remove_accept_encoding = remove
        wanted = {"accept-encoding"}
        if self.request is not None:
            wanted.update(("content-type", "content-encoding", "transfer-encoding"))
        self.wanted_headers = frozenset(wanted)
        self.response_headers = RESPONSE_HEADERS
        # The compressors of this route's chain, in order (link_chain).
        self.chain: tuple[Candidate, ...] = (self.candidate,)
        self.decodes = True
        self.encodes = True
        # Shown at 0 from the start, as Envoy does.
        for stat in COMMON_STATS:
            stats.inc(self.response.prefix + stat, 0)
            stats.inc(self.prefix + "request." + stat, 0)
        for stat in RESPONSE_STATS:
            stats.inc(self.prefix + stat, 0)

    def create(self) -> CompressorFilter:
        return CompressorFilter(self)

    def link_chain(self, factories: tuple[Any, ...]) -> None:
        """The route's filter factories, in order: the compressors among them choose."""
        self.chain = tuple(f.candidate for f in factories if isinstance(f, Factory))

    def count(self, stat: str, by: int = 1) -> None:
        self.stats.inc(stat, by)


class CompressorFilter(HttpFilter):
    __slots__ = ("factory", "accept_encoding", "response_codec", "request_codec")

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.accept_encoding: str | None = None
        self.response_codec: Compressor | None = None
        self.request_codec: Compressor | None = None

    # -- request ------------------------------------------------------------------------

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        f = self.factory
        headers = stream.head.headers
        self.accept_encoding = headers.get("accept-encoding")
        if f.response_enabled and f.remove_accept_encoding and self.accept_encoding is not None:
            stream.remove_request_header("accept-encoding")
        req = f.request
        if req is None:
            f.count(f.prefix + "request.not_compressed")
            return CONTINUE
        if (
            not end_stream
            and req.enabled
            and self._request_length_ok(stream, req)
            and req.type_allowed(headers.get("content-type"))
            and "content-encoding" not in headers
            and self._te_allowed(headers.get("transfer-encoding"))
        ):
            stream.set_request_chunked()
            stream.set_request_header("content-encoding", f.encoding)
            f.count(req.prefix + "compressed")
            self.request_codec = Compressor(f.library)
        else:
            f.count(req.prefix + "not_compressed")
        return CONTINUE

    async def on_request_data(
        self, stream: FilterStream, data: bytearray, end_stream: bool
    ) -> Result:
        codec = self.request_codec
        if codec is not None:
            req = self.factory.request
            assert req is not None
            self._compress(codec, data, end_stream, req.prefix)
        return CONTINUE

    # -- response -----------------------------------------------------------------------

    async def on_response_headers(
        self, stream: FilterStream, response: ResponseView, end_stream: bool
    ) -> Result:
        f = self.factory
        headers = response.headers
        resp = f.response
        big_enough = f.response_enabled
        if big_enough:
            ok = _min_length_ok(headers.get("content-length"), resp.min_length)
            if ok is False:
                f.count(resp.prefix + "content_length_too_small")
                big_enough = False
        compressible = (
            big_enough
            and response.status not in f.uncompressible
            and resp.type_allowed(headers.get("content-type"))
            and not self._no_transform(headers.get("cache-control"))
            and self._etag_allowed(headers)
            and "content-encoding" not in headers
        )
        if (
            not end_stream
            and self._accept_allowed(stream, big_enough, headers)
            and compressible
            and self._te_allowed(headers.get("transfer-encoding"))
        ):
            etag = headers.get("etag")
            if etag is not None and etag[:2] not in ("W/", "w/"):
                stream.remove_response_header("etag")
            stream.remove_response_header("content-length")
            stream.set_response_header("content-encoding", f.encoding)
            f.count(resp.prefix + "compressed")
            self.response_codec = Compressor(f.library)
        else:
            f.count(resp.prefix + "not_compressed")
        if compressible:
            vary = headers.get("vary")
            if vary is None:
                stream.set_response_header("vary", "Accept-Encoding")
            elif "Accept-Encoding" not in _tokens(vary):
                stream.set_response_header("vary", vary + ", Accept-Encoding")
        return CONTINUE

    async def on_response_data(
        self, stream: FilterStream, data: bytearray, end_stream: bool
    ) -> Result:
        codec = self.response_codec
        if codec is not None:
            self._compress(codec, data, end_stream, self.factory.response.prefix)
        return CONTINUE

    # -- helpers ------------------------------------------------------------------------

    def _request_length_ok(self, stream: FilterStream, req: Direction) -> bool:
        length = stream.head.content_length
        ok = _min_length_ok(str(length) if length >= 0 else None, req.min_length)
        if ok is False:
            self.factory.count(req.prefix + "content_length_too_small")
            return False
        return True

    def _compress(self, codec: Compressor, data: bytearray, end: bool, prefix: str) -> None:
        f = self.factory
        f.count(prefix + "total_uncompressed_bytes", len(data))
        data[:] = codec.compress(data, end)
        f.count(prefix + "total_compressed_bytes", len(data))

    @staticmethod
    def _no_transform(cache_control: str | None) -> bool:
        if cache_control is None:
            return False
        return any(t.lower() == "no-transform" for t in _tokens(cache_control))

    def _etag_allowed(self, headers: Any) -> bool:
        f = self.factory
        if f.disable_on_etag and "etag" in headers:
            f.count(f.prefix + "not_compressed_etag")
            return False
        return True

    def _te_allowed(self, te: str | None) -> bool:
        if te is None:
            return True
        own = self.factory.encoding
        for t in _tokens(te):
            low = t.lower()
            if low in _COMPRESSED_TE or low == own:
                return False
        return True

    def _accept_allowed(self, stream: FilterStream, maybe: bool, headers: Any) -> bool:
        """Envoy's ``isAcceptEncodingAllowed``: the stream's decision (made by the first
        compressor to ask) names this filter's encoding; counts the header stats."""
        if not maybe:
            return False
        f = self.factory
        if self.accept_encoding is None:
            f.count(f.prefix + "no_accept_header")
            return False
        state = stream.filter_state
        if state is None:
            state = stream.filter_state = {}
        decision = state.get(DECISION_KEY)
        if not isinstance(decision, Decision):
            decision = choose(self.accept_encoding, headers.get("content-type"), f.chain)
            state[DECISION_KEY] = decision
        mine = decision.encoding.lower() == f.encoding.lower()
        stat = decision.stat
        if stat is HeaderStat.VALID_COMPRESSOR and not mine:
            f.count(f.prefix + "header_compressor_overshadowed")
        else:
            f.count(f.prefix + stat.value)
        return mine
