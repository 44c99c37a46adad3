"""Sans-IO pieces of the compression filters: codecs, Accept-Encoding negotiation, the
decompressor's header edits."""

from __future__ import annotations

import gzip
import math
import zlib

import brotli
import pytest
import zstandard

from proxyd.filters.compressor.negotiation import (
    Candidate,
    Decision,
    HeaderStat,
    accepted,
    choose,
    parse_q,
)
from proxyd.filters.decompressor.filter import (
    add_encoding,
    first_coding_matches,
    remaining_codings,
)
from proxyd.protocol.compression import (
    BROTLI,
    BROTLI_DEFAULTS,
    GZIP,
    GZIP_DEFAULTS,
    ZSTD,
    ZSTD_DEFAULTS,
    Compressor,
    Decompressor,
)

TEXT = frozenset(("text/plain", "text/html"))
GZ = Candidate("gzip", TEXT, False)
BR = Candidate("br", TEXT, False)
ZS = Candidate("zstd", TEXT, True)
JSON_BR = Candidate("br", frozenset(("application/json",)), False)

SETTINGS = {
    GZIP: {"library": GZIP, **GZIP_DEFAULTS},
    BROTLI: {"library": BROTLI, **BROTLI_DEFAULTS},
    ZSTD: {"library": ZSTD, **ZSTD_DEFAULTS},
}
DECODERS = {
    GZIP: lambda: zlib.decompressobj(15 | 16).decompress,
    BROTLI: lambda: brotli.Decompressor().process,
    ZSTD: lambda: zstandard.ZstdDecompressor().decompressobj().decompress,
}
PIECES = [b"<html>" + b"hello compressed world " * 40, b"", b"x", b"tail " * 500]


# -- codecs ------------------------------------------------------------------------------


@pytest.mark.parametrize("library", [GZIP, BROTLI, ZSTD])
def test_every_piece_is_flushed_so_the_client_can_decode_it_at_once(library: str) -> None:
    """Envoy compresses each piece with State::Flush: what went out decodes to all the
    input given so far, before the stream ends."""
    c = Compressor(SETTINGS[library])
    decode = DECODERS[library]()
    seen = b""
    for i, piece in enumerate(PIECES):
        out = c.compress(piece, finish=i == len(PIECES) - 1)
        seen += decode(out)
        assert seen == b"".join(PIECES[: i + 1])


@pytest.mark.parametrize("library", [GZIP, BROTLI, ZSTD])
def test_decompressor_one_byte_at_a_time_and_whole(library: str) -> None:
    c = Compressor(SETTINGS[library])
    blob = b"".join(c.compress(p, i == len(PIECES) - 1) for i, p in enumerate(PIECES))
    whole = Decompressor({**SETTINGS[library], "window_bits": 15, "max_inflate_ratio": None})
    assert whole.decompress(blob) == b"".join(PIECES)
    d = Decompressor({**SETTINGS[library], "window_bits": 15, "max_inflate_ratio": None})
    assert b"".join(d.decompress(blob[i : i + 1]) for i in range(len(blob))) == b"".join(PIECES)
    assert not d.error


def test_gzip_output_is_standard_gzip_with_the_configured_settings() -> None:
    settings = {**SETTINGS[GZIP], "compression_level": 9, "window_bits": 15, "memory_level": 9}
    c = Compressor(settings)
    out = c.compress(b"abc" * 1000, False) + c.compress(b"", True)
    assert gzip.decompress(out) == b"abc" * 1000


def test_zstd_checksum_and_strategy() -> None:
    c = Compressor({**SETTINGS[ZSTD], "enable_checksum": True, "strategy": 9})
    out = c.compress(b"z" * 5000, True)
    params = zstandard.get_frame_parameters(out)
    assert params.has_checksum
    assert zstandard.ZstdDecompressor().decompressobj().decompress(out) == b"z" * 5000


def test_gzip_bomb_stops_at_the_inflate_ratio() -> None:
    """Envoy's zlib decompressor: a piece may inflate to max_inflate_ratio times its size;
    past that the rest of the piece is dropped and zlib_data_error counted."""
    bomb = gzip.compress(b"\0" * 5_000_000)
    d = Decompressor({"library": GZIP, "window_bits": 15, "max_inflate_ratio": 100})
    out = d.decompress(bomb)
    assert len(out) <= 100 * len(bomb)
    assert d.error == "zlib_data_error"


def test_bad_data_is_an_error_and_the_stream_stays_failed() -> None:
    for library, stat in (
        (GZIP, "zlib_data_error"),
        (BROTLI, "brotli_error"),
        (ZSTD, "zstd_generic_error"),
    ):
        d = Decompressor({"library": library, "window_bits": 15, "max_inflate_ratio": 100})
        assert d.decompress(b"\xff\xfe this is not compressed data at all") == b""
        assert d.error == stat, library
        assert d.decompress(b"more") == b"" and d.failed


