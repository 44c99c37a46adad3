"""Which encoding a response gets: Envoy's ``CompressorFilter::chooseEncoding``.

Pure functions over the request's ``Accept-Encoding``, the response's content type and
the compressor filters of the stream's chain, in configuration order. Envoy's rules,
kept exactly (``source/extensions/filters/http/compressor/compressor_filter.cc``):

* The candidates are the chain's compressors whose content types admit the response's
  (``Content-Type`` before any ``;``, trimmed, compared without case); of several for the
  same encoding the first counts. Each is numbered in order of registration.
* ``Accept-Encoding`` is split on ``,`` (empty items dropped); an item is a coding (the
  text before ``;``, trimmed) and a q-value (1 unless the text after the first ``;`` is
  ``q=<float>``; an unparsable number drops the item). A coding with q=0 removes that
  encoding from the candidates.
* No items or no candidates: identity ("not valid"). Otherwise the item with the highest
  q wins among candidates, ``identity`` and ``*``; an equal q replaces the choice only
  for a ``choose_first`` compressor. (Envoy looks the equal case up with
  ``std::map::operator[]``, which inserts ``identity`` / ``*`` as a candidate numbered 0;
  that is kept, as it changes what ``*`` picks.)
* A choice with q 0: identity, "not valid"; ``identity``: identity; ``*``: the candidate
  registered first (ties by name, a ``std::map``'s order); otherwise that coding.

Codings are matched as written (case-sensitive), ``identity`` and ``*`` too. The q-value is
read as ``absl::SimpleAtof`` reads it into a float.
"""

from __future__ import annotations

import enum
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

IDENTITY = "identity"
WILDCARD = "*"


class HeaderStat(enum.Enum):
    """Which ``header_*`` stat the decision counts (Envoy's ``EncodingDecision::HeaderStat``)."""

    NOT_VALID = "header_not_valid"
    IDENTITY = "header_identity"
    WILDCARD = "header_wildcard"
    VALID_COMPRESSOR = "header_compressor_used"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One compressor filter of the chain, as the decision sees it."""

    encoding: str  # its Content-Encoding token ("gzip", "br", "zstd")
    content_types: frozenset[str]  # lower case
    choose_first: bool


@dataclass(frozen=True, slots=True)
class Decision:
    encoding: str
    stat: HeaderStat


_SPACE = " \t\n\v\f\r"
_FLOAT = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan)", re.IGNORECASE
)


def parse_q(text: str) -> float | None:
    """``absl::SimpleAtof``: surrounding whitespace allowed, the whole rest a decimal
    float (or inf/nan), stored in a C ``float``; None when it is not one."""
    text = text.strip(_SPACE)
    if not _FLOAT.fullmatch(text) or text.startswith(("+-", "-+")):
        return None
    value = float(text)
    if math.isnan(value) or math.isinf(value):
        return value
    try:
        return float(struct.unpack("f", struct.pack("f", value))[0])
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def media_type(content_type: str | None) -> str:
    """The content type before any parameters, trimmed (Envoy keeps its case; the sets
    compare without it, so this lower-cases)."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip(_SPACE).lower()


def accepted(accept_encoding: str) -> list[tuple[str, float]]:
    """The (coding, q) items of an ``Accept-Encoding`` value, as Envoy reads them."""
    out: list[tuple[str, float]] = []
    for token in accept_encoding.split(","):
        if not token:
            continue
        coding, semi, params = token.partition(";")
        q = 1.0
        if semi:
            name, eq, value = params.partition("=")
            if eq and name.strip(_SPACE).lower() == "q":
                parsed = parse_q(value)
                if parsed is None:
                    continue  # Envoy skips an item whose q-value does not parse
                q = parsed
        out.append((coding.strip(_SPACE), q))
    return out


def choose(accept_encoding: str, content_type: str | None, chain: Sequence[Candidate]) -> Decision:
    """The encoding for a response (``identity`` when none)."""
    ctype = media_type(content_type)
    # encoding -> (registration number, choose_first), in registration order.
    allowed: dict[str, tuple[int, bool]] = {}
    count = 0
    for c in chain:
        if ctype and c.content_types and ctype not in c.content_types:
            continue
        if c.encoding not in allowed:
            allowed[c.encoding] = (count, c.choose_first)
            count += 1
    pairs = accepted(accept_encoding)
    for coding, q in pairs:
        if not q:
            allowed.pop(coding, None)
    if not pairs or not allowed:
        return Decision(IDENTITY, HeaderStat.NOT_VALID)
    choice, best = IDENTITY, 0.0
    for coding, q in pairs:
        if coding in allowed or coding == IDENTITY or coding == WILDCARD:
            if q > best:
                choice, best = coding, q
            elif q == best:
                entry = allowed.setdefault(coding, (0, False))  # std::map::operator[]
                if entry[1]:
                    choice, best = coding, q
    if not best:
        return Decision(IDENTITY, HeaderStat.NOT_VALID)
    if choice == IDENTITY:
        return Decision(IDENTITY, HeaderStat.IDENTITY)
    if choice == WILDCARD:
        first = min(sorted(allowed), key=lambda name: allowed[name][0])
        return Decision(first, HeaderStat.WILDCARD)
    return Decision(choice, HeaderStat.VALID_COMPRESSOR)
