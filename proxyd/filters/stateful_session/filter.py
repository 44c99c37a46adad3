"""The stateful session filter on a stream: Envoy's ``StatefulSession``.

On the request: the route's ``StatefulSessionPerRoute`` (else the filter's config)
decides. ``disabled``, or no session state, or (cookie) a request path the cookie's
``path`` does not cover: the stream has no session and the filter does nothing more.
Else the host the request names (:mod:`.session`) becomes the stream's
``override_host`` (address, strict), which the router's host selection honours
(:func:`proxyd.filters.stateful_session.override.pick`).

On the response of a stream with a session: when an upstream host was chosen and it
is not the one the request named, the response names it: a ``Set-Cookie`` line
``name="value"; Max-Age=ttl; Path=path; <attributes>; HttpOnly`` added (the upstream's own cookies
stay), or the header set to the base64 of its address.
"""

from __future__ import annotations

import time
from typing import Any

from proxyd.filters.api import CONTINUE, FilterStream, HttpFilter, ResponseView, Result, StatsScope
from proxyd.filters.stateful_session.session import (
    b64encode,
    cookie_address,
    encode_cookie,
    header_address,
    path_matcher,
)
from proxyd.protocol.hash_policy import cookie_value, set_cookie_value


class Factory:
    """One per epoch and route."""

    __slots__ = ("name", "wanted_headers", "decodes", "encodes", "cookie", "header", "path",
                 "ttl", "attributes", "strict", "covers")  # fmt: skip

    def __init__(
        self, name: str, config: Any, per_route: Any, stats: StatsScope, runtime: Any = None
    ) -> None:
        self.name = name
        state = config
        if per_route is not None:  # the route's: disabled, or a whole config of its own
            state = None if per_route["disabled"] else per_route["config"]
        if state is None:
            state = {"kind": ""}
        kind = state["kind"]
        self.cookie = state["name"] if kind == "cookie" else ""
        self.header = state["name"] if kind == "header" else ""
        self.path = state.get("path", "")
        self.ttl = state.get("ttl", 0)
        self.attributes = tuple((n, v) for n, v in state.get("attributes", ()))
        self.strict = bool(state.get("strict", False))
        self.covers = path_matcher(self.path) if kind == "cookie" else None
        self.decodes = self.encodes = bool(kind)
        wanted = "cookie" if kind == "cookie" else self.header
        self.wanted_headers: frozenset[str] = frozenset([wanted]) if kind else frozenset()

    def create(self) -> StatefulSessionFilter:
        return StatefulSessionFilter(self)


class StatefulSessionFilter(HttpFilter):
    __slots__ = ("factory", "session", "address")

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.session = False  # the stream has a session state (Envoy's session_state_)
        self.address: str | None = None  # the host the request named

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        f = self.factory
        headers = stream.head.headers
        if f.cookie:
            covers = f.covers
            if covers is not None and not covers(stream.head.path):
                return CONTINUE
            value = _cookie(headers.get("cookie", ""), f.cookie)
            address = cookie_address(value, int(time.time())) if value else None
        else:
            # The first line's value (the parser joins repeated lines with ",", which
            # base64 never holds), as Envoy reads the header's first value.
            value = headers.get(f.header, "").partition(",")[0]
            address = header_address(value) if value else None
        self.session = True
        if address is not None:
            self.address = address
            stream.override_host = (address, f.strict)
        return CONTINUE

    async def on_response_headers(
        self, stream: FilterStream, response: ResponseView, end_stream: bool
    ) -> Result:
        if not self.session:
            return CONTINUE
        host = stream.upstream_host
        if host is None or host == self.address:
            return CONTINUE
        f = self.factory
        if f.cookie:
            expires = int(time.time()) + f.ttl if f.ttl else 0
            line = set_cookie_value(
                f.cookie, encode_cookie(host, expires), f.path, f.ttl, f.attributes
            )
            stream.add_response_header("set-cookie", line)
        else:
            stream.set_response_header(f.header, b64encode(host.encode("latin-1")))
        return CONTINUE


def _cookie(header: str, name: str) -> str:
    """The cookie's value; the parser joins several ``cookie`` lines of an HTTP/1.1
    request with "," (Envoy searches each line), which a session value never holds."""
    if "," not in header:
        return cookie_value(header, name)
    for line in header.split(","):
        value = cookie_value(line, name)
        if value:
            return value
    return ""
