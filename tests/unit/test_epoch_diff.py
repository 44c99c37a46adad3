"""epoch_diff: what one epoch changes from another, level by level, as plain data."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from proxyd import epoch as ep
from proxyd.protocol.epoch_diff import (
    SECTIONS,
    diff_epochs,
    field_changes,
    format_diff,
    is_empty,
    route_key,
    show,
)
from proxyd.protocol.epoch_summary import format_counts, format_summary, summarize


def route(prefix: str, cluster: str = "up", name: str = "", **kw: Any) -> ep.Route:
    return ep.Route(name, ep.RouteMatch("prefix", prefix), cluster, **kw)


def listener(
    name: str = "ingress",
    port: int = 10000,
    routes: tuple[ep.Route, ...] | None = None,
    vhosts: tuple[ep.VirtualHost, ...] | None = None,
    rc_name: str = "local_route",
    **hcm: Any,
) -> ep.Listener:
    if vhosts is None:
        vhosts = (ep.VirtualHost("all", ("*",), routes or (route("/"),)),)
    manager = ep.HttpConnectionManager("ingress_http", "AUTO", ep.RouteConfig(rc_name, vhosts), **hcm)  # fmt: skip
    return ep.Listener(name, "127.0.0.1", port, manager)


def cluster(name: str = "up", ports: tuple[int, ...] = (8080, 8081), **kw: Any) -> ep.Cluster:
    hosts = tuple(ep.Endpoint("127.0.0.1", p) for p in ports)
    return dataclasses.replace(ep.Cluster(name, "STATIC", 1.0, "ROUND_ROBIN", hosts), **kw)


def epoch(
    listeners: tuple[ep.Listener, ...] | None = None,
    clusters: tuple[ep.Cluster, ...] | None = None,
    number: int = 1,
) -> ep.Epoch:
    return ep.Epoch(
        number,
        (listener(),) if listeners is None else listeners,
        (cluster(),) if clusters is None else clusters,
    )


def only(diff: dict[str, Any], section: str, action: str) -> list[dict[str, Any]]:
    """The entries of ``section``/``action``; every other part of ``diff`` is empty."""
    for s in SECTIONS:
        for a in ("added", "removed", "changed"):
            if (s, a) != (section, action):
                assert diff[s][a] == [], (s, a, diff[s][a])
    assert diff["epoch_fields"] == []
    return diff[section][action]


# -- nothing changed -----------------------------------------------------------------


def test_equal_epochs_give_an_empty_diff() -> None:
    diff = diff_epochs(epoch(), epoch())
    assert is_empty(diff)
    assert all(diff[s] == {"added": [], "removed": [], "changed": []} for s in SECTIONS)
    assert diff["epoch_fields"] == []
    assert format_diff(diff) == []


def test_the_epoch_number_alone_is_no_change() -> None:
    assert is_empty(diff_epochs(epoch(number=1), epoch(number=7)))


def test_the_diff_is_json_data() -> None:
    old = epoch()
    new = epoch(
        listeners=(listener(routes=(route("/", timeout_s=5.0),)),),
        clusters=(
            cluster(health_checks=(ep.HealthCheck("tcp", 1.0, 5.0, 2, 2, tcp_send=b"\xffping"),)),
        ),  # fmt: skip
    )
    diff = diff_epochs(old, new)
    assert json.loads(json.dumps(diff)) == diff
    hc = only_changed_fields(diff, "clusters")
    assert hc["health_checks"]["old"] == []
    assert hc["health_checks"]["new"][0]["tcp_send"] == "\\xffping"


def only_changed_fields(diff: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    (entry,) = diff[section]["changed"]
    return {f["field"]: f for f in entry["fields"]}


# -- listeners ------------------------------------------------------------------------


def test_listener_added_and_removed() -> None:
    old = epoch(listeners=(listener("a", 1), listener("b", 2)))
    new = epoch(listeners=(listener("b", 2), listener("c", 3)))
    diff = diff_epochs(old, new)
    assert diff["listeners"]["added"] == [{"name": "c"}]
    assert diff["listeners"]["removed"] == [{"name": "a"}]
    assert diff["listeners"]["changed"] == []
    # What an added or removed listener brings is not listed again below it.
    assert all(diff[s][a] == [] for s in SECTIONS[1:] for a in ("added", "removed", "changed"))


def test_listener_changed_names_each_field_with_old_and_new() -> None:
    old = epoch(listeners=(listener(idle_timeout_s=3600.0, server_name="envoy"),))
    new = epoch(
        listeners=(
            dataclasses.replace(
                listener(idle_timeout_s=60.0, server_name="edge"),
                per_connection_buffer_limit_bytes=32768,
            ),
        )
    )
    (entry,) = only(diff_epochs(old, new), "listeners", "changed")
    assert entry == {
        "name": "ingress",
        "fields": [
            {"field": "hcm.idle_timeout_s", "old": 3600.0, "new": 60.0},
            {"field": "hcm.server_name", "old": "envoy", "new": "edge"},
            {"field": "per_connection_buffer_limit_bytes", "old": 1048576, "new": 32768},
        ],
    }


def test_listener_http_filters_nested_values_and_lists() -> None:
    fault = ep.HttpFilter("fault", "type.fault", {"delay": {"fixed_ms": 100, "numerator": 5}})
    old = epoch(listeners=(listener(http_filters=(fault,)),))
    slower = dataclasses.replace(fault, config={"delay": {"fixed_ms": 250, "numerator": 5}})
    (entry,) = only(diff_epochs(old, epoch(listeners=(listener(http_filters=(slower,)),))), "listeners", "changed")  # fmt: skip
    assert entry["fields"] == [
        {"field": "hcm.http_filters[0].config.delay.fixed_ms", "old": 100, "new": 250}
    ]
    # A filter added: the list changed length, so it is shown whole.
    two = (fault, ep.HttpFilter("buffer", "type.buffer", {"max_request_bytes": 1024}))
    (entry,) = only(diff_epochs(old, epoch(listeners=(listener(http_filters=two),))), "listeners", "changed")  # fmt: skip
    (change,) = entry["fields"]
    assert change["field"] == "hcm.http_filters"
    assert [f["name"] for f in change["old"]] == ["fault"]
    assert [f["name"] for f in change["new"]] == ["fault", "buffer"]


def test_optional_value_set_and_unset() -> None:
    rds = ep.ConfigSource("ads")
    old = epoch(listeners=(listener(),))
    new = epoch(listeners=(listener(rds_route_config_name="r", rds_source=rds),))
    (entry,) = only(diff_epochs(old, new), "listeners", "changed")
    fields = {f["field"]: f for f in entry["fields"]}
    assert fields["hcm.rds_source"]["old"] is None
    assert fields["hcm.rds_source"]["new"]["kind"] == "ads"
    assert fields["hcm.rds_route_config_name"] == {"field": "hcm.rds_route_config_name", "old": "", "new": "r"}  # fmt: skip
    (back,) = only(diff_epochs(new, old), "listeners", "changed")
    assert {f["field"]: f["new"] for f in back["fields"]}["hcm.rds_source"] is None


# -- route configs, virtual hosts, routes --------------------------------------------


def test_route_config_renamed() -> None:
    old = epoch(listeners=(listener(rc_name="a"),))
    new = epoch(listeners=(listener(rc_name="b"),))
    entries = only(diff_epochs(old, new), "route_configs", "changed")
    assert entries == [
        {"listener": "ingress", "name": "b", "fields": [{"field": "name", "old": "a", "new": "b"}]}
    ]


def test_virtual_hosts_added_removed_changed() -> None:
    r = (route("/"),)
    old = epoch(listeners=(listener(vhosts=(ep.VirtualHost("a", ("a.example",), r), ep.VirtualHost("b", ("*",), r))),))  # fmt: skip
    new = epoch(listeners=(listener(vhosts=(ep.VirtualHost("b", ("b.example", "*"), r), ep.VirtualHost("c", ("c.example",), r))),))  # fmt: skip
    diff = diff_epochs(old, new)
    where = {"listener": "ingress", "route_config": "local_route"}
    assert diff["virtual_hosts"]["added"] == [{**where, "name": "c"}]
    assert diff["virtual_hosts"]["removed"] == [{**where, "name": "a"}]
    assert diff["virtual_hosts"]["changed"] == [
        {
            **where,
            "name": "b",
            "fields": [{"field": "domains", "old": ["*"], "new": ["b.example", "*"]}],
        }  # fmt: skip
    ]
    assert diff["routes"] == {"added": [], "removed": [], "changed": []}
    assert diff["listeners"]["changed"] == []  # the route levels are not repeated above


def test_routes_added_removed_changed_by_name_or_match() -> None:
    old = epoch(listeners=(listener(routes=(route("/api", name="api"), route("/old"), route("/"))),))  # fmt: skip
    new = epoch(
        listeners=(
            listener(
                routes=(
                    ep.Route("api", ep.RouteMatch("prefix", "/api/v2"), "up", timeout_s=5.0),
                    route("/new", cluster="b"),
                    route("/", cluster="b"),
                )
            ),
        )
    )
    diff = diff_epochs(old, new)
    where = {"listener": "ingress", "route_config": "local_route", "virtual_host": "all"}
    assert diff["routes"]["added"] == [{**where, "name": "prefix /new", "index": 1}]
    assert diff["routes"]["removed"] == [{**where, "name": "prefix /old", "index": 1}]
    assert diff["routes"]["changed"] == [
        {
            **where,
            "name": "api",
            "index": 0,
            "fields": [
                {"field": "match.value", "old": "/api", "new": "/api/v2"},
                {"field": "timeout_s", "old": 15.0, "new": 5.0},
            ],
        },
        {
            **where,
            "name": "prefix /",
            "index": 2,
            "fields": [{"field": "cluster", "old": "up", "new": "b"}],
        },  # fmt: skip
    ]
    assert diff["virtual_hosts"]["changed"] == []  # the order of the kept routes is the same


def test_routes_reordered_is_a_virtual_host_change() -> None:
    a, b = route("/a"), route("/b")
    old = epoch(listeners=(listener(routes=(a, b)),))
    new = epoch(listeners=(listener(routes=(b, a)),))
    (entry,) = only(diff_epochs(old, new), "virtual_hosts", "changed")
    assert entry["fields"] == [
        {
            "field": "route_order",
            "old": ["prefix /a", "prefix /b"],
            "new": ["prefix /b", "prefix /a"],
        }  # fmt: skip
    ]


def test_route_keys_tell_matches_apart() -> None:
    hdr = ep.HeaderMatch("x-env", ep.StringMatch("exact", "canary"))
    canary = ep.Route("", ep.RouteMatch("prefix", "/", headers=(hdr,)), "b")
    assert route_key(canary) == 'prefix / [header x-env exact "canary"]'
    assert route_key(ep.Route("", ep.RouteMatch("path", "/X", case_sensitive=False), "b")) == "path /X (any case)"  # fmt: skip
    # Two routes with the same match: the second is "#2", and each is compared with its own.
    old = epoch(listeners=(listener(routes=(route("/"), route("/", cluster="b"))),))
    new = epoch(listeners=(listener(routes=(route("/"), route("/", cluster="c"))),))
    (entry,) = only(diff_epochs(old, new), "routes", "changed")
    assert (entry["name"], entry["index"], entry["fields"]) == (
        "prefix /#2", 1, [{"field": "cluster", "old": "b", "new": "c"}],
    )  # fmt: skip


def test_route_changes_under_each_listener_that_has_them() -> None:
    old = epoch(listeners=(listener("a", 1), listener("b", 2)))
    new = epoch(listeners=(listener("a", 1, routes=(route("/", "b"),)), listener("b", 2, routes=(route("/", "b"),))))  # fmt: skip
    entries = only(diff_epochs(old, new), "routes", "changed")
    assert [e["listener"] for e in entries] == ["a", "b"]


# -- clusters and endpoints ----------------------------------------------------------


def test_clusters_added_removed_changed() -> None:
    old = epoch(clusters=(cluster("a"), cluster("b")))
    new = epoch(
        clusters=(
            cluster(
                "b",
                lb_policy="LEAST_REQUEST",
                connect_timeout_s=0.25,
                cb_high=ep.CircuitBreakerThresholds(max_requests=10),
            ),  # fmt: skip
            cluster("c"),
        )
    )
    diff = diff_epochs(old, new)
    assert diff["clusters"]["added"] == [{"name": "c"}]
    assert diff["clusters"]["removed"] == [{"name": "a"}]
    assert diff["clusters"]["changed"] == [
        {
            "name": "b",
            "fields": [
                {"field": "connect_timeout_s", "old": 1.0, "new": 0.25},
                {"field": "lb_policy", "old": "ROUND_ROBIN", "new": "LEAST_REQUEST"},
                {"field": "cb_high.max_requests", "old": 1024, "new": 10},
            ],
        }
    ]
    # The endpoints of the added and the removed cluster are not listed on their own.
    assert diff["endpoints"] == {"added": [], "removed": [], "changed": []}


def test_endpoints_added_removed_changed() -> None:
    old = epoch(clusters=(cluster(ports=(8080, 8081)),))
    moved = cluster(ports=(8081, 8082))
    heavier = dataclasses.replace(moved.endpoints[0], weight=5, priority=1)
    new = epoch(clusters=(dataclasses.replace(moved, endpoints=(heavier, moved.endpoints[1])),))
    diff = diff_epochs(old, new)
    assert diff["endpoints"]["added"] == [{"cluster": "up", "name": "127.0.0.1:8082"}]
    assert diff["endpoints"]["removed"] == [{"cluster": "up", "name": "127.0.0.1:8080"}]
    assert diff["endpoints"]["changed"] == [
        {
            "cluster": "up",
            "name": "127.0.0.1:8081",
            "fields": [
                {"field": "weight", "old": 1, "new": 5},
                {"field": "priority", "old": 0, "new": 1},
            ],
        }
    ]
    assert diff["clusters"]["changed"] == []  # endpoints are their own level


def test_endpoint_keys_for_ipv6_and_dns_names() -> None:
    old = ep.Cluster("dns", "STRICT_DNS", 1.0, "ROUND_ROBIN", (ep.Endpoint("a.internal", 80, hostname="a.internal"),))  # fmt: skip
    new = dataclasses.replace(old, endpoints=(ep.Endpoint("::1", 80), ep.Endpoint("b.internal", 80, hostname="b.internal")))  # fmt: skip
    diff = diff_epochs(epoch(clusters=(old,)), epoch(clusters=(new,)))
    assert [e["name"] for e in diff["endpoints"]["added"]] == ["[::1]:80", "b.internal:80"]
    assert [e["name"] for e in diff["endpoints"]["removed"]] == ["a.internal:80"]


def test_health_and_ejection_are_endpoint_fields() -> None:
    old = epoch()
    down = dataclasses.replace(old.clusters[0].endpoints[0], healthy=False)
    new = epoch(clusters=(dataclasses.replace(old.clusters[0], endpoints=(down, old.clusters[0].endpoints[1])),))  # fmt: skip
    (entry,) = only(diff_epochs(old, new), "endpoints", "changed")
    assert entry["fields"] == [{"field": "healthy", "old": True, "new": False}]


def test_epoch_wide_values() -> None:
    diff = diff_epochs(epoch(), dataclasses.replace(epoch(), drain_time_s=30.0))
    assert diff["epoch_fields"] == [{"field": "drain_time_s", "old": 600.0, "new": 30.0}]
    assert not is_empty(diff)
    assert format_diff(diff) == ["~ epoch: drain_time_s: 600.0 -> 30.0"]


# -- field_changes on its own --------------------------------------------------------


def test_field_changes_numbers_compare_by_value() -> None:
    assert field_changes({"a": 1, "b": [1, 2]}, {"a": 1.0, "b": [1, 2]}) == []
    assert field_changes({"a": True}, {"a": 1}) == [{"field": "a", "old": True, "new": 1}]
    assert field_changes({"a": {"b": 1}}, {"a": {"c": 1}}) == [
        {"field": "a.b", "old": 1, "new": None},
        {"field": "a.c", "old": None, "new": 1},
    ]
    nan = float("nan")
    assert field_changes({"x": nan}, {"x": nan}) == []


# -- for people -----------------------------------------------------------------------


def test_format_diff_lines() -> None:
    old = epoch(listeners=(listener(idle_timeout_s=3600.0),), clusters=(cluster("a"), cluster("gone")))  # fmt: skip
    new = epoch(
        listeners=(listener(idle_timeout_s=60.0, routes=(route("/"), route("/x", "a"))),),
        clusters=(cluster("a", ports=(8080, 9000)),),
    )
    assert format_diff(diff_epochs(old, new)) == [
        "~ listener 'ingress'",
        "    hcm.idle_timeout_s: 3600.0 -> 60.0",
        "+ route 'prefix /x' (listener 'ingress', route config 'local_route', virtual host 'all')",
        "- cluster 'gone'",
        "- endpoint '127.0.0.1:8081' (cluster 'a')",
        "+ endpoint '127.0.0.1:9000' (cluster 'a')",
    ]


def test_show_keeps_lines_short() -> None:
    assert show(3600.0) == "3600.0"
    assert show("edge") == '"edge"'
    assert show(None) == "null"
    assert show(["*"]) == '["*"]'
    long = [{"name": f"filter-{i}", "config": {"x": "y" * 20}} for i in range(3)]
    assert show(long) == "[3 items: filter-0, filter-1, filter-2]"
    assert show([{"x": "y" * 80}]) == "[1 item]"
    assert show({"x": "y" * 80}) == "{...}"
    assert show("z" * 100) == '"' + "z" * 56 + "..."


# -- the summary (proxyd --mode validate) ----------------------------------------------


def test_summary_counts_and_names() -> None:
    fault = ep.HttpFilter("envoy.filters.http.fault", "type.fault", {})
    e = epoch(
        listeners=(
            listener("a", 1, http_filters=(fault,), routes=(route("/x", "b"), route("/"))),
            listener(
                "b", 2, rds_route_config_name="rds_r", rds_source=ep.ConfigSource("ads"), vhosts=()
            ),  # fmt: skip
        ),
        clusters=(
            cluster("up"),
            cluster("b", ports=(9000,)),
            cluster("eds", ports=(), eds_source=ep.ConfigSource("ads"), eds_service_name="svc"),
        ),  # fmt: skip
    )
    s = summarize(e)
    assert s["counts"] == {
        "listeners": 2, "route_configs": 2, "virtual_hosts": 1, "routes": 2,
        "clusters": 3, "endpoints": 3, "http_filters": 1,
    }  # fmt: skip
    assert json.loads(json.dumps(s)) == s
    assert s["listeners"][0]["route_config"]["virtual_hosts"][0]["routes"] == [
        {"name": "prefix /x", "cluster": "b"},
        {"name": "prefix /", "cluster": "up"},
    ]
    assert s["listeners"][1]["route_config"]["rds"] == "rds_r"
    assert [c["eds"] for c in s["clusters"]] == ["", "", "svc"]
    assert format_counts(s["counts"]) == (
        "2 listeners, 2 route configs, 1 virtual host, 2 routes, 3 clusters, 3 endpoints, "
        "1 http filter before the router"
    )
    assert format_summary(s) == [
        format_counts(s["counts"]),
        "listener 'a' 127.0.0.1:1: http filters envoy.filters.http.fault, then the router",
        "  virtual host 'all' (route config 'local_route'), domains *: 2 routes",
        "    route 'prefix /x' -> cluster 'b'",
        "    route 'prefix /' -> cluster 'up'",
        "listener 'b' 127.0.0.1:2: router only",
        "  route config 'local_route' (RDS 'rds_r'): no virtual hosts yet",
        "cluster 'up' STATIC ROUND_ROBIN: 2 endpoints 127.0.0.1:8080, 127.0.0.1:8081",
        "cluster 'b' STATIC ROUND_ROBIN: 1 endpoint 127.0.0.1:9000",
        "cluster 'eds' STATIC ROUND_ROBIN (EDS 'svc'): 0 endpoints",
    ]
