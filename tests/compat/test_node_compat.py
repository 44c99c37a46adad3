"""The bootstrap's ``node`` as a management server receives it, from Envoy and proxyd.

The in-repo xDS server (tests/xds_server.py) records every DiscoveryRequest. Both
proxies start on the same bootstrap, whose node carries metadata (nested, as control
planes such as sovereign select on it), a locality and client features, fed over ADS,
per-type gRPC and REST. The node each sends must carry them exactly; the user agent is
each proxy's own: Envoy's name "envoy" and build version, proxyd's name "proxyd" and
version, or the file's name when it sets one (both keep it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from proxyd import __version__
from tests.compat.envoy_runner import envoy_available
from tests.compat.xds_harness import (
    AdsSource,
    EnvoyTarget,
    GrpcSource,
    ProxydTarget,
    RestSource,
)
from tests.xds_server import CLUSTER, LISTENER, XdsServer

pytestmark = [
    pytest.mark.compat,
    pytest.mark.timeout(90),
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

METADATA = {
    "env": "staging",
    "hide_private_keys": True,
    "weight": 3,
    "labels": {"team": "edge", "shard": ["a", "b"], "nothing": None},
}
LOCALITY = {"region": "eu-west", "zone": "eu-west-1b", "sub_zone": "rack-7"}
NODE = {
    "id": "node-under-test",
    "cluster": "edge-cluster",
    "metadata": METADATA,
    "locality": LOCALITY,
    "client_features": ["envoy.lb.does_not_support_overprovisioning"],
}
SOURCES = {"ads": AdsSource, "grpc": GrpcSource, "rest": RestSource}
TARGETS = {"envoy": EnvoyTarget, "proxyd": ProxydTarget}


def first_node(source_name: str, target_name: str, node: dict[str, Any], tmp_path: Path) -> dict[str, Any]:  # fmt: skip
    """The node of the first CDS and LDS requests ``target`` sends, as JSON; both the
    same."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    with XdsServer() as xds:
        source = SOURCES[source_name](xds, "")
        source.push(CLUSTER, "v1", [])  # answered, so that the proxy asks for listeners
        source.push(LISTENER, "v1", [])
        bootstrap = source.bootstrap()
        bootstrap["node"] = node
        target = TARGETS[target_name]()
        target.start(bootstrap, tmp_path)
        try:
            cds = xds.wait_for_request(CLUSTER, lambda s: s.request.HasField("node"))
            lds = xds.wait_for_request(LISTENER, lambda s: s.request.HasField("node"))
        finally:
            target.stop()
    nodes = [
        json_format.MessageToDict(s.request.node, preserving_proto_field_name=True)
        for s in (cds, lds)
    ]
    assert nodes[0] == nodes[1]
    return nodes[0]


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_node_reaches_the_management_server_as_written(source: str, tmp_path: Path) -> None:
    sent = {name: first_node(source, name, NODE, tmp_path / name) for name in TARGETS}
    for name, node in sent.items():
        assert node["id"] == NODE["id"], name
        assert node["cluster"] == NODE["cluster"], name
        assert node["metadata"] == METADATA, name
        assert node["locality"] == LOCALITY, name
        assert node["client_features"] == NODE["client_features"], name
    envoy, proxyd = sent["envoy"], sent["proxyd"]
    assert envoy["user_agent_name"] == "envoy"
    assert proxyd["user_agent_name"] == "proxyd"
    major, minor = (int(p) for p in __version__.split(".")[:2])
    version = proxyd["user_agent_build_version"]["version"]
    assert (version.get("major_number", 0), version.get("minor_number", 0)) == (major, minor)
    assert proxyd["user_agent_build_version"]["metadata"]["build.type"] == "RELEASE"
    assert set(envoy["user_agent_build_version"]) == set(proxyd["user_agent_build_version"])


def test_a_user_agent_name_in_the_file_is_kept(tmp_path: Path) -> None:
    node = {**NODE, "user_agent_name": "edge-proxy"}
    for name in TARGETS:
        assert first_node("rest", name, node, tmp_path / name)["user_agent_name"] == "edge-proxy"


def test_proxyd_keeps_a_user_agent_version_from_the_file(tmp_path: Path) -> None:
    """Envoy replaces it with its build version; proxyd sends what the file says."""
    node = {**NODE, "user_agent_version": "1.40.0"}
    envoy = first_node("grpc", "envoy", node, tmp_path / "envoy")
    assert "user_agent_version" not in envoy and "user_agent_build_version" in envoy
    proxyd = first_node("grpc", "proxyd", node, tmp_path / "proxyd")
    assert proxyd["user_agent_version"] == "1.40.0"
    assert "user_agent_build_version" not in proxyd
