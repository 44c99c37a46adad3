"""The header mutation filter: Envoy's ``HeaderMutation``, folded into the route's
header mutations.

The filter's steps and those of every per-route level are resolved once per epoch and
route into :class:`~proxyd.epoch.HeaderMutations` levels of one step each, in Envoy's
order: the filter's own first, then the route configuration's, the virtual host's and
the route's (the reverse of those three unless ``most_specific_header_mutations_wins``).
The worker applies them with the route's ``request_headers_to_add`` and the like
(:class:`proxyd.protocol.header_mutations.MutationPlan`, on the head bytes): the request
steps before the route's own request mutations (Envoy's router applies those after the
filters), the response steps after the route's response mutations (Envoy's router
applies those before the encoder filters). So the filter itself runs no code per stream
(``decodes`` and ``encodes`` are false) and offers :attr:`Factory.header_levels`.
"""

from __future__ import annotations

from typing import Any

from proxyd.epoch import HeaderMutations, from_wire
from proxyd.filters.api import HttpFilter, StatsScope
from proxyd.protocol.runtime import EMPTY, Snapshot


def _levels(steps: list[Any]) -> list[HeaderMutations]:
    return [from_wire(HeaderMutations, w) for w in steps]


class Factory:
    """One per epoch and route: ``header_levels`` is (request steps, response steps)."""

    __slots__ = ("name", "wanted_headers", "decodes", "encodes", "header_levels")

    def __init__(
        self, name: str, config: Any, per_route: Any, stats: StatsScope, runtime: Snapshot = EMPTY
    ) -> None:
        self.name = name
        self.wanted_headers: frozenset[str] = frozenset()
        self.decodes = False
        self.encodes = False
        routes = list(per_route["levels"]) if per_route is not None else []
        if not config.get("most_specific_wins", False):
            routes.reverse()  # the route's first: the least specific level has the last word
        request = _levels(config["request"])
        response = _levels(config["response"])
        for level in routes:
            request += _levels(level["request"])
            response += _levels(level["response"])
        self.header_levels: tuple[tuple[HeaderMutations, ...], tuple[HeaderMutations, ...]] = (
            tuple(request),
            tuple(response),
        )

    def create(self) -> HttpFilter:
        return HttpFilter()
