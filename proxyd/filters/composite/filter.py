"""The composite filter alone: nothing to do. Inside an ExtensionWithMatcher, the
worker's matching wrapper (:mod:`proxyd.worker.filter_matching`) runs the filter an
ExecuteFilterAction names in its place."""

from __future__ import annotations

from typing import Any

from proxyd.filters.api import HttpFilter, StatsScope

DELEGATED = "composite.filter_delegation_success"
DELEGATION_FAILED = "composite.filter_delegation_error"


class Factory:
    """``delegated()`` counts a stream handed to the filter an action named (a filter
    proxyd could not make for a stream is refused in the config, so
    ``filter_delegation_error`` stays at 0)."""

    __slots__ = ("name", "wanted_headers", "decodes", "encodes", "stats")

    # The matching wrapper hands this filter's place to the filter an action names.
    delegates = True

    def __init__(
        self, name: str, config: Any, per_route: Any, stats: StatsScope, runtime: Any = None
    ) -> None:
        self.name = name
        self.stats = stats
        stats.inc(DELEGATED, 0)  # shown at 0 from the start, as Envoy does
        stats.inc(DELEGATION_FAILED, 0)
        self.wanted_headers: frozenset[str] = frozenset()
        self.decodes = False
        self.encodes = False

    def delegated(self) -> None:
        self.stats.inc(DELEGATED)

    def create(self) -> HttpFilter:
        return HttpFilter()
