"""The worker process: the IPC conversation with the master, epochs, accept loops, drain.

Conversation (all messages from :mod:`proxyd.ipc`):

* ``Hello`` (with one listening socket per listener name), then ``EpochMsg``; the worker
  compiles the epoch, starts accepting and answers ``Ready``. A bad Hello (wrong wire
  version, wrong worker id, missing fds) or an epoch it cannot compile at start exits
  with :data:`EXIT_CANNOT_START` (after ``EpochRefused`` with the reason, for an epoch),
  so the master stops instead of respawning in a loop.
* later: ``AddSockets`` (+ fds) before the ``EpochMsg`` that uses them; each applied
  epoch is answered with ``Ready``, each refused one with ``EpochRefused(reason)``, and
  the running one stays. An epoch is checked (:mod:`proxyd.protocol.epoch_check`, as
  the master checked it), compiled, and only then are its new access-log files opened;
  one that cannot be opened refuses the epoch.
* ``Drain(deadline_s)``: stop accepting, close idle keep-alive connections, let requests
  in flight finish (their responses carry ``connection: close``), exit 0 by the deadline.
* ``Stop``, or end of the channel (the master is gone): exit now.

About once a second the worker sends ``StatsReport`` (counter deltas, gauges), which is
also its heartbeat, and ``HostOutcomes`` for outlier detection when there are any
(:mod:`proxyd.worker.outcomes`), flushes access logs and sweeps idle upstream
connections.

A catch-all handler here (accepting, housekeeping) counts what it caught
and logs the first of each kind (:func:`proxyd.worker.stats.note_unexpected`) and the
worker goes on.
"""

from __future__ import annotations

import gc
import os
import socket
import time
from collections.abc import Awaitable, Callable

import psutil
import structlog
import trio

from proxyd import ipc, pipes
from proxyd.cx_limit import SharedConnectionCount
from proxyd.epoch import Epoch
from proxyd.errors import ProxydError
from proxyd.protocol.epoch_check import EpochChecker
from proxyd.protocol.histogram import record
from proxyd.protocol.http1 import RequestHeadParser
from proxyd.protocol.http1_headers import RequestIdGenerator
from proxyd.worker import accesslog_plan, h2_pool, io, scheduling
from proxyd.worker.accesslog import AccessLogWriter, open_writers, prepare_writers
from proxyd.worker.buffers import BufferPool
from proxyd.worker.deadlines import DeadlineKind, Timers
from proxyd.worker.downstream import DownstreamConnection
from proxyd.worker.overload import COUNTED, FREE, REFUSED, WorkerOverload
from proxyd.worker.peek import peek_pick
from proxyd.worker.plan import CompiledEpoch, ListenerPlan
from proxyd.worker.stats import ListenerStats, StatsStore, note_unexpected
from proxyd.worker.tcp_proxy import TcpConnection, TcpListenerPlan, buffer_pool
from proxyd.worker.upstream import ClusterState

log = structlog.get_logger()

EXIT_OK = 0
EXIT_CANNOT_START = 3
REPORT_INTERVAL_S = 1.0
ACCEPT_BATCH = 64
# Failing outcomes recorded within this window go to the master in one message.
FAILURE_BATCH_S = 0.005


def local_address() -> str:
    """The host's first non-loopback IPv4 address (Envoy's local address for XFF)."""
    try:
        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family == socket.AF_INET and not a.address.startswith("127."):
                    return a.address
    except OSError:
        pass  # no interface list: loopback below, as Envoy falls back to
    return "127.0.0.1"


class CannotStart(Exception):
    pass


class EpochNotApplied(Exception):
    """The worker refused an epoch; the message is the reason the master is told."""


