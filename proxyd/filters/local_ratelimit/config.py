"""``envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`` → plain data.

The same message is the per-route config (``typed_per_filter_config``), and a route's
replaces the filter's whole, stat_prefix and all, as in Envoy. The epoch carries::

    {"stat_prefix": str, "status": int,
     "bucket": None | {"max_tokens": int, "tokens_per_fill": int, "fill_ms": int,
                       "key": str},
     "enabled": None | [runtime_key, numerator, denominator],
     "enforced": None | [runtime_key, numerator, denominator],
     "response_headers": [[name, value, action, keep_empty]],
     "request_headers": [[name, value, action, keep_empty]],
     "x_ratelimit_headers": bool, "resource_exhausted": bool}

``bucket.key`` is where the config sits in the file (its field path): a worker keeps
one bucket per key and parameters across epochs, so an epoch that changes something
else does not refill it (Envoy keeps a bucket as long as the config object that owns
it). ``enabled``/``enforced`` None: the field is unset, which Envoy reads as never.

Envoy's own checks are made here: a per-route config needs a token_bucket, and
fill_interval must be at least 50 ms. Header values are literal (no ``%OPERATOR%``).
What proxyd does not implement is left out of :data:`SPEC` and refused by name:
``descriptors`` and ``rate_limits`` (descriptor buckets), ``local_cluster_rate_limit``,
``local_rate_limit_per_downstream_connection`` and ``max_dynamic_descriptors``.
"""

from __future__ import annotations

from typing import Any

from proxyd.config.proto import join
from proxyd.config.spec import LEAF, Spec
from proxyd.config.values import enum_name
from proxyd.errors import ConfigError
from proxyd.protocol.header_mutations import ACTIONS, FRAMING, parse_value

TYPE = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
_PERCENT: Spec = {"numerator": LEAF, "denominator": LEAF}
_RUNTIME_PERCENT: Spec = {"default_value": _PERCENT, "runtime_key": LEAF}
_HEADER_OPTION: Spec = {
    "header": {"key": LEAF, "value": LEAF},
    "append_action": LEAF,
    "keep_empty_value": LEAF,
}
SPEC: Spec = {
    "stat_prefix": LEAF,
    "status": {"code": LEAF},
    "token_bucket": {"max_tokens": LEAF, "tokens_per_fill": LEAF, "fill_interval": LEAF},
    "filter_enabled": _RUNTIME_PERCENT,
    "filter_enforced": _RUNTIME_PERCENT,
    "request_headers_to_add_when_not_enforced": _HEADER_OPTION,
    "response_headers_to_add": _HEADER_OPTION,
    "enable_x_ratelimit_headers": LEAF,
    "rate_limited_as_resource_exhausted": LEAF,
    # Read by Envoy only with descriptors, which proxyd refuses: no effect without them.
    "stage": LEAF,
    "vh_rate_limits": LEAF,
    "always_consume_default_token_bucket": LEAF,
}

PER_ROUTE_TYPE = TYPE
PER_ROUTE_SPEC = SPEC

# type.v3.FractionalPercent.DenominatorType, by number.
DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}
MIN_FILL_MS = 50
TOO_MANY_REQUESTS = 429


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    return _compile(msg, path, file, per_route=False)


def compile_per_route(msg: Any, path: str, file: str) -> dict[str, Any]:
    return _compile(msg, path, file, per_route=True)


def _compile(msg: Any, path: str, file: str, per_route: bool) -> dict[str, Any]:
    bucket = None
    if msg.HasField("token_bucket"):
        tb = msg.token_bucket
        fill_ms = tb.fill_interval.seconds * 1000 + tb.fill_interval.nanos // 1_000_000
        if fill_ms < MIN_FILL_MS:
            raise ConfigError(
                file,
                join(path, "token_bucket.fill_interval"),
                "local rate limit token bucket fill timer must be >= 50ms",
            )
        bucket = {
            "max_tokens": tb.max_tokens,
            "tokens_per_fill": tb.tokens_per_fill.value if tb.HasField("tokens_per_fill") else 1,
            "fill_ms": fill_ms,
            "key": path,
        }
    elif per_route:
        raise ConfigError(
            file, path, "local rate limit token bucket must be set for per filter configs"
        )
    # Envoy answers with the configured status when it is an error status, else 429.
    status = msg.status.code if msg.HasField("status") else TOO_MANY_REQUESTS
    if status < 400:
        status = TOO_MANY_REQUESTS
    return {
        "stat_prefix": msg.stat_prefix,
        "status": status,
        "bucket": bucket,
        "enabled": _runtime_percent(msg, "filter_enabled"),
        "enforced": _runtime_percent(msg, "filter_enforced"),
        "response_headers": _headers(msg, "response_headers_to_add", path, file),
        "request_headers": _headers(msg, "request_headers_to_add_when_not_enforced", path, file),
        "x_ratelimit_headers": enum_name(msg, "enable_x_ratelimit_headers") == "DRAFT_VERSION_03",
        "resource_exhausted": msg.rate_limited_as_resource_exhausted,
    }


def _runtime_percent(msg: Any, field: str) -> list[Any] | None:
    if not msg.HasField(field):
        return None
    rf = getattr(msg, field)
    d = rf.default_value
    return [rf.runtime_key, d.numerator, DENOMINATORS[d.denominator]]


def _headers(msg: Any, field: str, path: str, file: str) -> list[list[Any]]:
    out: list[list[Any]] = []
    for i, opt in enumerate(getattr(msg, field)):
        here = f"{join(path, field)}[{i}]"
        name = opt.header.key.lower()
        if name.startswith(":") or name == "host" or name in FRAMING:
            raise ConfigError(
                file, join(here, "header.key"), f"header '{name}' may not be added by proxyd"
            )
        try:
            value = parse_value(opt.header.value)
        except ValueError as exc:
            raise ConfigError(file, join(here, "header.value"), str(exc)) from None
        if not isinstance(value, bytes):
            raise ConfigError(
                file,
                join(here, "header.value"),
                "%OPERATOR% substitutions in local_ratelimit headers not supported by proxyd",
            )
        action = enum_name(opt, "append_action")
        if action not in ACTIONS:
            raise ConfigError(file, join(here, "append_action"), f"unknown append_action {action}")
        out.append([name, value.decode("latin-1"), action, opt.keep_empty_value])
    return out
