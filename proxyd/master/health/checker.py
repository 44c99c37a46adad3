"""The master's active health checking: one trio task per checked host.

:class:`HealthChecker` owns a nursery (started with ``nursery.start(checker.run)``) with
one :class:`_Session` per (cluster, address, port) of every cluster that has
``health_checks``. :meth:`HealthChecker.warm` starts sessions for new hosts and waits
for their first check (as Envoy's cluster warming does before the server goes live),
then returns the epoch with ``Endpoint.healthy`` set from what the checks found;
:meth:`HealthChecker.apply` does the same without waiting. When a host's health flips,
:meth:`wait_changed` wakes the master, which publishes a new epoch. Callbacks added
with :meth:`HealthChecker.add_check_passed_callback` hear of every check that passed
with the host healthy after it (Envoy's host-check-complete callback, which outlier
detection uses to end an ejection).

The checks are HTTP/1.1 and TCP (``probes``) and gRPC (``grpc_check``, one unary
``grpc.health.v1.Health/Check`` call on a new HTTP/2 connection each time).

Stats, as Envoy's: ``cluster.<name>.health_check.attempt``, ``success``, ``failure``,
``network_failure``, ``passive_failure``, ``verify_cluster`` (counters) and
``healthy``, ``degraded`` (gauges).
"""

from __future__ import annotations

import dataclasses
import random
import select
from collections.abc import Callable

import trio

from proxyd import pipes
from proxyd.epoch import Cluster, Endpoint, Epoch, HealthCheck, UpstreamTls, transport_for
from proxyd.log import get_logger
from proxyd.master.health import grpc_check
from proxyd.master.health.probes import HttpResponseReader, http_request, tcp_match
from proxyd.master.health.state import (
    HostHealth,
    Result,
    Transition,
    initial_delay,
    next_interval,
)
from proxyd.master.health.tls import tls_handshake
from proxyd.master.xds.grpc import GrpcError, GrpcStream, open_stream
from proxyd.stats import StatsStore

log = get_logger("proxyd.master.health")

READ_SIZE = 16384
_COUNTERS = ("attempt", "success", "failure", "network_failure", "passive_failure", "verify_cluster")  # fmt: skip

HostKey = tuple[str, str, int]  # (cluster, address, port)


