"""The external authorization filter on a stream: Envoy 1.40's ``ext_authz``.

A request is held while the authorization service is asked, unless no route matched
it (Envoy's filter checks nothing then), its route's ``ExtAuthzPerRoute`` says
``disabled``, or ``filter_enabled`` (when set) did not draw it (counted as
``disabled``). The service is asked through the epoch's async client
(:class:`proxyd.filters.api.AsyncClient`: the worker's own pools for an HTTP service, a
unary call for gRPC).

With ``with_request_body`` the body is buffered first, up to ``max_request_bytes``:
the check is made when the body ended or, with ``allow_partial_message``, when that
much has arrived (the check gets the first ``max_request_bytes``); without it a larger
body is answered 413 (the stream's buffer limit is ``max_request_bytes``, as Envoy sets
its decoder buffer limit).

The answer (:mod:`.service` makes the call and reads it):

* allowed (``ok``): the request goes on with the service's header changes, and the
  headers meant for the client are added to the response;
* denied (``denied``): the client gets the service's status, body and headers; the
  response flag is ``UAEX``;
* no answer (``error``: no host, connect failure, timeout, a 5xx from an HTTP service,
  a gRPC error): ``status_on_error`` (403 unless set), flag ``UAEX``, or with
  ``failure_mode_allow`` the request goes on (``failure_mode_allowed``), with
  ``x-envoy-auth-failure-mode-allowed: true`` when ``failure_mode_allow_header_add``.

Stats are Envoy's ``http.<hcm prefix>.ext_authz.[<stat_prefix>.]{ok,denied,error,
disabled,failure_mode_allowed}``, and with ``charge_cluster_response_stats`` (the
default) ``cluster.<the route's cluster>.ext_authz.[<stat_prefix>.]{ok,denied,error,
failure_mode_allowed}``.
"""

from __future__ import annotations

from typing import Any

from proxyd.filters.api import (
    CONTINUE,
    STOP,
    STOP_AND_BUFFER,
    EpochFacts,
    FilterStream,
    HttpFilter,
    LocalReply,
    ResponseView,
    Result,
    StatsScope,
)
from proxyd.filters.ext_authz.service import Allowed, Denied, Failed, Service, make_service
from proxyd.protocol.runtime import EMPTY, RANDOM, Snapshot

FAILURE_HEADER = "x-envoy-auth-failure-mode-allowed"
FLAG = "UAEX"
STATS = ("ok", "denied", "error", "disabled", "failure_mode_allowed")
CLUSTER_STATS = ("ok", "denied", "error", "failure_mode_allowed")


def _merge(per_route: Any) -> tuple[bool, dict[str, str]]:
    """(disabled, context_extensions) of a route's ExtAuthzPerRoute levels, least
    specific first: the most specific says whether the filter is off; the context
    extensions merge, the more specific value winning."""
    if per_route is None:
        return False, {}
    disabled = False
    extensions: dict[str, str] = {}
    for level in per_route["levels"]:
        disabled = level["disabled"]
        extensions.update(level["context_extensions"])
    return disabled, extensions


class Factory:
    """One per epoch and route."""

    takes_epoch_facts = True

    __slots__ = (
        "name", "wanted_headers", "decodes", "encodes", "stats", "service", "enabled",
        "body", "failure_mode_allow", "failure_header", "status_on_error", "cluster_stats",
        "root", "sub",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        config: Any,
        per_route: Any,
        stats: StatsScope,
        runtime: Snapshot = EMPTY,
        facts: EpochFacts | None = None,
    ) -> None:
        self.name = name
        prefix = config["stat_prefix"]
        self.sub = "ext_authz." + (prefix + "." if prefix else "")
        self.stats = _Prefixed(stats, self.sub)
        for stat in STATS:
            self.stats.inc(stat, 0)  # shown at 0 from the start, as Envoy does
        self.root = stats if config["charge_cluster"] else None
        # cluster.<name>.ext_authz. scopes, made when a cluster is first charged.
        self.cluster_stats: dict[str, StatsScope] = {}
        disabled, extensions = _merge(per_route)
        client = facts.client if facts is not None else None
        self.service: Service = make_service(config, extensions, client)
        self.enabled: tuple[int, int] | None = None
        if config["enabled"] is not None:
            key, numerator, denominator = config["enabled"]
            self.enabled = (
                runtime.fraction(key, numerator, denominator) if key else (numerator, denominator)
            )
        body = config["body"]
        self.body: tuple[int, bool, bool] | None = (
            (body[0], body[1], body[2]) if body is not None else None
        )
        self.failure_mode_allow: bool = config["failure_mode_allow"]
        self.failure_header: bool = config["failure_mode_allow_header_add"]
        self.status_on_error: int = config["status_on_error"]
        self.wanted_headers: frozenset[str] = frozenset()
        self.decodes = not disabled
        self.encodes = not disabled and self.service.client_headers

    def count(self, stream: FilterStream, stat: str) -> None:
        self.stats.inc(stat)
        root = self.root
        cluster = stream.upstream_cluster
        if root is None or not cluster or stat == "disabled":
            return
        scope = self.cluster_stats.get(cluster)
        if scope is None:
            scope = self.cluster_stats[cluster] = root.root(f"cluster.{cluster}.{self.sub}")
        scope.inc(stat)

    def create(self) -> ExtAuthzFilter:
        # Only a filter that buffers the body has a data hook: the chain passes the
        # body of the others' streams on without calling them (filter_chain._overrides).
        return ExtAuthzBodyFilter(self) if self.body is not None else ExtAuthzFilter(self)


