"""``envoy.extensions.filters.http.cors.v3.Cors`` and ``CorsPolicy`` → plain data.

The filter's own message has no fields: what a request gets comes from the CORS
policies of its route. Envoy 1.40 reads them in two places:

* ``typed_per_filter_config`` (``cors.v3.CorsPolicy``) of the route configuration, the
  virtual host, the route (and a weighted cluster). Every level is kept
  (:data:`PER_ROUTE_LEVELS`: the epoch's per-route config is ``{"levels": [policy,
  ...]}``, least specific first), because Envoy takes each field from the most specific
  level that sets it;
* only when no level has one, the deprecated ``cors`` field of the route's
  ``RouteAction`` and of its virtual host (``config.route.v3.CorsPolicy``, the same
  fields), kept the same way under the filter's type name
  (:func:`compile_route_field`).

A policy is the dict::

    {"origins": [StringMatch wire], "allow_methods": str, "allow_headers": str,
     "expose_headers": str, "max_age": str, "allow_credentials": bool | None,
     "allow_private_network_access": bool | None,
     "forward_not_matching_preflights": bool | None,
     "filter_enabled": [runtime_key, numerator, denominator] | None,
     "shadow_enabled": [runtime_key, numerator, denominator] | None}

("" and None: not set, so a less specific level's value applies).
"""

from __future__ import annotations

from typing import Any

from proxyd.config.matchers import string_match
from proxyd.config.proto import join
from proxyd.config.spec import LEAF, STRING_MATCHER, Spec
from proxyd.epoch import to_wire

TYPE = "envoy.extensions.filters.http.cors.v3.Cors"
SPEC: Spec = {}

PER_ROUTE_TYPE = "envoy.extensions.filters.http.cors.v3.CorsPolicy"
_FRACTION: Spec = {"default_value": {"numerator": LEAF, "denominator": LEAF}, "runtime_key": LEAF}
PER_ROUTE_SPEC: Spec = {
    "allow_origin_string_match": STRING_MATCHER,
    "allow_methods": LEAF,
    "allow_headers": LEAF,
    "expose_headers": LEAF,
    "max_age": LEAF,
    "allow_credentials": LEAF,
    "filter_enabled": _FRACTION,
    "shadow_enabled": _FRACTION,
    "allow_private_network_access": LEAF,
    "forward_not_matching_preflights": LEAF,
}
# The deprecated route.v3.CorsPolicy (RouteAction.cors, VirtualHost.cors): same fields.
ROUTE_FIELD_SPEC: Spec = PER_ROUTE_SPEC
# Every level's policy is kept (proxyd.config.http_filters.merge_overrides).
PER_ROUTE_LEVELS = True

# type.v3.FractionalPercent.DenominatorType, by number.
_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    return {}


def compile_per_route(msg: Any, path: str, file: str) -> dict[str, Any]:
    return {
        "origins": [
            to_wire(string_match(m, f"{join(path, 'allow_origin_string_match')}[{i}]", file))
            for i, m in enumerate(msg.allow_origin_string_match)
        ],
        "allow_methods": msg.allow_methods,
        "allow_headers": msg.allow_headers,
        "expose_headers": msg.expose_headers,
        "max_age": msg.max_age,
        "allow_credentials": _wrapped(msg, "allow_credentials"),
        "allow_private_network_access": _wrapped(msg, "allow_private_network_access"),
        "forward_not_matching_preflights": _wrapped(msg, "forward_not_matching_preflights"),
        "filter_enabled": _fraction(msg, "filter_enabled"),
        "shadow_enabled": _fraction(msg, "shadow_enabled"),
    }


def compile_route_field(holder: Any, path: str, file: str) -> dict[str, Any] | None:
    """The deprecated ``cors`` of a virtual host or of a route's ``route`` action (None
    when ``holder`` has none: a route configuration, a redirect, a weighted cluster)."""
    descriptor = holder.DESCRIPTOR.full_name
    if descriptor == "envoy.config.route.v3.VirtualHost":
        if holder.HasField("cors"):
            return compile_per_route(holder.cors, join(path, "cors"), file)
    elif descriptor == "envoy.config.route.v3.Route":
        if holder.HasField("route") and holder.route.HasField("cors"):
            return compile_per_route(holder.route.cors, join(path, "route.cors"), file)
    return None


def _wrapped(msg: Any, name: str) -> bool | None:
    return getattr(msg, name).value if msg.HasField(name) else None


def _fraction(msg: Any, name: str) -> list[Any] | None:
    if not msg.HasField(name):
        return None
    rf = getattr(msg, name)
    dv = rf.default_value
    return [rf.runtime_key, dv.numerator, _DENOMINATORS[dv.denominator]]
