"""Streaming compressors and decompressors, as Envoy's compression libraries run them.

Sans-IO: bytes in, bytes out. A :class:`Compressor` is fed each body piece once and
returns what can go out now: Envoy's compressor filter compresses every piece with
``State::Flush`` (zlib's ``Z_SYNC_FLUSH``, brotli's ``BROTLI_OPERATION_FLUSH``, zstd's
``ZSTD_e_flush``) and the last one with ``State::Finish``, so nothing waits in the
compressor between pieces and a streamed response is never held. A
:class:`Decompressor` does the reverse, piece by piece, with gzip's output per piece
bounded by Envoy's ``max_inflate_ratio``.

Settings are the plain data the epoch carries (``proxyd.filters.compressor.config``):
``{"library": "gzip" | "brotli" | "zstd", ...}``, with Envoy's field names and
defaults already applied.
"""

from __future__ import annotations

import zlib
from typing import Any

import brotli
import zstandard

GZIP = "gzip"
BROTLI = "brotli"
ZSTD = "zstd"

# The Content-Encoding token of each library (Envoy's factories' contentEncoding()).
CONTENT_ENCODING = {GZIP: "gzip", BROTLI: "br", ZSTD: "zstd"}

# The error stats of each decompressor library (``decompressor_library.<name>``).


