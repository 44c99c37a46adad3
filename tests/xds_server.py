"""A test xDS management server: gRPC (ADS and per-type SotW) and REST-JSON, in threads.

``XdsServer`` serves Envoy's v3 xDS APIs on loopback, state-of-the-world only:

* gRPC on ``grpc_port``: ``AggregatedDiscoveryService/StreamAggregatedResources`` and the
  per-type ``StreamClusters``, ``StreamEndpoints``, ``StreamListeners``, ``StreamRoutes``,
  ``StreamRuntime``, ``StreamSecrets``;
* REST-JSON on ``rest_port`` (HTTP/1.1): ``POST /v3/discovery:clusters`` (``:endpoints``,
  ``:listeners``, ``:routes``, ``:runtime``, ``:secrets``) with a DiscoveryRequest as JSON, answered with a
  DiscoveryResponse as JSON, or ``304 Not Modified`` when the request's ``version_info``
  is the current version (Envoy's REST fetcher treats 304 as "nothing new", any other
  non-200 as a connection failure).

A test holds one snapshot per type (``set_resources``); pushing one sends it at once to
every open stream subscribed to that type. Clusters and listeners are wildcard (the whole
snapshot); endpoints, routes and runtimes are filtered by the ``resource_names`` the client asked
for, and nothing is sent while none of those names is known. A stream gets a response when
it first asks for a type, when its ``resource_names`` change, and on every push; an ACK
or NACK gets none. A request whose ``response_nonce`` is not the last one sent on that
stream for that type is stale and only logged. Nonces are unique per response.

Every DiscoveryRequest is logged (``requests(type_url)``) so a test can assert on ACKs
(``version_info`` is the pushed version, ``response_nonce`` a nonce sent with it, no
``error_detail``) and NACKs (``error_detail`` set, ``version_info`` the last good one):
``wait_for_ack`` and ``wait_for_nack`` do that. REST requests carry no nonce and never a
NACK: a client that rejected a REST response just asks again with its old version.

The builders at the end turn plain dicts (or YAML text) into the resource messages, so
a test reads like Envoy YAML.
"""

from __future__ import annotations

import itertools
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import envoy.extensions.filters.http.router.v3.router_pb2  # noqa: F401
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2  # noqa: F401
import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401
import grpc
import yaml
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.listener.v3 import lds_pb2_grpc
from envoy.service.route.v3 import rds_pb2_grpc
from envoy.service.runtime.v3 import rtds_pb2_grpc
from envoy.service.runtime.v3.rtds_pb2 import Runtime
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message

# The three extension modules are imported for their descriptors: json_format must know
# every type an ``Any`` in a resource names (HCM, router, upstream protocol options).

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "RUNTIME",
    "SECRET",
    "XdsServer",
    "SeenRequest",
    "SentResponse",
    "parse",
    "resource_name",
    "eds_cluster",
    "load_assignment",
    "route_config",
    "rds_listener",
    "discovery_response_json",
    "write_discovery_file",
]

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
RUNTIME = "type.googleapis.com/envoy.service.runtime.v3.Runtime"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

MESSAGE_CLASS: dict[str, type[Message]] = {
    CLUSTER: Cluster,
    ENDPOINT: ClusterLoadAssignment,
    LISTENER: Listener,
    ROUTE: RouteConfiguration,
    RUNTIME: Runtime,
    SECRET: Secret,
}
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
REST_PATHS = {
    "/v3/discovery:clusters": CLUSTER,
    "/v3/discovery:endpoints": ENDPOINT,
    "/v3/discovery:listeners": LISTENER,
    "/v3/discovery:routes": ROUTE,
    "/v3/discovery:runtime": RUNTIME,
    "/v3/discovery:secrets": SECRET,
}


def resource_name(msg: Message) -> str:
    """The name a client subscribes to: ``cluster_name`` for a ClusterLoadAssignment."""
    if isinstance(msg, ClusterLoadAssignment):
        return msg.cluster_name
    return msg.name  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Snapshot:
    version: str
    resources: tuple[Message, ...]

    def select(self, type_url: str, names: frozenset[str]) -> list[Message]:
        if type_url in WILDCARD_TYPES or not names or "*" in names:
            return list(self.resources)
        return [r for r in self.resources if resource_name(r) in names]


