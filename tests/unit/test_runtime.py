"""The runtime: layers from the bootstrap, values parsed as Envoy parses them, the disk
layer's files, the merged snapshot, and route ``runtime_fraction`` matching."""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from envoy.config.core.v3 import base_pb2

from proxyd.config.loader import compile_bootstrap
from proxyd.config.node import USER_AGENT_NAME, compile_node
from proxyd.config.runtime import from_string, number_text
from proxyd.epoch import (
    Epoch,
    Route,
    RouteConfig,
    RouteMatch,
    RuntimeFraction,
    RuntimeValue,
    VirtualHost,
    from_wire,
    to_wire,
)
from proxyd.errors import ConfigError
from proxyd.master.runtime import RuntimeLoader, disk_value, read_disk_layer
from proxyd.protocol import routing
from proxyd.protocol import runtime as rt
from proxyd.protocol.routing import RouteTable
from proxyd.protocol.runtime import Snapshot
from proxyd.stats import StatsStore
from tests.unit.test_config_errors import BASE


def bootstrap(**fields: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(fields)
    return data


def layers_of(*layers: dict[str, Any]) -> Any:
    return compile_bootstrap(bootstrap(layered_runtime={"layers": list(layers)}), "f.yaml")


def refused(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(data, "f.yaml")
    return info.value


# -- the layers ---------------------------------------------------------------------------


def test_static_layer_is_flattened_into_dotted_keys() -> None:
    loaded = layers_of(
        {
            "name": "base",
            "static_layer": {
                "a": {"b": {"c": 5}},
                "frac": {"numerator": 5, "denominator": "TEN_THOUSAND"},
                "flag": False,
                "s": "42",
                "f": 2.75,
            },
        }
    )
    (layer,) = loaded.runtime_layers
    values = {v.key: v for v in layer.static}
    assert sorted(values) == ["a.b.c", "f", "flag", "frac", "s"]
    assert values["a.b.c"] == RuntimeValue("a.b.c", "5", uint=5)
    assert values["f"] == RuntimeValue("f", "2.75", uint=2)
    assert values["flag"] == RuntimeValue("flag", "false")
    assert values["s"] == RuntimeValue("s", "42", uint=42)
    assert (values["frac"].numerator, values["frac"].denominator) == (5, 10_000)


@pytest.mark.parametrize("bad", [[1, 2], None])
def test_a_list_or_null_static_value_is_refused(bad: Any) -> None:
    err = refused(bootstrap(layered_runtime={"layers": [{"name": "s", "static_layer": {"k": {"x": bad}}}]}))  # fmt: skip
    assert err.path == "layered_runtime.layers[0].static_layer"
    assert err.reason == "Invalid runtime entry value for k.x"


def test_duplicate_layer_names_and_two_admin_layers_are_refused() -> None:
    err = refused(
        bootstrap(
            layered_runtime={
                "layers": [{"name": "a", "admin_layer": {}}, {"name": "a", "static_layer": {}}]
            }
        )  # fmt: skip
    )
    assert (err.path, err.reason) == ("layered_runtime.layers[1].name", "Duplicate layer name: a")
    err = refused(
        bootstrap(
            layered_runtime={
                "layers": [{"name": "a", "admin_layer": {}}, {"name": "b", "admin_layer": {}}]
            }
        )  # fmt: skip
    )
    assert err.path == "layered_runtime.layers[1].admin_layer"
    assert "at most one may be specified" in err.reason


def test_a_layer_needs_a_name() -> None:
    err = refused(bootstrap(layered_runtime={"layers": [{"static_layer": {}}]}))
    assert err.path == "layered_runtime.layers[0].name"


def test_disk_layer_directory(tmp_path: Path) -> None:
    root = str(tmp_path / "current")
    data = bootstrap(
        node={"id": "n", "cluster": "edge"},
        layered_runtime={
            "layers": [
                {
                    "name": "d",
                    "disk_layer": {
                        "symlink_root": root,
                        "subdirectory": "envoy",
                        "append_service_cluster": True,
                    },
                }
            ]
        },
    )
    (layer,) = compile_bootstrap(data, "f.yaml").runtime_layers
    assert (layer.kind, layer.symlink_root) == ("disk", root)
    assert layer.directory == f"{root}/envoy/edge"


# -- values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "uint", "fraction"),
    [
        ("42", 42, None),
        (" 7 ", 7, None),
        ("3.9", 3, None),
        ("1e2", 100, None),
        ("-1", None, None),
        ("true", None, None),
        ("FALSE", None, None),
        ("1_000", None, None),
        ("hello", None, None),
        ("numerator: 3\ndenominator: MILLION", None, (3, 1_000_000)),
        ('{"numerator": 50}', None, (50, 100)),
        ('{"numerator": 50, "denominator": "NOPE"}', None, None),
    ],
)
def test_values_from_text(raw: str, uint: int | None, fraction: tuple[int, int] | None) -> None:
    v = from_string("k", raw)
    assert v.raw == raw
    assert v.uint == uint
    assert ((v.numerator, v.denominator) if v.denominator else None) == fraction


@pytest.mark.parametrize(
    ("number", "text"), [(5.0, "5"), (1.5, "1.5"), (1234567.0, "1.23457e+06"), (-3.0, "-3")]
)
def test_number_text_is_abseils(number: float, text: str) -> None:
    assert number_text(number) == text


def test_disk_value_drops_comments_and_trims_the_last_line() -> None:
    assert disk_value("100\n") == "100"
    assert disk_value("# rolled out\n100 \n") == "100"
    assert disk_value("a\n\nb\n") == "a\nb"
    assert disk_value("# only a comment\n") == ""
    assert disk_value("") == ""


def test_read_disk_layer(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c").write_text("5\n")
    (tmp_path / "top").write_text("x")
    assert read_disk_layer(str(tmp_path)) == {
        "a.b.c": RuntimeValue("a.b.c", "5", uint=5),
        "top": RuntimeValue("top", "x"),
    }
    assert read_disk_layer(str(tmp_path / "missing")) == {}


def test_loader_merges_in_layer_order_and_the_admin_layer(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "k").write_text("2")
    (tmp_path / "v1" / "d").write_text("disk")
    (tmp_path / "current").symlink_to(tmp_path / "v1")
    root = str(tmp_path / "current")
    loaded = layers_of(
        {"name": "s", "static_layer": {"k": 1, "s": "static"}},
        {"name": "d", "disk_layer": {"symlink_root": root}},
        {"name": "adm", "admin_layer": {}},
    )
    loader = RuntimeLoader(StatsStore())
    loader.configure(loaded.runtime_layers)
    assert {v.key: v.raw for v in loader.values} == {"d": "disk", "k": "2", "s": "static"}
    loader.modify({"k": "9", "new": "x"})
    assert {v.key: v.raw for v in loader.values}["k"] == "9"
    page = loader.admin_json()
    assert page["layers"] == ["s", "d", "adm"]
    assert page["entries"]["k"] == {"final_value": "9", "layer_values": ["1", "2", "9"]}
    assert page["entries"]["new"] == {"final_value": "x", "layer_values": ["", "", "x"]}
    loader.modify({"k": ""})  # removes the override
    assert page != loader.admin_json()
    assert loader.admin_json()["entries"]["k"]["final_value"] == "2"
    assert loader.stats.gauge("runtime.admin_overrides_active") == 1
    assert loader.stats.gauge("runtime.num_layers") == 3


def test_loader_reloads_a_disk_layer_when_its_symlink_is_swapped(tmp_path: Path) -> None:
    for name, value in (("v1", "1"), ("v2", "2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "k").write_text(value)
    root = tmp_path / "current"
    root.symlink_to(tmp_path / "v1")
    loaded = layers_of({"name": "d", "disk_layer": {"symlink_root": str(root)}})
    loader = RuntimeLoader(StatsStore())
    loader.configure(loaded.runtime_layers)
    published: list[tuple[RuntimeValue, ...]] = []
    send, receive = trio.open_memory_channel[None](10)

    async def publish() -> None:
        published.append(loader.values)
        await send.send(None)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loader.run, publish)
            with trio.fail_after(10):
                await receive.receive()  # the values configure() loaded
                (tmp_path / "v1" / "k").write_text("edited in place")  # not a swap
                (tmp_path / "tmp").symlink_to(tmp_path / "v2")
                (tmp_path / "tmp").rename(root)
                await receive.receive()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert published[0] == (RuntimeValue("k", "1", uint=1),)
    assert published[1] == (RuntimeValue("k", "2", uint=2),)


# -- lookups -------------------------------------------------------------------------


def test_snapshot_fraction_rules() -> None:
    snap = Snapshot(
        [
            RuntimeValue("int", "30", uint=30),
            RuntimeValue("big", "150", uint=150),
            RuntimeValue("frac", "…", numerator=7, denominator=10_000),
            RuntimeValue("text", "on"),
        ]
    )
    assert snap.fraction("int", 1, 1_000_000) == (30, 100)
    assert snap.fraction("big", 0, 100) == (1, 1)
    assert snap.fraction("frac", 0, 100) == (7, 10_000)
    assert snap.fraction("text", 5, 100) == (5, 100)
    assert snap.fraction("missing", 5, 10_000) == (5, 10_000)
    assert snap.integer("int", 3) == 30 and snap.integer("text", 3) == 3


def _table(routes: list[tuple[str, RuntimeFraction | None]], snap: Snapshot = rt.EMPTY) -> RouteTable:  # fmt: skip
    rs = tuple(
        Route(name=c, match=RouteMatch("prefix", "/", runtime_fraction=f), cluster=c)
        for c, f in routes
    )
    return RouteTable(RouteConfig("rc", (VirtualHost("vh", ("*",), rs),)), snap)


def _clusters(table: RouteTable, n: int = 2000) -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(n):
        route = table.match("h", "/x", {})
        out[route.cluster if route else "404"] += 1
    return out


def test_runtime_fraction_default_and_runtime_value() -> None:
    frac = RuntimeFraction("k", 0)
    assert _clusters(_table([("b", frac), ("a", None)])) == Counter({"a": 2000})
    always = Snapshot([RuntimeValue("k", "100", uint=100)])
    assert _clusters(_table([("b", frac), ("a", None)], always)) == Counter({"b": 2000})
    half = _clusters(_table([("b", RuntimeFraction("k", 5000, 10_000)), ("a", None)]))
    assert 800 < half["b"] < 1200 and half["a"] + half["b"] == 2000


def test_one_draw_per_request_for_every_route() -> None:
    """Two 50 % routes: what fails the first fails the second (one draw per request)."""
    table = _table([("b", RuntimeFraction("k1", 50)), ("c", RuntimeFraction("k2", 50)), ("a", None)])  # fmt: skip
    seen = _clusters(table)
    assert set(seen) == {"a", "b"}


def test_no_draw_without_a_runtime_fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoDraws:
        def getrandbits(self, _bits: int) -> int:
            raise AssertionError("drew a random value")

    monkeypatch.setattr(routing, "RANDOM", NoDraws())
    table = _table([("a", None)])
    assert _clusters(table, 10) == Counter({"a": 10})
    # A fraction of 0 or 100 % decides without drawing either.
    table = _table([("b", RuntimeFraction("k", 0)), ("c", RuntimeFraction("k2", 100)), ("a", None)])  # fmt: skip
    assert _clusters(table, 10) == Counter({"c": 10})


def test_a_guarded_route_keeps_its_path_and_header_matchers() -> None:
    rs = (
        Route("r1", RouteMatch("path", "/only", runtime_fraction=RuntimeFraction("k", 100)), "b"),
        Route("r2", RouteMatch("prefix", "/"), "a"),
    )
    table = RouteTable(RouteConfig("rc", (VirtualHost("vh", ("*",), rs),)))
    assert table.match("h", "/only?q=1", {}).cluster == "b"  # type: ignore[union-attr]
    assert table.match("h", "/other", {}).cluster == "a"  # type: ignore[union-attr]


# -- node -----------------------------------------------------------------------------


def test_node_defaults_fill_only_what_the_file_leaves_empty() -> None:
    b = base_pb2.Node()
    holder = type("B", (), {"node": b})()
    node = compile_node(holder)
    msg = node.message()
    assert msg.user_agent_name == USER_AGENT_NAME
    assert msg.HasField("user_agent_build_version")
    b.user_agent_name, b.user_agent_version = "mine", "2.0"
    b.metadata.update({"env": "prod"})
    msg = compile_node(holder).message()
    assert (msg.user_agent_name, msg.user_agent_version) == ("mine", "2.0")
    assert msg.metadata["env"] == "prod"


def test_runtime_and_runtime_fraction_cross_the_epoch_wire() -> None:
    loaded = compile_bootstrap(
        bootstrap(layered_runtime={"layers": [{"name": "s", "static_layer": {"k": 7}}]}),
        "f.yaml",
    )
    fraction = RuntimeFraction("k", 3, 10_000)
    route = Route("r", RouteMatch("prefix", "/", runtime_fraction=fraction), "c")
    listener = loaded.epoch_template.listeners[0]
    rc = RouteConfig("rc", (VirtualHost("vh", ("*",), (route,)),))
    listener = dataclasses.replace(listener, hcm=dataclasses.replace(listener.hcm, route_config=rc))
    epoch = Epoch(
        3, (listener,), loaded.epoch_template.clusters, runtime=loaded.runtime_layers[0].static
    )
    wire = msgpack.unpackb(msgpack.packb(to_wire(epoch), use_bin_type=True), raw=False)
    back = from_wire(Epoch, wire)
    assert back == epoch
    assert back.runtime == (RuntimeValue("k", "7", uint=7),)