# -- Accept-Encoding ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1.0),
        (" 0.5 ", 0.5),
        (".5", 0.5),
        ("+0.25", 0.25),
        ("1e-1", pytest.approx(0.1)),
        ("1e-50", 0.0),  # a C float: underflows to 0, so "q=1e-50" is q=0
        ("abc", None),
        ("", None),
        ("0x1", None),
        ("1_0", None),
        ("--1", None),
    ],
)
def test_q_values_parse_as_absl_simpleatof_into_a_float(text: str, expected: object) -> None:
    assert parse_q(text) == expected


def test_q_value_infinity_and_nan() -> None:
    assert parse_q("inf") == math.inf
    nan = parse_q("nan")
    assert nan is not None and math.isnan(nan)


def test_accept_encoding_items() -> None:
    assert accepted("gzip, br;q=0.5,,  deflate ; q = 0.1") == [
        ("gzip", 1.0),
        ("br", 0.5),
        ("deflate", pytest.approx(0.1)),
    ]
    assert accepted("gzip;q=x, br") == [("br", 1.0)]  # an unparsable q drops the item
    assert accepted("gzip;level=1;q=0") == [("gzip", 1.0)]  # only the first parameter counts


CHAIN = (GZ, BR, ZS)


@pytest.mark.parametrize(
    ("accept", "ctype", "encoding", "stat"),
    [
        ("gzip", "text/plain", "gzip", HeaderStat.VALID_COMPRESSOR),
        ("br;q=0.9, gzip;q=0.8", "text/plain", "br", HeaderStat.VALID_COMPRESSOR),
        ("gzip, br", "text/plain", "gzip", HeaderStat.VALID_COMPRESSOR),
        ("gzip, zstd", "text/plain", "zstd", HeaderStat.VALID_COMPRESSOR),  # choose_first
        ("*", "text/plain", "gzip", HeaderStat.WILDCARD),
        ("*;q=0.5, gzip;q=0", "text/plain", "br", HeaderStat.WILDCARD),
        ("identity", "text/plain", "identity", HeaderStat.IDENTITY),
        ("identity;q=0", "text/plain", "identity", HeaderStat.NOT_VALID),
        ("", "text/plain", "identity", HeaderStat.NOT_VALID),
        ("deflate", "text/plain", "identity", HeaderStat.NOT_VALID),
        ("GZIP", "text/plain", "identity", HeaderStat.NOT_VALID),  # codings are case-sensitive
        ("gzip", "image/png", "identity", HeaderStat.NOT_VALID),  # no compressor for the type
        ("gzip", "TEXT/Plain; charset=x", "gzip", HeaderStat.VALID_COMPRESSOR),
        ("gzip", None, "gzip", HeaderStat.VALID_COMPRESSOR),
    ],
)
def test_choose_encoding_as_envoy(
    accept: str, ctype: str | None, encoding: str, stat: HeaderStat
) -> None:
    assert choose(accept, ctype, CHAIN) == Decision(encoding, stat)


def test_content_types_narrow_the_candidates() -> None:
    # gzip does not take JSON, so br wins although gzip is preferred by the client.
    chain = (GZ, JSON_BR)
    assert choose("gzip;q=1, br;q=0.5", "application/json", chain) == Decision(
        "br", HeaderStat.VALID_COMPRESSOR
    )


def test_wildcard_after_an_equal_identity_keeps_envoys_map_quirk() -> None:
    """Envoy's equal-q lookup inserts "identity" as a candidate numbered 0; "*" then picks
    the lowest number, ties broken by name (a std::map): "identity" sorts before "zstd"."""
    zstd_first = (Candidate("zstd", TEXT, False), GZ)
    assert choose("*, identity", "text/plain", zstd_first) == Decision(
        "identity", HeaderStat.WILDCARD
    )
    assert choose("*, identity", "text/plain", CHAIN) == Decision("gzip", HeaderStat.WILDCARD)


# -- the decompressor's header edits (Envoy's HeaderUtility tests) -----------------------


def test_add_encoding_to_accept_encoding() -> None:
    assert add_encoding("one,two", "three") == "one,two,three"
    assert add_encoding("one,two", "one") == "two,one"
    assert add_encoding("one;q=0.3,two", "two") == "one;q=0.3,two"
    assert add_encoding("one;q=0.3,two", "one") == "two,one"
    assert add_encoding("", "one") == "one"
    assert add_encoding(" , gzip ;q=0.1, br", "gzip") == "br,gzip"


def test_content_encoding_first_coding() -> None:
    assert first_coding_matches("GZip , br", "gzip")
    assert not first_coding_matches("br, gzip", "gzip")
    assert not first_coding_matches(None, "gzip")
    assert remaining_codings("gzip") is None
    assert remaining_codings(" gzip , br ") == "br"
    assert remaining_codings("gzip,") == ""
