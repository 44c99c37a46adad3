"""The CSRF filter on a stream: Envoy's ``CsrfFilter``.

With the policy (the route's ``CsrfPolicy`` if it has one, else the filter's) enabled or
shadow-enabled, a ``POST``, ``PUT``, ``DELETE`` or ``PATCH`` is checked:

* its source origin is the host and port of ``origin`` (else, when absent or empty, of
  ``referer``), as :func:`host_and_port` reads them; an origin of ``null`` is missing;
* the target origin is the same of ``http://`` + the request's Host;
* a missing source counts ``csrf.missing_source_origin`` (only); a source that is
  neither the target nor matched by ``additional_origins`` counts
  ``csrf.request_invalid``; else ``csrf.request_valid``.

An invalid request is answered 403 "Invalid origin" (details ``csrf_origin_mismatch``)
unless only shadow mode is on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxyd.epoch import StringMatch, from_wire
from proxyd.filters.api import CONTINUE, FilterStream, HttpFilter, LocalReply, Result, StatsScope
from proxyd.filters.cors.filter import draw
from proxyd.protocol.routing import compile_string_match
from proxyd.protocol.runtime import EMPTY, Snapshot

MISSING = "csrf.missing_source_origin"
INVALID = "csrf.request_invalid"
VALID = "csrf.request_valid"
REPLY = LocalReply(403, "Invalid origin", details="csrf_origin_mismatch")
MODIFY_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
WANTED = frozenset({"origin", "referer"})
_NEVER = (0, 1)


def host_and_port(value: str) -> str:
    """The host and port of URL ``value`` as Envoy 1.40 reads them for CSRF (checked
    against Envoy): the authority after ``scheme://`` up to the path or query, without
    user info, kept as written (no lower-casing, a default port stays); a value that is
    not ``scheme://authority`` counts as it is."""
    if not value:
        return ""
    scheme, sep, rest = value.partition("://")
    if not sep or not scheme:
        return value
    end = len(rest)
    for c in "/?":
        i = rest.find(c)
        if i >= 0:
            end = min(end, i)
    authority = rest[:end].rpartition("@")[2]
    return authority or value


def source_origin(headers: dict[str, str]) -> str:
    """Envoy's source origin: of ``origin``, else (absent or empty) of ``referer``; an
    origin of ``null`` (a privacy-sensitive context) is a missing one."""
    origin = headers.get("origin", "")
    if origin == "null":
        return ""
    if origin:
        return host_and_port(origin)
    return host_and_port(headers.get("referer", ""))


class Factory:
    """One per epoch and route, from the route's ``CsrfPolicy`` or else the filter's."""

    __slots__ = ("name", "wanted_headers", "decodes", "encodes", "stats", "enabled", "shadow",
                 "origins")  # fmt: skip

    def __init__(
        self, name: str, config: Any, per_route: Any, stats: StatsScope, runtime: Snapshot = EMPTY
    ) -> None:
        policy = per_route if per_route is not None else config
        self.name = name
        self.stats = stats
        self.enabled = runtime.fraction(*policy["filter_enabled"])
        shadow = policy.get("shadow_enabled")
        self.shadow = _NEVER if shadow is None else runtime.fraction(*shadow)
        self.origins: tuple[Callable[[str], bool], ...] = tuple(
            compile_string_match(from_wire(StringMatch, w)) for w in policy["additional_origins"]
        )
        active = self.enabled[0] > 0 or self.shadow[0] > 0
        self.decodes = active
        self.encodes = False
        self.wanted_headers: frozenset[str] = WANTED if active else frozenset()
        for name_ in (MISSING, INVALID, VALID):
            stats.inc(name_, 0)  # shown at 0 from the start, as Envoy does

    def create(self) -> CsrfFilter:
        return CsrfFilter(self)


class CsrfFilter(HttpFilter):
    __slots__ = ("factory",)

    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        f = self.factory
        enabled = draw(f.enabled)
        shadow = draw(f.shadow)
        if not enabled and not shadow:
            return CONTINUE
        head = stream.head
        if head.method not in MODIFY_METHODS:
            return CONTINUE
        headers = head.headers
        source = source_origin(headers)
        if not source:
            f.stats.inc(MISSING)
        elif source == host_and_port("http://" + head.host) or any(m(source) for m in f.origins):
            f.stats.inc(VALID)
            return CONTINUE
        else:
            f.stats.inc(INVALID)
        if shadow and not enabled:
            return CONTINUE
        return REPLY
