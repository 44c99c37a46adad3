"""``envoy.extensions.filters.http.health_check.v3.HealthCheck`` → plain data::

    {"pass_through": bool, "cache_ms": int (0: none),
     "min_healthy": {cluster name: whole percent},
     "headers": [HeaderMatch wire]}

``pass_through_mode`` is required and ``cluster_min_healthy_percentages`` values lie in
[0, 100] (Envoy's proto constraints, checked by :mod:`proxyd.config.rules`);
``cache_time`` without pass-through mode is refused with Envoy's message. Envoy reads a
percentage as a whole number (the double truncated).
"""

from __future__ import annotations

from typing import Any

from proxyd.config.matchers import header_match
from proxyd.config.proto import join
from proxyd.config.spec import HEADER_MATCHER, LEAF, Spec
from proxyd.epoch import to_wire
from proxyd.errors import ConfigError

TYPE = "envoy.extensions.filters.http.health_check.v3.HealthCheck"
SPEC: Spec = {
    "pass_through_mode": LEAF,
    "cache_time": LEAF,
    "cluster_min_healthy_percentages": {"value": LEAF},
    "headers": HEADER_MATCHER,
}


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    pass_through = msg.pass_through_mode.value
    cache_ms = msg.cache_time.seconds * 1000 + msg.cache_time.nanos // 1_000_000
    if not pass_through and cache_ms:
        raise ConfigError(
            file,
            join(path, "cache_time"),
            "cache_time_ms must not be set when path_through_mode is disabled",
        )
    return {
        "pass_through": pass_through,
        "cache_ms": cache_ms,
        "min_healthy": {
            name: int(p.value) for name, p in sorted(msg.cluster_min_healthy_percentages.items())
        },
        "headers": [
            to_wire(header_match(h, f"{join(path, 'headers')}[{i}]", file))
            for i, h in enumerate(msg.headers)
        ],
    }