@dataclass(frozen=True)
class SeenRequest:
    """One DiscoveryRequest as received; ``transport`` is "ads", "grpc" or "rest"."""

    type_url: str
    request: DiscoveryRequest
    transport: str
    stream: int
    at: float = field(default_factory=time.monotonic)

    @property
    def is_nack(self) -> bool:
        return self.request.HasField("error_detail")


@dataclass(frozen=True)
class SentResponse:
    """One answer sent: a DiscoveryResponse (``status`` 200) or a REST 304."""

    type_url: str
    version: str
    nonce: str
    names: tuple[str, ...]
    transport: str
    stream: int
    status: int = 200
    at: float = field(default_factory=time.monotonic)


_CLOSED = object()


@dataclass(eq=False)
class _Stream:
    id: int
    transport: str
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    names: dict[str, frozenset[str]] = field(default_factory=dict)
    last_nonce: dict[str, str] = field(default_factory=dict)


class XdsServer:
    """gRPC and REST xDS on loopback; ``with XdsServer() as xds: xds.grpc_port``."""

    def __init__(self, max_streams: int = 64, grpc_port: int = 0, grpc_pipe: str = "") -> None:
        # Reentrant: wait_until's predicates (find_ack, ...) take the lock themselves.
        self._cond = threading.Condition(threading.RLock())
        self._snapshots: dict[str, Snapshot] = {}
        self._streams: set[_Stream] = set()
        self._seen: list[SeenRequest] = []
        self._sent: list[SentResponse] = []
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self.node: Any = None  # the Node of the first request that carried one
        self._grpc = grpc.server(ThreadPoolExecutor(max_workers=max_streams))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Ads(self), self._grpc)
        cds_pb2_grpc.add_ClusterDiscoveryServiceServicer_to_server(_Cds(self), self._grpc)
        eds_pb2_grpc.add_EndpointDiscoveryServiceServicer_to_server(_Eds(self), self._grpc)
        lds_pb2_grpc.add_ListenerDiscoveryServiceServicer_to_server(_Lds(self), self._grpc)
        rds_pb2_grpc.add_RouteDiscoveryServiceServicer_to_server(_Rds(self), self._grpc)
        rtds_pb2_grpc.add_RuntimeDiscoveryServiceServicer_to_server(_Rtds(self), self._grpc)
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(_Sds(self), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"127.0.0.1:{grpc_port}")
        if grpc_pipe:  # gRPC on a Unix socket too ("@name": abstract namespace)
            where = (
                f"unix-abstract:{grpc_pipe[1:]}"
                if grpc_pipe.startswith("@")
                else f"unix:{grpc_pipe}"
            )
            self._grpc.add_insecure_port(where)
        self._http = _RestServer(self)
        self.rest_port: int = self._http.server_address[1]
        # Polled for shutdown every 20 ms (not serve_forever's 0.5 s): close() waits for it.
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> XdsServer:
        self._grpc.start()
        self._http_thread.start()
        self._started = True
        return self

    def close(self) -> None:
        with self._cond:
            for stream in self._streams:
                stream.out.put(_CLOSED)
        self._grpc.stop(grace=0).wait(5)
        if self._started:
            self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> XdsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the test's side ---------------------------------------------------------------

    def set_resources(self, type_url: str, version: str, resources: Iterable[Message]) -> None:
        """Make ``resources`` the snapshot of ``type_url`` at ``version`` and push it."""
        snap = Snapshot(version, tuple(resources))
        cls = MESSAGE_CLASS[type_url]
        for r in snap.resources:
            if not isinstance(r, cls):
                raise TypeError(f"{type(r).__name__} is not a {cls.__name__}")
        with self._cond:
            self._snapshots[type_url] = snap
            for stream in self._streams:
                if type_url in stream.names:
                    self._send(stream, type_url)
            self._cond.notify_all()

    def requests(self, type_url: str | None = None) -> list[SeenRequest]:
        with self._cond:
            return [s for s in self._seen if type_url is None or s.type_url == type_url]

    def responses(self, type_url: str | None = None) -> list[SentResponse]:
        with self._cond:
            return [s for s in self._sent if type_url is None or s.type_url == type_url]

    def version(self, type_url: str) -> str | None:
        with self._cond:
            snap = self._snapshots.get(type_url)
            return snap.version if snap else None

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait (on the server's Condition) until ``predicate()`` is truthy; return it."""
        with self._cond:
            value = self._cond.wait_for(predicate, timeout)
        if not value:
            raise TimeoutError(f"xDS condition not met within {timeout} s\n{self.describe()}")
        return value

    def describe(self, last: int = 40) -> str:
        """The last requests and responses, one a line, oldest first (for failures)."""
        with self._cond:
            events: list[tuple[float, str]] = []
            for r in self._seen:
                q = r.request
                err = f" NACK({q.error_detail.message!r})" if r.is_nack else ""
                events.append(
                    (
                        r.at,
                        f"<- {r.transport}#{r.stream} {r.type_url.rsplit('.', 1)[-1]}"
                        f" names={list(q.resource_names)} version={q.version_info!r}"
                        f" nonce={q.response_nonce!r}{err}",
                    )
                )
            for s in self._sent:
                events.append(
                    (
                        s.at,
                        f"-> {s.transport}#{s.stream} {s.type_url.rsplit('.', 1)[-1]}"
                        f" {s.status} version={s.version!r} nonce={s.nonce!r} names={list(s.names)}",
                    )
                )
        events.sort(key=lambda e: e[0])
        return "\n".join(text for _, text in events[-last:])

    def _nonces_of(self, type_url: str, version: str) -> set[str]:
        return {
            s.nonce
            for s in self._sent
            if s.type_url == type_url and s.version == version and s.status == 200
        }

    def find_ack(self, type_url: str, version: str) -> SeenRequest | None:
        """The last ACK of ``version``, once every gRPC response sent at that version has
        been ACKed on its stream (REST: a request that names ``version`` as its own)."""
        with self._cond:
            return self._find_ack(type_url, version)

    def _find_ack(self, type_url: str, version: str) -> SeenRequest | None:
        if not any(s.version == version for s in self._sent if s.type_url == type_url):
            return None
        sent = [
            s
            for s in self._sent
            if s.type_url == type_url and s.version == version and s.transport != "rest"
        ]
        acks = [
            seen
            for seen in self._seen
            if seen.type_url == type_url
            and seen.request.version_info == version
            and not seen.is_nack
        ]
        if not acks:
            return None
        acked = {(a.stream, a.request.response_nonce) for a in acks}
        if any((s.stream, s.nonce) not in acked for s in sent):
            return None
        return acks[-1]

    def find_nack(self, type_url: str, version: str | None = None) -> SeenRequest | None:
        """A NACK of ``type_url``; with ``version``, one of a response at that version."""
        with self._cond:
            return self._find_nack(type_url, version)

    def _find_nack(self, type_url: str, version: str | None) -> SeenRequest | None:
        nonces = (
            self._nonces_of(type_url, version)
            if version is not None
            else {s.nonce for s in self._sent if s.type_url == type_url}
        )
        for seen in self._seen:
            if seen.type_url == type_url and seen.is_nack and seen.request.response_nonce in nonces:
                return seen
        return None

    def wait_for_ack(self, type_url: str, version: str, timeout: float = 10.0) -> SeenRequest:
        return self.wait_until(lambda: self.find_ack(type_url, version), timeout)

    def wait_for_nack(
        self, type_url: str, version: str | None = None, timeout: float = 10.0
    ) -> SeenRequest:
        return self.wait_until(lambda: self.find_nack(type_url, version), timeout)

    def wait_for_request(
        self, type_url: str, predicate: Callable[[SeenRequest], bool], timeout: float = 10.0
    ) -> SeenRequest:
        def found() -> SeenRequest | None:
            with self._cond:
                return next(
                    (s for s in self._seen if s.type_url == type_url and predicate(s)), None
                )

        return self.wait_until(found, timeout)

    # -- the protocol --------------------------------------------------------------------

    def _record(self, seen: SeenRequest) -> None:
        self._seen.append(seen)
        if self.node is None and seen.request.HasField("node"):
            self.node = seen.request.node
        self._cond.notify_all()

    def _on_request(self, stream: _Stream, req: DiscoveryRequest, fixed_type: str | None) -> None:
        type_url = req.type_url or fixed_type or ""
        with self._cond:
            self._record(SeenRequest(type_url, req, stream.transport, stream.id))
            if type_url not in MESSAGE_CLASS:
                return  # a type this server does not serve: logged, never answered
            if req.response_nonce and req.response_nonce != stream.last_nonce.get(type_url):
                return  # stale: an answer to a response that a newer one superseded
            names = frozenset(req.resource_names)
            if stream.names.get(type_url) != names:
                stream.names[type_url] = names
                self._send(stream, type_url)

    def _send(self, stream: _Stream, type_url: str) -> None:
        snap = self._snapshots.get(type_url)
        if snap is None:
            return
        names = stream.names[type_url]
        selected = snap.select(type_url, names)
        if not selected and type_url not in WILDCARD_TYPES:
            return  # none of the names it asked for exists yet
        nonce = str(next(self._nonces))
        resp = DiscoveryResponse(version_info=snap.version, type_url=type_url, nonce=nonce)
        for r in selected:
            packed = AnyProto()
            packed.Pack(r)
            resp.resources.append(packed)
        stream.last_nonce[type_url] = nonce
        self._sent.append(
            SentResponse(
                type_url,
                snap.version,
                nonce,
                tuple(resource_name(r) for r in selected),
                stream.transport,
                stream.id,
            )
        )
        stream.out.put(resp)

    def _serve_stream(
        self, request_iterator: Iterator[DiscoveryRequest], context: Any, fixed_type: str | None
    ) -> Iterator[DiscoveryResponse]:
        stream = _Stream(next(self._ids), "grpc" if fixed_type else "ads")
        with self._cond:
            self._streams.add(stream)
        context.add_callback(lambda: stream.out.put(_CLOSED))
        reader = threading.Thread(
            target=self._read_stream, args=(stream, request_iterator, fixed_type), daemon=True
        )
        reader.start()
        try:
            while (item := stream.out.get()) is not _CLOSED:
                yield item
        finally:
            with self._cond:
                self._streams.discard(stream)

    def _read_stream(
        self, stream: _Stream, requests: Iterator[DiscoveryRequest], fixed_type: str | None
    ) -> None:
        try:
            for req in requests:
                self._on_request(stream, req, fixed_type)
        except grpc.RpcError:
            pass  # the client went away or the server stopped: the stream is over
        finally:
            stream.out.put(_CLOSED)

    def _rest(self, type_url: str, req: DiscoveryRequest) -> tuple[int, bytes]:
        with self._cond:
            self._record(SeenRequest(type_url, req, "rest", 0))
            snap = self._snapshots.get(type_url)
            names = frozenset(req.resource_names)
            selected = snap.select(type_url, names) if snap else []
            if (
                snap is None
                or req.version_info == snap.version
                or (not selected and type_url not in WILDCARD_TYPES)
            ):
                version = snap.version if snap else ""
                self._sent.append(SentResponse(type_url, version, "", (), "rest", 0, status=304))
                self._cond.notify_all()
                return 304, b""
            body = discovery_response_json(type_url, snap.version, selected)
            self._sent.append(
                SentResponse(
                    type_url,
                    snap.version,
                    "",
                    tuple(resource_name(r) for r in selected),
                    "rest",
                    0,
                )
            )
            self._cond.notify_all()
            return 200, body.encode()


class _Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    def StreamAggregatedResources(self, request_iterator, context):  # noqa: N802 - gRPC name
        return self._server._serve_stream(request_iterator, context, None)


class _Cds(cds_pb2_grpc.ClusterDiscoveryServiceServicer):
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    def StreamClusters(self, request_iterator, context):  # noqa: N802 - gRPC name
        return self._server._serve_stream(request_iterator, context, CLUSTER)


class _Eds(eds_pb2_grpc.EndpointDiscoveryServiceServicer):
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    def StreamEndpoints(self, request_iterator, context):  # noqa: N802 - gRPC name
        return self._server._serve_stream(request_iterator, context, ENDPOINT)


class _Lds(lds_pb2_grpc.ListenerDiscoveryServiceServicer):
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    def StreamListeners(self, request_iterator, context):  # noqa: N802 - gRPC name
        return self._server._serve_stream(request_iterator, context, LISTENER)


class _Rds(rds_pb2_grpc.RouteDiscoveryServiceServicer):
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    def StreamRoutes(self, request_iterator, context):  # noqa: N802 - gRPC name
        return self._server._serve_stream(request_iterator, context, ROUTE)


class _Rtds(rtds_pb2_grpc.RuntimeDiscoveryServiceServicer):
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    def StreamRuntime(self, request_iterator, context):  # noqa: N802 - gRPC name
        return self._server._serve_stream(request_iterator, context, RUNTIME)


class _Sds(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    def StreamSecrets(self, request_iterator, context):  # noqa: N802 - gRPC name
        return self._server._serve_stream(request_iterator, context, SECRET)


class _RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _RestServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # the request log of XdsServer says what arrived

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        type_url = REST_PATHS.get(self.path.split("?", 1)[0])
        if type_url is None:
            self._answer(404, b"unknown xDS path\n")
            return
        req = DiscoveryRequest()
        try:
            json_format.Parse(body, req, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            self._answer(400, f"bad DiscoveryRequest: {exc}\n".encode())
            return
        status, out = self.server.xds._rest(type_url, req)
        self._answer(status, out)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        if status != 304:
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
        self.end_headers()
        if status != 304:
            self.wfile.write(body)


class _RestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, xds: XdsServer) -> None:
        self.xds = xds
        super().__init__(("127.0.0.1", 0), _RestHandler)


# -- resources from plain data -----------------------------------------------------------


def parse(type_url: str, data: dict[str, Any] | str) -> Message:
    """A resource of ``type_url`` from a dict or YAML text (``@type`` for every Any)."""
    if isinstance(data, str):
        data = yaml.safe_load(data)
    return json_format.ParseDict(data, MESSAGE_CLASS[type_url]())


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def eds_cluster(name: str, eds_config: dict[str, Any], **fields: Any) -> Cluster:
    """A ``type: EDS`` round-robin cluster whose endpoints come from ``eds_config``."""
    data = {
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "eds_cluster_config": {"eds_config": eds_config},
        **fields,
    }
    return parse(CLUSTER, data)  # type: ignore[return-value]


def load_assignment(cluster_name: str, ports: Iterable[int]) -> ClusterLoadAssignment:
    """Endpoints on 127.0.0.1 for ``cluster_name``."""
    eps = [{"endpoint": {"address": _address(p)}} for p in ports]
    data = {"cluster_name": cluster_name, "endpoints": [{"lb_endpoints": eps}]}
    return parse(ENDPOINT, data)  # type: ignore[return-value]


def route_config(name: str, routes: dict[str, str] | list[dict[str, Any]]) -> RouteConfiguration:
    """One ``*`` virtual host; ``routes`` maps a path prefix to a cluster, or is the list."""
    if isinstance(routes, dict):
        routes = [{"match": {"prefix": p}, "route": {"cluster": c}} for p, c in routes.items()]
    data = {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}
    return parse(ROUTE, data)  # type: ignore[return-value]


HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network."
    "http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def rds_listener(name: str, port: int, route_name: str, config_source: dict[str, Any]) -> Listener:
    """A listener on 127.0.0.1:``port`` whose connection manager takes its routes by RDS."""
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "rds": {"route_config_name": route_name, "config_source": config_source},
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
        ],
    }
    data = {
        "name": name,
        "address": _address(port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    return parse(LISTENER, data)  # type: ignore[return-value]


def discovery_response_json(type_url: str, version: str, resources: Iterable[Message]) -> str:
    """A DiscoveryResponse as JSON: the REST answer, and the content of an xDS file."""
    resp = DiscoveryResponse(version_info=version, type_url=type_url)
    for r in resources:
        packed = AnyProto()
        packed.Pack(r)
        resp.resources.append(packed)
    return json_format.MessageToJson(resp)


def write_discovery_file(
    path: Path, type_url: str, version: str, resources: Iterable[Message]
) -> None:
    """Replace ``path`` by a DiscoveryResponse file, atomically (write, then rename),
    which is the change a ``path_config_source`` watch picks up."""
    text = discovery_response_json(type_url, version, resources)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.rename(tmp, path)
