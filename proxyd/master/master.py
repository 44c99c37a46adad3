"""The master process: config → epochs, listening sockets, workers, signals, reload.

The master never touches a request. It loads the bootstrap, binds the listening
sockets, resolves STRICT_DNS names, publishes epochs to its workers (``epochs.py``,
which first checks each the way a worker will compile it, and reverts one a worker
refused) and supervises them (``workers.py``), aggregates their stats, and serves the
admin API and the control socket. Signals arrive through ``trio.open_signal_receiver`` and go to ``handle_<name>``:

* SIGTERM: graceful stop (workers drain within ``--drain-time-s``), exit 0;
* SIGINT, SIGQUIT, a second SIGTERM: fast stop;
* SIGHUP: reload;
* SIGUSR2: hot restart (:mod:`proxyd.master.hot_restart`).

State changes go to systemd through :class:`~proxyd.master.sd_notify.Notifier`; a master
started by a hot restart (``--hot-restart-socket``) takes its sockets from the old master
and tells systemd it is the main process once it took over.

:meth:`Master.run` returns the process exit code; :attr:`Master.error` says why when it
is not 0.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from proxyd.cx_limit import CellAllocator, SharedConnectionCount
from proxyd.epoch import Epoch, Listener
from proxyd.errors import ConfigError, ProxydError
from proxyd.log import get_logger
from proxyd.master import dns
from proxyd.master.epochs import EpochPublisher, refusal_text
from proxyd.master.health.checker import HealthChecker
from proxyd.master.hot_restart import (
    HotRestartResult,
    PassedSocket,
    Predecessor,
    Successor,
    take_passed,
    take_sockets,
)
from proxyd.master.hot_restart_protocol import HotRestartError
from proxyd.master.listeners import BindError, ListenerSockets
from proxyd.master.outlier import OutlierDetector
from proxyd.master.overload import REFRESH_DELAY_STAT, OverloadManager
from proxyd.master.peeks import PickPeeks
from proxyd.master.runtime import RuntimeLoader
from proxyd.master.sd_notify import Notifier
from proxyd.master.server_stats import ServerStats
from proxyd.master.slow_start import SlowStartStamps
from proxyd.master.stats_sinks import StatsFlusher
from proxyd.master.watchdog import MainThreadWatchdog, WorkerWatchdog
from proxyd.master.worker_pool import WorkerPool
from proxyd.master.workers import WorkerSlot, WorkerSupervisor
from proxyd.master.xds.client import Hooks, XdsClient
from proxyd.protocol.epoch_check import EpochRejected
from proxyd.stats import StatsStore

INITIALIZATION_TIME_STAT = "server.initialization_time_ms"

log = get_logger("proxyd.master")


class MasterError(ProxydError):
    """The master cannot start or must stop (bad bind, a worker that cannot start)."""


@dataclass(frozen=True, slots=True)
class MasterOptions:
    config_path: str
    concurrency: int
    control_socket: str
    drain_time_s: float = 600.0
    log_level: str = "info"
    log_format: str = "json"
    argv: tuple[str, ...] = ()
    # Envoy's --parent-shutdown-time-s and --restart-epoch; where the old master waits.
    parent_shutdown_time_s: float = 900.0
    restart_epoch: int = 0
    hot_restart_socket: str = ""
    # Worker health: how long a worker may stay silent before it is replaced, and the
    # resident memory above which it is replaced gracefully (0: no limit).
    worker_heartbeat_timeout_s: float = 10.0
    worker_rss_limit_mb: int = 0
    # Envoy's --admin-address-path: where to write the admin address once bound.
    admin_address_path: str = ""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    epoch: int
    error: str = ""
    # Listener names added and removed by this reload.
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass
class _Stop:
    requested: trio.Event = field(default_factory=trio.Event)
    fast: trio.Event = field(default_factory=trio.Event)


class Master:
    # Envoy's server states (server.state gauge values in parentheses).
    LIVE, DRAINING, PRE_INITIALIZING, INITIALIZING = "LIVE", "DRAINING", "PRE_INITIALIZING", "INITIALIZING"  # fmt: skip

    def __init__(self, options: MasterOptions) -> None:
        self.options = options
        self.stats = StatsStore()
        # Made at start, as Envoy's server and overload manager make them.
        self.stats.ensure_histograms((INITIALIZATION_TIME_STAT, REFRESH_DELAY_STAT))
        self.state = self.PRE_INITIALIZING
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        self.epoch_started_at = self.started_at
        self.loaded: Any = None  # proxyd.config.LoadedConfig
        self.config_loaded_wall = time.time()
        self.epoch = Epoch(0, (), ())
        self.sockets = ListenerSockets(options.concurrency)
        self.workers = WorkerPool(self, options.concurrency)
        # proxyctl explain asks the workers which host they would pick next.
        self.peeks = PickPeeks()
        self.error = ""
        self.exit_code = 0
        self.stopping = False
        self.draining = False
        self.template = self.epoch  # the epoch template in place (config + xDS)
        self._dns = dns.DnsRefresher()
        self.health = HealthChecker(self.stats, self._has_traffic)
        self.outlier = OutlierDetector(self.stats)
        # slow_start_config: when each host entered slow start (stamped in set_epoch).
        self.slow_start = SlowStartStamps()
        # layered_runtime: merged in the master, sent in every epoch (set_epoch).
        self.runtime = RuntimeLoader(self.stats)
        # successful_active_health_check_uneject_host: a passing check ends an ejection.
        self.health.add_check_passed_callback(self.outlier.health_check_passed)
        # Publishing, checking, and what a refused epoch does (proxyd.master.epochs).
        self.epochs = EpochPublisher(self)
        self.xds = XdsClient(
            self.stats,
            Hooks(
                self._xds_address,
                self._bind_xds_listeners,
                self._on_xds_change,
                self.runtime.set_rtds,
            ),
        )
        self._xds_changed = trio.Event()
        self._static_resolved = self.epoch  # the static clusters, resolved at start
        self.xds_seed: tuple[Any, ...] = ()  # from the old master of a hot restart
        self._stop = _Stop()
        self._server_stats = ServerStats(self)
        # stats_config (tags, matcher) and the stats sinks' flush.
        self.stats_flusher = StatsFlusher(self)
        self._nursery: trio.Nursery
        self.notifier = Notifier()
        # Envoy's server.hot_restart_generation: 1, then the predecessor's + 1.
        self.generation = 1
        self.first_started_wall = self.started_wall
        self.predecessor: Predecessor | None = None
        self.successor: Successor | None = None
        self.handed_off_to = 0  # the new master's pid once this one stepped aside
        self._control: Any = None  # ControlServer
        self._admin: Any = None  # AdminServer
        # The global downstream connection count shared with the workers: a cell per
        # worker process (proxyd.cx_limit), and the overload manager's actions.
        self.cx_counts = SharedConnectionCount.create(max(64, 4 * options.concurrency + 2))
        self.cx_cells = CellAllocator(self.cx_counts)
        self.overload = OverloadManager(self)

    # -- lifecycle --------------------------------------------------------------------

    async def run(self) -> int:
        """Start everything, serve until stopped; the exit code."""
        from proxyd.master.admin.server import AdminServer
        from proxyd.master.control import ControlServer

        admin: AdminServer | None = None
        control: ControlServer | None = None
        passed: list[PassedSocket] = []

        try:
            passed = await take_sockets(self)
            self.loaded = await self._load_config()
            self.config_loaded_wall = time.time()
            self.template = self.loaded.epoch_template
            self.runtime.configure(self.loaded.runtime_layers)
            self._check_file(self.template)
            self.sockets.bind_all(self.template.listeners)
            self.xds.static_secrets = self.loaded.secrets
            self.xds.configure(self.template, self.loaded.dynamic, self.loaded.node)
            self.xds.seed(self.xds_seed)
            self.stats_flusher.configure(self.loaded.stats)
            control = self._control = ControlServer(self, self.options.control_socket)
            inherited = take_passed(passed, "control", self.options.control_socket, 0)
            if inherited:
                control.adopt(inherited[0])
            else:
                control.bind()
            if self.loaded.admin is not None:
                a = self.loaded.admin
                admin = self._admin = AdminServer(
                    self, a.address, a.port, a.access_log_path or "", a.ignore_global_conn_limit
                )
                await admin.bind(take_passed(passed, "admin", a.address, a.port))
                if self.options.admin_address_path:
                    admin.write_address(self.options.admin_address_path)
        except (
            ConfigError, BindError, MasterError, HotRestartError, EpochRejected, OSError
        ) as exc:  # fmt: skip
            if control is not None:
                control.close()
            if admin is not None:
                admin.close()
            self.sockets.close_all()
            self.error = str(exc)
            log.error("master_start_failed", error=self.error)
            if self.predecessor is not None:
                await self.predecessor.fail(self.error)
            return 1
        finally:
            for p in passed:
                for sock in p.sockets:
                    sock.close()  # passed sockets nobody took (taken ones were removed)
        assert control is not None
        self.state = self.INITIALIZING
        log.info(
            "master_starting", pid=os.getpid(), config=self.options.config_path,
            concurrency=self.options.concurrency, control_socket=self.options.control_socket,
            restart_epoch=self.options.restart_epoch, generation=self.generation,
        )  # fmt: skip
        try:
            self._static_resolved = await self._dns.resolve(self.template)
            async with trio.open_nursery() as nursery:
                self._nursery = self.epochs.nursery = nursery
                if self.predecessor is None:  # else once the old master stepped aside
                    self._serve_front(control, admin)  # the admin answers during init
                await self._start_xds()
                for name in self.sockets.close_offered("hot-restart"):
                    log.info("hot_restart_socket_unused", listener=name)
                epoch = await self._dns.resolve(self.template)
                await nursery.start(self.health.run)
                epoch = await self.health.warm(epoch)  # first checks, as Envoy warms
                epoch = self.outlier.apply(epoch)
                try:
                    self.epochs.checker.check(epoch)  # what xDS and DNS added to the template
                except EpochRejected as exc:
                    self.fatal(f"the first epoch cannot be compiled: {exc}")
                self.set_epoch(dataclasses.replace(epoch, number=1))
                nursery.start_soon(self._handle_signals)
                nursery.start_soon(self._watchdog_pings)
                nursery.start_soon(self.overload.run)
                nursery.start_soon(WorkerWatchdog(self).run)
                nursery.start_soon(MainThreadWatchdog(self).run)
                for slot in self.slots if not self.error else ():  # error: refused above
                    nursery.start_soon(WorkerSupervisor(self, slot).run)
                nursery.start_soon(self._wait_live, control, admin)
                for wait, build, reason in (
                    (self._dns_wait, self._dns_epoch, "dns"),
                    (self.health.wait_changed, self._health_epoch, "health_check"),
                    (self.outlier.wait_changed, self._outlier_epoch, "outlier_detection"),
                ):
                    nursery.start_soon(self._publish_on_change, wait, build, reason)
                nursery.start_soon(self._publish_xds)
                nursery.start_soon(self.runtime.run, self._publish_runtime)
                nursery.start_soon(self.outlier.run)
                nursery.start_soon(self.stats_flusher.run)
                await self._stop.requested.wait()
                await self._shutdown()
                if self.successor is not None:
                    await self.successor.finish()
                nursery.cancel_scope.cancel()
            if self.predecessor is not None and not self.predecessor.hs.handed_off:
                await self.predecessor.fail(self.error or "the new master stopped before taking over")  # fmt: skip
        finally:
            control.close()
            if admin is not None:
                admin.close()
            self.sockets.close_all()
            self.cx_counts.close()
        log.info("master_exited", exit_code=self.exit_code, epoch=self.epoch.number)
        return self.exit_code

    def _serve_front(self, control: Any, admin: Any) -> None:
        """Start accepting proxyctl and admin connections."""
        self._nursery.start_soon(control.serve)
        if admin is not None:
            self._nursery.start_soon(admin.serve)

    async def _load_config(self) -> Any:
        from proxyd.config import load

        return await trio.to_thread.run_sync(load, self.options.config_path)

    async def _wait_live(self, control: Any, admin: Any) -> None:
        while not all(s.epoch >= 1 for s in self.slots):
            await self.workers.wait_changed()
        if self.stopping:
            return
        mainpid = None
        if self.predecessor is not None:
            # Every worker accepts on the old master's sockets: now it may stop.
            await self.predecessor.take_over()
            control.own_file()
            self._serve_front(control, admin)
            self._nursery.start_soon(self.predecessor.serve, self, self.options.parent_shutdown_time_s)  # fmt: skip
            mainpid = os.getpid()
        if self.state == self.INITIALIZING:
            self.state = self.LIVE
            # Envoy's: from the start until the workers accept connections.
            ms = int((time.monotonic() - self.started_at) * 1000)
            self.stats.record(INITIALIZATION_TIME_STAT, ms)
            log.info("master_live", epoch=self.epoch.number, workers=[s.pid for s in self.slots])
            self.notifier.ready(self.status_line(), mainpid=mainpid)

    def status_line(self) -> str:
        """One line for systemd's STATUS=: state, epoch, workers ready."""
        ready = sum(1 for s in self.slots if s.alive and s.epoch >= 1)
        return (
            f"{self.state.lower()}: epoch {self.epoch.number}, {ready}/{len(self.slots)} "
            f"workers ready, restart epoch {self.options.restart_epoch}"
        )

    async def _watchdog_pings(self) -> None:
        """WATCHDOG=1 every WATCHDOG_USEC/2 while this master's loop runs."""
        interval = self.notifier.watchdog_s
        if interval is None:
            return
        while self.notifier.enabled:
            self.notifier.watchdog()
            await trio.sleep(interval)

    def request_stop(self, graceful: bool = True) -> None:
        """Begin a graceful stop (drain) or a fast stop; a second request escalates."""
        if not graceful or self._stop.requested.is_set():
            self._stop.fast.set()
        self._stop.requested.set()

    def fatal(self, message: str) -> None:
        """Stop with an error (exit 1): a worker that cannot start, for one."""
        if not self.error:
            self.error = message
            self.exit_code = 1
            log.error("master_fatal", error=message, epoch=self.epoch.number)
        self.request_stop(graceful=False)

    async def _shutdown(self) -> None:
        self.stopping = True
        self.draining = True
        self.state = self.DRAINING
        self.notifier.stopping(f"stopping: epoch {self.epoch.number}")
        drain_time_s = None
        if not self._stop.fast.is_set():
            log.info(
                "master_draining", drain_time_s=self.options.drain_time_s, epoch=self.epoch.number,
                reason="hot restart" if self.handed_off_to else "stop",
            )  # fmt: skip
            drain_time_s = self.options.drain_time_s
        await self.workers.stop(drain_time_s, self._stop.fast)

    # -- signals ----------------------------------------------------------------------

    async def _handle_signals(self) -> None:
        sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR2)
        with trio.open_signal_receiver(*sigs) as receiver:
            async for signum in receiver:
                name = signal.Signals(signum).name.lower()
                log.info("signal_received", signal=name.upper(), epoch=self.epoch.number)
                getattr(self, f"handle_{name}")()

    def handle_sigterm(self) -> None:
        self.request_stop(graceful=True)

    def handle_sigint(self) -> None:
        self.request_stop(graceful=False)

    def handle_sigquit(self) -> None:
        self.request_stop(graceful=False)

    def handle_sighup(self) -> None:
        self._nursery.start_soon(self.reload)

    def handle_sigusr2(self) -> None:
        self._nursery.start_soon(self.hot_restart)

    # -- hot restart ------------------------------------------------------------------

    async def hot_restart(self, config: str | None = None, timeout_s: float | None = None) -> HotRestartResult:  # fmt: skip
        """Start a new master and hand it the sockets; the outcome (this master drains
        on success, and goes on serving on failure)."""
        epoch = self.options.restart_epoch + 1
        if self.stopping:
            return HotRestartResult(False, "proxyd is stopping", 0, epoch)
        if self.state != self.LIVE:
            return HotRestartResult(False, f"proxyd is not live yet (state {self.state})", 0, epoch)
        if self.successor is not None:
            return HotRestartResult(False, "a hot restart is in progress already", 0, epoch)
        successor = self.successor = Successor(self)
        self.notifier.reloading(f"hot restart: starting restart epoch {epoch}")
        try:
            async with self.epochs.lock:  # no reload while the sockets change hands
                if timeout_s is None:
                    result = await successor.run(config or self.options.config_path)
                else:
                    result = await successor.run(config or self.options.config_path, timeout_s)
        finally:
            if not successor.hs.handed_off:
                self.successor = None
        if result.ok:
            self._nursery.start_soon(successor.serve)  # obeys Terminate until we exit
            self.stats.add_counter("server.proxyd.hot_restart_success")
            log.info("hot_restart_succeeded", new_pid=result.new_pid, restart_epoch=epoch)
        else:
            self.stats.add_counter("server.proxyd.hot_restart_failure")
            log.error("hot_restart_failed", error=result.error, restart_epoch=epoch)
            self.notifier.ready(self.status_line())
        return result

    def step_aside(self, new_pid: int) -> None:
        """The new master's workers accept on every socket: stop accepting, drain, exit.

        From here systemd hears only from the new master (its MAINPID)."""
        self.notifier.silence()
        self.handed_off_to = new_pid
        if self._control is not None:
            self._control.stop_accepting()
        if self._admin is not None:
            self._admin.stop_accepting()
        self.request_stop(graceful=True)

    def admin_sockets(self) -> list[tuple[str, int, int]]:
        return self._admin.sockets() if self._admin is not None else []

    def control_fd(self) -> int | None:
        return self._control.fileno() if self._control is not None else None

    # -- workers ----------------------------------------------------------------------

    @property
    def slots(self) -> list[WorkerSlot]:
        """Each slot's current worker."""
        return self.workers.slots

    # -- epochs -----------------------------------------------------------------------

    def set_epoch(self, epoch: Epoch) -> None:
        """``epoch`` becomes the master's (EpochPublisher.publish sends it)."""
        previous = self.epoch
        # Workers split the proxy-wide circuit breaker limits by this count.
        overload, watchdogs = self.loaded.overload, self.loaded.watchdogs
        epoch = dataclasses.replace(
            self.slow_start.stamp(epoch),
            worker_count=self.options.concurrency,
            drain_time_s=self.options.drain_time_s,
            runtime=self.runtime.values,
            global_cx_limit=overload.global_cx_limit,
            global_cx_count_all=overload.global_cx_count_all,
            heartbeat_interval_s=watchdogs.worker.loop_interval_s / 2,
        )
        self.epoch = epoch
        self.epoch_started_at = time.monotonic()
        self._server_stats.epoch_changed(previous, epoch)

    async def reload(self) -> ReloadResult:
        """Re-read the config; publish it, or keep the running epoch and say why."""
        async with self.epochs.lock:
            if self.stopping:
                return ReloadResult(False, self.epoch.number, "proxyd is stopping")
            self.notifier.reloading(f"reloading: epoch {self.epoch.number}")
            try:
                loaded = await self._load_config()
                self.check_listener_addresses(loaded.epoch_template)
                self._check_file(loaded.epoch_template)  # before anything changes
                result = await self._apply(loaded)
            except (ConfigError, BindError, MasterError, EpochRejected) as exc:
                result = ReloadResult(False, self.epoch.number, str(exc))
            except Exception as exc:  # a bug in the config compiler must not kill the master
                log.exception("reload_internal_error", epoch=self.epoch.number)
                result = ReloadResult(False, self.epoch.number, f"internal error: {exc!r}")
            self.notifier.ready(self.status_line())
        if result.ok:
            self.stats.add_counter("server.proxyd.reload_success")
            log.info(
                "reload_succeeded", epoch=result.epoch, config=self.options.config_path,
                listeners_added=list(result.added), listeners_removed=list(result.removed),
            )  # fmt: skip
        else:
            self.stats.add_counter("server.proxyd.reload_failure")
            log.error("reload_failed", epoch=result.epoch, error=result.error)
        return result

    def _check_file(self, template: Epoch) -> None:
        """Raise EpochRejected, naming the config file, if a worker could not compile
        what it configures."""
        try:
            self.epochs.checker.check(template)
        except EpochRejected as exc:
            raise EpochRejected(f"{self.options.config_path}: {exc}") from exc

    def check_listener_addresses(self, template: Epoch) -> None:
        """Raise MasterError when a bound listener of ``template`` moved (a reload
        cannot move one)."""
        for listener in template.listeners:
            if listener.name not in self.sockets or self.sockets.inherited(listener.name):
                continue  # not bound yet, or bound where systemd's socket unit says
            address, port = self.sockets.address_of(listener.name)
            old = next((x for x in self.epoch.listeners if x.name == listener.name), None)
            old_port = old.port if old is not None else port
            old_pipe = old.pipe if old is not None else listener.pipe
            if (
                listener.address != address
                or listener.port != old_port
                or listener.pipe != old_pipe
            ):
                existing = address if old_pipe else f"{address}:{old_port}"
                raise MasterError(
                    f"error updating listener '{listener.name}': it has a different address "
                    f"'{listener.address_text}' from the existing listener address '{existing}'"
                )

    async def _apply(self, loaded: Any) -> ReloadResult:
        before = (self.loaded, self.config_loaded_wall, self.xds.static, self.xds.dynamic, self.xds.node, self.runtime.state())  # fmt: skip
        added = self.sockets.bind_all(loaded.epoch_template.listeners)  # all or none
        self.xds.static_secrets = loaded.secrets
        self.xds.configure(loaded.epoch_template, loaded.dynamic, loaded.node)
        self.runtime.configure(loaded.runtime_layers)
        self.loaded = loaded
        self.config_loaded_wall = time.time()
        try:
            _, removed, refused = await self._publish_template(self.xds.compose(), reason="reload")
        except EpochRejected:
            self._restore(before)
            for name in added:
                self.sockets.close(name)  # no worker was sent them
            raise
        if refused:
            self._restore(before)  # the revert closes the sockets it does not use
            why = f"{refusal_text(refused)}; the running config stays (epoch {self.epoch.number})"
            return ReloadResult(False, self.epoch.number, why)
        self.stats_flusher.configure(loaded.stats)
        return ReloadResult(True, self.epoch.number, added=tuple(added), removed=removed)

    def _restore(self, before: tuple[Any, ...]) -> None:
        """The config in place before a reload that was refused (see _apply)."""
        self.loaded, self.config_loaded_wall, static, dynamic, node, runtime = before
        self.xds.static_secrets = self.loaded.secrets
        self.xds.configure(static, dynamic, node)
        self.runtime.restore(runtime)

    async def _publish_on_change(
        self,
        wait_changed: Callable[[], Awaitable[None]],
        build: Callable[[], Awaitable[Epoch]],
        reason: str,
    ) -> None:
        """Each time ``wait_changed()`` returns, build the next epoch and publish it when
        its clusters differ (DNS answers, health flips, outlier decisions)."""
        while True:
            await wait_changed()
            async with self.epochs.lock:
                if self.stopping:
                    return
                built = self.slow_start.stamp(await build())
                if built.clusters != self.epoch.clusters:
                    epoch = dataclasses.replace(built, number=self.epoch.number + 1)
                    try:
                        await self.epochs.publish(epoch, reason=reason)
                    except EpochRejected as exc:
                        self.epochs.rejected(reason, exc)

    async def _publish_runtime(self) -> int:
        """The runtime changed (a disk layer swap, /runtime_modify): the same epoch
        again, under a new number, with the new values (set_epoch). Its number (0:
        nothing to publish)."""
        async with self.epochs.lock:
            if self.stopping or not self.epoch.number or self.epoch.runtime == self.runtime.values:
                return 0
            epoch = dataclasses.replace(self.epoch, number=self.epoch.number + 1)
            try:
                await self.epochs.publish(epoch, reason="runtime")
            except EpochRejected as exc:
                self.epochs.rejected("runtime", exc)
                return 0
            return epoch.number

    async def publish_runtime(self) -> None:
        """Publish the runtime's values now (unless that happened already) and wait
        until every worker answered the epoch that carries them."""
        await self._publish_runtime()
        if self.epoch.number and self.epoch.runtime == self.runtime.values:
            await self.epochs.wait_answered(self.epoch.number)

    async def _dns_wait(self) -> None:
        await self._dns.wait_changed(lambda: self.template)  # per-name schedules

    async def _dns_epoch(self) -> Epoch:
        resolved = await self.health.warm(self._dns.expand(self.template))
        return self.outlier.apply(resolved)

    async def _health_epoch(self) -> Epoch:
        return self.outlier.apply(self.health.apply(self.epoch))

    async def _outlier_epoch(self) -> Epoch:
        return self.outlier.apply(self.epoch)

    # -- xDS ----------------------------------------------------------------------------

    async def _start_xds(self) -> None:
        """Start the xDS client and wait for its first answers (as Envoy's init waits,
        up to initial_fetch_timeout) before the first epoch."""
        await self._nursery.start(self.xds.run)
        if not self.xds.enabled:
            return
        timeout = self.xds.initial_fetch_timeout_s()
        with trio.move_on_after(timeout) as scope:
            await self.xds.wait_initialized()
        if scope.cancelled_caught:
            log.warning("xds_initial_fetch_timeout", timeout_s=timeout)
        self.template = self.xds.compose()
        self.sockets.bind_all(self.template.listeners)

    def _on_xds_change(self) -> None:
        self._xds_changed.set()

    async def _publish_xds(self) -> None:
        """Publish a new epoch when xDS delivered something, or a warming resource's
        initial_fetch_timeout passed."""
        while True:
            with trio.move_on_at(self.xds.state.next_timeout):
                await self._xds_changed.wait()
            self._xds_changed = trio.Event()
            async with self.epochs.lock:
                if self.stopping:
                    return
                template = self.xds.compose()
                if template == self.template:
                    continue
                try:
                    await self._publish_template(template, reason="xds")
                except EpochRejected as exc:
                    self.epochs.rejected("xds", exc)

    async def _publish_template(self, template: Epoch, reason: str) -> tuple[list[str], tuple[str, ...], list[WorkerSlot]]:  # fmt: skip
        """Resolve, health-check and publish ``template`` (EpochRejected when a worker
        would refuse it) and wait until every worker applied or refused it; close the
        sockets of listeners it dropped once every worker moved on. (listeners added,
        listeners removed, the workers that refused it: then it was reverted)"""
        added = self.sockets.bind_all(template.listeners)
        epoch = await self.health.warm(await self._dns.resolve(template))
        epoch = self.outlier.apply(epoch)
        epoch = dataclasses.replace(epoch, number=self.epoch.number + 1)
        previous, self.template = self.template, template
        try:
            await self.epochs.publish(epoch, reason=reason)
        except EpochRejected:
            self.template = previous
            for name in added:
                self.sockets.close(name)  # no worker was sent them
            raise
        refused = await self.epochs.wait_answered(epoch.number)
        if refused:
            await self.epochs.revert(epoch.number)
            return added, (), refused
        return added, self.epochs.close_unwanted(epoch.number), []

    def _xds_address(self, cluster: str) -> tuple[str, int] | None:
        """Where a management server cluster's first usable host is."""
        for epoch in (self.epoch, self._static_resolved):
            c = epoch.cluster(cluster)
            if c is not None and c.endpoints:
                e = next((e for e in c.endpoints if e.usable), c.endpoints[0])
                return e.address, e.port
        return None

    def _bind_xds_listeners(self, listeners: tuple[Listener, ...]) -> None:
        """Check that LDS listeners keep their addresses, and bind the new ones."""
        current = Epoch(0, listeners, ())
        try:
            self.check_listener_addresses(current)
            self.sockets.bind_all(listeners)
        except BindError as exc:
            raise MasterError(str(exc)) from exc

    def _has_traffic(self, cluster: str) -> bool:
        """Envoy's test for the no-traffic intervals: has the cluster ever connected?"""
        return self.stats.counter(f"cluster.{cluster}.upstream_cx_total") > 0

    # -- views for the admin API and proxyctl -----------------------------------------

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "state": self.state,
            "epoch": self.epoch.number,
            "config": os.path.abspath(self.options.config_path),
            "uptime_s": round(self.uptime_s(), 3),
            "concurrency": self.options.concurrency,
            "restart_epoch": self.options.restart_epoch,
            "hot_restart_generation": self.generation,
            "workers": [slot.info() for slot in self.slots],
            # Replaced workers still draining, and replacements not ready yet.
            "extra_workers": [w.info() for w in self.workers.extra],
        }

    def refresh_server_stats(self) -> None:
        self._server_stats.refresh()
