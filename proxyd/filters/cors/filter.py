"""The CORS filter on a stream: Envoy's ``CorsFilter``.

The route's policies (:mod:`.config`) are resolved once per epoch and route, most
specific first: each field comes from the first policy that sets it (origins: the first
non-empty list; ``filter_enabled`` / ``shadow_enabled``: the most specific policy's only,
enabled when unset / shadow off when unset). A route with no policy runs no CORS code, nor does one that answers itself
(``direct_response``, ``redirect``: no route entry in Envoy).

On a request with a non-empty ``origin`` (when the policy is enabled or shadow-enabled):

1. the origin is tested against ``allow_origin_string_match`` (a matcher that matches
   ``*`` allows every origin, as in Envoy); ``cors.origin_valid`` or
   ``cors.origin_invalid`` counts it. In shadow mode (shadow on, filter off) nothing
   more happens;
2. a preflight (``OPTIONS`` with a non-empty ``access-control-request-method``) is
   answered here with 200 and no body (details ``cors_response``), unless the origin
   is not allowed and ``forward_not_matching_preflights`` (default true) lets it go
   upstream. The answer has ``access-control-allow-origin`` (only for an allowed
   origin), ``-allow-credentials: true``, ``-allow-methods`` (``*``: the requested
   method), ``-allow-headers`` (``*``: the requested headers), ``-max-age`` and
   ``-allow-private-network: true`` (when allowed and the request asks for it with
   ``access-control-request-private-network: true``);
3. the response (from upstream, or a local reply) to a request with an allowed origin
   gets ``access-control-allow-origin`` (the request's origin), ``-allow-credentials``
   and ``-expose-headers``, replacing the upstream's own lines of those names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxyd.epoch import StringMatch, from_wire
from proxyd.filters.api import (
    CONTINUE,
    FilterStream,
    HttpFilter,
    LocalReply,
    ResponseView,
    Result,
    StatsScope,
)
from proxyd.protocol.routing import compile_string_match
from proxyd.protocol.runtime import EMPTY, RANDOM, Snapshot

ORIGIN_VALID = "cors.origin_valid"
ORIGIN_INVALID = "cors.origin_invalid"
DETAILS = "cors_response"

ORIGIN = "origin"
REQUEST_METHOD = "access-control-request-method"
REQUEST_HEADERS = "access-control-request-headers"
REQUEST_PRIVATE_NETWORK = "access-control-request-private-network"
ALLOW_ORIGIN = "access-control-allow-origin"
ALLOW_CREDENTIALS = "access-control-allow-credentials"
ALLOW_METHODS = "access-control-allow-methods"
ALLOW_HEADERS = "access-control-allow-headers"
MAX_AGE = "access-control-max-age"
EXPOSE_HEADERS = "access-control-expose-headers"
ALLOW_PRIVATE_NETWORK = "access-control-allow-private-network"

WANTED = frozenset({ORIGIN, REQUEST_METHOD, REQUEST_HEADERS, REQUEST_PRIVATE_NETWORK})

_ALWAYS = (1, 1)
_NEVER = (0, 1)


def _first(policies: list[dict[str, Any]], name: str) -> Any:
    """The value of field ``name`` in the most specific policy that sets it."""
    for p in policies:
        value = p.get(name)
        if value not in (None, "", []):
            return value
    return None


def draw(fraction: tuple[int, int]) -> bool:
    """Envoy's ``featureEnabled``: ``random % denominator < numerator``."""
    numerator, denominator = fraction
    if numerator <= 0:
        return False
    if numerator >= denominator:
        return True
    return RANDOM.getrandbits(64) % denominator < numerator