class _Prefixed:
    """A stat scope with a name prefix (``ext_authz.[<stat_prefix>.]``)."""

    __slots__ = ("scope", "prefix")

    def __init__(self, scope: StatsScope, prefix: str) -> None:
        self.scope = scope
        self.prefix = prefix

    def inc(self, name: str, by: int = 1) -> None:
        self.scope.inc(self.prefix + name, by)


def _join(stream: FilterStream, pairs: tuple[tuple[str, str], ...]) -> None:
    """Append each value to the request's header of that name, joined with "," into
    one line (a gRPC ok_response header with ``append``), or add the header."""
    current: dict[str, str] = {}
    for name, value in stream.request_header_lines():
        old = current.get(name)
        current[name] = value if old is None else f"{old},{value}"
    for name, value in pairs:
        old = current.get(name)
        if old is None:
            current[name] = value
            stream.add_request_header(name, value)
        else:
            current[name] = f"{old},{value}"
            stream.set_request_header(name, current[name])


def _fires(fraction: tuple[int, int]) -> bool:
    numerator, denominator = fraction
    if numerator <= 0:
        return False
    if numerator >= denominator:
        return True
    return RANDOM.getrandbits(64) % denominator < numerator


class ExtAuthzFilter(HttpFilter):
    __slots__ = ("factory", "buffered", "checked", "response_headers")

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        # The request body kept for the check (with_request_body), None when not buffering.
        self.buffered: bytearray | None = None
        self.checked = False
        # Headers for the client's response on success.
        self.response_headers: tuple[tuple[str, str], ...] = ()

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        f = self.factory
        if stream.route_name is None:  # no route: Envoy's filter checks nothing
            self.checked = True
            return CONTINUE
        if f.enabled is not None and not _fires(f.enabled):
            f.count(stream, "disabled")
            self.checked = True
            return CONTINUE
        if f.body is not None and not end_stream:
            max_bytes, partial, _ = f.body
            if not partial:
                stream.set_buffer_limit(max_bytes)
            self.buffered = bytearray()
            return STOP
        return await self._check(stream, b"", False)

    async def _check(self, stream: FilterStream, body: bytes, with_body: bool) -> Result:
        f = self.factory
        self.checked = True
        outcome = await f.service.check(stream, body, with_body)
        if isinstance(outcome, Allowed):
            f.count(stream, "ok")
            for name in outcome.remove:
                stream.remove_request_header(name)
            for name, value in outcome.set:
                stream.set_request_header(name, value)
            for name, value in outcome.append:
                stream.add_request_header(name, value)
            if outcome.join:
                _join(stream, outcome.join)
            if outcome.client:
                self.response_headers = outcome.client
            return CONTINUE
        if isinstance(outcome, Denied):
            f.count(stream, "denied")
            return LocalReply(
                outcome.status,
                outcome.body,
                outcome.headers,
                flag=FLAG,
                details="ext_authz_denied",
            )
        assert isinstance(outcome, Failed)
        f.count(stream, "error")
        if f.failure_mode_allow:
            f.count(stream, "failure_mode_allowed")
            if f.failure_header:
                stream.set_request_header(FAILURE_HEADER, "true")
            return CONTINUE
        return LocalReply(f.status_on_error, flag=FLAG, details="ext_authz_error")

    async def on_response_headers(
        self, stream: FilterStream, response: ResponseView, end_stream: bool
    ) -> Result:
        for name, value in self.response_headers:
            stream.set_response_header(name, value)
        return CONTINUE


class ExtAuthzBodyFilter(ExtAuthzFilter):
    """The filter with ``with_request_body``: it takes the body for the check."""

    __slots__ = ()

    async def on_request_data(
        self, stream: FilterStream, data: bytearray, end_stream: bool
    ) -> Result:
        buffered = self.buffered
        if buffered is None or self.checked:
            return CONTINUE
        max_bytes, partial, _ = self.factory.body  # type: ignore[misc]
        buffered += data
        if end_stream or (partial and len(buffered) >= max_bytes):
            body = bytes(buffered[:max_bytes]) if partial else bytes(buffered)
            self.buffered = None
            return await self._check(stream, body, True)
        return STOP_AND_BUFFER
