"""RouteAction.hash_policy (proxyd.protocol.hash_policy) and its config, without sockets:
each policy's hash, how they combine, terminal, the cookie a policy makes, and what the
config compiler accepts and refuses (lb_policy, ring/Maglev settings, typed policies)."""

from __future__ import annotations

from typing import Any

import pytest

from proxyd.config import compile_bootstrap
from proxyd.epoch import Cluster, HashPolicy
from proxyd.errors import ConfigError
from proxyd.protocol.hash_lb import xxh64
from proxyd.protocol.hash_policy import (
    HashPlan,
    cookie_value,
    generated_cookie,
    query_value,
    set_cookie_value,
)

MASK = (1 << 64) - 1


def rotl1(h: int) -> int:
    return ((h << 1) | (h >> 63)) & MASK


def no_cookie(policy: HashPolicy) -> str:
    raise AssertionError("no cookie should be made")


def test_header_hash_is_xxhash_of_the_value() -> None:
    plan = HashPlan([HashPolicy("header", "x-key")])
    assert plan.hash({"x-key": "abc"}, "/", "", no_cookie) == xxh64(b"abc")
    assert plan.hash({"x-key": ""}, "/", "", no_cookie) == xxh64(b"")
    assert plan.hash({}, "/", "", no_cookie) is None
    assert plan.headers == {"x-key"}


def test_header_regex_rewrite() -> None:
    plan = HashPlan([HashPolicy("header", "x-key", regex=r"^(\w+)-\d+$", substitution=r"\1")])
    assert plan.hash({"x-key": "user-17"}, "/", "", no_cookie) == xxh64(b"user")
    assert plan.hash({"x-key": "other"}, "/", "", no_cookie) == xxh64(b"other")


def test_policies_combine_by_rotating_and_terminal_stops() -> None:
    a, b = xxh64(b"a"), xxh64(b"b")
    both = HashPlan([HashPolicy("header", "x-a"), HashPolicy("header", "x-b")])
    assert both.hash({"x-a": "a", "x-b": "b"}, "/", "", no_cookie) == rotl1(a) ^ b
    # The same policy twice does not cancel out.
    twice = HashPlan([HashPolicy("header", "x-a"), HashPolicy("header", "x-a")])
    assert twice.hash({"x-a": "a"}, "/", "", no_cookie) == rotl1(a) ^ a
    terminal = HashPlan([HashPolicy("header", "x-a", terminal=True), HashPolicy("header", "x-b")])
    assert terminal.hash({"x-a": "a", "x-b": "b"}, "/", "", no_cookie) == a
    # A terminal policy without a hash (and none before it) lets the next one run.
    assert terminal.hash({"x-b": "b"}, "/", "", no_cookie) == b


def test_source_ip_and_query_parameter() -> None:
    ip = HashPlan([HashPolicy("source_ip")])
    assert ip.hash({}, "/", "10.1.2.3", no_cookie) == xxh64(b"10.1.2.3")
    q = HashPlan([HashPolicy("query_parameter", "k")])
    assert q.hash({}, "/p?a=1&k=v%20x&k=w", "", no_cookie) == xxh64(b"v%20x")
    assert q.hash({}, "/p?k", "", no_cookie) == xxh64(b"")
    assert q.hash({}, "/p?kk=1", "", no_cookie) is None
    assert q.hash({}, "/p", "", no_cookie) is None


def test_query_value() -> None:
    assert query_value("/x?a=1&b=2", "b") == "2"
    assert query_value("/x?a=1&b", "b") == ""
    assert query_value("/x?a==1", "a") == "=1"
    assert query_value("/x?=1", "") == "1"
    assert query_value("/x", "a") is None


def test_cookie_value() -> None:
    assert cookie_value("a=1; sess=xyz; b=2", "sess") == "xyz"
    assert cookie_value('sess="quoted"', "sess") == "quoted"
    assert cookie_value("sess=1; sess=2", "sess") == "1"
    assert cookie_value("broken; sess=ok", "sess") == "ok"
    assert cookie_value("other=1", "sess") == ""
    assert cookie_value("", "sess") == ""


def test_cookie_policy_hashes_the_cookie_or_makes_one_with_a_ttl() -> None:
    made: list[HashPolicy] = []

    def make(policy: HashPolicy) -> str:
        made.append(policy)
        return "0123456789abcdef"

    with_ttl = HashPolicy("cookie", "sess", ttl_s=60, path="/")
    plan = HashPlan([with_ttl])
    assert plan.hash({"cookie": "sess=v"}, "/", "", make) == xxh64(b"v")
    assert not made
    assert plan.hash({}, "/", "", make) == xxh64(b"0123456789abcdef")
    assert plan.hash({"cookie": "sess="}, "/", "", make) == xxh64(b"0123456789abcdef")
    assert made == [with_ttl, with_ttl]
    without_ttl = HashPlan([HashPolicy("cookie", "sess")])
    assert without_ttl.hash({}, "/", "", no_cookie) is None
    assert without_ttl.headers == {"cookie"}


def test_set_cookie_value_and_generated_cookie() -> None:
    assert set_cookie_value("s", "v", "/p", 60, (("SameSite", "Lax"), ("Secure", ""))) == (
        's="v"; Max-Age=60; Path=/p; SameSite=Lax; Secure; HttpOnly'
    )
    assert set_cookie_value("s", "v", "", 0, ()) == 's="v"; HttpOnly'
    value = generated_cookie("127.0.0.1:5000", "127.0.0.1:10000")
    assert value == f"{xxh64(b'127.0.0.1:5000127.0.0.1:10000'):016x}" and len(value) == 16