def _peer_closed(stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]) -> bool:
    """True when an idle kept connection has something to read: the host closed or
    reset it (or sent bytes nobody asked for); either way it is not reused. (A
    trio socket's recv is a coroutine, so readiness is asked of poll instead.)"""
    sock = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    poller = select.poll()
    poller.register(sock.socket.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def for_endpoint(hc: HealthCheck, e: Endpoint) -> HealthCheck:
    """The check as it runs against ``e``: its health_check_config's port, and its
    hostname as the Host (gRPC :authority), which wins over the check's own (as in
    Envoy)."""
    if not (e.hc_port or e.hc_hostname):
        return hc
    return dataclasses.replace(
        hc,
        port=e.hc_port,
        http_host=e.hc_hostname or hc.http_host,
        grpc_authority=e.hc_hostname or hc.grpc_authority,
    )


class _Session:
    """Checks one host forever; its state is read by the HealthChecker."""

    def __init__(
        self, owner: HealthChecker, key: HostKey, hc: HealthCheck, tls: UpstreamTls | None = None
    ) -> None:
        self.owner = owner
        self.key = key
        self.hc = hc
        # The cluster's transport socket: HTTP and TCP checks go over TLS, as Envoy's.
        self.tls = tls
        self.health = HostHealth()
        self.first_done = trio.Event()
        self.cancel_scope = trio.CancelScope()
        self._stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None

    async def run(self) -> None:
        with self.cancel_scope:
            try:
                await trio.sleep(initial_delay(self.hc, self.owner.rng))
                while True:
                    result = await self.check_once()
                    transition = self.owner.record(self, result)
                    self.first_done.set()
                    cluster = self.key[0]
                    delay = next_interval(
                        self.hc, result, transition, self.owner.has_traffic(cluster), self.owner.rng
                    )
                    await trio.sleep(delay)
            finally:
                self.first_done.set()
                await self._close()

    async def check_once(self) -> Result:
        self.owner.count(self.key[0], "attempt")
        if self.hc.kind == "grpc":
            return await self._probe_grpc()
        result = Result.TIMEOUT
        with trio.move_on_after(self.hc.timeout_s):
            try:
                result = await self._probe()
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                result = Result.NETWORK_FAILURE
        if result is not Result.SUCCESS or not self.hc.reuse_connection:
            await self._close()
        return result

    async def _connect(self) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        if self._stream is not None and _peer_closed(self._stream):
            await self._close()  # an idle connection the host closed: not a failure
        if self._stream is None:
            cluster, address, port = self.key
            # health_check_config.port_value moves a TCP check only (a pipe has no port).
            stream = await pipes.open_stream(address, (self.hc.port or port) if port else 0)
            if self.tls is None:
                self._stream = stream
            else:
                self._stream = await tls_handshake(stream, self.tls, self.owner.stats, cluster)
        return self._stream

    async def _probe(self) -> Result:
        if self.hc.kind == "http":
            return await self._probe_http()
        return await self._probe_tcp()

    async def _probe_http(self) -> Result:
        stream = await self._connect()
        await stream.send_all(http_request(self.hc, self.key[0]))
        reader = HttpResponseReader(self.hc)
        result: Result | None = None
        while result is None:
            result = reader.feed(await stream.receive_some(READ_SIZE))
        if not reader.keep_alive:
            await self._close()
        return result

    async def _probe_tcp(self) -> Result:
        stream = await self._connect()
        if not self.hc.tcp_receive:
            # Envoy's connect-only check: connected is healthy; nothing is sent.
            await self._close()
            return Result.SUCCESS
        if self.hc.tcp_send:
            await stream.send_all(self.hc.tcp_send)
        buffer = b""
        while not tcp_match(self.hc.tcp_receive, buffer):
            data = await stream.receive_some(READ_SIZE)
            if not data:
                return Result.NETWORK_FAILURE
            buffer += data
        return Result.SUCCESS

    async def _probe_grpc(self) -> Result:
        """One Check call on a new HTTP/2 connection. The timeout is kept inside the
        call, so a call that timed out is still cancelled and closed in good order."""
        cluster, address, port = self.key
        deadline = trio.current_time() + self.hc.timeout_s
        try:
            async with open_stream(
                address, self.hc.port or port, grpc_check.METHOD,
                authority=grpc_check.authority(self.hc, cluster),
                metadata=grpc_check.metadata(self.hc),
                connect_timeout_s=self.hc.timeout_s,
            ) as stream:  # fmt: skip
                with trio.move_on_at(deadline):
                    return await self._grpc_call(stream)
                return Result.TIMEOUT
        except GrpcError:
            # Only the connect raises here: _grpc_call takes every error of the call.
            return Result.TIMEOUT if trio.current_time() >= deadline else Result.NETWORK_FAILURE

    async def _grpc_call(self, stream: GrpcStream) -> Result:
        reply = grpc_check.CheckReply()
        try:
            await stream.send(grpc_check.encode_request(self.hc.grpc_service_name))
            await stream.close()
        except GrpcError:
            # The call ended while we were still writing (a fast answer, or an error);
            # what the host sent before that is still to be received below.
            pass
        try:
            while True:
                failed = reply.message(await stream.receive())
                if failed is not None:
                    return failed
        except GrpcError as end:  # how every call ends, OK included
            result = reply.end(end.status)
            if result is not Result.SUCCESS:
                log.debug(
                    "grpc_health_check_failed", cluster=self.key[0],
                    host=f"{self.key[1]}:{self.key[2]}", result=result.value, status=end.status,
                    message=end.message, response=reply.response,
                )  # fmt: skip
            return result

    async def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


class HealthChecker:
    """Active health checking for every cluster of the current epoch (Envoy's
    HealthChecker, one per cluster, folded into one object for the master)."""

    def __init__(
        self,
        stats: StatsStore,
        has_traffic: Callable[[str], bool],
        rng: random.Random | None = None,
    ) -> None:
        self.stats = stats
        self.has_traffic = has_traffic
        self.rng = rng or random.Random()
        self._sessions: dict[HostKey, _Session] = {}
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()
        self._checked: set[str] = set()  # clusters with health checks
        self._passed_callbacks: list[Callable[[str, str, int], None]] = []

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the sessions' nursery until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- sessions ---------------------------------------------------------------------

    async def warm(self, epoch: Epoch) -> Epoch:
        """Check ``epoch``'s hosts: start sessions for new ones, stop those gone, wait
        for each new host's first check; the epoch with their health applied."""
        assert self._nursery is not None, "HealthChecker.run is not running"
        wanted: dict[HostKey, tuple[HealthCheck, UpstreamTls | None]] = {}
        for c in epoch.clusters:
            if c.health_checks:
                for e in c.endpoints:
                    hc = for_endpoint(c.health_checks[0], e)
                    wanted[(c.name, e.address, e.port)] = (hc, transport_for(c, e))
        for key, session in list(self._sessions.items()):
            if wanted.get(key) != (session.hc, session.tls):
                session.cancel_scope.cancel()
                del self._sessions[key]
        new: list[_Session] = []
        for key, (hc, tls) in wanted.items():
            if key not in self._sessions:
                session = self._sessions[key] = _Session(self, key, hc, tls)
                self._nursery.start_soon(session.run)
                new.append(session)
        self._update_gauges(epoch)
        for session in new:
            await session.first_done.wait()
        return self.apply(epoch)

    def apply(self, epoch: Epoch) -> Epoch:
        """``epoch`` with Endpoint.healthy from the checks (hosts not checked yet are
        unhealthy, as in Envoy)."""
        clusters = tuple(self._apply_cluster(c) for c in epoch.clusters)
        if clusters == epoch.clusters:
            return epoch
        return dataclasses.replace(epoch, clusters=clusters)

    def _apply_cluster(self, c: Cluster) -> Cluster:
        if not c.health_checks:
            return c
        endpoints = tuple(self._apply_endpoint(c.name, e) for e in c.endpoints)
        return c if endpoints == c.endpoints else dataclasses.replace(c, endpoints=endpoints)

    def _apply_endpoint(self, cluster: str, e: Endpoint) -> Endpoint:
        session = self._sessions.get((cluster, e.address, e.port))
        healthy = session is not None and session.health.healthy
        return e if e.healthy == healthy else dataclasses.replace(e, healthy=healthy)

    def flags(self, cluster: str, address: str, port: int) -> tuple[str, ...] | None:
        """Envoy's active-check health flags of a host; None when it is not checked."""
        session = self._sessions.get((cluster, address, port))
        return None if session is None else session.health.flags()

    async def wait_changed(self) -> None:
        """Wait until some host's health flipped since the last call (one caller: the
        master's publisher)."""
        await self._changed.wait()
        self._changed = trio.Event()

    def add_check_passed_callback(self, callback: Callable[[str, str, int], None]) -> None:
        """Call ``callback(cluster, address, port)`` after each check that passed and
        left the host healthy."""
        self._passed_callbacks.append(callback)

    # -- bookkeeping (called by sessions) ---------------------------------------------

    def count(self, cluster: str, name: str) -> None:
        self.stats.add_counter(f"cluster.{cluster}.health_check.{name}")

    def record(self, session: _Session, result: Result) -> Transition:
        cluster, address, port = session.key
        was_healthy = session.health.healthy
        transition = session.health.record(result, session.hc)
        if result is Result.SUCCESS:
            self.count(cluster, "success")
        else:
            self.count(cluster, "failure")
            if result.is_network:
                self.count(cluster, "network_failure")
        if session.health.healthy != was_healthy:
            log.info(
                "health_check_changed", cluster=cluster, host=f"{address}:{port}",
                healthy=session.health.healthy, result=result.value,
            )  # fmt: skip
            self._set_healthy_gauge(cluster)
            self._changed.set()
        if result is Result.SUCCESS and session.health.healthy:
            for callback in self._passed_callbacks:
                callback(cluster, address, port)
        return transition

    def _set_healthy_gauge(self, cluster: str) -> None:
        healthy = sum(
            1 for (c, _a, _p), s in self._sessions.items() if c == cluster and s.health.healthy
        )
        self.stats.set_gauge(f"cluster.{cluster}.health_check.healthy", healthy)

    def _update_gauges(self, epoch: Epoch) -> None:
        checked = {c.name for c in epoch.clusters if c.health_checks}
        for name in checked:
            self.stats.ensure_counters([f"cluster.{name}.health_check.{n}" for n in _COUNTERS])
            self.stats.set_gauge(f"cluster.{name}.health_check.degraded", 0)
            self._set_healthy_gauge(name)
        for name in self._checked - checked:
            self.stats.remove_gauges(f"cluster.{name}.health_check.")
        self._checked = checked
