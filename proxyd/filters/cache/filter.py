"""The cache filter on a stream: Envoy's ``CacheFilter`` (``cache`` and ``cache_v2``,
which behave the same but for ``vary``).

**Request** (``on_request_headers``). A GET or HEAD with a host, no ``authorization``
and no ``if-none-match`` / ``if-modified-since`` / ``if-range`` is looked up by (scheme,
host, path with query); the scheme is the request's ``x-forwarded-proto``, else the
connection's. ``key_creator_params.exclude_scheme`` / ``exclude_host`` are accepted and,
as in Envoy 1.40, leave the key as it is:

* *fresh* (:func:`.rules.needs_validation` says no): answered here, without the router,
  with the stored status, header lines and body, and ``age``; a single satisfiable
  ``range`` gets 206 with that part of the body (416 when nothing is satisfiable); a
  HEAD gets the head only;
* *stale* (or ``no-cache`` either side): a GET goes upstream with ``if-none-match`` (the
  stored ``etag``) and ``if-modified-since`` (the stored ``last-modified``, else its
  ``date``); a 304 refreshes the entry's header lines (all but the framing and
  validator ones) and the client gets the stored response with them (no ``age``); any
  other answer goes on and is stored as a miss's would be;
* *absent*: a GET goes upstream and its whole response is stored when cacheable
  (:func:`.rules.cacheable_response`) and the request had no ``cache-control:
  no-store`` (``max_body_bytes`` changes nothing, as in Envoy 1.40). A HEAD goes
  upstream untouched; a range request goes upstream with its ``range`` and only a
  whole (non-206) answer is stored. With ``cache_v2`` a key whose request or response could not be
  stored lets its next request go upstream unstored too (Envoy 1.40's cache sessions).

The request's ``cache-control`` / ``pragma`` count unless
``ignore_request_cache_control_header``. ``vary``: ``cache`` (v3) keeps one response
per value of the varying headers when every one of them matches
``allowed_vary_headers`` (else the response is not stored; ``*`` never is);
``cache_v2`` stores no response that has a ``vary`` line, as Envoy 1.40 does.

**Concurrent misses** (``cache_v2``): a request that misses a key another request of
this worker is fetching waits for that response (``Store.inflight``) and looks again.

**Access log**: an answer from the cache has Envoy's response flag ``RFCF`` and details
``cache.response_from_cache_filter``; ``cache_v2`` marks a response it stores with
``RFCF`` and ``cache.insert_via_upstream``.

**Stats** (``cache_v2`` only, as Envoy): ``cache.event.cache_label.<label>.event_type.``
``hit``, ``miss``, ``validate`` (a 304 refreshed an entry), ``uncacheable`` (a request
the cache cannot answer), ``failed_validation``, ``lookup_error``, ``upstream_reset``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any

import trio

from proxyd.epoch import StringMatch, from_wire
from proxyd.filters.api import (
    CONTINUE,
    FilterResponse,
    FilterStream,
    HttpFilter,
    LocalReply,
    ResponseView,
    Result,
    StatsScope,
)
from proxyd.filters.cache.rules import (
    CONDITIONAL,
    NO_REQUEST_RULES,
    byte_range,
    cacheable_response,
    needs_validation,
    request_rules,
    response_rules,
)
from proxyd.filters.cache.store import (
    CacheStore,
    Entry,
    Key,
    LookupFailed,
    Store,
    Variant,
    new_entry,
)
from proxyd.protocol.routing import compile_string_match
from proxyd.protocol.runtime import EMPTY, Snapshot

# Envoy's response flag and details of a response the cache answered (or, cache_v2, that
# it stores as it goes out).
FROM_CACHE_FLAG = "RFCF"
FROM_CACHE = "cache.response_from_cache_filter"
INSERTED = "cache.insert_via_upstream"
EVENTS = (
    "hit",
    "miss",
    "validate",
    "uncacheable",
    "failed_validation",
    "lookup_error",
    "upstream_reset",
)
RESPONSE_HEADERS = frozenset(("cache-control", "date", "expires", "vary", "age"))
# Lines a 304 does not change in the stored response (its framing and identity).
_NOT_UPDATED = frozenset(("content-length", "content-range", "etag", "vary", "transfer-encoding"))
_SPACE = " \t"


class Mode(enum.Enum):
    PASS = "pass"  # nothing to do with this stream
    INSERT_WHOLE = "insert_whole"  # a range request's miss: store a whole answer only
    INSERT = "insert"  # a miss: store the response if it may be
    VALIDATE = "validate"  # a stale entry: the upstream was asked whether it changed


_STORES: dict[str, CacheStore] = {}


def store_of(storage: Any) -> CacheStore:
    """This worker's cache for the plain ``storage`` config: ``"simple"`` /
    ``"simple_v2"``, or a file-system cache's settings (by its ``cache_path``, as Envoy
    names its instances): one per process, as Envoy's are."""
    if isinstance(storage, str):
        name = storage
    else:
        name = "fs:" + storage["path"]
    store = _STORES.get(name)
    if store is None:
        if isinstance(storage, str):
            store = Store()
        else:
            from proxyd.filters.cache.disk import DiskStore

            store = DiskStore(storage)
        _STORES[name] = store
    return store


