"""RTDS: ``rtds_layer`` in the config, Runtime resources in the xDS client, the layer in
the runtime loader (no sockets: deliveries are handed to the client directly)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import trio
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import any_pb2, json_format

from proxyd.config.dynamic import DynamicResources
from proxyd.config.loader import compile_bootstrap
from proxyd.config.node import Node
from proxyd.epoch import ConfigSource, Epoch, RuntimeValue
from proxyd.errors import ConfigError
from proxyd.master.runtime import RuntimeLoader
from proxyd.master.xds import resources as rs
from proxyd.master.xds.client import Hooks, XdsClient
from proxyd.master.xds.sources import Subscription
from proxyd.stats import StatsStore
from tests.unit.test_config_errors import BASE

FILE = {"resource_api_version": "V3", "path_config_source": {"path": "/etc/rtds.yaml"}}


def bootstrap(*layers: dict[str, Any], **fields: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["node"] = {"id": "n1", "cluster": "c1"}
    data["layered_runtime"] = {"layers": list(layers)}
    data.update(fields)
    return data


def refused(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(data, "f.yaml")
    return info.value


# -- config --------------------------------------------------------------------------------


def test_rtds_layer_compiles_to_a_layer_and_a_source() -> None:
    loaded = compile_bootstrap(
        bootstrap(
            {"name": "base", "static_layer": {"k": 1}},
            {"name": "rt", "rtds_layer": {"name": "some_service", "rtds_config": FILE}},
            {"name": "adm", "admin_layer": {}},
        ),
        "f.yaml",
    )
    kinds = [(layer.name, layer.kind, layer.rtds_name) for layer in loaded.runtime_layers]
    assert kinds == [("base", "static", ""), ("rt", "rtds", "some_service"), ("adm", "admin", "")]
    assert loaded.dynamic.rtds == (
        ("some_service", ConfigSource(kind="path", path="/etc/rtds.yaml")),
    )
    assert not loaded.dynamic.empty


def test_rtds_layer_refusals_name_the_field() -> None:
    err = refused(bootstrap({"name": "rt", "rtds_layer": {"name": "x"}}))
    assert err.path == "layered_runtime.layers[0].rtds_layer.rtds_config"
    assert "Missing config source specifier" in err.reason
    err = refused(bootstrap({"name": "rt", "rtds_layer": {"name": "x", "rtds_config": {"ads": {}}}}))  # fmt: skip
    assert err.path == "layered_runtime.layers[0].rtds_layer.rtds_config"
    assert "ads_config" in err.reason
    rest = {
        "api_config_source": {
            "api_type": "REST",
            "cluster_names": ["nowhere"],
            "refresh_delay": "1s",
        }
    }
    err = refused(bootstrap({"name": "rt", "rtds_layer": {"name": "x", "rtds_config": rest}}))
    assert "management server cluster 'nowhere'" in err.reason
    data = bootstrap({"name": "rt", "rtds_layer": {"name": "x", "rtds_config": FILE}})
    del data["node"]
    assert refused(data).path == "node"  # Envoy: node 'id' and 'cluster' are required


# -- the loader ----------------------------------------------------------------------------


def test_rtds_values_take_their_layers_place_below_the_admin_layer() -> None:
    loaded = compile_bootstrap(
        bootstrap(
            {"name": "base", "static_layer": {"k": "static", "s": 1}},
            {"name": "one", "rtds_layer": {"name": "a", "rtds_config": FILE}},
            {"name": "two", "rtds_layer": {"name": "b", "rtds_config": FILE}},
            {"name": "adm", "admin_layer": {}},
        ),
        "f.yaml",
    )
    loader = RuntimeLoader(StatsStore())
    loader.configure(loaded.runtime_layers)
    assert [v.key for v in loader.values] == ["k", "s"]  # empty until a resource arrives
    loader.set_rtds(
        {
            "a": (RuntimeValue("k", "from a"), RuntimeValue("x", "5", uint=5)),
            "b": (RuntimeValue("k", "from b"),),
            "unused": (RuntimeValue("never", "1", uint=1),),
        }
    )
    assert {v.key: v.raw for v in loader.values} == {"k": "from b", "s": "1", "x": "5"}
    loader.modify({"k": "admin"})
    page = loader.admin_json()
    assert page["layers"] == ["base", "one", "two", "adm"]
    assert page["entries"]["k"]["layer_values"] == ["static", "from a", "from b", "admin"]
    loader.set_rtds({"b": (RuntimeValue("k", "b again"),)})  # "a" gone: its layer empties
    assert {v.key: v.raw for v in loader.values} == {"k": "admin", "s": "1"}
    loader.configure(loaded.runtime_layers)  # a reload keeps what RTDS delivered
    assert loader.admin_json()["entries"]["k"]["layer_values"][2] == "b again"


# -- the xDS client ------------------------------------------------------------------------


def packed(name: str, layer: dict[str, Any]) -> any_pb2.Any:
    message = json_format.ParseDict({"name": name, "layer": layer}, rtds_pb2.Runtime())
    out = any_pb2.Any()
    out.Pack(message)
    return out


def run_client(kind: str, names: tuple[str, ...], deliveries: list[list[Any]]) -> tuple[list[str], list[dict[str, Any]], StatsStore]:  # fmt: skip
    """Hand ``deliveries`` to a client whose rtds layers name ``names`` from one source
    of ``kind``: each delivery's refusal ("" accepted) and the layers it left."""
    stats = StatsStore()
    seen: list[dict[str, Any]] = []
    hooks = Hooks(lambda _: None, lambda _: None, lambda: None, seen.append)
    source = (
        ConfigSource(kind="path", path="/rtds.yaml")
        if kind == "path"
        else ConfigSource(kind=kind, cluster="xds")
    )
    errors: list[str] = []
    layers: list[dict[str, Any]] = []

    async def main() -> None:
        client = XdsClient(stats, hooks)
        client.configure(Epoch(0, (), ()), DynamicResources(rtds=tuple((n, source) for n in names)), Node())  # fmt: skip
        wanted = client._wanted()
        assert list(wanted) == [(rs.RUNTIME, source.kind, source.path, source.cluster)]
        sub = Subscription(client, rs.RUNTIME, source, next(iter(wanted.values()))[1])
        for i, resources in enumerate(deliveries):
            errors.append(client.deliver(sub, str(i), resources, "test"))
            layers.append({n: tuple(v.raw for v in vs) for n, vs in client.runtime_layers().items()})  # fmt: skip

    trio.run(main)
    return errors, layers, stats


