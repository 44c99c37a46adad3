"""Listener and endpoint addresses: pipes (Unix sockets, abstract namespace included)
and port 0, compiled and checked as Envoy checks them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proxyd import pipes
from proxyd.config import compile_bootstrap
from proxyd.epoch import Epoch, Listener, from_wire, to_wire
from proxyd.errors import ConfigError

ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def listener(name: str, address: dict[str, Any], **hcm: Any) -> dict[str, Any]:
    return {
        "name": name,
        "address": address,
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": name,
                            **hcm,
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "v",
                                        "domains": ["*"],
                                        "routes": [
                                            {"match": {"prefix": "/"}, "route": {"cluster": "c"}}
                                        ],
                                    }
                                ]
                            },
                            "http_filters": [ROUTER],
                        },
                    }
                ]
            }
        ],
    }


def bootstrap(
    listeners: list[dict[str, Any]], endpoint: dict[str, Any], kind: str = "STATIC"
) -> dict[str, Any]:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": listeners,
            "clusters": [
                {
                    "name": "c",
                    "type": kind,
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "c",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": endpoint}}]}],
                    },
                }
            ],
        },
    }


TCP = {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}
TCP0 = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
UP = {"socket_address": {"address": "127.0.0.1", "port_value": 9000}}


def pipe(path: str, mode: int | None = None) -> dict[str, Any]:
    return {"pipe": {"path": path, **({} if mode is None else {"mode": mode})}}


def listeners_of(data: dict[str, Any]) -> tuple[Listener, ...]:
    return compile_bootstrap(data, "conf.yaml").epoch_template.listeners


def reject(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(data, "conf.yaml")
    assert info.value.file == "conf.yaml"
    return info.value


def test_pipe_listener_compiles_with_path_and_mode() -> None:
    (lst,) = listeners_of(bootstrap([listener("p", pipe("/run/px/l.sock", 0o660))], UP))
    assert (lst.address, lst.port, lst.pipe, lst.pipe_mode) == ("/run/px/l.sock", 0, True, 0o660)
    # Envoy's listener stat scope for a pipe is its path; its messages name the path.
    assert lst.stat_name == "/run/px/l.sock"
    assert lst.address_text == "/run/px/l.sock"


def test_abstract_pipe_listener_keeps_the_at_sign() -> None:
    (lst,) = listeners_of(bootstrap([listener("a", pipe("@proxyd-test"))], UP))
    assert (lst.address, lst.pipe, lst.pipe_mode) == ("@proxyd-test", True, 0)
    assert lst.stat_name == "@proxyd-test"


def test_port_zero_listener_is_tcp_and_keeps_port_zero_in_its_stat_name() -> None:
    (lst,) = listeners_of(bootstrap([listener("t", TCP0)], UP))
    assert (lst.port, lst.pipe) == (0, False)
    assert lst.stat_name == "127.0.0.1_0"  # Envoy: the configured address, not the bound


def test_two_port_zero_listeners_on_one_address_are_not_duplicates() -> None:
    got = listeners_of(bootstrap([listener("a", TCP0), listener("b", TCP0)], UP))
    assert [x.name for x in got] == ["a", "b"]


def test_duplicate_pipe_path_is_refused() -> None:
    err = reject(bootstrap([listener("a", pipe("/tmp/x.sock")), listener("b", pipe("/tmp/x.sock"))], UP))  # fmt: skip
    assert err.path == "static_resources.listeners[1].address"
    assert "duplicate address '/tmp/x.sock'" in err.reason


def test_pipe_and_tcp_listener_do_not_collide() -> None:
    got = listeners_of(bootstrap([listener("a", pipe("127.0.0.1")), listener("b", TCP)], UP))
    assert [(x.pipe, x.address) for x in got] == [(True, "127.0.0.1"), (False, "127.0.0.1")]


def test_pipe_path_as_long_as_sun_path_is_refused_as_envoy_does() -> None:
    ok = "/tmp/" + "a" * (pipes.MAX_PATH - 6)  # 107 characters: fits with its NUL
    listeners_of(bootstrap([listener("p", pipe(ok))], UP))
    long = ok + "a"
    err = reject(bootstrap([listener("p", pipe(long))], UP))
    assert err.path == "static_resources.listeners[0].address.pipe.path"
    assert err.reason == f'Path "{long}" exceeds maximum UNIX domain socket path size of 108.'


def test_mode_on_an_abstract_pipe_is_refused() -> None:
    err = reject(bootstrap([listener("p", pipe("@x", 0o600))], UP))
    assert err.path == "static_resources.listeners[0].address.pipe.mode"
    assert err.reason == "Cannot set mode for Abstract AF_UNIX sockets"


@pytest.mark.parametrize(
    ("address", "where", "reason"),
    [
        (pipe(""), "pipe.path", "value length must be at least 1"),
        (pipe("/tmp/x", 0o1000), "pipe.mode", "less than or equal to 511"),
    ],
)
def test_pipe_proto_constraints(address: dict[str, Any], where: str, reason: str) -> None:
    err = reject(bootstrap([listener("p", address)], UP))
    assert err.path == f"static_resources.listeners[0].address.{where}"
    assert reason in err.reason


def test_use_remote_address_on_a_pipe_listener_is_refused_by_name() -> None:
    err = reject(bootstrap([listener("p", pipe("/tmp/x"), use_remote_address=True)], UP))
    assert err.path.endswith("filters[0].typed_config.use_remote_address")
    assert "pipe listener not supported by proxyd" in err.reason


@pytest.mark.parametrize("path", ["/tmp/up.sock", "@up"])
def test_pipe_endpoint_is_port_zero_with_its_path(path: str) -> None:
    loaded = compile_bootstrap(bootstrap([listener("l", TCP)], pipe(path)), "conf.yaml")
    (c,) = loaded.epoch_template.clusters
    (e,) = c.endpoints
    assert (e.address, e.port, e.hostname) == (path, 0, "")
    assert pipes.host_label(e.address, e.port) == path


def test_pipe_endpoint_mode_is_accepted_and_abstract_mode_refused() -> None:
    compile_bootstrap(bootstrap([listener("l", TCP)], pipe("/tmp/up", 0o600)), "conf.yaml")
    err = reject(bootstrap([listener("l", TCP)], pipe("@up", 0o600)))
    assert err.path.endswith("lb_endpoints[0].endpoint.address.pipe.mode")


def test_pipe_endpoint_in_a_dns_cluster_is_refused_by_name() -> None:
    err = reject(bootstrap([listener("l", TCP)], pipe("/tmp/up"), kind="STRICT_DNS"))
    assert err.path.endswith("lb_endpoints[0].endpoint.address.pipe")
    assert "STRICT_DNS cluster not supported by proxyd" in err.reason


def test_pipe_admin_address_is_refused_by_name() -> None:
    data = bootstrap([listener("l", TCP)], UP)
    data["admin"]["address"] = pipe("/tmp/admin.sock")
    err = reject(data)
    assert err.path == "admin.address.pipe"
    assert err.reason == "field not supported by proxyd"


def test_pipe_epoch_survives_the_wire() -> None:
    data = bootstrap([listener("p", pipe("@w", None)), listener("t", TCP0)], pipe("/tmp/u"))
    epoch = compile_bootstrap(copy.deepcopy(data), "conf.yaml").epoch_template
    assert from_wire(Epoch, to_wire(epoch)) == epoch


def test_host_label_and_sockaddr() -> None:
    assert pipes.host_label("10.0.0.1", 80) == "10.0.0.1:80"
    assert pipes.host_label("::1", 80) == "[::1]:80"
    assert pipes.host_label("/tmp/u.sock", 0) == "/tmp/u.sock"
    assert pipes.sockaddr("@abc") == b"\0abc"
    assert pipes.sockaddr("/tmp/u") == "/tmp/u"
    assert pipes.text(b"\0abc") == "@abc"
    assert pipes.text("/tmp/u") == "/tmp/u"