# -- config ---------------------------------------------------------------------------

ENDPOINT = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}


def bootstrap(cluster: dict[str, Any], route: dict[str, Any] | None = None) -> dict[str, Any]:
    c = {
        "name": "c",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [ENDPOINT]}]},
        **cluster,
    }
    doc: dict[str, Any] = {"static_resources": {"clusters": [c]}}
    if route is not None:
        hcm = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "h",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "v",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c", **route}}],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
        }
        doc["static_resources"]["listeners"] = [
            {
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [
                    {
                        "filters": [
                            {
                                "name": "envoy.filters.network.http_connection_manager",
                                "typed_config": hcm,
                            }
                        ]
                    }
                ],
            }
        ]
    return doc


def cluster_of(cluster: dict[str, Any]) -> Cluster:
    (c,) = compile_bootstrap(bootstrap(cluster), "conf.yaml").epoch_template.clusters
    return c


def reject(cluster: dict[str, Any], route: dict[str, Any] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(bootstrap(cluster, route), "conf.yaml")
    return info.value


def test_ring_hash_and_maglev_settings_compile() -> None:
    c = cluster_of({"lb_policy": "RING_HASH"})
    assert (c.lb_policy, c.ring_min_size, c.ring_max_size, c.ring_hash_function) == (
        "RING_HASH", 1024, 8388608, "XX_HASH",
    )  # fmt: skip
    c = cluster_of(
        {
            "lb_policy": "RING_HASH",
            "ring_hash_lb_config": {
                "minimum_ring_size": 10,
                "maximum_ring_size": 20,
                "hash_function": "MURMUR_HASH_2",
            },
        }
    )
    assert (c.ring_min_size, c.ring_max_size, c.ring_hash_function) == (10, 20, "MURMUR_HASH_2")
    assert cluster_of({"lb_policy": "MAGLEV"}).maglev_table_size == 65537
    c = cluster_of({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 251}})
    assert c.maglev_table_size == 251
    # Another policy's settings are ignored, as Envoy ignores them.
    assert cluster_of({"lb_policy": "RANDOM", "ring_hash_lb_config": {}}).lb_policy == "RANDOM"


def test_envoys_code_checks() -> None:
    err = reject(
        {
            "lb_policy": "RING_HASH",
            "ring_hash_lb_config": {"minimum_ring_size": 100, "maximum_ring_size": 10},
        }
    )
    assert "minimum_ring_size (100) > maximum_ring_size (10)" in str(err)
    err = reject({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 100}})
    assert "must be prime" in str(err) and "maglev_lb_config.table_size" in str(err)
    err = reject({"lb_policy": "MAGLEV", "common_lb_config": {"locality_weighted_lb_config": {}}})
    assert "locality_weighted_lb_config" in str(err)


def typed(type_name: str, **fields: Any) -> dict[str, Any]:
    url = f"type.googleapis.com/envoy.extensions.load_balancing_policies.{type_name}"
    return {
        "load_balancing_policy": {
            "policies": [
                {"typed_extension_config": {"name": "x", "typed_config": {"@type": url, **fields}}}
            ]
        }
    }


def test_typed_load_balancing_policies() -> None:
    c = cluster_of({"lb_policy": "RANDOM", **typed("ring_hash.v3.RingHash", minimum_ring_size=64)})
    assert (c.lb_policy, c.ring_min_size, c.ring_hash_function) == ("RING_HASH", 64, "XX_HASH")
    c = cluster_of(typed("ring_hash.v3.RingHash", hash_function="MURMUR_HASH_2"))
    assert c.ring_hash_function == "MURMUR_HASH_2"
    assert cluster_of(typed("maglev.v3.Maglev", table_size=251)).maglev_table_size == 251
    assert cluster_of(typed("round_robin.v3.RoundRobin")).lb_policy == "ROUND_ROBIN"
    assert cluster_of(typed("random.v3.Random")).lb_policy == "RANDOM"
    c = cluster_of(typed("least_request.v3.LeastRequest", choice_count=3))
    assert (c.lb_policy, c.choice_count) == ("LEAST_REQUEST", 3)
    assert "must be prime" in str(reject(typed("maglev.v3.Maglev", table_size=100)))
    err = reject(typed("round_robin.v3.RoundRobin", locality_lb_config={}))
    assert "locality_lb_config" in str(err)


def test_route_hash_policies_compile() -> None:
    route = {
        "hash_policy": [
            {"header": {"header_name": "X-Key"}},
            {"cookie": {"name": "s", "ttl": "5s", "path": "/p", "attributes": [{"name": "A"}]}},
            {"connection_properties": {"source_ip": True}, "terminal": True},
            {"connection_properties": {"source_ip": False}},
            {"query_parameter": {"name": "q"}},
        ]
    }
    epoch = compile_bootstrap(bootstrap({"lb_policy": "MAGLEV"}, route), "c.yaml").epoch_template
    (r,) = epoch.listeners[0].hcm.route_config.virtual_hosts[0].routes
    assert r.hash_policy == (
        HashPolicy("header", "x-key"),
        HashPolicy("cookie", "s", ttl_s=5, path="/p", attributes=(("A", ""),)),
        HashPolicy("source_ip", terminal=True),
        HashPolicy("query_parameter", "q"),
    )


def test_filter_state_hash_policy_is_refused_by_name() -> None:
    err = reject({"lb_policy": "RING_HASH"}, {"hash_policy": [{"filter_state": {"key": "k"}}]})
    assert "hash_policy[0].filter_state" in str(err)
