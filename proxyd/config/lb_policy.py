"""A cluster's load balancing policy → ``epoch.Cluster`` keyword arguments.

Two forms, as Envoy 1.40 takes them:

* ``lb_policy`` (ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV) with its
  ``round_robin_lb_config``, ``least_request_lb_config`` (their ``slow_start_config``),
  ``ring_hash_lb_config`` or ``maglev_lb_config``; a config
  of another policy than the one named is ignored, as Envoy ignores it;
* ``load_balancing_policy`` (the typed extensions): its first policy is used and
  ``lb_policy`` is then ignored. The allow-list (:data:`LB_POLICY_SPEC`) takes the
  round_robin, least_request, random, ring_hash and maglev types, so the first entry is
  always one proxyd implements, which is the one Envoy would take.

Envoy's checks made in code are made here: a ring's minimum size above its maximum,
a Maglev table size that is not prime.
"""

from __future__ import annotations

from typing import Any

from proxyd.config.proto import join, unpack
from proxyd.config.spec import LEAF, REGEX, AnyOf, Spec
from proxyd.config.values import enum_name, seconds, wrapped_or
from proxyd.errors import ConfigError
from proxyd.protocol.hash_lb import (
    DEFAULT_MAGLEV_TABLE_SIZE,
    DEFAULT_MAX_RING_SIZE,
    DEFAULT_MIN_RING_SIZE,
)

LB_POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV")
DEFAULT_CHOICE_COUNT = 2

_LB = "envoy.extensions.load_balancing_policies."
LB_ROUND_ROBIN_TYPE = _LB + "round_robin.v3.RoundRobin"
LB_LEAST_REQUEST_TYPE = _LB + "least_request.v3.LeastRequest"
LB_RANDOM_TYPE = _LB + "random.v3.Random"
LB_RING_HASH_TYPE = _LB + "ring_hash.v3.RingHash"
LB_MAGLEV_TYPE = _LB + "maglev.v3.Maglev"

# The coverage tree's part for these (proxyd.config.supported takes them in): a
# Cluster's policy fields, and RouteAction.hash_policy (proxyd.protocol.hash_policy;
# filter_state is refused by name: proxyd has no filter state objects to hash).
# RoundRobin / LeastRequest slow_start_config (the cluster's *_lb_config and the typed
# policies alike; proxyd.protocol.slow_start).
SLOW_START_SPEC: Spec = {
    "slow_start_window": LEAF,
    "aggression": {"default_value": LEAF, "runtime_key": LEAF},
    "min_weight_percent": {"value": LEAF},
}

LB_POLICY_SPEC: dict[str, Spec] = {
    "round_robin_lb_config": {"slow_start_config": SLOW_START_SPEC},
    "ring_hash_lb_config": {
        "minimum_ring_size": LEAF,
        "maximum_ring_size": LEAF,
        "hash_function": LEAF,
    },
    "maglev_lb_config": {"table_size": LEAF},
    "load_balancing_policy": {
        "policies": {
            "typed_extension_config": {
                "name": LEAF,
                "typed_config": AnyOf(
                    "load balancing policy",
                    {
                        LB_ROUND_ROBIN_TYPE: {"slow_start_config": SLOW_START_SPEC},
                        LB_LEAST_REQUEST_TYPE: {
                            "choice_count": LEAF,
                            "slow_start_config": SLOW_START_SPEC,
                        },
                        LB_RANDOM_TYPE: {},
                        LB_RING_HASH_TYPE: {
                            "hash_function": LEAF,
                            "minimum_ring_size": LEAF,
                            "maximum_ring_size": LEAF,
                        },
                        LB_MAGLEV_TYPE: {"table_size": LEAF},
                    },
                ),
            },
        },
    },
}
HASH_POLICY: Spec = {
    "header": {
        "header_name": LEAF,
        "regex_rewrite": {"pattern": REGEX, "substitution": LEAF},
    },
    "cookie": {
        "name": LEAF,
        "ttl": LEAF,
        "path": LEAF,
        "attributes": {"name": LEAF, "value": LEAF},
    },
    "connection_properties": {"source_ip": LEAF},
    "query_parameter": {"name": LEAF},
    "terminal": LEAF,
}

_TYPED = {
    LB_ROUND_ROBIN_TYPE: "ROUND_ROBIN",
    LB_LEAST_REQUEST_TYPE: "LEAST_REQUEST",
    LB_RANDOM_TYPE: "RANDOM",
    LB_RING_HASH_TYPE: "RING_HASH",
    LB_MAGLEV_TYPE: "MAGLEV",
}