class Worker:
    def __init__(
        self,
        channel: ipc.Channel,
        worker_id: int,
        cx_counts: SharedConnectionCount | None = None,
    ) -> None:
        self.channel = channel
        self.worker_id = worker_id
        self.stats = StatsStore()
        # The global connection limit and the overload manager's actions at accept.
        self.overload = WorkerOverload(cx_counts, self.stats)
        self.listen_socks: dict[str, socket.socket] = {}
        self.accepting: dict[str, trio.CancelScope] = {}
        self.plans: dict[str, ListenerPlan] = {}
        # TCP proxy listeners' plans (proxyd.worker.tcp_proxy): a listener has a plan in
        # one of the two.
        self.tcp_plans: dict[str, TcpListenerPlan] = {}
        self.compiled: CompiledEpoch | None = None
        self.checker = EpochChecker()
        self.writers: dict[str, AccessLogWriter] = {}
        self.connections: set[DownstreamConnection | TcpConnection] = set()
        # Responses say "connection: close" (downstream.wants_close) while this is set:
        # the worker drains, or the overload manager disabled HTTP keep-alive.
        self.draining = False
        self.drain_started = False
        self.ids = RequestIdGenerator()
        self.local_address = local_address()
        self.exit_code = EXIT_OK
        # Every deadline of the request path, fired by one task (no periodic scan).
        self.timers = Timers()
        # Receive buffers, taken by a connection while bytes arrive (HTTP; the TCP
        # proxy's are larger).
        self.buffers = BufferPool()
        self.tcp_buffers = buffer_pool()
        # Request heads are parsed whole and at once: one parser serves every connection.
        self.head_parser = RequestHeadParser()
        self._failures_scheduled = False
        self._all_closed: trio.Event | None = None
        self._nursery: trio.Nursery | None = None

    # -- start --------------------------------------------------------------------------

    async def run(self) -> int:
        # trio's run loop tests its instruments three times a task step: in a dict.
        scheduling.use_dict_instruments()
        try:
            epoch = await self._handshake()
            try:
                self._apply(epoch)
            except EpochNotApplied as exc:
                await self._send_refused(epoch, str(exc))
                raise CannotStart(f"epoch {epoch.number} refused: {exc}") from None
        except CannotStart as exc:
            log.error("worker cannot start", worker_id=self.worker_id, reason=str(exc))
            return EXIT_CANNOT_START
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._start_accepting()
                await self._send_ready()
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._heartbeat)
                nursery.start_soon(accesslog_plan.PERIODIC.run)
                nursery.start_soon(h2_pool.READERS.run)  # upstream HTTP/2 readers
                nursery.start_soon(self.timers.run)
                self.stats.outcomes.on_failure = self._failure_recorded
                await self._control_loop()
                nursery.cancel_scope.cancel()
            await self._final_report()
        finally:
            self._shutdown()
        return self.exit_code

    async def _final_report(self) -> None:
        """The counts since the last tick, so a drained worker's requests are not lost."""
        counters, gauges = self.stats.report()
        with trio.move_on_after(1.0):
            try:
                await self.channel.send(
                    ipc.StatsReport(
                        self.worker_id, counters, gauges, self.stats.report_histograms()
                    )
                )
                await self._send_outcomes()
            except OSError:
                pass  # the master is gone: nobody is left to count them

    async def _handshake(self):
        try:
            hello, fds = await self.channel.receive()
        except (EOFError, OSError, ipc.IpcError) as exc:
            raise CannotStart(f"no Hello: {exc}") from None
        if not isinstance(hello, ipc.Hello):
            raise CannotStart(f"expected Hello, got {type(hello).__name__}")
        if hello.wire_version != ipc.WIRE_VERSION:
            raise CannotStart(f"wire version {hello.wire_version}, expected {ipc.WIRE_VERSION}")
        if hello.worker_id != self.worker_id:
            raise CannotStart(f"Hello for worker {hello.worker_id}, this is {self.worker_id}")
        if len(fds) != len(hello.listener_names):
            raise CannotStart("listener names and sockets do not match")
        self._add_sockets(hello.listener_names, fds)
        try:
            msg, _ = await self.channel.receive()
        except (EOFError, OSError, ipc.IpcError) as exc:
            raise CannotStart(f"no epoch: {exc}") from None
        if not isinstance(msg, ipc.EpochMsg):
            raise CannotStart(f"expected EpochMsg, got {type(msg).__name__}")
        return msg.epoch

    def _add_sockets(self, names: tuple[str, ...], fds: list[int]) -> None:
        for name, fd in zip(names, fds, strict=True):
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            old = self.listen_socks.pop(name, None)
            if old is not None:
                self._stop_listener(name, old)
            self.listen_socks[name] = sock

    # -- epochs -------------------------------------------------------------------------

    def _apply(self, epoch: Epoch) -> None:
        """Check and compile ``epoch``, open its new access-log files and put it in
        place. When any step fails, raise :class:`EpochNotApplied` with the reason:
        nothing was opened or closed and the running epoch stays."""
        paths = {key for lst in epoch.listeners for key in lst.access_log_keys}
        old_clusters = self.compiled.clusters if self.compiled is not None else {}
        try:
            self.checker.check(epoch)
            writers = prepare_writers(self.writers, paths)  # opens nothing
            compiled = CompiledEpoch(
                epoch, old_clusters, self.stats, writers, self.local_address, self.ids,
                self.plans, self.tcp_plans,
            )  # fmt: skip
            open_writers(self.writers, writers)  # only now: the epoch compiled
        except Exception as exc:
            if not isinstance(exc, ProxydError):  # the checker passed it: a bug
                note_unexpected(self.stats, exc, "epoch compile")
            # A cluster compiled for the refused epoch took over its circuit breaker
            # gauges; the running epoch's cluster reports them again.
            for cluster in old_clusters.values():
                cluster.stats.breakers = cluster
            reason = str(exc) if isinstance(exc, ProxydError) else f"compile failed: {exc!r}"
            raise EpochNotApplied(reason) from exc
        self.writers = writers
        self.compiled = compiled
        self.overload.apply_epoch(epoch)
        old_plans: dict[str, ListenerPlan | TcpListenerPlan] = {**self.plans, **self.tcp_plans}
        self.plans, self.tcp_plans = compiled.plans, compiled.tcp_plans
        compiled.retire_replaced(old_clusters)
        self._close_on_health_failure(compiled)
        for name, old in old_plans.items():
            new = self.plans.get(name) or self.tcp_plans.get(name)
            if (new is None or new.generation is not old.generation) and self._nursery is not None:
                self._nursery.start_soon(
                    self._drain_old_connections, name, old.generation, epoch.drain_time_s
                )
        # The compiled epoch (route tables, plans, balancers: many objects on a large
        # config) lives until the next one: out of the collector's reach, so that its
        # full collections do not walk it under traffic. The previous epoch's cycles are
        # collected first (its objects were frozen with it).
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        log.debug("epoch applied", worker_id=self.worker_id, epoch=epoch.number)

    def _close_on_health_failure(self, compiled: CompiledEpoch) -> None:
        """close_connections_on_host_health_failure: TCP proxy connections to a host that
        active health checking now finds unhealthy are closed."""
        clusters = compiled.clusters
        for conn in list(self.connections):
            if not isinstance(conn, TcpConnection) or conn.host_label is None:
                continue
            cluster = clusters.get(conn.cluster_name or "")
            if cluster is None or not cluster.cluster.close_on_health_failure:
                continue
            for host in cluster.hosts:
                if host.label == conn.host_label:
                    if not host.healthy:
                        conn.close_for_health()
                    break

    async def _send_refused(self, epoch: Epoch, reason: str) -> None:
        """Tell the master (which logs it) that ``epoch`` was refused, and why."""
        log.debug("epoch refused", worker_id=self.worker_id, epoch=epoch.number, reason=reason)
        msg = ipc.EpochRefused(self.worker_id, os.getpid(), epoch.number, reason)
        try:
            await self.channel.send(msg)
        except OSError as exc:  # the master is gone; the log is all that is left
            log.error(
                "epoch refused; the master cannot be told", epoch=epoch.number,
                reason=reason, error=str(exc),
            )  # fmt: skip

    def _start_accepting(self) -> None:
        nursery = self._nursery
        assert nursery is not None
        if self.drain_started:
            return
        for name in list(self.accepting):
            if name not in self.plans and name not in self.tcp_plans:
                self._stop_listener(name, self.listen_socks.pop(name, None))
        for name, sock in self.listen_socks.items():
            if (name in self.plans or name in self.tcp_plans) and name not in self.accepting:
                scope = trio.CancelScope()
                self.accepting[name] = scope
                nursery.start_soon(self._accept_loop, name, sock, scope)

    def _stop_listener(self, name: str, sock: socket.socket | None) -> None:
        scope = self.accepting.pop(name, None)
        if scope is not None:
            scope.cancel()
        if sock is not None:
            io.close(sock)

    async def _send_peeked(self, msg: ipc.PeekPicks) -> None:
        """proxyctl explain: the host each named cluster would pick next (nothing is
        taken: proxyd.worker.peek)."""
        compiled = self.compiled
        picks: dict[str, str] = {}
        if compiled is not None:
            for name in msg.clusters:
                cluster = compiled.clusters.get(name)
                if cluster is not None:
                    host = peek_pick(cluster)
                    picks[name] = host.label if host is not None else ""
        epoch = compiled.epoch.number if compiled is not None else 0
        await self.channel.send(ipc.PicksPeeked(self.worker_id, msg.token, epoch, picks))

    async def _send_ready(self) -> None:
        assert self.compiled is not None
        await self.channel.send(ipc.Ready(self.worker_id, os.getpid(), self.compiled.epoch.number))

    # -- accepting ----------------------------------------------------------------------

    async def _accept_loop(self, name: str, lsock: socket.socket, scope: trio.CancelScope) -> None:
        nursery = self._nursery
        assert nursery is not None
        overload = self.overload
        # A pipe listener: Envoy names both ends of an accepted Unix socket by the
        # listener's path (the client's own name is empty).
        pipe = pipes.text(lsock.getsockname()) if lsock.family == socket.AF_UNIX else None
        with scope:
            batch = 0
            # connections_accepted_per_socket_event: accepted since the last wait, and
            # the listener's stats (from the last plan seen).
            accepted = 0
            lstats: ListenerStats | None = None
            while True:
                if overload.stop_accepting:  # connections wait in the backlog meanwhile
                    await overload.wait_accepting()
                try:
                    sock, peer = lsock.accept()
                except BlockingIOError:
                    batch = 0
                    if accepted and lstats is not None:
                        record(lstats.h_accepted, accepted)
                    accepted = 0
                    await io.wait_readable(lsock)
                    continue
                except OSError as exc:
                    # EMFILE/ENFILE/ENOBUFS: out of descriptors or memory; back off a
                    # little instead of spinning, and keep serving what is open.
                    log.warning("accept failed", listener=name, error=str(exc))
                    await trio.sleep(0.05)
                    continue
                accepted += 1
                plan = self.plans.get(name)
                if plan is None:
                    tcp_plan = self.tcp_plans.get(name)
                    if tcp_plan is None:
                        sock.close()
                    else:
                        lstats = tcp_plan.listener_stats
                        self._accept_tcp(tcp_plan, sock, peer, pipe)
                    continue
                lstats = plan.listener_stats
                verdict = overload.admit(plan) if overload.checks else FREE
                if verdict == REFUSED:
                    io.close(sock)  # closed at accept, as Envoy does
                    continue
                sock.setblocking(False)
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass  # not TCP (a unix listener): no Nagle to turn off
                try:
                    if pipe is None:
                        conn = DownstreamConnection(self, name, sock, peer)
                    else:
                        conn = DownstreamConnection(self, name, sock, (pipe, 0))
                        conn.remote = conn.remote_ip = conn.local = pipe
                except Exception as exc:  # a bug: this connection only, never the worker
                    note_unexpected(self.stats, exc, "accept")
                    io.close(sock)
                    if verdict == COUNTED:
                        overload.give()
                    continue
                # Counted as open now, not when its task first runs: a drain that starts
                # in between must wait for it (its request gets an answer with
                # "connection: close"), not end the worker under it.
                self.connections.add(conn)
                # serve() counts and logs whatever escapes a request (note_unexpected)
                # and ends only its own connection.
                if verdict == COUNTED:
                    nursery.start_soon(self._serve_counted, conn, plan)
                else:
                    nursery.start_soon(conn.serve, plan)
                batch += 1
                if batch >= ACCEPT_BATCH:
                    batch = 0
                    await io.checkpoint()

    def spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run ``task`` beside the connections (a request's shadow, worker/mirror.py):
        nobody waits for it, the worker's stop cancels it, and an exception escaping it
        is counted and logged like one escaping a request, never ending the worker."""
        if self._nursery is not None:
            self._nursery.start_soon(self._guarded, task)

    async def _guarded(self, task: Callable[[], Awaitable[None]]) -> None:
        try:
            await task()
        except Exception as exc:  # noqa: BLE001 - a bug must not end the worker
            note_unexpected(self.stats, exc, "background task")

    async def _serve_counted(self, conn: DownstreamConnection, plan: ListenerPlan) -> None:
        """A connection the global limit counts: its slot is given back when it ends."""
        try:
            await conn.serve(plan)
        finally:
            self.overload.give()

    def _accept_tcp(
        self, plan: TcpListenerPlan, sock: socket.socket, peer: tuple, pipe: str | None
    ) -> None:
        """A connection of a TCP proxy listener (proxyd.worker.tcp_proxy): the global
        limit and the overload actions as for HTTP, then its own task."""
        overload = self.overload
        verdict = overload.admit(plan) if overload.checks else FREE
        if verdict == REFUSED:
            io.close(sock)
            return
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a unix listener): no Nagle to turn off
        conn = TcpConnection(self, plan.name, sock, peer if pipe is None else (pipe, 0))
        if pipe is not None:
            conn.remote = conn.remote_ip = conn.local = pipe
        self.connections.add(conn)
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_tcp, conn, plan, verdict == COUNTED)

    async def serve_tcp_chain(self, conn: DownstreamConnection, plan: TcpListenerPlan) -> None:
        """A connection whose filter chain is a TCP proxy, on a listener whose chains are
        chosen per connection (and whose own plan is HTTP): served by the TCP proxy from
        here, in the task that chose."""
        tcp = TcpConnection(self, plan.key, conn.sock, (conn.remote_ip, 0))
        tcp.remote, tcp.local = conn.remote, conn.local
        self.connections.add(tcp)
        await tcp.serve(plan)

    async def _serve_tcp(self, conn: TcpConnection, plan: TcpListenerPlan, counted: bool) -> None:
        try:
            await conn.serve(plan)
        finally:
            if counted:
                self.overload.give()

    # -- the master's messages ----------------------------------------------------------

    async def _control_loop(self) -> None:
        while True:
            try:
                msg, fds = await self.channel.receive()
            except (EOFError, OSError):
                log.info("channel to the master closed; exiting", worker_id=self.worker_id)
                return
            except ipc.IpcError as exc:
                log.error("bad message from the master; exiting", error=str(exc))
                self.exit_code = 1
                return
            if isinstance(msg, ipc.AddSockets):
                if len(fds) != len(msg.listener_names):
                    log.error("AddSockets without its sockets", names=msg.listener_names)
                    for fd in fds:
                        socket.socket(fileno=fd).close()
                    continue
                self._add_sockets(msg.listener_names, fds)
            elif isinstance(msg, ipc.EpochMsg):
                try:
                    self._apply(msg.epoch)
                except EpochNotApplied as exc:  # the running epoch stays
                    await self._send_refused(msg.epoch, str(exc))
                    continue
                self._start_accepting()
                await self._send_ready()
            elif isinstance(msg, ipc.Drain):
                if not self.drain_started:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._drain, msg.deadline_s)
            elif isinstance(msg, ipc.OverloadActions):
                self.overload.apply_actions(msg)
                self.draining = self.drain_started or self.overload.disable_keepalive
            elif isinstance(msg, ipc.PeekPicks):
                await self._send_peeked(msg)
            elif isinstance(msg, ipc.Stop):
                return
            else:
                log.warning("unexpected message from the master", type=type(msg).__name__)

    async def _drain(self, deadline_s: float) -> None:
        self.draining = self.drain_started = True
        self._all_closed = trio.Event()
        for name in list(self.accepting):
            self._stop_listener(name, self.listen_socks.pop(name, None))
        # HTTP/2 connections are told at once (GOAWAY); their streams finish.
        for conn in list(self.connections):
            session = getattr(conn, "h2", None)
            if session is not None:
                session.drain()
        # A busy connection ends after its response, which carries "connection: close".
        # An idle keep-alive connection is left open: closing it now would race a
        # request the client may already be sending. Its next request is answered with
        # "connection: close"; if none comes, it is closed when the drain window ends
        # (or its idle timeout fires first), as Envoy does.
        with trio.move_on_after(max(deadline_s, 0.0)):
            if self.connections:
                await self._all_closed.wait()
        self.exit_code = EXIT_OK
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    async def _drain_old_connections(self, name: str, generation: object, after_s: float) -> None:
        """An epoch updated or removed listener ``name``: its connections accepted under
        the old config answer with "connection: close" meanwhile (downstream); when
        the drain time is over, those still idle are closed, as Envoy closes a drained
        listener's connections."""
        await trio.sleep(max(after_s, 0.0))
        for conn in list(self.connections):
            if conn.listener_name == name and conn.generation is generation:
                session = getattr(conn, "h2", None)
                if session is not None:
                    session.drain()  # HTTP/2: GOAWAY; its streams finish
                elif conn.idle:
                    conn.set_deadline(DeadlineKind.DRAIN, 0.0)  # closes it quietly

    def connection_closed(self) -> None:
        if self._all_closed is not None and not self.connections:
            self._all_closed.set()

    # -- housekeeping -------------------------------------------------------------------

    def _failure_recorded(self) -> None:
        """A failing outcome was recorded: send the outcomes to the master shortly
        (a few milliseconds, so failures in a burst travel together)."""
        if not self._failures_scheduled and self._nursery is not None:
            self._failures_scheduled = True
            self._nursery.start_soon(self._send_failures)

    async def _send_failures(self) -> None:
        """Outcomes with a failure in them go to the master now (outlier detection)."""
        await trio.sleep(FAILURE_BATCH_S)
        self._failures_scheduled = False
        self.stats.outcomes.failures_pending = False
        try:
            await self._send_outcomes()
        except OSError:
            return  # the control loop sees the closed channel and ends the worker

    async def _ticker(self) -> None:
        """Every REPORT_INTERVAL_S, changed or not, a StatsReport: the master takes it
        as the heartbeat. The next tick is set from the last one, so the time spent
        sending, flushing and sweeping does not stretch the interval."""
        next_tick = trio.current_time()
        while True:
            next_tick = max(next_tick + REPORT_INTERVAL_S, trio.current_time())
            await trio.sleep_until(next_tick)
            counters, gauges = self.stats.report()
            try:
                await self.channel.send(
                    ipc.StatsReport(
                        self.worker_id, counters, gauges, self.stats.report_histograms()
                    )
                )
                await self._send_outcomes()
            except OSError:
                return  # the control loop sees the closed channel and ends the worker
            try:
                for writer in self.writers.values():
                    writer.flush()
                if self.compiled is not None:
                    now = time.monotonic()
                    for cluster in self.compiled.clusters.values():
                        cluster.sweep(now)
            except Exception as exc:  # a bug: the heartbeat must go on regardless
                note_unexpected(self.stats, exc, "housekeeping")

    async def _heartbeat(self) -> None:
        """A Heartbeat every half watchdog interval (Epoch.heartbeat_interval_s; the
        master's worker watchdog counts the misses): sent by this loop, so a worker
        whose loop is stuck sends none."""
        frame = ipc.encode(ipc.Heartbeat(self.worker_id))  # the same bytes every time
        while True:
            interval = self.compiled.epoch.heartbeat_interval_s if self.compiled else 0.0
            if interval <= 0:
                await trio.sleep(REPORT_INTERVAL_S)  # the StatsReport is the heartbeat
                continue
            await trio.sleep(interval)
            try:
                await self.channel.send_frame(frame)
            except OSError:
                return  # the control loop sees the closed channel and ends the worker

    async def _send_outcomes(self) -> None:
        """Per-host outcomes for outlier detection (proxyd.worker.outcomes), if any."""
        outcomes = self.stats.outcomes.report()
        if outcomes:
            await self.channel.send(ipc.HostOutcomes(self.worker_id, outcomes))

    def _shutdown(self) -> None:
        for writer in self.writers.values():
            writer.close()
        clusters: list[ClusterState] = (
            list(self.compiled.clusters.values()) if self.compiled is not None else []
        )
        for cluster in clusters:
            cluster.close_all()
        for name, sock in list(self.listen_socks.items()):
            self._stop_listener(name, sock)
        self.listen_socks.clear()
