"""The set_metadata filter on a stream, as Envoy's ``SetMetadataFilter``.

On the request headers, each untyped entry in order: a namespace the stream has no
metadata in gets a copy of the value; one it has is merged with the value when the entry
may overwrite (``StructUtil::update``: a value of another kind or a scalar replaces, a
list is appended to, an object is merged key by key), and otherwise left as it is,
counting ``set_metadata.overwrite_denied``. Then the typed entries: a namespace not yet
set is set, an existing one replaced when the entry may overwrite, else the same count.
The metadata lives on the stream (``filter_state["dynamic_metadata"]``, shared with the
header_to_metadata filter and read by ``%DYNAMIC_METADATA(...)%``).
"""

from __future__ import annotations

from typing import Any

from proxyd.filters.api import CONTINUE, FilterStream, HttpFilter, Result, StatsScope

METADATA = "dynamic_metadata"
TYPED_METADATA = "typed_dynamic_metadata"
OVERWRITE_DENIED = "set_metadata.overwrite_denied"


def copy_value(value: Any) -> Any:
    """A deep copy of plain metadata (objects, lists, scalars)."""
    if isinstance(value, dict):
        return {k: copy_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_value(v) for v in value]
    return value


def _kind(value: Any) -> type:
    return type(value)  # bool, float, str, dict, list, NoneType: a protobuf Value's kind


def merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    """Envoy's ``StructUtil::update(into, update)``."""
    for key, value in update.items():
        current = into.get(key, _MISSING)
        if current is _MISSING or _kind(current) is not _kind(value):
            into[key] = copy_value(value)
        elif isinstance(value, dict):
            merge(current, value)
        elif isinstance(value, list):
            current.extend(copy_value(value))
        else:
            into[key] = value


_MISSING = object()


class Factory:
    """One per epoch and route."""

    __slots__ = ("name", "wanted_headers", "decodes", "encodes", "stats", "untyped", "typed")

    def __init__(
        self, name: str, config: Any, per_route: Any, stats: StatsScope, runtime: Any = None
    ) -> None:
        self.name = name
        self.stats = stats
        self.untyped: tuple[tuple[str, dict[str, Any], bool], ...] = tuple(
            (ns, value, bool(allow)) for ns, value, allow in config["untyped"]
        )
        self.typed: tuple[tuple[str, str, bool], ...] = tuple(
            (ns, type_url, bool(allow)) for ns, type_url, allow in config["typed"]
        )
        self.wanted_headers: frozenset[str] = frozenset()
        self.decodes = bool(self.untyped or self.typed)
        self.encodes = False
        stats.inc(OVERWRITE_DENIED, 0)  # shown at 0 from the start, as Envoy does

    def create(self) -> SetMetadataFilter:
        return SetMetadataFilter(self)


class SetMetadataFilter(HttpFilter):
    __slots__ = ("factory",)

    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        f = self.factory
        state = stream.filter_state
        if state is None:
            state = stream.filter_state = {}
        if f.untyped:
            metadata: Any = state.setdefault(METADATA, {})
            for namespace, value, allow_overwrite in f.untyped:
                current = metadata.get(namespace)
                if current is None:
                    metadata[namespace] = copy_value(value)
                elif allow_overwrite:
                    merge(current, value)
                else:
                    f.stats.inc(OVERWRITE_DENIED)
        if f.typed:
            typed: Any = state.setdefault(TYPED_METADATA, {})
            for namespace, type_url, allow_overwrite in f.typed:
                if namespace not in typed or allow_overwrite:
                    typed[namespace] = type_url
                else:
                    f.stats.inc(OVERWRITE_DENIED)
        return CONTINUE
