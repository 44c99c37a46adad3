"""``envoy.extensions.common.matching.v3.ExtensionWithMatcher`` around an HTTP filter.

The wrapped filter (``extension_config``) is compiled as any filter is, under the
wrapper's name (so a route's ``typed_per_filter_config`` for that name reaches it), and
``xds_matcher`` is compiled by :mod:`proxyd.config.route_matcher` over the request
headers, with two actions: ``SkipFilter`` (the filter sits out the stream) and the
composite filter's ``ExecuteFilterAction`` (its ``typed_config`` is compiled as a
filter of its own, which runs in the composite's place). The deprecated ``matcher``
(envoy.config.common.matcher.v3) and the actions' other fields are refused by the
allow-list (proxyd.config.supported)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from proxyd.config.proto import join
from proxyd.config.route_matcher import compile_matcher
from proxyd.epoch import FilterAction, FilterMatcher, HttpFilter
from proxyd.errors import ConfigError

TYPE = "envoy.extensions.common.matching.v3.ExtensionWithMatcher"
SKIP_FILTER_TYPE = "envoy.extensions.filters.common.matcher.action.v3.SkipFilter"
EXECUTE_FILTER_TYPE = "envoy.extensions.filters.http.composite.v3.ExecuteFilterAction"

# The header mutation filter is folded into the route's header mutations at epoch
# compile (proxyd.filters.header_mutation), so it cannot be chosen per stream.
_NOT_PER_STREAM = {
    "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation": "header_mutation",
}

# compile_filter(name, typed_config Any, path of what holds it) → the filter's epoch entry.
CompileFilter = Callable[[str, Any, str], HttpFilter]


def compile_with_matcher(
    msg: Any, name: str, path: str, file: str, compile_filter: CompileFilter
) -> HttpFilter:
    if not msg.HasField("xds_matcher"):
        raise ConfigError(file, path, "one of matcher and xds_matcher must be set")

    def compile_chosen(name: str, any_msg: Any, at: str) -> HttpFilter:
        kind = any_msg.type_url.rsplit("/", 1)[-1]
        if kind in _NOT_PER_STREAM:
            raise ConfigError(
                file,
                at,
                f"the {_NOT_PER_STREAM[kind]} filter under a matcher (ExtensionWithMatcher or "
                "the composite filter; proxyd folds its mutations into the route's, so it "
                "cannot choose them per request) is not supported by proxyd",
            )
        return compile_filter(name, any_msg, at)

    inner = compile_chosen(name, msg.extension_config.typed_config, join(path, "extension_config"))
    actions: list[FilterAction] = []

    def on_action(type_name: str, action: Any, here: str) -> tuple[int, ...]:
        if type_name == SKIP_FILTER_TYPE:
            actions.append(FilterAction("skip"))
        elif type_name == EXECUTE_FILTER_TYPE:
            if not action.HasField("typed_config"):
                raise ConfigError(
                    file, here, "Error: Only one of `dynamic_config` or `typed_config` can be set."
                )
            delegate = compile_chosen(
                action.typed_config.name,
                action.typed_config.typed_config,
                join(here, "typed_config"),
            )
            actions.append(FilterAction("execute", delegate))
        else:
            raise ConfigError(
                file, here, f"filter matcher action {type_name} not supported by proxyd"
            )
        return (len(actions) - 1,)

    tree = compile_matcher(msg.xds_matcher, join(path, "xds_matcher"), file, on_action)
    return dataclasses.replace(inner, matcher=FilterMatcher(tree, tuple(actions)))
