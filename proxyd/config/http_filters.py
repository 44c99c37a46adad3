"""HCM ``http_filters`` and ``typed_per_filter_config`` → epoch filter entries.

Each filter other than the terminal router is compiled by its own package's
``config.compile`` (:mod:`proxyd.filters`); its per-route config by
``config.compile_per_route``. Per-route entries are keyed by the filter's configured
name, as in Envoy, and the most specific level wins: route, then virtual host, then
route configuration. ``envoy.config.route.v3.FilterConfig`` wraps an entry to enable or
disable the filter on a route (``disabled``), with or without a config of its own.

A filter whose config module sets ``PER_ROUTE_LEVELS`` reads every level, not only the
most specific (Envoy's ``getAllPerFilterConfig``: the CORS and header mutation
filters): its per-route config in the epoch is ``{"levels": [config, ...]}``, least
specific first. A module with ``compile_route_field(holder, path, file)`` also takes a
field of the route or virtual host itself (the deprecated ``cors``); that config is kept
the same way under the filter's type name, and the worker gives it to a filter of that
type that has no per-route config by name (:func:`proxyd.worker.plan.compile_filters`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from proxyd.config import filter_matcher
from proxyd.config.proto import join, unpack
from proxyd.epoch import FilterOverride, HttpFilter
from proxyd.errors import ConfigError
from proxyd.filters.compilers import COMPILERS, compiler

ROUTER_NAME = "envoy.filters.http.router"
ROUTER_TYPE = "envoy.extensions.filters.http.router.v3.Router"
FILTER_CONFIG_TYPE = "envoy.config.route.v3.FilterConfig"


def compile_http_filters(
    http_filters: Sequence[Any], path: str, file: str
) -> tuple[HttpFilter, ...]:
    """The filters before the router, in order; the router must be last, once.

    Two filters may share a name, as Envoy allows (its compressor example has two
    ``envoy.filters.http.compressor``); a route's ``typed_per_filter_config`` entry for
    that name then applies to both."""
    out: list[HttpFilter] = []
    for i, f in enumerate(http_filters):
        here = f"{path}[{i}]"
        if not f.HasField("typed_config"):
            if f.name != ROUTER_NAME:
                raise ConfigError(file, here, f"HTTP filter '{f.name}' not supported by proxyd")
            raise ConfigError(
                file,
                join(here, "typed_config"),
                f"HTTP filter '{f.name}' needs a typed_config of type {ROUTER_TYPE}",
            )
        type_name = f.typed_config.type_url.rsplit("/", 1)[-1]
        last = i == len(http_filters) - 1
        if type_name == ROUTER_TYPE:
            if not last:
                raise ConfigError(
                    file, here, f"terminal filter '{f.name}' must be the last HTTP filter"
                )
            router = unpack(f.typed_config)
            if (
                router is not None
                and router.HasField("dynamic_stats")
                and not router.dynamic_stats.value
            ):
                raise ConfigError(
                    file,
                    join(here, "typed_config.dynamic_stats"),
                    "dynamic_stats false (no per-status and timing stats) not supported by "
                    "proxyd: it always keeps them",
                )
            continue
        if last:
            raise ConfigError(
                file,
                here,
                f"non-terminal filter '{f.name}' is the last filter in an HTTP filter chain",
            )

        def compile_filter(name: str, any_msg: Any, at: str) -> HttpFilter:
            kind = any_msg.type_url.rsplit("/", 1)[-1]
            module = compiler(kind)
            if module is None:
                raise ConfigError(
                    file, at, f"HTTP filter '{name}' ({kind}) not supported by proxyd"
                )
            config = module.compile(unpack(any_msg), join(at, "typed_config"), file)
            return HttpFilter(name, kind, config)

        if type_name == filter_matcher.TYPE:
            entry = filter_matcher.compile_with_matcher(
                unpack(f.typed_config), f.name, join(here, "typed_config"), file, compile_filter
            )
        else:
            entry = compile_filter(f.name, f.typed_config, here)
        out.append(dataclasses.replace(entry, disabled=f.disabled))
    return tuple(out)


def compile_per_filter_config(holder: Any, path: str, file: str) -> dict[str, FilterOverride]:
    """``holder.typed_per_filter_config`` (a route, virtual host or route config)."""
    out: dict[str, FilterOverride] = {}
    entries = holder.typed_per_filter_config
    for key in sorted(entries):
        here = f"{join(path, 'typed_per_filter_config')}[{key!r}]"
        any_msg = entries[key]
        type_name = any_msg.type_url.rsplit("/", 1)[-1]
        disabled = False
        enabled = False
        if type_name == FILTER_CONFIG_TYPE:
            wrapper = unpack(any_msg)
            assert wrapper is not None  # the allow-list walk resolved every type URL
            disabled = wrapper.disabled
            enabled = not wrapper.disabled
            if not wrapper.HasField("config"):
                out[key] = FilterOverride(key, None, disabled=disabled, enabled=enabled)
                continue
            any_msg = wrapper.config
            here = join(here, "config")
            type_name = any_msg.type_url.rsplit("/", 1)[-1]
        module = _per_route_module(type_name)
        if module is None:
            raise ConfigError(
                file, here, f"per-route filter config {type_name} not supported by proxyd"
            )
        config = module.compile_per_route(unpack(any_msg), here, file)
        if getattr(module, "PER_ROUTE_LEVELS", False):
            config = {"levels": [config]}
        out[key] = FilterOverride(key, config, disabled=disabled, enabled=enabled)
    for module in COMPILERS.values():
        route_field = getattr(module, "compile_route_field", None)
        if route_field is not None:
            config = route_field(holder, path, file)
            if config is not None:
                out[module.TYPE] = FilterOverride(module.TYPE, {"levels": [config]})
    return out


def _per_route_module(type_name: str) -> Any | None:
    for module in COMPILERS.values():
        if getattr(module, "PER_ROUTE_TYPE", None) == type_name:
            return module
    return None


def per_route_types() -> dict[str, Any]:
    """Per-route config type → its allow-list spec, for proxyd.config.supported."""
    out: dict[str, Any] = {}
    for module in COMPILERS.values():
        if getattr(module, "PER_ROUTE_TYPE", None):
            out[module.PER_ROUTE_TYPE] = module.PER_ROUTE_SPEC
    return out


def filter_types() -> dict[str, Any]:
    """Filter config type → its allow-list spec, for proxyd.config.supported."""
    out: dict[str, Any] = {}
    for module in COMPILERS.values():
        out[module.TYPE] = module.SPEC
    return out


def merge_overrides(*levels: dict[str, FilterOverride]) -> tuple[FilterOverride, ...]:
    """The most specific entry per filter name; ``levels`` from least to most specific."""
    merged: dict[str, FilterOverride] = {}
    for level in levels:
        for name, o in level.items():
            outer = merged.get(name)
            merged[name] = o if outer is None else _stacked(outer, o)
    return tuple(merged[k] for k in sorted(merged))


def _stacked(outer: FilterOverride, inner: FilterOverride) -> FilterOverride:
    """``inner`` over ``outer``; the levels of a ``PER_ROUTE_LEVELS`` filter add up
    (an inner entry that only enables the filter keeps the outer levels)."""
    levels = _levels_of(outer)
    if levels is None or inner.disabled:
        return inner
    if inner.config is None:
        return FilterOverride(inner.name, outer.config, enabled=inner.enabled)
    more = _levels_of(inner)
    if more is None:
        return inner
    return FilterOverride(
        inner.name, {"levels": levels + more}, disabled=False, enabled=inner.enabled
    )


def _levels_of(o: FilterOverride) -> list[Any] | None:
    if isinstance(o.config, dict) and isinstance(o.config.get("levels"), list):
        return list(o.config["levels"])
    return None