class Factory:
    """One per epoch and route; the store is the worker's (``store_of``)."""

    __slots__ = (
        "name",
        "wanted_headers",
        "response_headers",
        "decodes",
        "encodes",
        "store",
        "allowed_vary",
        "ignore_request_cc",
        "v2",
        "stats",
        "event_prefix",
    )

    def __init__(
        self,
        name: str,
        config: Any,
        per_route: Any,
        stats: StatsScope,
        runtime: Snapshot = EMPTY,
    ) -> None:
        self.name = name
        self.store: CacheStore = store_of(config["store"])
        self.allowed_vary: tuple[Callable[[str], bool], ...] = tuple(
            compile_string_match(from_wire(StringMatch, w)) for w in config["allowed_vary"]
        )
        self.ignore_request_cc = bool(config["ignore_request_cache_control"])
        self.v2 = bool(config["v2"])
        on = not config["disabled"]
        self.decodes = on
        self.encodes = on
        self.wanted_headers = frozenset(
            ("cache-control", "pragma", "authorization", "range", "x-forwarded-proto") + CONDITIONAL
        )
        self.response_headers = RESPONSE_HEADERS
        self.stats: StatsScope | None = None
        self.event_prefix = f"cache.event.cache_label.{config['label']}.event_type."
        if self.v2 and on:
            self.stats = stats.root("")
            for event in EVENTS:
                self.stats.inc(self.event_prefix + event, 0)

    def create(self) -> CacheFilter:
        return CacheFilter(self)

    def count(self, event: str) -> None:
        if self.stats is not None:
            self.stats.inc(self.event_prefix + event)

    def vary_allowed(self, names: tuple[str, ...]) -> bool:
        return all(any(m(n) for m in self.allowed_vary) for n in names)


def _vary_names(value: str) -> tuple[str, ...]:
    return tuple(sorted({t.strip(_SPACE).lower() for t in value.split(",") if t.strip(_SPACE)}))


def _request_values(stream: FilterStream, names: tuple[str, ...]) -> Variant:
    """The request's values of header ``names`` (repeated lines joined with ",")."""
    found: dict[str, str] = {}
    for n, v in stream.request_header_lines():
        if n in names:
            found[n] = v if n not in found else found[n] + "," + v
    return tuple(found.get(n) for n in names)


