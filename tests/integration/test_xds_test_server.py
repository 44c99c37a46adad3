"""The test xDS management server (tests/xds_server.py) speaks the protocol it claims.

The compatibility tests judge Envoy and proxyd by what this server logs, so its own
semantics are pinned here with a plain grpcio client and urllib: the first request of a
type gets the snapshot, an ACK gets nothing, a push reaches every subscribed stream,
endpoints and routes are filtered by name, a stale nonce is ignored, NACKs are found by
the nonce they answer, REST answers 304 for the current version.
"""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from envoy.service.endpoint.v3 import eds_pb2_grpc
from google.rpc.status_pb2 import Status

from tests.xds_server import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    XdsServer,
    eds_cluster,
    load_assignment,
    parse,
)

ADS = {"ads": {}, "resource_api_version": "V3"}


class Client:
    """One bidirectional xDS stream: ``send(...)`` requests, ``recv()`` responses."""

    def __init__(self, channel: grpc.Channel, ads: bool = True) -> None:
        self._out: queue.SimpleQueue[DiscoveryRequest | None] = queue.SimpleQueue()
        if ads:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources
        else:
            call = eds_pb2_grpc.EndpointDiscoveryServiceStub(channel).StreamEndpoints
        self._responses = call(iter(self._out.get, None))

    def send(self, type_url: str, names=(), version: str = "", nonce: str = "", error=None):
        req = DiscoveryRequest(
            type_url=type_url,
            resource_names=list(names),
            version_info=version,
            response_nonce=nonce,
        )
        req.node.id = "node-1"
        req.node.cluster = "cluster-1"
        if error:
            req.error_detail.CopyFrom(Status(code=13, message=error))
        self._out.put(req)

    def recv(self) -> DiscoveryResponse:
        return next(self._responses)

    def close(self) -> None:
        self._out.put(None)
        self._responses.cancel()


@pytest.fixture
def xds() -> Iterator[XdsServer]:
    with XdsServer() as server:
        yield server


@pytest.fixture
def channel(xds: XdsServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{xds.grpc_port}") as ch:
        yield ch


def test_ads_snapshot_ack_push_nack_and_stale_nonce(xds: XdsServer, channel) -> None:
    xds.set_resources(CLUSTER, "1", [eds_cluster("a", ADS)])
    c = Client(channel)
    try:
        c.send(CLUSTER)
        first = c.recv()
        assert (first.version_info, first.type_url, len(first.resources)) == ("1", CLUSTER, 1)
        c.send(CLUSTER, version="1", nonce=first.nonce)  # ACK
        assert xds.wait_for_ack(CLUSTER, "1", timeout=5).request.response_nonce == first.nonce
        assert xds.node.id == "node-1" and xds.node.cluster == "cluster-1"

        xds.set_resources(CLUSTER, "2", [eds_cluster("a", ADS), eds_cluster("b", ADS)])
        second = c.recv()
        assert second.version_info == "2" and second.nonce != first.nonce
        assert len(second.resources) == 2
        c.send(CLUSTER, version="1", nonce=second.nonce, error="bad cluster b")
        nack = xds.wait_for_nack(CLUSTER, "2", timeout=5)
        assert nack.request.version_info == "1"
        assert nack.request.error_detail.message == "bad cluster b"
        assert xds.find_ack(CLUSTER, "2") is None
        assert xds.find_nack(CLUSTER, "1") is None

        # A stale nonce with new names is ignored; the current nonce gets an answer.
        c.send(LISTENER)  # a type with no snapshot: logged, nothing sent
        c.send(CLUSTER, names=["x"], version="1", nonce=first.nonce)
        xds.wait_until(lambda: len(xds.requests(CLUSTER)) == 4 and xds.requests(LISTENER))
        xds.set_resources(CLUSTER, "3", [eds_cluster("c", ADS)])
        third = c.recv()
        assert third.version_info == "3"
        assert len(xds.requests(LISTENER)) == 1
        assert [r.version for r in xds.responses(CLUSTER)] == ["1", "2", "3"]
    finally:
        c.close()


def test_endpoints_filtered_by_subscribed_names(xds: XdsServer, channel) -> None:
    c = Client(channel, ads=False)
    try:
        c.send("", names=["b"])  # per-type stream: the type comes from the service
        xds.set_resources(ENDPOINT, "1", [load_assignment("a", [1001])])  # nothing for "b"
        xds.set_resources(
            ENDPOINT, "2", [load_assignment("a", [1001]), load_assignment("b", [1002])]
        )
        resp = c.recv()
        assert resp.version_info == "2" and resp.type_url == ENDPOINT
        assert [r.type_url for r in resp.resources] == [ENDPOINT]
        assert xds.responses(ENDPOINT)[0].names == ("b",)
        c.send(ENDPOINT, names=["a", "b"], version="2", nonce=resp.nonce)  # names changed
        assert xds.wait_until(lambda: len(xds.responses(ENDPOINT)) == 2, timeout=5)
        assert set(xds.responses(ENDPOINT)[1].names) == {"a", "b"}
    finally:
        c.close()


def _post(port: int, path: str, body: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_rest_answers_json_then_304(xds: XdsServer) -> None:
    assert _post(xds.rest_port, "/v3/discovery:clusters", {})[0] == 304  # nothing yet
    cluster = parse(CLUSTER, "name: a\ntype: EDS\neds_cluster_config: {eds_config: {ads: {}}}\n")
    xds.set_resources(CLUSTER, "7", [cluster])
    status, body = _post(xds.rest_port, "/v3/discovery:clusters", {"node": {"id": "n"}})
    assert status == 200
    doc = json.loads(body)
    assert doc["versionInfo"] == "7" and doc["resources"][0]["name"] == "a"
    assert _post(xds.rest_port, "/v3/discovery:clusters", {"versionInfo": "7"})[0] == 304
    assert xds.find_ack(CLUSTER, "7") is not None
    assert _post(xds.rest_port, "/v3/discovery:nothing", {})[0] == 404
    assert [r.status for r in xds.responses(CLUSTER)] == [304, 200, 304]
