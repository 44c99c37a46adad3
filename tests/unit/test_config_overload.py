"""overload_manager, the runtime-key connection limit, watchdogs, admin fields and
cluster_manager.local_cluster_name: what the loader compiles and what it refuses (with
Envoy's messages; tests/compat/test_overload_compat.py checks the verdicts against
real Envoy). Also the shared connection count's arithmetic (proxyd.cx_limit)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format

from proxyd import ipc
from proxyd.config.overload import (
    RUNTIME_KEY,
    RUNTIME_KEY_WARNING,
    Watchdog,
    runtime_max_connections,
)
from proxyd.cx_limit import CellAllocator, SharedConnectionCount
from proxyd.epoch import Epoch, HttpConnectionManager, Listener, RouteConfig
from proxyd.master.watchdog import WatchState, alerts
from proxyd.worker.overload import COUNTED, FREE, MONITOR_STATS, REFUSED, WorkerOverload
from proxyd.worker.stats import ListenerStats, StatsStore
from tests.unit.test_config_parse import base, load, reject

DC_T = "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"  # noqa: E501
FH_T = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
CONNECTIONS = "envoy.resource_monitors.global_downstream_max_connections"
HEAP = "envoy.resource_monitors.fixed_heap"
LISTENER = Listener("l", "127.0.0.1", 1, HttpConnectionManager("p", "AUTO", RouteConfig("r", ())))


def monitors(limit: int = 100, heap: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if limit:
        out.append({"name": CONNECTIONS, "typed_config": {"@type": DC_T, "max_active_downstream_connections": limit}})  # fmt: skip
    if heap:
        out.append({"name": HEAP, "typed_config": {"@type": FH_T, "max_heap_size_bytes": heap}})
    return out


def action(name: str, monitor: str = HEAP, value: float = 0.9) -> dict[str, Any]:
    return {"name": f"envoy.overload_actions.{name}", "triggers": [{"name": monitor, "threshold": {"value": value}}]}  # fmt: skip


def test_connections_monitor_sets_the_global_limit() -> None:
    d = base()
    d["overload_manager"] = {"resource_monitors": monitors(limit=7)}
    ov = load(d).overload
    assert (ov.global_cx_limit, ov.global_cx_count_all) == (7, False)
    assert ov.monitors == (CONNECTIONS,)
    assert load(base()).overload.global_cx_limit == -1


def test_actions_with_threshold_triggers_compile() -> None:
    d = base()
    d["overload_manager"] = {
        "refresh_interval": "0.25s",
        "resource_monitors": monitors(limit=5, heap=1 << 30),
        "actions": [
            action("stop_accepting_connections", value=0.95),
            action("disable_http_keepalive", CONNECTIONS, 0.8),
        ],
    }
    ov = load(d).overload
    assert ov.refresh_interval_s == 0.25
    assert ov.max_heap_bytes == 1 << 30
    assert [
        (a.name.rsplit(".", 1)[1], a.triggers[0].monitor, a.triggers[0].threshold)
        for a in ov.actions
    ] == [  # fmt: skip
        ("stop_accepting_connections", HEAP, pytest.approx(0.95)),
        ("disable_http_keepalive", CONNECTIONS, pytest.approx(0.8)),
    ]


@pytest.mark.parametrize(
    ("om", "path", "reason"),
    [
        (
            {"resource_monitors": monitors(heap=10), "actions": [action("foo")]},
            "overload_manager.actions[0].name",
            "Unknown Overload Manager Action envoy.overload_actions.foo",
        ),  # noqa: E501
        (
            {"resource_monitors": monitors(heap=10), "actions": [action("reduce_timeouts")]},
            "overload_manager.actions[0].name",
            "overload action envoy.overload_actions.reduce_timeouts not supported by proxyd",
        ),  # noqa: E501
        (
            {
                "resource_monitors": monitors(heap=10),
                "actions": [action("stop_accepting_connections", "x")],
            },
            "overload_manager.actions[0].triggers[0].name",
            "Unknown trigger resource x for overload action envoy.overload_actions.stop_accepting_connections",
        ),  # noqa: E501
        (
            {
                "resource_monitors": monitors(heap=10),
                "actions": [action("stop_accepting_connections")] * 2,
            },
            "overload_manager.actions[1]",
            "Duplicate overload action envoy.overload_actions.stop_accepting_connections",
        ),  # noqa: E501
        (
            {"resource_monitors": monitors(limit=0, heap=10) * 2},
            "overload_manager.resource_monitors[1]",
            "Duplicate resource monitor envoy.resource_monitors.fixed_heap",
        ),  # noqa: E501
        (
            {
                "resource_monitors": [
                    {
                        "name": "envoy.resource_monitors.downstream_connections",
                        "typed_config": {"@type": DC_T, "max_active_downstream_connections": 3},
                    }
                ]
            },
            "overload_manager.resource_monitors[0]",
            "Didn't find a registered implementation for 'envoy.resource_monitors.downstream_connections'",
        ),  # noqa: E501
        (
            {
                "resource_monitors": monitors(limit=0)
                + [{"name": CONNECTIONS, "typed_config": {"@type": DC_T}}]
            },
            "overload_manager.resource_monitors[0].typed_config.max_active_downstream_connections",
            "greater than 0",
        ),  # noqa: E501
        (
            {
                "resource_monitors": monitors(heap=10),
                "actions": [
                    {
                        "name": "envoy.overload_actions.stop_accepting_connections",
                        "triggers": [
                            {
                                "name": HEAP,
                                "scaled": {"scaling_threshold": 0.5, "saturation_threshold": 0.9},
                            }
                        ],
                    }
                ],
            },
            "overload_manager.actions[0].triggers[0].scaled",
            "field not supported by proxyd",
        ),  # noqa: E501
        (
            {
                "resource_monitors": [
                    {
                        "name": "envoy.resource_monitors.injected_resource",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig",
                            "filename": "/x",
                        },
                    }
                ]
            },
            "overload_manager.resource_monitors[0]",
            "resource monitor 'envoy.resource_monitors.injected_resource'",
        ),  # noqa: E501
    ],
)
def test_overload_manager_refusals_name_the_field(
    om: dict[str, Any], path: str, reason: str
) -> None:
    d = base()
    d["overload_manager"] = om
    err = reject(d)
    assert err.path == path
    assert reason in err.reason


def bootstrap_with_runtime(layers: list[dict[str, Any]]) -> Any:
    return json_format.ParseDict({"layered_runtime": {"layers": layers}}, bootstrap_pb2.Bootstrap())


def test_runtime_key_is_read_from_the_last_static_layer_with_envoys_warning(capsys: Any) -> None:
    b = bootstrap_with_runtime(
        [
            {"name": "a", "static_layer": {RUNTIME_KEY: 50}},
            {"name": "b", "static_layer": {"overload": {"global_downstream_max_connections": "7"}}},
            {"name": "admin", "admin_layer": {}},
        ]
    )
    assert runtime_max_connections(b) == 7
    assert RUNTIME_KEY_WARNING in capsys.readouterr().out
    assert runtime_max_connections(bootstrap_with_runtime([{"name": "a", "static_layer": {"x": 1}}])) == -1  # fmt: skip
    assert runtime_max_connections(bootstrap_with_runtime([{"name": "a", "static_layer": {RUNTIME_KEY: "many"}}])) == -1  # fmt: skip


def test_watchdogs_and_the_deprecated_watchdog_compile_with_envoys_defaults() -> None:
    d = base()
    d["watchdogs"] = {
        "worker_watchdog": {
            "miss_timeout": "0.1s",
            "kill_timeout": "2s",
            "multikill_timeout": "3s",
            "multikill_threshold": {"value": 50},
        }  # fmt: skip
    }
    w = load(d).watchdogs
    assert w.main_thread == Watchdog()  # Envoy's defaults: 200 ms, 1 s, no kill
    assert (w.worker.miss_s, w.worker.megamiss_s, w.worker.kill_s) == (0.1, 1.0, 2.0)
    assert (w.worker.multikill_s, w.worker.multikill_threshold_percent) == (3.0, 50.0)
    assert w.worker.loop_interval_s == pytest.approx(0.1)
    d = base()
    d["watchdog"] = {"miss_timeout": "0.5s"}
    w = load(d).watchdogs
    assert w.main_thread.miss_s == w.worker.miss_s == 0.5


def test_watchdog_alerts_once_per_silence() -> None:
    wd = Watchdog(miss_s=0.2, megamiss_s=1.0)
    state = WatchState()
    assert alerts(state, wd, last_heard=10.0, now=10.1) == (False, False)
    assert alerts(state, wd, last_heard=10.0, now=10.3) == (True, False)
    assert alerts(state, wd, last_heard=10.0, now=10.6) == (False, False)  # same silence
    assert alerts(state, wd, last_heard=10.0, now=11.2) == (False, True)
    assert alerts(state, wd, last_heard=11.3, now=11.4) == (False, False)  # heard again
    assert alerts(state, wd, last_heard=11.3, now=11.6) == (True, False)  # a new silence


def test_admin_fields_and_local_cluster_name() -> None:
    d = base()
    d["admin"] = {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}},
        "profile_path": "/tmp/envoy.prof",
        "ignore_global_conn_limit": True,
        "access_log": [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
                },
            }
        ],  # noqa: E501
    }
    d["cluster_manager"] = {"local_cluster_name": "web"}
    loaded = load(d)
    assert loaded.admin is not None
    assert (loaded.admin.access_log_path, loaded.admin.ignore_global_conn_limit) == ("-", True)
    assert loaded.admin.profile_path == "/tmp/envoy.prof"
    assert loaded.local_cluster_name == "web"
    d["cluster_manager"] = {"local_cluster_name": "nope"}
    err = reject(d)
    assert (err.path, err.reason) == ("cluster_manager.local_cluster_name", "local cluster 'nope' must be defined")  # fmt: skip
    d["static_resources"]["listeners"][0]["ignore_global_conn_limit"] = True
    d["cluster_manager"] = {}
    assert load(d).epoch_template.listeners[0].ignore_global_conn_limit


def test_shared_count_is_exact_and_a_dead_process_cell_is_zeroed() -> None:
    master = SharedConnectionCount.create(8)
    cells = CellAllocator(master)
    try:
        a_cell, b_cell = cells.acquire(), cells.acquire()
        a = SharedConnectionCount(master.fd, a_cell, 8)
        b = SharedConnectionCount(master.fd, b_cell, 8)
        assert [a.try_take(3), b.try_take(3), a.try_take(3), b.try_take(3)] == [True, True, True, False]  # fmt: skip
        assert master.total() == 3 and (a.held(), b.held()) == (2, 1)
        a.give()
        assert b.try_take(3) and master.total() == 3
        b.take()  # counted though over the limit (the runtime key's exempt listeners)
        assert master.total() == 4 and a.try_take(5) and master.total() == 5
        a.give()
        cells.release(b_cell)  # b's process exited: its connections went with it
        assert master.total() == a.held() == 1
        assert cells.acquire() == b_cell and master.total() == 1
    finally:
        master.close()


class _Plan:
    """What WorkerOverload.admit reads of a listener plan."""

    def __init__(self, ignore: bool) -> None:
        self.listener = dataclasses.replace(LISTENER, ignore_global_conn_limit=ignore)
        self.listener_stats = ListenerStats("l")


def test_admit_follows_envoys_order_and_the_two_ways_of_counting() -> None:
    master = SharedConnectionCount.create(4)
    try:
        counts = SharedConnectionCount(master.fd, 1, 4)
        stats = StatsStore()
        w = WorkerOverload(counts, stats)
        limited, exempt = _Plan(False), _Plan(True)
        # The overload manager's monitor: exempt listeners are not counted.
        w.apply_epoch(Epoch(1, (), (), global_cx_limit=1))
        assert w.checks
        assert [w.admit(exempt), w.admit(limited), w.admit(limited)] == [FREE, COUNTED, REFUSED]
        assert limited.listener_stats.global_cx_overflow == 1
        assert stats.named(MONITOR_STATS).value("failed_updates") == 1
        w.give()
        # The runtime key: every accepted connection counts, exempt ones are not refused.
        w.apply_epoch(Epoch(2, (), (), global_cx_limit=1, global_cx_count_all=True))
        assert [w.admit(exempt), w.admit(limited), w.admit(exempt)] == [COUNTED, REFUSED, COUNTED]
        assert master.total() == 2
        assert stats.named(MONITOR_STATS).value("failed_updates") == 1  # monitor only
        w.give()
        w.give()
        # reject_incoming_connections comes after the limit and gives its slot back.
        w.apply_actions(ipc.OverloadActions(reject_incoming_connections=True))
        assert w.admit(limited) == REFUSED
        assert limited.listener_stats.cx_overload_reject == 1 and master.total() == 0
        # No limit, no action: nothing to check at accept.
        w.apply_epoch(Epoch(3, (), ()))
        w.apply_actions(ipc.OverloadActions())
        assert not w.checks
    finally:
        master.close()