class Policy:
    """The route's CORS policies merged as Envoy reads them, for one epoch."""

    __slots__ = (
        "origins",
        "allow_methods",
        "allow_headers",
        "expose_headers",
        "max_age",
        "allow_credentials",
        "allow_private_network_access",
        "forward_not_matching_preflights",
        "enabled",
        "shadow",
    )

    def __init__(self, levels: list[dict[str, Any]], runtime: Snapshot = EMPTY) -> None:
        policies = list(reversed(levels))  # most specific first
        origins = _first(policies, "origins") or []
        self.origins: tuple[Callable[[str], bool], ...] = tuple(
            compile_string_match(from_wire(StringMatch, w)) for w in origins
        )
        self.allow_methods: str = _first(policies, "allow_methods") or ""
        self.allow_headers: str = _first(policies, "allow_headers") or ""
        self.expose_headers: str = _first(policies, "expose_headers") or ""
        self.max_age: str = _first(policies, "max_age") or ""
        self.allow_credentials = bool(_first_bool(policies, "allow_credentials"))
        self.allow_private_network_access = bool(
            _first_bool(policies, "allow_private_network_access")
        )
        forward = _first_bool(policies, "forward_not_matching_preflights")
        self.forward_not_matching_preflights = True if forward is None else forward
        top = policies[0] if policies else {}
        enabled = top.get("filter_enabled")
        shadow = top.get("shadow_enabled")
        # (numerator, denominator) each request draws against; the runtime is the epoch's.
        self.enabled = _ALWAYS if enabled is None else runtime.fraction(*enabled)
        self.shadow = _NEVER if shadow is None else runtime.fraction(*shadow)
        if not policies:
            self.enabled = _NEVER

    def origin_allowed(self, origin: str) -> bool:
        return any(m("*") or m(origin) for m in self.origins)

    def preflight_headers(
        self, origin: str, allowed: bool, headers: dict[str, str]
    ) -> tuple[tuple[str, str], ...]:
        """The headers of the answer to a preflight, in Envoy's order."""
        out: list[tuple[str, str]] = []
        if allowed:
            out.append((ALLOW_ORIGIN, origin))
        if self.allow_credentials:
            out.append((ALLOW_CREDENTIALS, "true"))
        if self.allow_methods:
            methods = self.allow_methods
            out.append(
                (ALLOW_METHODS, headers.get(REQUEST_METHOD, "") if methods == "*" else methods)
            )
        if self.allow_headers:
            allow = self.allow_headers
            out.append((ALLOW_HEADERS, headers.get(REQUEST_HEADERS, "") if allow == "*" else allow))
        if self.max_age:
            out.append((MAX_AGE, self.max_age))
        if self.allow_private_network_access and headers.get(REQUEST_PRIVATE_NETWORK) == "true":
            out.append((ALLOW_PRIVATE_NETWORK, "true"))
        return tuple(out)


def _first_bool(policies: list[dict[str, Any]], name: str) -> bool | None:
    for p in policies:
        value = p.get(name)
        if value is not None:
            return bool(value)
    return None


def _levels(per_route: Any) -> list[dict[str, Any]]:
    if per_route is None:
        return []
    return list(per_route.get("levels", ()))


class Factory:
    """One per epoch and route: the route's policies, merged."""

    __slots__ = ("name", "wanted_headers", "decodes", "encodes", "policy", "stats")

    def __init__(
        self, name: str, config: Any, per_route: Any, stats: StatsScope, runtime: Snapshot = EMPTY
    ) -> None:
        self.name = name
        self.policy = Policy(_levels(per_route), runtime)
        active = self.policy.enabled[0] > 0 or self.policy.shadow[0] > 0
        self.wanted_headers: frozenset[str] = WANTED if active else frozenset()
        self.decodes = active
        self.encodes = active
        self.stats = stats
        stats.inc(ORIGIN_VALID, 0)  # shown at 0 from the start, as Envoy does
        stats.inc(ORIGIN_INVALID, 0)

    def create(self) -> CorsFilter:
        return CorsFilter(self)


class CorsFilter(HttpFilter):
    __slots__ = ("factory", "latched", "preflight")

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        # The request's origin when it is a CORS request with an allowed origin.
        self.latched = ""
        # This filter answered the request (a preflight).
        self.preflight = False

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        if not stream.upstream_cluster:
            # A route that answers itself (direct_response, redirect) has no route entry
            # in Envoy, and the CORS filter does nothing there.
            return CONTINUE
        policy = self.factory.policy
        enabled = draw(policy.enabled)
        shadow = draw(policy.shadow)
        if not enabled and not shadow:
            return CONTINUE
        headers = stream.head.headers
        origin = headers.get(ORIGIN, "")
        if not origin:
            return CONTINUE
        allowed = policy.origin_allowed(origin)
        stats = self.factory.stats
        if allowed:
            stats.inc(ORIGIN_VALID)
        else:
            stats.inc(ORIGIN_INVALID)
        if shadow and not enabled:
            return CONTINUE
        if allowed:
            self.latched = origin
        if stream.head.method != "OPTIONS" or not headers.get(REQUEST_METHOD):
            return CONTINUE
        if not allowed and policy.forward_not_matching_preflights:
            return CONTINUE
        self.preflight = True
        return LocalReply(
            200, "", policy.preflight_headers(origin, allowed, headers), details=DETAILS
        )

    async def on_response_headers(
        self, stream: FilterStream, response: ResponseView, end_stream: bool
    ) -> Result:
        origin = self.latched
        if not origin:
            return CONTINUE
        policy = self.factory.policy
        if not self.preflight:
            # A preflight answer carries these already, with the same values.
            stream.set_response_header(ALLOW_ORIGIN, origin)
            if policy.allow_credentials:
                stream.set_response_header(ALLOW_CREDENTIALS, "true")
        if policy.expose_headers:
            stream.set_response_header(EXPOSE_HEADERS, policy.expose_headers)
        return CONTINUE