def test_a_file_or_rest_update_holds_exactly_the_layers_resource() -> None:
    for kind in ("path", "rest"):
        errors, layers, stats = run_client(
            kind,
            ("rt",),
            [
                [packed("rt", {"a": 1})],
                [packed("other", {"a": 2})],
                [packed("rt", {"a": 3}), packed("rt2", {"a": 4})],
                [],
                [packed("rt", {"bad": [1]})],
                [packed("rt", {"a": {"b": True}})],
            ],
        )
        assert errors[0] == errors[5] == ""
        assert errors[1] == "Unexpected RTDS runtime (expecting rt): other"
        assert errors[2] == (
            "Unexpected RTDS resource length, number of added resources 2, "
            "number of removed resources 0"
        )
        assert "number of added resources 0" in errors[3]
        assert "layer: Invalid runtime entry value for bad" in errors[4]
        assert [x["rt"] for x in layers] == [("1",)] * 5 + [("true",)]
        assert stats.counter("runtime.update_attempt") == 6
        assert stats.counter("runtime.update_rejected") == 4
        assert stats.counter("runtime.update_success") == 2
        assert stats.text("runtime.version_text") == "5"


def test_a_grpc_update_reaches_only_the_layers_that_asked() -> None:
    errors, layers, stats = run_client(
        "ads",
        ("a", "b"),
        [
            [packed("a", {"k": 1}), packed("zzz", {"k": 9})],
            [packed("zzz", {"k": 9})],  # nothing asked for: no layer is called, an ACK
            [packed("b", {"k": 2})],
        ],
    )
    assert errors == ["", "", ""]
    assert layers == [{"a": ("1",)}, {"a": ("1",)}, {"a": ("1",), "b": ("2",)}]
    assert stats.counter("runtime.update_attempt") == 2


def test_a_hot_restart_hands_the_runtime_layers_over() -> None:
    source = ConfigSource(kind="ads")
    dynamic = DynamicResources(ads=ConfigSource(kind="grpc", cluster="xds"), rtds=(("rt", source),))
    seen: list[dict[str, Any]] = []

    async def main() -> None:
        old = XdsClient(StatsStore(), Hooks(lambda _: None, lambda _: None, lambda: None, seen.append))  # fmt: skip
        old.configure(Epoch(0, (), ()), dynamic, Node())
        sub = Subscription(old, rs.RUNTIME, source, frozenset({"rt"}))
        assert old.deliver(sub, "7", [packed("rt", {"k": "v"})], "test") == ""
        new = XdsClient(StatsStore(), Hooks(lambda _: None, lambda _: None, lambda: None, seen.append))  # fmt: skip
        new.configure(Epoch(0, (), ()), dynamic, Node())
        seen.clear()
        new.seed(old.export())

    trio.run(main)
    assert [{n: tuple(v.raw for v in vs) for n, vs in s.items()} for s in seen] == [{"rt": ("v",)}]
