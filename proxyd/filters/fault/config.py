"""``envoy.extensions.filters.http.fault.v3.HTTPFault`` → plain data (filter and route).

The same message is the per-route config; a route's replaces the filter's whole, as in
Envoy. The epoch carries a dict::

    {"abort": None | {"http_status": int | None, "grpc_status": int | None,
                      "header": bool, "numerator": int, "denominator": int},
     "delay": None | {"fixed_ms": int | None, "numerator": int, "denominator": int},
     "upstream_cluster": str, "downstream_nodes": [str], "headers": [HeaderMatch wire],
     "max_active_faults": int | None, "disable_downstream_cluster_stats": bool,
     "runtime_keys": {"abort_percent": str, "abort_http_status": str, ...}}

``fixed_ms`` None means ``header_delay``; ``header`` means ``header_abort``. Unset
percentages are Envoy's: 0 of HUNDRED (so a fault without a percentage never fires).
``runtime_keys`` are the runtime keys the filter reads (the ``*_runtime`` fields, else
Envoy's defaults, :data:`RUNTIME_KEYS`). What proxyd does not implement
(response_rate_limit and its runtime key, filter_metadata) is left out of :data:`SPEC`
and refused by name.
"""

from __future__ import annotations

from typing import Any

from proxyd.config.matchers import header_match
from proxyd.config.proto import join
from proxyd.config.spec import HEADER_MATCHER, LEAF, Spec
from proxyd.epoch import to_wire
from proxyd.filters.fault.filter import RUNTIME_KEYS

TYPE = "envoy.extensions.filters.http.fault.v3.HTTPFault"
PERCENT: Spec = {"numerator": LEAF, "denominator": LEAF}
SPEC: Spec = {
    "abort": {
        "http_status": LEAF,
        "grpc_status": LEAF,
        "header_abort": {},
        "percentage": PERCENT,
    },
    "delay": {"fixed_delay": LEAF, "header_delay": {}, "percentage": PERCENT},
    "upstream_cluster": LEAF,
    "downstream_nodes": LEAF,
    "headers": HEADER_MATCHER,
    "max_active_faults": LEAF,
    "disable_downstream_cluster_stats": LEAF,
    "abort_percent_runtime": LEAF,
    "abort_http_status_runtime": LEAF,
    "abort_grpc_status_runtime": LEAF,
    "delay_percent_runtime": LEAF,
    "delay_duration_runtime": LEAF,
    "max_active_faults_runtime": LEAF,
}

PER_ROUTE_TYPE = TYPE
PER_ROUTE_SPEC = SPEC

# type.v3.FractionalPercent.DenominatorType, by number.
DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    return {
        "abort": _abort(msg.abort) if msg.HasField("abort") else None,
        "delay": _delay(msg.delay) if msg.HasField("delay") else None,
        "upstream_cluster": msg.upstream_cluster,
        "downstream_nodes": list(msg.downstream_nodes),
        "headers": [
            to_wire(header_match(h, f"{join(path, 'headers')}[{i}]", file))
            for i, h in enumerate(msg.headers)
        ],
        "max_active_faults": (
            msg.max_active_faults.value if msg.HasField("max_active_faults") else None
        ),
        "disable_downstream_cluster_stats": msg.disable_downstream_cluster_stats,
        "runtime_keys": {
            name: getattr(msg, f"{name}_runtime") or key for name, key in RUNTIME_KEYS.items()
        },
    }


compile_per_route = compile


def _percent(holder: Any) -> dict[str, int]:
    p = holder.percentage  # unset: numerator 0 of HUNDRED, as Envoy reads it
    return {"numerator": p.numerator, "denominator": DENOMINATORS[p.denominator]}


def _abort(a: Any) -> dict[str, Any]:
    which = a.WhichOneof("error_type")  # required: proxyd.config.rules checked it
    return {
        "http_status": a.http_status if which == "http_status" else None,
        "grpc_status": a.grpc_status if which == "grpc_status" else None,
        "header": which == "header_abort",
        **_percent(a),
    }


def _delay(d: Any) -> dict[str, Any]:
    fixed_ms = None
    if d.WhichOneof("fault_delay_secifier") == "fixed_delay":
        # Envoy reads it as whole milliseconds (a delay under 1 ms is no delay).
        fixed_ms = d.fixed_delay.seconds * 1000 + d.fixed_delay.nanos // 1_000_000
    return {"fixed_ms": fixed_ms, **_percent(d)}
