"""The simple cache: stored responses in this worker's memory.

Envoy's ``SimpleHttpCache`` is one map per process, shared by every filter that names it
and kept across config updates; proxyd's workers share nothing, so each worker has its
own (:func:`proxyd.filters.cache.filter.store_of`): a response cached by one worker is a miss in another until that
one has fetched it too. Like Envoy's, it has no size limit and no eviction: an entry is
replaced when a newer response for its key is stored. With ``vary`` (``cache`` v3
only), one key holds a response per value of the varying request headers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from proxyd.filters.cache.rules import ResponseRules, response_rules

Key = tuple[str, str, str]


class LookupFailed(Exception):
    """The storage could not be read (a file cache whose directory is missing)."""


Variant = tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored response: its status, its header lines as they went downstream (no
    hop-by-hop lines, no ``age``), its body, what its headers say, when it was
    received, and its age then (RFC 9111 §4.2.3's corrected initial age: the larger of
    the time since its ``date`` and its ``age`` line)."""

    status: int
    lines: tuple[tuple[str, str], ...]
    body: bytes
    rules: ResponseRules
    response_time: float
    initial_age: float = 0.0

    def age(self, now: float) -> int:
        """Its age at ``now``, in whole seconds."""
        return int(self.initial_age + max(0.0, now - self.response_time))

    def header(self, name: str) -> str | None:
        for n, v in self.lines:
            if n == name:
                return v
        return None


def new_entry(
    status: int, lines: tuple[tuple[str, str], ...] | list[tuple[str, str]], body: bytes, now: float
) -> Entry:
    """The entry of a response received at ``now``: its ``age`` line (a value that is not
    a number counts as none) goes into its initial age, not into its lines."""
    age_value = 0
    kept = []
    for name, value in lines:
        if name == "age":
            v = value.strip(" \t")
            if v.isascii() and v.isdigit():
                age_value = max(age_value, int(v))
            continue
        kept.append((name, value))
    rules = rules_of(kept)
    apparent = max(0.0, now - rules.date) if rules.date is not None else 0.0
    return Entry(status, tuple(kept), body, rules, now, max(apparent, float(age_value)))


def rules_of(lines: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> ResponseRules:
    def joined(name: str) -> str | None:
        values = [v for n, v in lines if n == name]
        return ",".join(values) if values else None

    return response_rules(joined("cache-control"), joined("date"), joined("expires"))


@dataclass(slots=True)
class Variants:
    """The responses of one key that varied on ``names``."""

    names: tuple[str, ...]
    entries: dict[Variant, Entry]


class Store:
    """One cache's entries, by (scheme, host, path with query)."""

    __slots__ = ("entries", "marks", "inflight")

    def __init__(self) -> None:
        self.entries: dict[Key, Entry | Variants] = {}
        # cache_v2: the keys a request is fetching; others that miss wait for it.
        self.inflight: dict[Key, trio.Event] = {}
        # cache_v2: keys whose last request could not be stored; the next request for
        # one goes upstream without being stored either (Envoy 1.40's cache sessions).
        self.marks: set[Key] = set()

    def take_mark(self, key: Key) -> bool:
        if key in self.marks:
            self.marks.discard(key)
            return True
        return False

    async def lookup(
        self, key: Key, values: Callable[[tuple[str, ...]], Variant]
    ) -> tuple[Entry | None, Variant | None]:
        """The entry for ``key`` (and its variant key: ``values(names)`` gives the
        request's values of the varying headers)."""
        found = self.entries.get(key)
        if found is None or isinstance(found, Entry):
            return found, None
        variant = values(found.names)
        return found.entries.get(variant), variant

    async def insert(
        self, key: Key, entry: Entry, vary: tuple[str, ...], variant: Variant | None
    ) -> None:
        if not vary:
            self.entries[key] = entry
            return
        found = self.entries.get(key)
        if not isinstance(found, Variants) or found.names != vary:
            found = self.entries[key] = Variants(vary, {})
        assert variant is not None
        found.entries[variant] = entry

    def __len__(self) -> int:
        return len(self.entries)


class CacheStore(Protocol):
    """What the filter asks of a storage (:class:`Store`, :class:`.disk.DiskStore`)."""

    marks: set[Key]
    inflight: dict[Key, trio.Event]

    async def lookup(
        self, key: Key, values: Callable[[tuple[str, ...]], Variant]
    ) -> tuple[Entry | None, Variant | None]: ...

    async def insert(
        self, key: Key, entry: Entry, vary: tuple[str, ...], variant: Variant | None
    ) -> None: ...

    def take_mark(self, key: Key) -> bool: ...