class CacheFilter(HttpFilter):
    __slots__ = (
        "factory",
        "mode",
        "key",
        "variant",
        "entry",
        "status",
        "lines",
        "vary",
        "body",
        "head",
        "fetching",
    )

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.mode = Mode.PASS
        self.key: Key = ("", "", "")
        self.variant: Variant | None = None
        self.entry: Entry | None = None
        self.status = 0
        self.lines: tuple[tuple[str, str], ...] = ()
        self.vary: tuple[str, ...] = ()
        self.body: bytearray | None = None
        self.head = False
        # cache_v2: this stream fetches its key for the requests that wait (inflight).
        self.fetching = False

    # -- request ------------------------------------------------------------------------

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        f = self.factory
        h = stream.head
        hd = h.headers
        method = h.method
        if (
            (method != "GET" and method != "HEAD")
            or not h.host
            or "authorization" in hd
            or any(c in hd for c in CONDITIONAL)
        ):
            f.count("uncacheable")
            return CONTINUE
        self.head = method == "HEAD"
        scheme = hd.get("x-forwarded-proto") or (
            "https" if stream.downstream_tls() is not None else "http"
        )
        key = self.key = (scheme, h.host, h.path)
        req = (
            NO_REQUEST_RULES
            if f.ignore_request_cc
            else request_rules(hd.get("cache-control"), hd.get("pragma"))
        )
        store = f.store

        def values(names: tuple[str, ...]) -> Variant:
            return _request_values(stream, names)

        try:
            entry, self.variant = await store.lookup(key, values)
            if entry is None and f.v2 and not self.head:
                fetching = store.inflight.get(key)
                if fetching is not None:  # another request is fetching it: wait for it
                    await fetching.wait()
                    entry, self.variant = await store.lookup(key, values)
        except LookupFailed:  # the request goes upstream, and nothing is stored
            f.count("lookup_error")
            return CONTINUE
        if entry is None:
            if self.head:
                f.count("uncacheable")
                return CONTINUE
            if req.no_store or (f.v2 and f.store.take_mark(key)):
                if f.v2 and req.no_store:
                    f.store.marks.add(key)
                f.count("uncacheable")
                return CONTINUE
            # Counted with the response: a miss when it may be stored, else uncacheable.
            # A range request goes upstream as it is: a 206 answer is not stored.
            self.mode = Mode.INSERT if "range" not in hd else Mode.INSERT_WHOLE
            if f.v2 and key not in store.inflight:
                store.inflight[key] = trio.Event()
                self.fetching = True
            return CONTINUE
        age = entry.age(time.time())
        if not needs_validation(entry.rules, req, age):
            f.count("hit")
            stream.set_flag(FROM_CACHE_FLAG)
            return self._hit(entry, age, hd.get("range"))
        if self.head and f.v2:
            f.count("uncacheable")
            return CONTINUE
        self.mode = Mode.VALIDATE
        self.entry = entry
        etag = entry.header("etag")
        if etag is not None:
            stream.set_request_header("if-none-match", etag)
        since = entry.header("last-modified") or entry.header("date")
        if since is not None:
            stream.set_request_header("if-modified-since", since)
        return CONTINUE

    def _hit(self, entry: Entry, age: int, range_value: str | None) -> FilterResponse | LocalReply:
        body = entry.body
        lines = list(entry.lines)
        status = entry.status
        part = None if self.head or status != 200 else byte_range(range_value, len(body))
        if part is True and self.factory.v2:
            return LocalReply(416, "", flag=FROM_CACHE_FLAG, details=FROM_CACHE)
        if part is True:
            status = 416
            lines = [(n, v) for n, v in lines if n != "content-range"]
            lines.append(("content-range", f"bytes */{len(body)}"))
            body = b""
        elif isinstance(part, tuple):
            a, b = part
            status = 206
            lines.append(("content-range", f"bytes {a}-{b}/{len(body)}"))
            body = body[a : b + 1]
        if status not in (204, 304):
            length = ("content-length", str(len(body)))
            at = next((i for i, (n, _) in enumerate(lines) if n == "content-length"), -1)
            if at < 0:
                lines.append(length)
            else:  # in its place, once
                lines = [ln for ln in lines if ln[0] != "content-length"]
                lines.insert(at, length)
        lines.append(("age", str(age)))
        return FilterResponse(status, tuple(lines), body, details=FROM_CACHE)

    # -- response -----------------------------------------------------------------------

    async def on_response_headers(
        self, stream: FilterStream, response: ResponseView, end_stream: bool
    ) -> Result:
        mode = self.mode
        if mode is Mode.PASS:
            return CONTINUE
        f = self.factory
        if mode is Mode.INSERT_WHOLE and response.status == 206:
            self.mode = Mode.PASS
            f.count("uncacheable")
            self._fetched()
            return CONTINUE
        if mode is Mode.VALIDATE:
            entry = self.entry
            assert entry is not None
            if response.status == 304:
                self.mode = Mode.PASS
                stream.set_flag(FROM_CACHE_FLAG)
                return await self._refreshed(entry, response.header_lines())
            self.mode = Mode.INSERT
            if self.head:  # the answer to a HEAD has no body to store
                self.mode = Mode.PASS
                return CONTINUE
        if not self._cacheable(response):
            f.count("uncacheable")
            self.mode = Mode.PASS
            if f.v2:
                f.store.marks.add(self.key)
            self._fetched()
            return CONTINUE
        f.count("miss")
        self.lines = tuple(response.header_lines())
        if f.v2:  # cache_v2 marks the responses it stores, and drops their age
            stream.set_flag(FROM_CACHE_FLAG)
            stream.set_details(INSERTED)
            if "age" in response.headers:
                stream.remove_response_header("age")
        vary_value = response.headers.get("vary")
        vary = _vary_names(vary_value) if vary_value is not None else ()
        if vary and self.variant is None:
            self.variant = _request_values(stream, vary)
        self.status = response.status
        self.vary = vary
        self.body = bytearray()
        if end_stream:
            await self._insert()
        return CONTINUE

    def _fetched(self) -> None:
        """This stream's fetch is over (stored or not): the requests that waited for it
        look again."""
        if self.fetching:
            self.fetching = False
            event = self.factory.store.inflight.pop(self.key, None)
            if event is not None:
                event.set()

    def on_stream_complete(self, stream: FilterStream) -> None:
        self._fetched()

    def _cacheable(self, response: ResponseView) -> bool:
        headers = response.headers
        rules = response_rules(
            headers.get("cache-control"), headers.get("date"), headers.get("expires")
        )
        vary_value = headers.get("vary")
        if vary_value is not None:
            vary = _vary_names(vary_value)
            if self.factory.v2 or "*" in vary or not self.factory.vary_allowed(vary):
                return False
        return cacheable_response(response.status, rules)

    async def on_response_data(
        self, stream: FilterStream, data: bytearray, end_stream: bool
    ) -> Result:
        body = self.body
        if body is not None:
            body += data
            if end_stream:
                await self._insert()
        return CONTINUE

    async def _insert(self) -> None:
        try:
            await self._store_body()
        finally:
            self._fetched()

    async def _store_body(self) -> None:
        body = self.body
        self.body = None
        self.mode = Mode.PASS
        if body is None:
            return
        entry = new_entry(self.status, self.lines, bytes(body), time.time())
        f = self.factory
        variant = self.variant if self.vary else None
        if self.vary and (variant is None or len(variant) != len(self.vary)):
            return
        await f.store.insert(self.key, entry, self.vary, variant)

    async def _refreshed(self, entry: Entry, fresh: list[tuple[str, str]]) -> FilterResponse:
        """A 304 answered the validation: the entry takes the 304's header lines (but
        the framing and validator ones) and the client gets it, without the cache's
        ``age`` (cache v3 passes on the 304's own ``age`` line; cache_v2 drops it)."""
        f = self.factory
        f.count("validate")
        updated = {n for n, _ in fresh if n not in _NOT_UPDATED}
        lines = [(n, v) for n, v in entry.lines if n not in updated]
        lines += [(n, v) for n, v in fresh if n in updated]
        new = new_entry(entry.status, lines, entry.body, time.time())
        names = self.vary_names_of(new)
        await f.store.insert(self.key, new, names, self.variant if names else None)
        served = new.lines if f.v2 else tuple(lines)
        return FilterResponse(entry.status, served, new.body, details=FROM_CACHE)

    @staticmethod
    def vary_names_of(entry: Entry) -> tuple[str, ...]:
        value = entry.header("vary")
        return _vary_names(value) if value is not None else ()
