"""The four ways a subscription is fed: a watched file, REST-JSON polling, a gRPC
stream per type, and the aggregated (ADS) stream.

Each loop turns what arrives into ``(version_info, resources, nonce)`` and hands it to
:meth:`Subscription.deliver`, which applies it and says whether it was accepted; the
loop then acknowledges as Envoy does:

* ACK: a DiscoveryRequest with the new ``version_info`` and the response's nonce;
* NACK: the previous good ``version_info``, the nonce, and ``error_detail`` (code 13,
  as Envoy sends, with the reason) — the last good resources stay in place.

A REST poll carries only the version (Envoy sends no nonce or error_detail there). gRPC
streams reconnect with jittered exponential backoff (0.5 s doubling up to 30 s, as
Envoy's defaults) and send the last accepted version on the new stream. Files are polled
for a change of inode, size or modification time every :data:`FILE_POLL_S`, so a file
replaced by rename (the safe way to update one) is picked up; a file that does not parse
is reported and the last good content stays.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format
from google.rpc import status_pb2

from proxyd import pipes
from proxyd.config.proto import parse_message
from proxyd.config.source import parse_config_text
from proxyd.epoch import ConfigSource
from proxyd.errors import ConfigError
from proxyd.log import get_logger
from proxyd.master.xds import resources as rs
from proxyd.master.xds.grpc import GrpcError, open_stream
from proxyd.master.xds.http_client import HttpClientError, post_json

if TYPE_CHECKING:
    from proxyd.master.xds.client import XdsClient

FILE_POLL_S = 0.25
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
INTERNAL = 13  # Envoy NACKs with code 13 (INTERNAL)

GRPC_METHODS = {
    rs.CLUSTER: "/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters",
    rs.ENDPOINT: "/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints",
    rs.LISTENER: "/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners",
    rs.ROUTE: "/envoy.service.route.v3.RouteDiscoveryService/StreamRoutes",
    rs.RUNTIME: "/envoy.service.runtime.v3.RuntimeDiscoveryService/StreamRuntime",
    rs.SECRET: "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
}
ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
REST_PATHS = {
    rs.CLUSTER: "/v3/discovery:clusters",
    rs.ENDPOINT: "/v3/discovery:endpoints",
    rs.LISTENER: "/v3/discovery:listeners",
    rs.ROUTE: "/v3/discovery:routes",
    rs.RUNTIME: "/v3/discovery:runtime",
    rs.SECRET: "/v3/discovery:secrets",
}

log = get_logger("proxyd.master.xds")


@dataclass(eq=False)
class Subscription:
    """One resource type from one source: what to ask for, and what was accepted."""

    client: XdsClient
    type_url: str
    source: ConfigSource
    # None: wildcard (LDS, CDS); else the names asked for (RDS, EDS).
    names: frozenset[str] | None
    version: str = ""  # last accepted version_info
    nonce: str = ""  # of the last response
    responded: trio.Event = field(default_factory=trio.Event)
    # Set when ``names`` changed and the source must ask again.
    interest: trio.Event = field(default_factory=trio.Event)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # The gRPC stream carrying it (None for files and REST).
    stream: Stream | None = None

    @property
    def short(self) -> str:
        return rs.SHORT[self.type_url]

    def set_names(self, names: frozenset[str] | None) -> None:
        if names != self.names:
            self.names = names
            self.interest.set()
            if self.stream is not None:
                self.stream.poke()

    def deliver(self, version: str, resources: list[Any], origin: str) -> str:
        """Apply a response; "" when accepted, else the reason it was refused."""
        error = self.client.deliver(self, version, resources, origin)
        if not error:
            self.version = version
        return error

    def request(self, error: str = "", with_node: bool = True) -> discovery_pb2.DiscoveryRequest:
        req = discovery_pb2.DiscoveryRequest(
            version_info=self.version,
            type_url=self.type_url,
            response_nonce=self.nonce,
            resource_names=sorted(self.names or ()),
        )
        if with_node:
            req.node.CopyFrom(self.client.node.message())
        if error:
            req.error_detail.CopyFrom(status_pb2.Status(code=INTERNAL, message=error))
        return req


# -- files -----------------------------------------------------------------------------


async def run_file(sub: Subscription) -> None:
    """Read the file whenever it (or a file its secrets were read from: SDS) changes."""
    path = sub.source.path
    seen: tuple[Any, ...] | None = None
    while True:
        main = _file_signature(path)
        if main is not None:
            signature = (main, *map(_file_signature, sub.client.watched_files(sub)))
            if signature != seen:
                _read_file(sub, path)
                # Taken again: what was just read decides which files count.
                main = _file_signature(path)
                seen = (main, *map(_file_signature, sub.client.watched_files(sub)))
        await trio.sleep(FILE_POLL_S)


def _file_signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _read_file(sub: Subscription, path: str) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        response = parse_message(
            parse_config_text(text, path), discovery_pb2.DiscoveryResponse, path
        )
    except (OSError, UnicodeDecodeError) as exc:
        sub.client.unreadable(sub, "", f"{path}: cannot read the file: {exc}")
        return
    except ConfigError as exc:
        sub.client.unreadable(sub, "", str(exc))
        return
    sub.deliver(response.version_info, list(response.resources), path)


# -- REST ------------------------------------------------------------------------------


async def run_rest(sub: Subscription) -> None:
    """Poll every refresh_delay. As Envoy's REST fetcher does, a request carries no nonce
    and no error_detail: a refused update shows as the old version_info in the next
    poll (and in the stats)."""
    source = sub.source
    while True:
        address = sub.client.address_of(source.cluster)
        request = json_format.MessageToJson(sub.request()).encode()
        where = f"REST {source.cluster}"
        try:
            if address is None:
                raise HttpClientError(f"cluster '{source.cluster}' has no address")
            status, body = await post_json(
                address[0],
                address[1],
                REST_PATHS[sub.type_url],
                request,
                # A pipe has no host:port to name: the cluster, as Envoy's Host header.
                authority="" if address[1] else source.cluster,
                timeout_s=source.request_timeout_s,
            )
            where = f"REST {pipes.host_label(*address)}"
            if status == 200:
                try:
                    response = parse_message(json.loads(body), discovery_pb2.DiscoveryResponse, where)  # fmt: skip
                except ValueError as exc:  # not JSON
                    sub.client.unreadable(sub, "", f"{where}: not a JSON DiscoveryResponse: {exc}")
                except ConfigError as exc:  # JSON, not a DiscoveryResponse: by field path
                    sub.client.unreadable(sub, "", str(exc))
                else:
                    sub.deliver(response.version_info, list(response.resources), where)
            elif status != 304:  # 304: nothing new since version_info
                raise HttpClientError(f"status {status} from {where}")
        except HttpClientError as exc:
            sub.client.fetch_failed(sub, str(exc))
        # Envoy waits refresh_delay plus up to one more of random jitter, so that many
        # proxies started together do not poll the server in step.
        jitter = random.uniform(0, source.refresh_delay_s)  # noqa: S311 - not security
        await _sleep_or_interest(sub, source.refresh_delay_s + jitter)


async def _sleep_or_interest(sub: Subscription, delay_s: float) -> None:
    with trio.move_on_after(delay_s):
        await sub.interest.wait()
    sub.interest = trio.Event()


# -- gRPC ------------------------------------------------------------------------------


class _Backoff:
    def __init__(self) -> None:
        self.next_s = BACKOFF_BASE_S

    def reset(self) -> None:
        self.next_s = BACKOFF_BASE_S

    async def wait(self) -> None:
        delay = random.uniform(0, self.next_s)  # noqa: S311 - jitter, not security
        self.next_s = min(self.next_s * 2, BACKOFF_MAX_S)
        await trio.sleep(delay)


def _grpc_error(exc: BaseException) -> GrpcError | None:
    """The GrpcError that ended a stream, also from inside trio's exception groups."""
    if isinstance(exc, GrpcError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [_grpc_error(e) for e in exc.exceptions]
        if found and all(found):
            return found[0]
    return None


class Stream:
    """One gRPC stream carrying one subscription (per-type) or several (ADS)."""

    def __init__(self, client: XdsClient, source: ConfigSource, method: str) -> None:
        self.client = client
        self.source = source
        self.method = method
        self.subs: dict[str, Subscription] = {}
        self.changed = trio.Event()  # a subscription was added or its names changed
        self._sent_node = False

    def add(self, sub: Subscription) -> None:
        self.subs[sub.type_url] = sub
        sub.stream = self
        self.poke()

    def remove(self, sub: Subscription) -> None:
        if self.subs.get(sub.type_url) is sub:
            del self.subs[sub.type_url]

    def poke(self) -> None:
        self.changed.set()

    async def run(self) -> None:
        backoff = _Backoff()
        while True:
            address = self.client.address_of(self.source.cluster)
            try:
                if address is None:
                    raise GrpcError(14, f"cluster '{self.source.cluster}' has no address")
                # A pipe has no host:port: the cluster names it, as Envoy's :authority.
                authority = "" if address[1] else self.source.cluster
                async with open_stream(address[0], address[1], self.method, authority=authority) as stream:  # fmt: skip
                    self.client.connected(self, True)
                    await self._converse(stream, backoff)
            except (GrpcError, BaseExceptionGroup) as raised:
                exc = _grpc_error(raised)
                if exc is None:
                    raise
                self.client.connected(self, False)
                log.warning(
                    "xds_stream_closed", cluster=self.source.cluster, method=self.method,
                    error=str(exc),
                )  # fmt: skip
            await backoff.wait()

    async def _converse(self, stream: Any, backoff: _Backoff) -> None:
        self._sent_node = False
        for known in self.subs.values():
            known.nonce = ""  # nonces belong to a stream; versions carry over
        asked: dict[str, frozenset[str] | None] = {}
        lock = trio.Lock()

        async def send(sub: Subscription, error: str = "") -> None:
            with_node = not (self._sent_node and self.source.node_on_first_message_only)
            async with lock:
                await stream.send(sub.request(error, with_node).SerializeToString())
            self._sent_node = True
            asked[sub.type_url] = sub.names

        async def ask_for_changes() -> None:
            while True:
                self.changed = trio.Event()
                for type_url in rs.TYPES:  # SDS, then Envoy's order: RTDS, CDS, EDS, LDS, RDS
                    sub = self.subs.get(type_url)
                    if sub is None:
                        continue
                    if sub.interest.is_set() or type_url not in asked:
                        sub.interest = trio.Event()
                        await send(sub)
                    elif asked[type_url] != sub.names:
                        await send(sub)
                await self.changed.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_for_changes)
            while True:
                data = await stream.receive()
                backoff.reset()
                response = discovery_pb2.DiscoveryResponse()
                try:
                    response.ParseFromString(data)
                except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError
                    raise GrpcError(13, f"undecodable DiscoveryResponse: {exc}") from exc
                sub = self.subs.get(response.type_url)
                if sub is None:
                    log.warning("xds_unexpected_type", type_url=response.type_url)
                    continue
                sub.nonce = response.nonce
                where = f"{'ADS' if self.method == ADS_METHOD else 'gRPC'} {self.source.cluster}"
                error = sub.deliver(response.version_info, list(response.resources), where)
                if not error and self.method == ADS_METHOD and sub.type_url == rs.CLUSTER:
                    # Envoy pauses CDS on the aggregated stream while clusters warm: the
                    # ACK goes once their endpoints arrived (make before break).
                    if not self.client.clusters_warm():
                        nursery.start_soon(self._ack_when_warm, sub, send)
                        continue
                await send(sub, error)

    async def _ack_when_warm(self, sub: Subscription, send: Any) -> None:
        await self.client.wait_clusters_warm(sub.source.initial_fetch_timeout_s)
        await send(sub)
