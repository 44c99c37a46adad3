"""A filter with a matcher around it (Envoy's ExtensionWithMatcher), on a stream.

The matcher (:class:`proxyd.epoch.FilterMatcher`) is evaluated once, on the request
headers, by the same tree as a virtual host's matcher
(:class:`proxyd.protocol.route_tree.RouteTree`), its actions standing where routes stand
there. What it gives decides the stream's filter for good:

* no match: the wrapped filter runs, as if there were no matcher;
* ``SkipFilter``: the filter sits out the whole stream (requests and responses);
* the composite filter's ``ExecuteFilterAction``: the filter that action names runs in
  the composite's place (a composite that nothing matched does nothing); around any other
  filter the action changes nothing, as in Envoy, where only the composite takes it.

The per-route config of the wrapped filter (by the wrapper's name) reaches it as it would
without the matcher; a filter run by a composite gets none.
"""

from __future__ import annotations

from typing import Any, cast

from proxyd.epoch import FilterMatcher
from proxyd.filters.api import (
    CONTINUE,
    FilterFactory,
    FilterStream,
    HttpFilter,
    ResponseView,
    Result,
)
from proxyd.protocol.route_tree import RouteTree
from proxyd.protocol.routing import compile_string_match

_PSEUDO = frozenset({":path", ":authority"})


def _action_at(index: int, *_request: Any) -> int:
    return index  # the tree's "route" is the action's index


class MatchingFactory:
    """The wrapped filter's factory, the compiled tree and, per action, the factory of
    the filter a composite runs for it (None for SkipFilter)."""

    __slots__ = (
        "name", "wanted_headers", "response_headers", "decodes", "encodes", "inner", "tree",
        "skips", "delegates", "composite",
    )  # fmt: skip

    def __init__(
        self,
        inner: FilterFactory,
        matcher: FilterMatcher,
        delegates: tuple[FilterFactory | None, ...],
    ) -> None:
        self.name = inner.name
        self.inner = inner
        # (RouteTree is typed for routes; here its "routes" are action indexes.)
        self.tree = RouteTree(matcher.tree, cast(Any, _action_at), compile_string_match)
        self.skips = tuple(a.kind == "skip" for a in matcher.actions)
        self.composite = bool(getattr(inner, "delegates", False))
        self.delegates = delegates if self.composite else tuple(None for _ in delegates)
        factories = [inner, *(d for d in self.delegates if d is not None)]
        wanted = set(self.tree.inputs - _PSEUDO)
        response: set[str] = set()
        for fac in factories:
            wanted |= fac.wanted_headers
            response |= getattr(fac, "response_headers", frozenset())
        self.wanted_headers = frozenset(wanted)
        self.response_headers = frozenset(response)
        self.decodes = True  # the matcher reads the request headers
        self.encodes = any(fac.encodes for fac in factories)

    def create(self) -> MatchingFilter:
        return MatchingFilter(self)


class MatchingFilter(HttpFilter):
    __slots__ = ("factory", "active")

    def __init__(self, factory: MatchingFactory) -> None:
        self.factory = factory
        # The filter this stream runs; None until the request headers, or when skipped.
        self.active: HttpFilter | None = None

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        f = self.factory
        head = stream.head
        index: Any = f.tree.match(head.host, head.path, head.path, head.headers)
        if index is None:
            chosen: FilterFactory | None = None if f.composite else f.inner
        elif f.skips[index]:
            chosen = None
        elif f.composite:
            chosen = f.delegates[index]
            f.inner.delegated()  # type: ignore[attr-defined]  # (the composite's factory)
        else:
            chosen = f.inner
        if chosen is None:
            return CONTINUE
        active = self.active = chosen.create()
        if not chosen.decodes:
            return CONTINUE
        return await active.on_request_headers(stream, end_stream)

    async def on_request_data(
        self, stream: FilterStream, data: bytearray, end_stream: bool
    ) -> Result:
        active = self.active
        if active is None:
            return CONTINUE
        return await active.on_request_data(stream, data, end_stream)

    async def on_request_trailers(self, stream: FilterStream) -> Result:
        active = self.active
        if active is None:
            return CONTINUE
        return await active.on_request_trailers(stream)

    async def on_response_headers(
        self, stream: FilterStream, response: ResponseView, end_stream: bool
    ) -> Result:
        active = self.active
        if active is None:
            return CONTINUE
        return await active.on_response_headers(stream, response, end_stream)

    async def on_response_data(
        self, stream: FilterStream, data: bytearray, end_stream: bool
    ) -> Result:
        active = self.active
        if active is None:
            return CONTINUE
        return await active.on_response_data(stream, data, end_stream)

    def on_stream_complete(self, stream: FilterStream) -> None:
        if self.active is not None:
            self.active.on_stream_complete(stream)
