"""RTDS (``layered_runtime.layers[].rtds_layer``) through every source, real Envoy vs proxyd.

One bootstrap, run by one Envoy and one proxyd side by side against one xDS server: a
static layer, four RTDS layers (the Runtime resources ``rt_ads`` over ADS, ``rt_grpc``
over a per-type gRPC stream, ``rt_rest`` by REST polling, ``rt_file`` from a
``path_config_source`` file) and an admin layer; a listener whose first route has a
``runtime_fraction`` on ``route.to_b`` (default 0 %) to cluster "b" before a catch-all to
"a". The cases, each compared between the two:

1. startup: ``/runtime`` (layers, each key's value in every layer, the merged value);
   a key set in several layers takes the last one's value;
2. an RTDS update reaches the workers: ``route.to_b: 100`` over ADS sends every request
   to "b", as the runtime key says; removing the key sends them back to "a";
3. the admin layer overrides an RTDS value, and an RTDS update does not undo that;
4. refusals: a layer with a list value (NACK over gRPC, the old values stay); a file
   naming another resource, or holding two, or none (``Unexpected RTDS ...``).

Known difference (not exercised): Envoy keeps a refused layer's content and then fails
every later runtime load, of any layer, until that layer is replaced; proxyd refuses only
the bad update.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.xds_harness import (
    ADS_SOURCE,
    HTTP2_OPTIONS,
    NODE,
    REFRESH_DELAY,
    EnvoyTarget,
    ProxydTarget,
    admin_get,
    get,
    listener_port,
    stats,
    wait_stat,
)
from tests.support import UpstreamServer, http_config, wait_for
from tests.xds_server import RUNTIME, XdsServer, parse, write_discovery_file

pytestmark = [
    pytest.mark.compat,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

KEY = "route.to_b"
ROUTES = f"""
              - match:
                  prefix: "/"
                  runtime_fraction:
                    default_value: {{ numerator: 0 }}
                    runtime_key: {KEY}
                route: {{ cluster: b }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: a }}"""


def runtime(name: str, layer: dict[str, Any]) -> Any:
    return parse(RUNTIME, {"name": name, "layer": layer})


def _cluster(name: str, port: int, http2: bool) -> dict[str, Any]:
    ep = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}  # fmt: skip
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [ep]}]},
    }
    if http2:
        cluster["typed_extension_protocol_options"] = HTTP2_OPTIONS
    return cluster


def bootstrap(xds: XdsServer, ups: dict[str, UpstreamServer], rtds_file: Path) -> dict[str, Any]:
    data = yaml.safe_load(http_config(0, 0, {n: [u.port] for n, u in ups.items()}, ROUTES))
    del data["admin"]  # each target sets its own
    data["node"] = NODE
    data["static_resources"]["clusters"] += [
        _cluster("xds_cluster", xds.grpc_port, http2=True),
        _cluster("xds_rest", xds.rest_port, http2=False),
    ]
    grpc = {
        "api_type": "GRPC",
        "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
    }
    rest = {
        "api_type": "REST",
        "transport_api_version": "V3",
        "cluster_names": ["xds_rest"],
        "refresh_delay": REFRESH_DELAY,
    }
    data["dynamic_resources"] = {"ads_config": grpc}

    def rtds(layer: str, name: str, source: dict[str, Any]) -> dict[str, Any]:
        return {"name": layer, "rtds_layer": {"name": name, "rtds_config": source}}

    v3 = {"resource_api_version": "V3"}
    data["layered_runtime"] = {
        "layers": [
            {"name": "base", "static_layer": {"shared": "static", "only.static": 7}},
            rtds("ads", "rt_ads", ADS_SOURCE),
            rtds("grpc", "rt_grpc", {**v3, "api_config_source": grpc}),
            rtds("rest", "rt_rest", {**v3, "api_config_source": rest}),
            rtds("file", "rt_file", {**v3, "path_config_source": {"path": str(rtds_file)}}),
            {"name": "admin", "admin_layer": {}},
        ]
    }
    return data


@pytest.fixture
def upstreams() -> Iterator[dict[str, UpstreamServer]]:
    servers = {name: UpstreamServer(name).start() for name in ("a", "b")}
    try:
        yield servers
    finally:
        for s in servers.values():
            s.stop()


def runtime_page(admin: str) -> dict[str, Any]:
    status, body = admin_get(admin, "/runtime")
    assert status == 200, body
    return json.loads(body)


def wait_runtime(admins: dict[str, str], check: Any, timeout: float = 10) -> dict[str, Any]:
    """Until ``check(page)`` holds on every target; the pages, which must be equal."""
    deadline = time.monotonic() + timeout
    while True:
        pages = {name: runtime_page(admin) for name, admin in admins.items()}
        if all(check(p) for p in pages.values()):
            envoy, proxyd = pages["envoy"], pages["proxyd"]
            assert proxyd == envoy
            return envoy
        if time.monotonic() > deadline:
            raise AssertionError(f"runtime not as expected after {timeout} s: {pages}")
        time.sleep(0.05)


def final(page: dict[str, Any], key: str) -> str | None:
    entry = page["entries"].get(key)
    return None if entry is None else entry["final_value"]


def routed(port: int, n: int = 6) -> set[str | None]:
    return {get(port, "/")[1] for _ in range(n)}


def rejected_more(admin: str, before: int) -> bool:
    return int(stats(admin).get("runtime.update_rejected", "0")) > before


def test_rtds_layers_from_every_source(
    upstreams: dict[str, UpstreamServer], tmp_path: Path
) -> None:
    rtds_file = tmp_path / "rtds.json"
    with XdsServer() as xds:
        xds.set_resources(
            RUNTIME,
            "1",
            [
                runtime("rt_ads", {"shared": "ads", "ads": {"n": 1, "flag": True}}),
                runtime("rt_grpc", {"shared": "grpc", "grpc.text": "hello"}),
                runtime("rt_rest", {"rest.ratio": 2.5, "shared": "rest"}),
            ],
        )
        write_discovery_file(rtds_file, RUNTIME, "f1", [runtime("rt_file", {"file.key": "yes"})])
        boot = bootstrap(xds, upstreams, rtds_file)
        targets = {"envoy": EnvoyTarget(), "proxyd": ProxydTarget()}
        try:
            admins = {}
            for name, t in targets.items():
                workdir = tmp_path / name
                workdir.mkdir()
                admins[name] = t.start(boot, workdir)
            ports = {name: listener_port(admin, "ingress") for name, admin in admins.items()}
            try:
                _cases(xds, admins, ports, rtds_file)
            except BaseException:
                print("\n".join(x for x in xds.describe(400).splitlines() if "rest#" not in x))
                raise
        finally:
            for t in targets.values():
                t.stop()


def _cases(xds: XdsServer, admins: dict[str, str], ports: dict[str, int], rtds_file: Path) -> None:
    # 1. startup: every layer in order; "shared" is the last RTDS layer's that has it
    page = wait_runtime(admins, lambda p: final(p, "file.key") == "yes" and final(p, "rest.ratio"))
    assert page["layers"] == ["base", "ads", "grpc", "rest", "file", "admin"]
    assert final(page, "shared") == "rest"
    assert page["entries"]["shared"]["layer_values"] == ["static", "ads", "grpc", "rest", "", ""]
    assert final(page, "ads.flag") == "true"
    assert final(page, "ads.n") == "1"
    assert final(page, "only.static") == "7"
    for name, admin in admins.items():
        wait_for(lambda n=name: routed(ports[n]) == {"a"}, timeout=10)
        s = stats(admin)
        assert int(s["runtime.update_success"]) >= 4, name
        assert s["runtime.update_rejected"] == "0", name
        assert s["runtime.num_layers"] == "6", name

    # 2. an RTDS value reaches the workers' routing; taking it away again
    xds.set_resources(
        RUNTIME,
        "2",
        [
            runtime("rt_ads", {"shared": "ads", KEY: 100}),
            runtime("rt_grpc", {"grpc.text": "bye"}),
            runtime("rt_rest", {"rest.ratio": 2.5, "shared": "rest"}),
        ],
    )
    page = wait_runtime(admins, lambda p: final(p, KEY) == "100" and final(p, "grpc.text") == "bye")
    assert "ads.n" not in page["entries"]  # a new resource replaces the layer whole
    for name in admins:
        wait_for(lambda n=name: routed(ports[n]) == {"b"}, timeout=10)
        xds.wait_for_ack(RUNTIME, "2")
    xds.set_resources(
        RUNTIME,
        "3",
        [
            runtime("rt_ads", {"shared": "ads"}),
            runtime("rt_grpc", {"grpc.text": "bye"}),
            runtime("rt_rest", {"rest.ratio": 2.5, "shared": "rest"}),
        ],
    )
    wait_runtime(admins, lambda p: final(p, KEY) is None)
    for name in admins:
        wait_for(lambda n=name: routed(ports[n]) == {"a"}, timeout=10)

    # 3. the admin layer sits above RTDS: an RTDS update does not undo an override
    for admin in admins.values():
        query = urllib.parse.urlencode({"grpc.text": "admin", KEY: "100"})
        _post(admin, f"/runtime_modify?{query}")
    wait_runtime(admins, lambda p: final(p, "grpc.text") == "admin")
    for name in admins:
        wait_for(lambda n=name: routed(ports[n]) == {"b"}, timeout=10)
    xds.set_resources(
        RUNTIME,
        "4",
        [
            runtime("rt_ads", {"shared": "ads"}),
            runtime("rt_grpc", {"grpc.text": "rtds again", "grpc.new": 5}),
            runtime("rt_rest", {"rest.ratio": 2.5, "shared": "rest"}),
        ],
    )
    page = wait_runtime(admins, lambda p: final(p, "grpc.new") == "5")
    assert page["entries"]["grpc.text"]["layer_values"][2] == "rtds again"
    assert final(page, "grpc.text") == "admin"
    for admin in admins.values():
        _post(admin, "/runtime_modify?" + urllib.parse.urlencode({"grpc.text": "", KEY: ""}))
    wait_runtime(admins, lambda p: final(p, "grpc.text") == "rtds again")

    # 4. refusals keep the last good layer: a list value (the other layers unchanged:
    # Envoy keeps a refused layer's content and fails every later snapshot until it is
    # replaced, so an update of another layer would be refused there too) ...
    good = runtime_page(admins["envoy"])
    before = {n: int(stats(a)["runtime.update_rejected"]) for n, a in admins.items()}
    xds.set_resources(
        RUNTIME,
        "5",
        [
            runtime("rt_ads", {"shared": "ads", "bad": [1, 2]}),
            runtime("rt_grpc", {"grpc.text": "rtds again", "grpc.new": 5}),
            runtime("rt_rest", {"rest.ratio": 2.5, "shared": "rest"}),
        ],
    )
    nack = xds.wait_for_nack(RUNTIME, "5")
    assert "Invalid runtime entry value for bad" in nack.request.error_detail.message
    for name, admin in admins.items():
        wait_for(lambda a=admin, b=before[name]: rejected_more(a, b), timeout=10)
    assert wait_runtime(admins, lambda p: True) == good
    xds.set_resources(
        RUNTIME,
        "6",
        [
            runtime("rt_ads", {"shared": "ads"}),
            runtime("rt_grpc", {"grpc.text": "never"}),
            runtime("rt_rest", {"shared": "rest", "rest.ratio": 3}),
        ],
    )
    # (no ACK to wait for: Envoy may take the gRPC layer's version 6 before the ADS one
    # and NACK it, as above, though the values it ends with are the same)
    wait_runtime(
        admins, lambda p: final(p, "rest.ratio") == "3" and final(p, "grpc.text") == "never"
    )

    # ... and file contents Envoy's RTDS refuses: another name, two resources, none
    bad_files = [
        [runtime("rt_other", {"file.key": "other"})],
        [runtime("rt_file", {"file.key": "one"}), runtime("rt_file2", {"file.key": "two"})],
        [],
    ]
    for i, resources in enumerate(bad_files):
        before = {n: int(stats(a)["runtime.update_rejected"]) for n, a in admins.items()}
        write_discovery_file(rtds_file, RUNTIME, f"bad{i}", resources)
        for name, admin in admins.items():
            wait_for(lambda a=admin, b=before[name]: rejected_more(a, b), timeout=10)
    page = wait_runtime(admins, lambda p: final(p, "file.key") == "yes")
    write_discovery_file(rtds_file, RUNTIME, "f2", [runtime("rt_file", {"file.key": "again"})])
    wait_runtime(admins, lambda p: final(p, "file.key") == "again")
    for admin in admins.values():
        wait_stat(admin, lambda s: s.get("runtime.num_keys") == str(len(page["entries"])))


def _post(admin: str, path: str) -> None:
    req = urllib.request.Request(admin + path, method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200
