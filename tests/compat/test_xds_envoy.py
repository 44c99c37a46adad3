"""xDS through every source (ADS, per-type gRPC, REST polling, files) against a real proxy.

One scenario, run for each (target, source) pair: real Envoy (``EnvoyTarget``) and
proxyd (``ProxydTarget``) on the same bootstrap and the same pushed resources. The
resources: an RDS listener on loopback port 0 (the proxy binds one), route config ``routes``
(``/a`` → ``cluster_a``, ``/b`` → ``cluster_b``), both clusters ``type: EDS``, endpoints
the demo upstreams A, B, C, W (each answers with its name in ``x-upstream-name``). The
scenario, in order:

1. startup: clusters, routes and listener are served but no endpoints: the EDS clusters
   are warming, so the target is not LIVE and has not asked for listeners yet; once the
   endpoints arrive it becomes LIVE and /a → A, /b → B;
2. an RDS update swaps the routes (/a → B, /b → A);
3. an EDS update moves cluster_a to C (/b → C);
4. a route with a regex that does not compile is rejected (NACK with ``error_detail``,
   ``version_info`` the previous one; for REST the next poll carries the old version; for
   files only the stats tell), and routing is unchanged;
5. a CDS update naming one cluster twice is rejected the same way;
6. a new EDS cluster ``cluster_c`` and a route /c to it: until its endpoints arrive it is
   warming: /c answers 503 and the admin ``/clusters`` does not list it (and over ADS
   the CDS ACK is held back until it is warm); then /c → W.

The files source cannot show steps 1 and 6's warming (Envoy refuses a
``path_config_source`` whose file does not exist), so there the endpoints come first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compat.envoy_runner import envoy_available
from tests.compat.xds_harness import (
    ADS_SOURCE,
    AdsSource,
    EnvoyTarget,
    FileSource,
    GrpcSource,
    ProxydTarget,
    RestSource,
    Source,
    Target,
    admin_get,
    listener_port,
    ready_state,
    stats,
    wait_routing,
)
from tests.support import UpstreamServer, wait_for
from tests.xds_server import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    XdsServer,
    eds_cluster,
    load_assignment,
    rds_listener,
    route_config,
)

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

LISTENER_NAME = "ingress"  # also the HCM stat_prefix: RDS stats are http.ingress.rds.routes.*
ROUTES = "routes"
BAD_REGEX = "(unclosed"


@pytest.fixture(params=["envoy", "proxyd"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    t = {"envoy": EnvoyTarget, "proxyd": ProxydTarget}[request.param]()
    try:
        yield t
    finally:
        t.stop()


@pytest.fixture
def upstreams() -> Iterator[dict[str, UpstreamServer]]:
    servers = {name: UpstreamServer(name).start() for name in ("A", "B", "C", "W")}
    try:
        yield servers
    finally:
        for s in servers.values():
            s.stop()


@pytest.fixture
def xds() -> Iterator[XdsServer]:
    with XdsServer() as server:
        yield server


@pytest.fixture(params=["ads", "grpc", "rest", "file"])
def source(request: pytest.FixtureRequest, xds: XdsServer, tmp_path: Path) -> Source:
    if request.param == "file":
        directory = tmp_path / "xds"
        directory.mkdir()
        return FileSource(directory, LISTENER_NAME)
    cls = {"ads": AdsSource, "grpc": GrpcSource, "rest": RestSource}[request.param]
    return cls(xds, LISTENER_NAME)


def subscribed_endpoints(xds: XdsServer) -> set[str]:
    return {n for seen in xds.requests(ENDPOINT) for n in seen.request.resource_names}


def test_xds_routing_updates_nacks_and_warming(
    target: Target,
    source: Source,
    xds: XdsServer,
    upstreams: dict[str, UpstreamServer],
    tmp_path: Path,
) -> None:
    port = 0  # the proxy binds the listener's port; /listeners says which
    port_of = {name: u.port for name, u in upstreams.items()}
    ok = {name: (200, name) for name in port_of}

    def clusters(*names: str) -> list:
        return [eds_cluster(n, source.config_source(ENDPOINT, n)) for n in names]

    def endpoints(**assign: str) -> list:
        return [load_assignment(c, [port_of[u]]) for c, u in assign.items()]

    # 1. startup, warming until the endpoints arrive
    if not source.server_sees_subscriptions:
        source.push(ENDPOINT, "e1", endpoints(cluster_a="A", cluster_b="B"))
    source.push(CLUSTER, "c1", clusters("cluster_a", "cluster_b"))
    source.push(ROUTE, "r1", [route_config(ROUTES, {"/a": "cluster_a", "/b": "cluster_b"})])
    source.push(
        LISTENER, "l1", [rds_listener(LISTENER_NAME, port, ROUTES, source.config_source(ROUTE))]
    )
    admin = target.start(source.bootstrap(), tmp_path)
    if source.server_sees_subscriptions:
        xds.wait_until(lambda: subscribed_endpoints(xds) >= {"cluster_a", "cluster_b"})
        assert ready_state(admin) != "LIVE"
        assert xds.requests(LISTENER) == [], "listeners asked for before the clusters warmed"
        assert xds.node is not None
        assert (xds.node.id, xds.node.cluster) == ("compat-node", "compat-cluster")
        source.push(ENDPOINT, "e1", endpoints(cluster_a="A", cluster_b="B"))
    wait_for(lambda: ready_state(admin) == "LIVE", timeout=10)
    for type_url, version in ((CLUSTER, "c1"), (ENDPOINT, "e1"), (LISTENER, "l1"), (ROUTE, "r1")):
        source.wait_applied(admin, type_url, version)
    port = listener_port(admin, LISTENER_NAME)
    wait_routing(port, {"/a": ok["A"], "/b": ok["B"]})

    # 2. RDS swaps the routes
    source.push(ROUTE, "r2", [route_config(ROUTES, {"/a": "cluster_b", "/b": "cluster_a"})])
    source.wait_applied(admin, ROUTE, "r2")
    wait_routing(port, {"/a": ok["B"], "/b": ok["A"]})

    # 3. EDS moves cluster_a to C
    source.push(ENDPOINT, "e2", endpoints(cluster_a="C", cluster_b="B"))
    source.wait_applied(admin, ENDPOINT, "e2")
    wait_routing(port, {"/a": ok["B"], "/b": ok["C"]})
    routing = {"/a": ok["B"], "/b": ok["C"]}

    # 4. a route whose regex does not compile: rejected, routing unchanged
    bad_routes = [
        {"match": {"safe_regex": {"regex": BAD_REGEX}}, "route": {"cluster": "cluster_a"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "cluster_a"}},
    ]
    source.push(ROUTE, "r3", [route_config(ROUTES, bad_routes)])
    nack = source.wait_rejected(admin, ROUTE, "r3", "r2")
    if nack is not None:
        assert nack.request.version_info == "r2"
        assert nack.request.error_detail.message
    wait_routing(port, routing, timeout=0)

    # 5. a cluster named twice: rejected, routing unchanged. (Envoy's CDS is not atomic:
    # the valid clusters of a rejected response are still applied and the missing ones
    # removed, so this response repeats the current two and adds the duplicate.)
    source.push(CLUSTER, "c2", clusters("cluster_a", "cluster_b", "cluster_a"))
    nack = source.wait_rejected(admin, CLUSTER, "c2", "c1")
    if nack is not None:
        assert nack.request.version_info == "c1"
        assert "cluster_a" in nack.request.error_detail.message
    wait_routing(port, routing, timeout=0)

    # 6. a new EDS cluster warms until its endpoints arrive
    e3 = endpoints(cluster_a="C", cluster_b="B", cluster_c="W")
    if not source.server_sees_subscriptions:
        source.push(ENDPOINT, "e3", e3)
    source.push(CLUSTER, "c3", clusters("cluster_a", "cluster_b", "cluster_c"))
    routes = {"/a": "cluster_b", "/b": "cluster_a", "/c": "cluster_c"}
    source.push(ROUTE, "r4", [route_config(ROUTES, routes)])
    source.wait_applied(admin, ROUTE, "r4")
    if source.server_sees_subscriptions:
        xds.wait_until(lambda: "cluster_c" in subscribed_endpoints(xds))
        wait_routing(port, {**routing, "/c": (503, None)}, timeout=0)
        assert "cluster_c::" not in admin_get(admin, "/clusters")[1]
        if source.name == "ads":
            # Past initialization Envoy pauses CDS on the ADS stream while a cluster
            # warms: the ACK of c3 waits for cluster_c's endpoints.
            assert xds.find_ack(CLUSTER, "c3") is None
        else:
            source.wait_applied(admin, CLUSTER, "c3")
        source.push(ENDPOINT, "e3", e3)
    source.wait_applied(admin, CLUSTER, "c3")
    source.wait_applied(admin, ENDPOINT, "e3")
    wait_routing(port, {**routing, "/c": ok["W"]})
    assert "cluster_c::" in admin_get(admin, "/clusters")[1]

    if source.name == "rest":
        # Envoy's REST fetcher takes 304 as "nothing new" and keeps its version.
        assert any(r.status == 304 and r.version == "l1" for r in xds.responses(LISTENER))


def _key_paths(value: object, prefix: str = "", depth: int = 0) -> set[str]:
    """Every key path in a JSON value (list items merged), down to resource bodies."""
    out: set[str] = set()
    if depth > 3:
        return out
    if isinstance(value, dict):
        for k, v in value.items():
            here = f"{prefix}.{k}"
            out.add(here)
            if k not in ("cluster", "listener", "route_config", "failed_configuration"):
                out |= _key_paths(v, here, depth + 1)
    elif isinstance(value, list):
        for v in value:
            out |= _key_paths(v, prefix + "[]", depth)
    return out


def _dynamic_dump_shape(target: Target, tmp_path: Path, upstream_port: int) -> set[str]:
    """Serve one EDS cluster and an RDS listener over ADS, refuse a listener update, and
    return the key paths of /config_dump (without the bootstrap)."""
    with XdsServer() as xds:
        source = AdsSource(xds, LISTENER_NAME)
        port = 0  # the proxy binds one
        source.push(ENDPOINT, "e1", [load_assignment("cluster_a", [upstream_port])])
        source.push(CLUSTER, "c1", [eds_cluster("cluster_a", ADS_SOURCE)])
        source.push(ROUTE, "r1", [route_config(ROUTES, {"/": "cluster_a"})])
        source.push(LISTENER, "l1", [rds_listener(LISTENER_NAME, port, ROUTES, ADS_SOURCE)])
        admin = target.start(source.bootstrap(), tmp_path)
        wait_for(lambda: ready_state(admin) == "LIVE", timeout=20)
        bad = rds_listener(LISTENER_NAME, port, ROUTES, ADS_SOURCE)
        bad.address.socket_address.address = "not-an-ip"
        source.push(LISTENER, "l2", [bad])
        xds.wait_for_nack(LISTENER, "l2", timeout=5)
        dump = json.loads(admin_get(admin, "/config_dump")[1])
        configs = [{k: v for k, v in c.items() if k != "bootstrap"} for c in dump["configs"]]
        return {p for c in configs for p in _key_paths(c, c["@type"].rsplit(".", 1)[-1])}


def test_config_dump_of_dynamic_resources_has_envoys_shape(tmp_path: Path, upstreams) -> None:
    """Active clusters, listeners (with the refused update's error_state) and route
    configs appear under the same keys in both dumps."""
    shapes = {}
    for cls in (EnvoyTarget, ProxydTarget):
        target = cls()
        try:
            workdir = tmp_path / cls.name
            workdir.mkdir()
            shapes[cls.name] = _dynamic_dump_shape(target, workdir, upstreams["A"].port)
        finally:
            target.stop()
    # proxyd also says which version a refused update carried (UpdateFailureState has
    # the field; Envoy leaves it empty for listeners).
    extra = {"ListenersConfigDump.dynamic_listeners[].error_state.version_info"}
    assert shapes["proxyd"] - extra == shapes["envoy"]
    assert "ListenersConfigDump.dynamic_listeners[].error_state.details" in shapes["envoy"]


@pytest.mark.parametrize("target_cls", [EnvoyTarget, ProxydTarget], ids=["envoy", "proxyd"])
def test_partly_bad_cds_update_is_applied_resource_by_resource(
    target_cls: type, tmp_path: Path, upstreams: dict[str, UpstreamServer]
) -> None:
    """A CDS response naming cluster_a twice and leaving cluster_b out is NACKed, yet its
    good part is taken: cluster_b is removed (its route answers 503), cluster_a serves on,
    and the CDS version stays at the last good one."""
    target = target_cls()
    with XdsServer() as xds:
        source = AdsSource(xds, LISTENER_NAME)
        port = 0  # the proxy binds one; /listeners says which
        ports = {"cluster_a": upstreams["A"].port, "cluster_b": upstreams["B"].port}
        source.push(ENDPOINT, "e1", [load_assignment(c, [p]) for c, p in ports.items()])
        source.push(CLUSTER, "c1", [eds_cluster(c, ADS_SOURCE) for c in ports])
        source.push(ROUTE, "r1", [route_config(ROUTES, {"/a": "cluster_a", "/b": "cluster_b"})])
        source.push(LISTENER, "l1", [rds_listener(LISTENER_NAME, port, ROUTES, ADS_SOURCE)])
        try:
            admin = target.start(source.bootstrap(), tmp_path)
            wait_for(lambda: ready_state(admin) == "LIVE", timeout=20)
            port = listener_port(admin, LISTENER_NAME)
            wait_routing(port, {"/a": (200, "A"), "/b": (200, "B")})
            twice = [eds_cluster("cluster_a", ADS_SOURCE), eds_cluster("cluster_a", ADS_SOURCE)]
            source.push(CLUSTER, "c2", twice)
            nack = xds.wait_for_nack(CLUSTER, "c2", timeout=5)
            assert nack.request.version_info == "c1"
            assert "cluster_a" in nack.request.error_detail.message
            wait_routing(port, {"/a": (200, "A"), "/b": (503, None)})
            assert stats(admin)["cluster_manager.cds.version_text"] == "c1"
        finally:
            target.stop()
