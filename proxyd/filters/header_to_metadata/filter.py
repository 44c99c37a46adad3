"""The header_to_metadata filter on a stream: request headers (or cookies) become
dynamic metadata, as Envoy's ``HeaderToMetadataFilter`` makes them, and so do response
headers with ``response_rules`` (the same rules on the response head; a cookie rule
reads the response's ``cookie`` header, as Envoy's does, and ``:status`` is the status).

For each rule, in order: when the request has the header (or the cookie),
``on_header_present`` sets its key to its ``value`` or else to the
header's value (after ``regex_value_rewrite``); an empty value, or a ``NUMBER`` that
does not parse, is not set. When the header is missing, ``on_header_missing`` sets its ``value``. ``remove``
then takes the header off the request. The metadata lives on the stream
(``filter_state["dynamic_metadata"]``: namespace → key → value), where the access log's
``%DYNAMIC_METADATA(...)%`` (and header values) read it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from proxyd.filters.api import (
    CONTINUE,
    FilterStream,
    HttpFilter,
    ResponseView,
    Result,
    StatsScope,
)
from proxyd.protocol.redirect import re2_substitution

METADATA = "dynamic_metadata"


class _Value:
    __slots__ = ("namespace", "key", "value", "number", "rx", "sub")

    def __init__(self, kv: dict[str, Any]) -> None:
        self.namespace: str = kv["namespace"]
        self.key: str = kv["key"]
        self.value: str = kv["value"]
        self.number = kv["type"] == "NUMBER"
        self.rx: re.Pattern[str] | None = re.compile(kv["regex"]) if kv["regex"] else None
        self.sub: Callable[[re.Match[str]], str] | None = (
            re2_substitution(kv["substitution"], self.rx.groups) if self.rx is not None else None
        )

    def set(self, metadata: dict[str, dict[str, object]], header_value: str) -> None:
        text = self.value or header_value
        if self.rx is not None and self.sub is not None and not self.value:
            text = self.rx.sub(self.sub, text)
        if not text:
            return
        value: object = text
        if self.number:
            try:
                value = float(text)
            except ValueError:
                return
        metadata.setdefault(self.namespace, {})[self.key] = value


class _Rule:
    __slots__ = ("header", "cookie", "present", "missing", "remove")

    def __init__(self, rule: dict[str, Any]) -> None:
        self.header: str = rule["header"]
        self.cookie: str = rule["cookie"]
        self.present = _Value(rule["present"]) if rule["present"] is not None else None
        self.missing = _Value(rule["missing"]) if rule["missing"] is not None else None
        self.remove: bool = rule["remove"]


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    for part in header.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k == name:
            return v.strip('"')
    return None


class Factory:
    """One per epoch and route (the route's Config replaces the filter's)."""

    __slots__ = (
        "name", "wanted_headers", "decodes", "encodes", "rules", "response_rules",
        "response_headers",
    )  # fmt: skip

    def __init__(
        self, name: str, config: Any, per_route: Any, stats: StatsScope, runtime: Any = None
    ) -> None:
        settings = per_route if per_route is not None else config
        self.name = name
        self.rules = tuple(_Rule(r) for r in settings["rules"])
        self.wanted_headers = frozenset(r.header if r.header else "cookie" for r in self.rules)
        self.response_rules = tuple(_Rule(r) for r in settings.get("response_rules", ()))
        self.response_headers = frozenset(
            r.header if r.header else "cookie" for r in self.response_rules
        ) - {":status"}
        self.decodes = bool(self.rules)
        self.encodes = bool(self.response_rules)

    def create(self) -> HeaderToMetadataFilter:
        return HeaderToMetadataFilter(self)


class HeaderToMetadataFilter(HttpFilter):
    __slots__ = ("factory",)

    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        headers = stream.head.headers
        metadata = _metadata(stream)
        value: str | None
        # Headers a rule removed: missing for the rules after it, as in Envoy.
        removed: set[str] | None = None
        for rule in self.factory.rules:
            if rule.header == ":path":
                value = stream.head.path
            elif rule.header:
                value = headers.get(rule.header)
                if removed is not None and rule.header in removed:
                    value = None
            else:
                value = _cookie(headers.get("cookie"), rule.cookie)
            if _apply(rule, value, metadata):
                stream.remove_request_header(rule.header)
                removed = (removed or set()) | {rule.header}
        return CONTINUE

    async def on_response_headers(
        self, stream: FilterStream, response: ResponseView, end_stream: bool
    ) -> Result:
        headers = response.headers
        metadata = _metadata(stream)
        value: str | None
        removed: set[str] | None = None
        for rule in self.factory.response_rules:
            if rule.header == ":status":
                value = str(response.status)
            elif rule.header:
                value = headers.get(rule.header)
                if removed is not None and rule.header in removed:
                    value = None
            else:
                value = _cookie(headers.get("cookie"), rule.cookie)
            if _apply(rule, value, metadata):
                stream.remove_response_header(rule.header)
                removed = (removed or set()) | {rule.header}
        return CONTINUE


def _metadata(stream: FilterStream) -> Any:
    state = stream.filter_state
    if state is None:
        state = stream.filter_state = {}
    return state.setdefault(METADATA, {})


def _apply(rule: _Rule, value: str | None, metadata: Any) -> bool:
    """One rule on the header's ``value`` (None: missing); whether to remove it."""
    if value is not None:  # (an empty value is present: it sets nothing)
        if rule.present is not None:
            rule.present.set(metadata, value)
    elif rule.missing is not None:
        rule.missing.set(metadata, "")
    return rule.remove and bool(rule.header) and value is not None
