"""The master's xDS client: which subscriptions exist, and what a delivery does.

The bootstrap's ``dynamic_resources`` name where listeners (LDS) and clusters (CDS)
come from; the resources name where their route configurations (RDS) and endpoints
(EDS) come from; each ``layered_runtime`` rtds_layer names where its Runtime resource
(RTDS) comes from. :class:`XdsClient` keeps one :class:`~proxyd.master.xds.sources.Subscription`
per resource type and source, asks each for the names currently needed (RDS and EDS
interest follows the listeners and clusters in place and warming), and runs it over
its transport (``sources``): a watched file, REST polling, a gRPC stream per type, or
the one aggregated stream that every ``ads: {}`` source shares.

A delivery is validated and compiled in full before anything changes
(``state.XdsState.apply``). Listener updates are also checked against the sockets: a new
listener's address is bound while the update is checked, so an address in use is a
NACK, not a broken epoch. After an accepted delivery the master is told (``changed``)
and composes a new epoch template (``compose``); it publishes when the result differs.

Stats, with Envoy's names and scopes: ``cluster_manager.cds.``, ``listener_manager.lds.``,
``http.<stat_prefix>.rds.<route config>.`` (each listener using it) and
``cluster.<cluster>.`` (EDS), ``runtime.`` (RTDS, every layer), each with update_attempt, update_success,
update_rejected, update_failure, the version_text readout and the update_time gauge;
``control_plane.connected_state`` (1 while every gRPC stream is up).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from google.protobuf import any_pb2

from proxyd.config.dynamic import DynamicResources, check_source
from proxyd.config.node import Node
from proxyd.config.routes import route_targets
from proxyd.config.secrets import CompiledSecret, secret_refs, static_secrets
from proxyd.epoch import ConfigSource, Epoch, Listener, RuntimeValue
from proxyd.errors import ConfigError, ProxydError
from proxyd.log import get_logger
from proxyd.master.xds import resources as rs
from proxyd.master.xds import sources
from proxyd.master.xds.resources import Context, Resource
from proxyd.master.xds.state import Applied, XdsState
from proxyd.stats import StatsStore

log = get_logger("proxyd.master.xds")

# How long a subscription loop that failed unexpectedly rests before it starts again.
RESTART_AFTER_FAILURE_S = 1.0

# A subscription: (type URL, source kind, path, cluster).
SubKey = tuple[str, str, str, str]

# Stat scopes of the wildcard types and of RTDS, as Envoy names them.
_SCOPES = {
    rs.CLUSTER: "cluster_manager.cds",
    rs.LISTENER: "listener_manager.lds",
    rs.RUNTIME: "runtime",
}
_UPDATE_COUNTERS = ("update_attempt", "update_success", "update_rejected", "update_failure")


@dataclass(frozen=True)
class Hooks:
    """What the client needs from the master."""

    # A static cluster's address to reach a management server, or None.
    address_of: Callable[[str], tuple[str, int] | None]
    # Check and bind the sockets of these listeners (raise ProxydError to refuse).
    bind_listeners: Callable[[tuple[Listener, ...]], None]
    # An update was accepted: compose and publish.
    changed: Callable[[], None]
    # The RTDS resources changed: the runtime layers by Runtime resource name.
    runtime_changed: Callable[[dict[str, tuple[RuntimeValue, ...]]], None]


class XdsClient:
    def __init__(self, stats: StatsStore, hooks: Hooks) -> None:
        self.stats = stats
        self.hooks = hooks
        self.state = XdsState()
        self.static = Epoch(0, (), ())
        self.dynamic = DynamicResources()
        self.node = Node()
        # static_resources.secrets: what delivered listeners and clusters may name.
        self.static_secrets: Mapping[str, CompiledSecret] = {}
        self._subs: dict[SubKey, sources.Subscription] = {}
        self._ads: sources.Stream | None = None
        self._ads_scope: trio.CancelScope | None = None
        self._rethink = trio.Event()
        # Set (and replaced) at each update, accepted or not, and each new subscription.
        self._progress = trio.Event()
        self._connected: dict[int, bool] = {}
        self._nursery: trio.Nursery | None = None
        # Envoy's init order: listeners are asked for once the clusters are warm (or
        # CDS's initial_fetch_timeout passed); a latch, set once.
        self._clusters_initialized = False
        self._init_deadline = float("inf")
        # Versions by type that a hot restart's seed provided.
        self._seeded: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        return not self.dynamic.empty or any(True for _ in self._static_needs())

    def _static_needs(self) -> Any:
        for c in self.static.clusters:
            if c.eds_source is not None or secret_refs(c):
                yield c
        for lst in self.static.listeners:
            if (lst.hcm is not None and lst.hcm.rds_source is not None) or secret_refs(lst):
                yield lst

    # -- configuration ----------------------------------------------------------------

    def configure(self, static: Epoch, dynamic: DynamicResources, node: Node) -> None:
        """Take a (re)loaded bootstrap. New sources or a new node identity start the
        subscriptions afresh (what was delivered is dropped with them)."""
        if (dynamic, node) != (self.dynamic, self.node):
            for sub in list(self._subs.values()):
                self._stop(sub)
            if self._ads_scope is not None:
                self._ads_scope.cancel()
                self._ads, self._ads_scope = None, None
            if self._subs or not self.dynamic.empty:
                self.state = XdsState()
                self.hooks.runtime_changed({})
            self._subs.clear()
            self._seeded.clear()
            self._clusters_initialized = False
            cds = dynamic.cds
            timeout = cds.initial_fetch_timeout_s if cds is not None else 0.0
            self._init_deadline = trio.current_time() + timeout if timeout > 0 else float("inf")
        self.static, self.dynamic, self.node = static, dynamic, node
        for ts in self.state.types.values():
            if ts.type_url in rs.WILDCARD:
                scope = _SCOPES[ts.type_url]
                self.stats.ensure_counters([f"{scope}.{k}" for k in ts.counts])
        if dynamic.rtds:
            self.stats.ensure_counters([f"runtime.{k}" for k in _UPDATE_COUNTERS])
        self._rethink.set()

    # -- hot restart ------------------------------------------------------------------

    def export(self) -> tuple[Any, ...]:
        """What was delivered, for a hot-restart successor: ``[type_url, version,
        [resource bytes, ...]]`` per type (plain data for msgpack)."""
        return tuple(
            [ts.type_url, ts.version, [r.raw for r in ts.resources.values()]]
            for ts in self.state.types.values()
            if ts.resources
        )

    def seed(self, exported: Sequence[Any]) -> None:
        """Start from what the old master of a hot restart had (see :meth:`export`), so
        the new one serves the same dynamic config even while the management servers
        are slow or down. Subscriptions then ask with those versions and count as
        answered; whatever the servers send next replaces the seed as usual."""
        by_type = {entry[0]: entry for entry in exported}
        for type_url in rs.ORDER:
            entry = by_type.get(type_url)
            if entry is None:
                continue
            _, version, raws = entry
            anys = [any_pb2.Any(type_url=type_url, value=bytes(raw)) for raw in raws]
            check = self._check_listeners if type_url == rs.LISTENER else None
            try:
                with static_secrets(self.static_secrets):
                    applied = self.state.apply(type_url, version, anys, "the previous master", self._context(), check)  # fmt: skip
            except ConfigError as exc:
                log.warning("xds_seed_refused", type=rs.SHORT[type_url], error=str(exc))
                continue
            if applied.error:
                log.warning("xds_seed_partly_refused", type=rs.SHORT[type_url], error=applied.error)  # fmt: skip
            self._seeded[type_url] = version
        if self._seeded:
            log.info("xds_seeded", types=[rs.SHORT[t] for t in self._seeded])
        if rs.RUNTIME in self._seeded:
            self.hooks.runtime_changed(self.runtime_layers())

    def runtime_layers(self) -> dict[str, tuple[RuntimeValue, ...]]:
        """The Runtime resources delivered, by name (what the rtds layers hold)."""
        return {n: r.value for n, r in self.state.types[rs.RUNTIME].resources.items()}

    def compose(self) -> Epoch:
        """The epoch template for the static config plus what xDS delivered."""
        return self.state.compose(self.static)

    def preview(self, static: Epoch, dynamic: DynamicResources, node: Node) -> Epoch:
        """The template :meth:`configure` with these and then :meth:`compose` would make
        now, changing nothing (``proxyctl reload --dry-run``): new sources or a new node
        identity drop what was delivered, as :meth:`configure` does."""
        state = self.state
        if (dynamic, node) != (self.dynamic, self.node) and (self._subs or not self.dynamic.empty):
            state = XdsState()
        return state.preview(static)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                self._rethink = trio.Event()
                self._reconcile()
                deadline = self._init_deadline if not self._clusters_initialized else float("inf")
                with trio.move_on_at(deadline):
                    await self._rethink.wait()

    async def wait_initialized(self) -> None:
        """Until every subscription answered once and nothing warms any more (bounded
        by the caller, as Envoy's initial_fetch_timeout bounds its init)."""
        while not self._initialized():
            await self._progress.wait()

    def _initialized(self) -> bool:
        top = [(t, s) for t, s in ((rs.CLUSTER, self.dynamic.cds), (rs.LISTENER, self.dynamic.lds))]
        for type_url, source in top:
            if source is not None and _key(type_url, source) not in self._subs:
                return False  # LDS is asked for once the clusters are warm
        if not all(s.responded.is_set() for s in self._subs.values()):
            return False
        self.compose()
        clusters, listeners = self.state.warming()
        return not clusters and not listeners

    def initial_fetch_timeout_s(self) -> float:
        timeouts = [s.source.initial_fetch_timeout_s for s in self._subs.values()]
        timeouts += [x.initial_fetch_timeout_s for x in (self.dynamic.lds, self.dynamic.cds) if x]
        return max([t for t in timeouts if t > 0] or [0.0])

    # -- subscriptions ----------------------------------------------------------------

    def clusters_warm(self) -> bool:
        """Every EDS cluster (static or delivered) has its ClusterLoadAssignment."""
        endpoints = self.state.types[rs.ENDPOINT].resources
        clusters = list(self.static.clusters)
        clusters += [r.value for r in self.state.types[rs.CLUSTER].resources.values()]
        return all(c.eds_source is None or c.eds_service_name in endpoints for c in clusters)

    async def wait_clusters_warm(self, timeout_s: float) -> None:
        """Until :meth:`clusters_warm` (an ADS stream holds its CDS ACK until then, as
        Envoy pauses CDS while clusters warm), at most ``timeout_s``."""
        with trio.move_on_after(timeout_s if timeout_s > 0 else float("inf")):
            while not self.clusters_warm():
                await self._progress.wait()

    def _check_clusters_initialized(self) -> bool:
        if not self._clusters_initialized:
            subs = [s for s in self._subs.values() if s.type_url in (rs.CLUSTER, rs.ENDPOINT)]
            cds = self.dynamic.cds
            cds_sub = self._subs.get(_key(rs.CLUSTER, cds)) if cds is not None else None
            done = (
                (cds is None or (cds_sub is not None and cds_sub.responded.is_set()))
                and all(s.responded.is_set() for s in subs)
                and self.clusters_warm()
            )
            if done or trio.current_time() >= self._init_deadline:
                self._clusters_initialized = True
        return self._clusters_initialized

    def _wanted(self) -> dict[SubKey, tuple[ConfigSource, frozenset[str] | None]]:
        wanted: dict[SubKey, tuple[ConfigSource, frozenset[str] | None]] = {}
        if self.dynamic.cds is not None:
            wanted[_key(rs.CLUSTER, self.dynamic.cds)] = (self.dynamic.cds, None)
        if self.dynamic.lds is not None and self._check_clusters_initialized():
            wanted[_key(rs.LISTENER, self.dynamic.lds)] = (self.dynamic.lds, None)
        for name, source in self.dynamic.rtds:
            key = _key(rs.RUNTIME, source)
            _, have = wanted.get(key, (source, frozenset()))
            wanted[key] = (source, frozenset(have or ()) | {name})
        for type_url in (rs.SECRET, rs.ENDPOINT, rs.ROUTE):
            for source, names in self.state.wanted(self.static, type_url).items():
                key = _key(type_url, source)
                _, have = wanted.get(key, (source, frozenset()))
                wanted[key] = (source, frozenset(have or ()) | names)
        return wanted

    def _reconcile(self) -> None:
        # Twice at most: new CDS/EDS subscriptions may complete the clusters' init at
        # once (seeded by a hot restart), which lets the LDS subscription start.
        keys = set(self._subs)
        self._reconcile_once()
        if set(self._subs) != keys:
            self._reconcile_once()

    def _reconcile_once(self) -> None:
        wanted = self._wanted()
        for key, unwanted in list(self._subs.items()):
            if key not in wanted:
                self._stop(unwanted)
                del self._subs[key]
        for key, (source, names) in wanted.items():
            sub = self._subs.get(key)
            if sub is not None:
                sub.set_names(names)
                continue
            sub = sources.Subscription(self, key[0], source, names)
            if key[0] in self._seeded:  # a hot restart handed the resources over
                sub.version = self._seeded[key[0]]
                sub.responded.set()
            self._subs[key] = sub
            self._start(sub)
            self._signal_progress()

    def _start(self, sub: sources.Subscription) -> None:
        assert self._nursery is not None
        kind = sub.source.kind
        if kind == "ads":
            if self._ads is None:
                assert self.dynamic.ads is not None  # the loader checked
                self._ads = sources.Stream(self, self.dynamic.ads, sources.ADS_METHOD)
                self._ads_scope = trio.CancelScope()
                self._nursery.start_soon(self._run_in, self._ads_scope, self._ads.run)
            self._ads.add(sub)
            return
        if kind == "path":
            runner: Any = sources.run_file
        elif kind == "rest":
            runner = sources.run_rest
        else:
            stream = sources.Stream(self, sub.source, sources.GRPC_METHODS[sub.type_url])
            stream.add(sub)
            self._nursery.start_soon(self._run_in, sub.cancel_scope, stream.run)
            return
        self._nursery.start_soon(self._run_in, sub.cancel_scope, runner, sub)

    @staticmethod
    async def _run_in(scope: trio.CancelScope, fn: Any, *args: Any) -> None:
        """Run a subscription's loop; a bug in it is logged and the loop restarted, never
        allowed to stop the master."""
        with scope:
            while True:
                try:
                    await fn(*args)
                except Exception:
                    log.exception("xds_subscription_failed")
                    await trio.sleep(RESTART_AFTER_FAILURE_S)

    def _stop(self, sub: sources.Subscription) -> None:
        sub.cancel_scope.cancel()
        if self._ads is not None and sub.source.kind == "ads":
            self._ads.remove(sub)

    # -- deliveries -------------------------------------------------------------------

    def deliver(
        self, sub: sources.Subscription, version: str, resources: list[Any], origin: str
    ) -> str:
        """Apply one response for ``sub``; "" when accepted, else the NACK reason."""
        type_url = sub.type_url
        sub.responded.set()
        if type_url == rs.RUNTIME:
            resources, refusal = _runtime_resources(sub, resources)
            if refusal:
                self.unreadable(sub, version, refusal, origin)
                return refusal
            if not resources:  # none it asked for: Envoy's mux calls no layer
                return ""
        if type_url == rs.SECRET:
            refusal = _secret_refusal(sub, resources)
            if refusal:
                self.unreadable(sub, version, refusal, origin)
                return refusal
        check = self._check_listeners if type_url == rs.LISTENER else None
        if type_url == rs.CLUSTER:
            check = self._check_clusters
        applied: Applied | None = None
        try:
            with static_secrets(self.static_secrets):
                applied = self.state.apply(type_url, version, resources, origin, self._context(), check)  # fmt: skip
            error = applied.error
        except ConfigError as exc:  # the set as a whole (LDS, CDS: scoped by type)
            error = str(exc)
        scopes = self._scopes(type_url, applied.names if applied is not None else ())
        if applied is not None and applied.changed:
            if type_url == rs.RUNTIME:
                self.hooks.runtime_changed(self.runtime_layers())
            else:
                self.hooks.changed()
            self._rethink.set()
        if error:
            self._count(scopes, "update_rejected", "update_attempt")
            log.error(
                "xds_update_rejected", type=sub.short, version=version, origin=origin,
                error=error, changed=0 if applied is None else len(applied.changed),
            )  # fmt: skip
            self._signal_progress()
            return error
        assert applied is not None
        changed = applied.changed
        self._count(scopes, "update_success", "update_attempt")
        for scope in scopes:
            self.stats.set_text(f"{scope}.version_text", version)
            self.stats.set_gauge(f"{scope}.update_time", int(time.time() * 1000))
        log.info(
            "xds_update_accepted", type=sub.short, version=version, origin=origin,
            resources=len(resources), changed=len(changed),
        )  # fmt: skip
        self._rethink.set()
        self._signal_progress()
        return ""

    def unreadable(
        self, sub: sources.Subscription, version: str, details: str, origin: str = ""
    ) -> None:
        """A file or REST body that could not be read at all (or an RTDS update of the
        wrong shape): reported, nothing changes."""
        self.state.reject_unreadable(sub.type_url, version, details)
        self._count(
            self._scopes(sub.type_url, sub.names or ()), "update_rejected", "update_attempt"
        )
        log.error("xds_update_rejected", type=sub.short, version=version, origin=origin, error=details)  # fmt: skip
        sub.responded.set()
        self._signal_progress()

    def _signal_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def fetch_failed(self, sub: sources.Subscription, details: str) -> None:
        self._count(self._scopes(sub.type_url, sub.names or ()), "update_failure", "update_attempt")
        log.warning("xds_fetch_failed", type=sub.short, error=details)

    def connected(self, stream: sources.Stream, up: bool) -> None:
        self._connected[id(stream)] = up
        self.stats.set_gauge("control_plane.connected_state", int(all(self._connected.values())))

    def address_of(self, cluster: str) -> tuple[str, int] | None:
        return self.hooks.address_of(cluster)

    def watched_files(self, sub: sources.Subscription) -> list[str]:
        """Besides a file source itself, the files its accepted secrets were read from:
        a certificate replaced on disk is read again (the secret is delivered anew)."""
        if sub.type_url != rs.SECRET:
            return []
        secrets = self.state.types[rs.SECRET].resources
        return [f for n in sorted(sub.names or ()) if n in secrets for f in secrets[n].value.files]

    def _count(self, scopes: list[str], *names: str) -> None:
        for scope in scopes:
            for name in names:
                self.stats.add_counter(f"{scope}.{name}")

    def _scopes(self, type_url: str, names: Iterable[str]) -> list[str]:
        """The stat scopes an update of ``type_url`` counts in: LDS and CDS have one;
        RDS and EDS one per resource name (those a response held, or those asked for
        when nothing could be read)."""
        if type_url in _SCOPES:
            return [_SCOPES[type_url]]
        wanted = set(names)
        out: list[str] = []
        if type_url == rs.SECRET:
            return [f"sds.{n}" for n in sorted(wanted)]
        if type_url == rs.ROUTE:
            for lst in self.state.listeners_in_use(self.static):
                if lst.hcm is not None and lst.hcm.rds_route_config_name in wanted:
                    out.append(f"http.{lst.hcm.stat_prefix}.rds.{lst.hcm.rds_route_config_name}")
        else:
            for c in self.state.clusters_in_use(self.static):
                if c.eds_source is not None and c.eds_service_name in wanted:
                    out.append(f"cluster.{c.name}")
        return sorted(set(out))

    def _context(self) -> Context:
        clusters = list(self.static.clusters)
        clusters += [r.value for r in self.state.types[rs.CLUSTER].resources.values()]

        def check(source: ConfigSource, path: str, file: str) -> None:
            static = {c.name: c for c in self.static.clusters}
            check_source(source, static, self.dynamic, path, file)

        return Context(route_targets=route_targets(clusters), check_source=check)

    def _check_clusters(self, file: str, new: dict[str, Resource]) -> None:
        static = {c.name for c in self.static.clusters}
        for name in new:
            if name in static:
                raise ConfigError(
                    file,
                    f"cluster '{name}'",
                    "a static cluster of that name exists; CDS cannot replace it",
                )

    def _check_listeners(self, file: str, new: dict[str, Resource]) -> None:
        static = {lst.name: lst for lst in self.static.listeners}
        taken = {(lst.address, lst.port, lst.pipe): lst.name for lst in self.static.listeners}
        for name, res in new.items():
            lst: Listener = res.value
            if name in static:
                raise ConfigError(
                    file,
                    f"listener '{name}'",
                    "a static listener of that name exists; LDS cannot replace it",
                )
            key = (lst.address, lst.port, lst.pipe)
            if (lst.port != 0 or lst.pipe) and key in taken:
                raise ConfigError(
                    file,
                    f"listener '{name}'",
                    f"duplicate address '{lst.address_text}' (listener '{taken[key]}' has it)",
                )
            taken[key] = name
        try:
            self.hooks.bind_listeners(tuple(r.value for r in new.values()))
        except ProxydError as exc:
            raise ConfigError(file, "", str(exc)) from exc


def _key(type_url: str, source: ConfigSource) -> SubKey:
    return (type_url, source.kind, source.path, source.cluster)


def _runtime_resources(sub: sources.Subscription, resources: list[Any]) -> tuple[list[Any], str]:
    """The Runtime resources of one RTDS response that reach a layer, or why the
    response is refused, as Envoy's ``RtdsSubscription`` and its transports decide.

    A file or REST response goes to the layer whole: it must hold exactly one resource,
    named as the layer asks. On a gRPC stream (per-type or ADS) Envoy's mux hands each
    layer only the resources it asked for by name and ignores the rest."""
    names = sub.names or frozenset()
    if sub.source.kind in ("path", "rest"):
        if len(resources) != 1:
            return [], (
                f"Unexpected RTDS resource length, number of added resources {len(resources)}, "
                "number of removed resources 0"
            )
        name = _runtime_name(resources[0])
        if name is not None and name not in names:
            expecting = ", ".join(sorted(names))
            return [], f"Unexpected RTDS runtime (expecting {expecting}): {name}"
        return resources, ""
    return [r for r in resources if _runtime_name(r) in (None, *names)], ""


def _secret_refusal(sub: sources.Subscription, resources: list[Any]) -> str:
    """Why a file's SDS response is refused, as Envoy's SdsApi says ("" when it holds
    exactly one secret, named as one asked)."""
    if len(resources) != 1:
        return f"Unexpected SDS secrets length: {len(resources)}"
    try:
        message = rs.decode(rs.SECRET, resources[0], "", "")
    except ConfigError:
        return ""  # the update refuses it, naming the resource
    name = rs.name_of(rs.SECRET, message)
    names = sub.names or frozenset()
    if name not in names:
        return f"Unexpected SDS secret (expecting {', '.join(sorted(names))}): {name}"
    return ""


def _runtime_name(any_msg: Any) -> str | None:
    """A Runtime resource's name; None when it is not one (the update refuses it)."""
    try:
        message = rs.decode(rs.RUNTIME, any_msg, "", "")
    except ConfigError:
        return None
    return rs.name_of(rs.RUNTIME, message)