def library_setup(kind: str, config: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """A compressor or decompressor filter's (``kind``) compiled config → its library
    settings, the content-coding it makes or reads, and its stats prefix
    ``<kind>.<library name>.<gzip|brotli|zstd>.``."""
    library: dict[str, Any] = config["library"]
    lib = library["library"]
    return library, CONTENT_ENCODING[lib], f"{kind}.{config['library_name']}.{lib}."


DECOMPRESSOR_STATS = {
    GZIP: (
        "zlib_buf_error",
        "zlib_data_error",
        "zlib_errno",
        "zlib_mem_error",
        "zlib_stream_error",
        "zlib_version_error",
    ),
    BROTLI: ("brotli_error", "brotli_output_overflow", "brotli_redundant_input"),
    ZSTD: (
        "zstd_checksum_wrong_error",
        "zstd_dictionary_error",
        "zstd_generic_error",
        "zstd_memory_error",
    ),
}

# Envoy's defaults (source/extensions/compression/*/compressor/config.h).
GZIP_DEFAULTS: dict[str, Any] = {
    "compression_level": zlib.Z_DEFAULT_COMPRESSION,
    "compression_strategy": zlib.Z_DEFAULT_STRATEGY,
    "memory_level": 5,
    "window_bits": 12,
    "chunk_size": 4096,
}
BROTLI_DEFAULTS: dict[str, Any] = {
    "quality": 3,
    "window_bits": 18,
    "input_block_bits": 24,
    "encoder_mode": 0,
    "chunk_size": 4096,
}
ZSTD_DEFAULTS: dict[str, Any] = {
    "compression_level": 3,
    "enable_checksum": False,
    "strategy": 0,
    "chunk_size": 4096,
}

# Gzip.CompressionStrategy by number → zlib's constant.
GZIP_STRATEGIES = {
    0: zlib.Z_DEFAULT_STRATEGY,
    1: zlib.Z_FILTERED,
    2: zlib.Z_HUFFMAN_ONLY,
    3: zlib.Z_RLE,
    4: zlib.Z_FIXED,
}
# Brotli.EncoderMode by number (DEFAULT is the library's default, generic).
BROTLI_MODES = {
    0: brotli.MODE_GENERIC,
    1: brotli.MODE_GENERIC,
    2: brotli.MODE_TEXT,
    3: brotli.MODE_FONT,
}

# zlib adds a gzip header and trailer when window bits are given plus 16.
_GZIP_WRAPPER = 16


class Compressor:
    """One stream's compressor: :meth:`compress` each piece, ``finish`` on the last."""

    __slots__ = ("_gzip", "_brotli", "_zstd")

    def __init__(self, settings: dict[str, Any]) -> None:
        self._gzip: Any = None
        self._brotli: Any = None
        self._zstd: Any = None
        library = settings["library"]
        if library == GZIP:
            self._gzip = zlib.compressobj(
                settings["compression_level"],
                zlib.DEFLATED,
                settings["window_bits"] | _GZIP_WRAPPER,
                settings["memory_level"],
                GZIP_STRATEGIES[settings["compression_strategy"]],
            )
        elif library == BROTLI:
            self._brotli = brotli.Compressor(
                mode=BROTLI_MODES[settings["encoder_mode"]],
                quality=settings["quality"],
                lgwin=settings["window_bits"],
                lgblock=settings["input_block_bits"],
            )
        else:
            extra = {"strategy": settings["strategy"]} if settings["strategy"] else {}
            params = zstandard.ZstdCompressionParameters.from_level(
                settings["compression_level"],
                write_checksum=int(settings["enable_checksum"]),
                **extra,
            )
            self._zstd = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def compress(self, data: bytes | bytearray | memoryview, finish: bool) -> bytes:
        """The compressed form of ``data`` that can go out now: flushed, so the peer can
        decode everything given so far; with ``finish`` the stream's end as well."""
        if self._gzip is not None:
            out = self._gzip.compress(data)
            return out + self._gzip.flush(zlib.Z_FINISH if finish else zlib.Z_SYNC_FLUSH)
        if self._brotli is not None:
            out = self._brotli.process(bytes(data)) if data else b""
            return out + (self._brotli.finish() if finish else self._brotli.flush())
        z = self._zstd
        out = z.compress(data) if data else b""
        if finish:
            return out + z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        return out + z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


class Decompressor:
    """One stream's decompressor, as Envoy's libraries decompress each piece.

    Errors do not raise: the output decoded so far is returned and :attr:`error` names
    the library's stat for it (``zlib_data_error``, ``brotli_error``,
    ``zstd_generic_error``); later pieces give nothing. gzip's ``max_inflate_ratio``
    bounds each piece's output at that many times its input, as Envoy's zlib
    decompressor does: past it the rest of the piece is dropped and ``zlib_data_error``
    counted (the stream goes on)."""

    __slots__ = ("_gzip", "_brotli", "_zstd", "max_ratio", "error", "failed")

    def __init__(self, settings: dict[str, Any]) -> None:
        self._gzip: Any = None
        self._brotli: Any = None
        self._zstd: Any = None
        library = settings["library"]
        self.max_ratio: int | None = settings.get("max_inflate_ratio")
        # The stat of the last error ("" when none); ``failed``: nothing more decodes.
        self.error = ""
        self.failed = False
        if library == GZIP:
            self._gzip = zlib.decompressobj(settings["window_bits"] | _GZIP_WRAPPER)
        elif library == BROTLI:
            self._brotli = brotli.Decompressor()
        else:
            self._zstd = zstandard.ZstdDecompressor().decompressobj()

    def decompress(self, data: bytes | bytearray | memoryview) -> bytes:
        self.error = ""
        if not data or self.failed:
            return b""
        piece = bytes(data)
        if self._gzip is not None:
            return self._decompress_gzip(piece)
        try:
            if self._brotli is not None:
                return bytes(self._brotli.process(piece))
            return bytes(self._zstd.decompress(piece))
        except brotli.error:
            self.error = "brotli_error"
        except zstandard.ZstdError:
            self.error = "zstd_generic_error"
        self.failed = True
        return b""

    def _decompress_gzip(self, piece: bytes) -> bytes:
        d = self._gzip
        if d.eof:
            return b""  # what follows the gzip member is ignored, as zlib stops there
        try:
            if self.max_ratio is None:
                return bytes(d.decompress(piece))
            limit = self.max_ratio * len(piece)
            out = d.decompress(piece, limit)
        except zlib.error:
            self.error = "zlib_data_error"
            self.failed = True
            return b""
        if d.unconsumed_tail:
            # Over the ratio: Envoy's zlib decompressor stops on this piece; the rest of
            # it is not fed back (zlib's unconsumed_tail is dropped), the stream goes on.
            self.error = "zlib_data_error"
        return bytes(out)