def compile_lb_policy(c: Any, path: str, file: str) -> dict[str, Any]:
    """The cluster's ``lb_policy`` and the settings of that policy."""
    if c.HasField("load_balancing_policy") and c.load_balancing_policy.policies:
        return _typed_policy(c, join(path, "load_balancing_policy.policies[0]"), file)
    lb_policy = enum_name(c, "lb_policy")
    if lb_policy not in LB_POLICIES:
        raise ConfigError(
            file,
            join(path, "lb_policy"),
            f"lb_policy {lb_policy} not supported by proxyd (supported: {', '.join(LB_POLICIES)})",
        )
    out: dict[str, Any] = {"lb_policy": lb_policy}
    if lb_policy == "LEAST_REQUEST" and c.HasField("least_request_lb_config"):
        out["choice_count"] = wrapped_or(
            c.least_request_lb_config, "choice_count", DEFAULT_CHOICE_COUNT
        )
        here = join(path, "least_request_lb_config")
        out.update(_slow_start(c.least_request_lb_config, here, file))
    elif lb_policy == "ROUND_ROBIN" and c.HasField("round_robin_lb_config"):
        here = join(path, "round_robin_lb_config")
        out.update(_slow_start(c.round_robin_lb_config, here, file))
    elif lb_policy == "RING_HASH":
        ring = c.ring_hash_lb_config  # the defaults when not set
        out.update(
            _ring(ring, enum_name(ring, "hash_function"), join(path, "ring_hash_lb_config"), file)
        )
    elif lb_policy == "MAGLEV":
        out.update(_maglev(c.maglev_lb_config, join(path, "maglev_lb_config"), file))
    _check_locality_weighted(c, lb_policy, path, file)
    return out


def _typed_policy(c: Any, path: str, file: str) -> dict[str, Any]:
    ext = c.load_balancing_policy.policies[0].typed_extension_config
    type_name = ext.typed_config.type_url.rsplit("/", 1)[-1]
    policy = _TYPED[type_name]  # the allow-list took no other type
    msg = unpack(ext.typed_config)
    here = join(path, "typed_extension_config.typed_config")
    out: dict[str, Any] = {"lb_policy": policy}
    if msg is None:
        return out
    if policy == "LEAST_REQUEST":
        out["choice_count"] = wrapped_or(msg, "choice_count", DEFAULT_CHOICE_COUNT)
        out.update(_slow_start(msg, here, file))
    elif policy == "ROUND_ROBIN":
        out.update(_slow_start(msg, here, file))
    elif policy == "RING_HASH":
        # ring_hash.v3.RingHash.HashFunction: DEFAULT_HASH (xxHash), XX_HASH, MURMUR_HASH_2.
        name = enum_name(msg, "hash_function")
        out.update(_ring(msg, "XX_HASH" if name == "DEFAULT_HASH" else name, here, file))
    elif policy == "MAGLEV":
        out.update(_maglev(msg, here, file))
    _check_locality_weighted(c, policy, path, file)
    return out


def _slow_start(msg: Any, path: str, file: str) -> dict[str, Any]:
    """A RoundRobin / LeastRequest config's slow_start_config (none, or a window of 0:
    no slow start, as in Envoy); min_weight_percent defaults to 10, aggression to 1.0."""
    if not msg.HasField("slow_start_config"):
        return {}
    ss = msg.slow_start_config
    window = seconds(ss.slow_start_window) if ss.HasField("slow_start_window") else 0.0
    if window < 0:
        raise ConfigError(
            file,
            join(path, "slow_start_config.slow_start_window"),
            "Invalid duration: Expected positive duration",
        )
    if not window:
        return {}
    out: dict[str, Any] = {"slow_start_window_s": window}
    if ss.HasField("aggression"):
        out["slow_start_aggression"] = ss.aggression.default_value
        out["slow_start_aggression_key"] = ss.aggression.runtime_key
    if ss.HasField("min_weight_percent"):
        out["slow_start_min_weight"] = ss.min_weight_percent.value / 100.0
    return out


def _ring(msg: Any, hash_function: str, path: str, file: str) -> dict[str, Any]:
    low = wrapped_or(msg, "minimum_ring_size", DEFAULT_MIN_RING_SIZE)
    high = wrapped_or(msg, "maximum_ring_size", DEFAULT_MAX_RING_SIZE)
    if low > high:
        raise ConfigError(
            file,
            join(path, "minimum_ring_size"),
            f"ring hash: minimum_ring_size ({low}) > maximum_ring_size ({high})",
        )
    return {"ring_min_size": low, "ring_max_size": high, "ring_hash_function": hash_function}


def _maglev(msg: Any, path: str, file: str) -> dict[str, Any]:
    size = wrapped_or(msg, "table_size", DEFAULT_MAGLEV_TABLE_SIZE)
    if not _is_prime(size):
        raise ConfigError(
            file, join(path, "table_size"), "The table size of maglev must be prime number"
        )
    return {"maglev_table_size": size}


def _check_locality_weighted(c: Any, policy: str, path: str, file: str) -> None:
    if policy not in ("RING_HASH", "MAGLEV"):
        return
    if c.HasField("common_lb_config") and c.common_lb_config.HasField(
        "locality_weighted_lb_config"
    ):
        raise ConfigError(
            file,
            join(path, "common_lb_config.locality_weighted_lb_config"),
            f"locality weighted balancing with {policy} not supported by proxyd",
        )


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True
