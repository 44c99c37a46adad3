"""The allow-list tree's vocabulary, shared by :mod:`proxyd.config.supported` and the
filter packages' ``config.SPEC`` (which :mod:`proxyd.config.supported` imports, so
they cannot import it back).

A spec maps each field proxyd implements to the spec of its own message, to
:data:`LEAF` (a scalar, enum, duration or wrapper), or to :class:`AnyOf` (a typed
``Any``: the payload types proxyd supports, each with its spec).
"""

from __future__ import annotations

from dataclasses import dataclass


class _Leaf:
    def __repr__(self) -> str:
        return "LEAF"


LEAF = _Leaf()


@dataclass(frozen=True)
class AnyOf:
    """A typed ``Any`` field: payload types proxyd supports, by full name."""

    what: str  # "HTTP filter", "access logger", ... for messages
    types: dict[str, Spec]


Spec = dict[str, "Spec"] | _Leaf | AnyOf

# Matchers shared by the route table and the filters that take Envoy's matchers.
REGEX: Spec = {"regex": LEAF}

STRING_MATCHER: Spec = {
    "exact": LEAF,
    "prefix": LEAF,
    "suffix": LEAF,
    "contains": LEAF,
    "safe_regex": REGEX,
    "ignore_case": LEAF,
}

# config.route.v3.HeaderMatcher (proxyd.config.routes.header_match compiles it).
HEADER_MATCHER: Spec = {
    "name": LEAF,
    "exact_match": LEAF,
    "present_match": LEAF,
    "string_match": STRING_MATCHER,
    "invert_match": LEAF,
    "treat_missing_header_as_empty": LEAF,
}
