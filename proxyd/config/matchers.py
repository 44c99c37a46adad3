"""Envoy's header and string matchers (route.v3.HeaderMatcher, type.matcher.v3.
StringMatcher) → the epoch's HeaderMatch and StringMatch: routes and filters use them."""

from __future__ import annotations

from typing import Any

from proxyd.config.proto import join
from proxyd.config.values import check_regex
from proxyd.epoch import HeaderMatch, StringMatch
from proxyd.errors import ConfigError


def header_match(h: Any, path: str, file: str) -> HeaderMatch:
    invert = h.invert_match
    which = h.WhichOneof("header_match_specifier")
    match: StringMatch | None
    if which == "exact_match":
        match = StringMatch("exact", h.exact_match)
    elif which == "string_match":
        match = string_match(h.string_match, join(path, "string_match"), file)
    elif which == "present_match":
        match = None
        if not h.present_match:  # "must be absent": present, inverted
            invert = not invert
    else:  # Envoy: no specifier means the header must be present
        match = None
    return HeaderMatch(
        name=h.name.lower(),
        match=match,
        invert_match=invert,
        treat_missing_as_empty=h.treat_missing_header_as_empty,
    )


def string_match(sm: Any, path: str, file: str) -> StringMatch:
    """A type.matcher.v3.StringMatcher → StringMatch (a safe_regex keeps its pattern)."""
    kind = sm.WhichOneof("match_pattern")
    if kind == "safe_regex":
        value = sm.safe_regex.regex
        check_regex(value, join(path, "safe_regex.regex"), file)
    elif kind in ("exact", "prefix", "suffix", "contains"):
        value = getattr(sm, kind)
    else:
        raise ConfigError(
            file, path, "one of exact, prefix, suffix, contains or safe_regex is required"
        )
    return StringMatch(kind=kind, value=value, ignore_case=sm.ignore_case)
