"""The bootstrap's overload_manager, watchdogs and cluster_manager → plain master data.

* :func:`compile_overload`: Envoy's overload manager as far as proxyd honours it. Resource
  monitors: ``envoy.resource_monitors.global_downstream_max_connections`` (the proactive
  connection limit, enforced by every worker at accept; :mod:`proxyd.cx_limit`) and
  ``envoy.resource_monitors.fixed_heap`` (pressure = resident memory of the master and
  its workers / ``max_heap_size_bytes``). Actions: :data:`SUPPORTED_ACTIONS` with
  threshold triggers; Envoy's other well-known actions are refused by name here, scaled
  triggers by the allow-list walk. The older runtime key ``overload.global_downstream_max_connections``
  (:func:`runtime_max_connections`) still sets the limit, with Envoy's warning.
* :func:`compile_watchdogs`: ``watchdogs`` (``watchdog`` is moved there by
  ``proxyd.config.deprecated``) with Envoy's defaults; the master applies the worker
  watchdog to the worker heartbeats and the main-thread one to its own loop
  (``proxyd.master.watchdog``).
* :func:`check_local_cluster`: ``cluster_manager.local_cluster_name`` must name a static
  cluster, as in Envoy.

The checks Envoy makes in code are made here with Envoy's messages ("Unknown Overload
Manager Action ...", "Duplicate resource monitor ..."); proto constraints were checked by
the allow-list walk (``proxyd.config.rules``).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from proxyd.config.proto import join, unpack
from proxyd.config.values import duration_or
from proxyd.errors import ConfigError
from proxyd.log import get_logger

log = get_logger("proxyd.config")

CONNECTIONS_MONITOR = "envoy.resource_monitors.global_downstream_max_connections"
HEAP_MONITOR = "envoy.resource_monitors.fixed_heap"
DOWNSTREAM_CONNECTIONS_TYPE = (
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
FIXED_HEAP_TYPE = "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
RUNTIME_KEY = "overload.global_downstream_max_connections"

STOP_ACCEPTING_CONNECTIONS = "envoy.overload_actions.stop_accepting_connections"
REJECT_INCOMING_CONNECTIONS = "envoy.overload_actions.reject_incoming_connections"
DISABLE_HTTP_KEEPALIVE = "envoy.overload_actions.disable_http_keepalive"
STOP_ACCEPTING_REQUESTS = "envoy.overload_actions.stop_accepting_requests"
SHRINK_HEAP = "envoy.overload_actions.shrink_heap"
SUPPORTED_ACTIONS = (
    STOP_ACCEPTING_CONNECTIONS,
    REJECT_INCOMING_CONNECTIONS,
    DISABLE_HTTP_KEEPALIVE,
    STOP_ACCEPTING_REQUESTS,
    SHRINK_HEAP,
)
# Envoy 1.40's well-known actions; a name outside these is unknown to Envoy too.
WELL_KNOWN_ACTIONS = (
    *SUPPORTED_ACTIONS,
    "envoy.overload_actions.reduce_timeouts",
    "envoy.overload_actions.reset_high_memory_stream",
)

RUNTIME_KEY_WARNING = (
    f"Usage of the deprecated runtime key {RUNTIME_KEY}, consider switching to "
    f"`{CONNECTIONS_MONITOR}` instead.This runtime key will be removed in future."
)
BOTH_LIMITS_WARNING = (
    f"Global downstream connections limits is configured via runtime key {RUNTIME_KEY} and "
    f"in {CONNECTIONS_MONITOR}. Using overload manager config."
)


@dataclass(frozen=True, slots=True)
class Trigger:
    """A threshold trigger: the action is active while ``monitor``'s pressure
    (0.0-1.0) is at or above ``threshold``."""

    monitor: str
    threshold: float


@dataclass(frozen=True, slots=True)
class OverloadAction:
    name: str
    triggers: tuple[Trigger, ...]


@dataclass(frozen=True, slots=True)
class OverloadConfig:
    # overload_manager.refresh_interval (Envoy's default 1 s).
    refresh_interval_s: float = 1.0
    # The connections monitor's max_active_downstream_connections (0: no monitor).
    max_connections: int = 0
    # The fixed_heap monitor's max_heap_size_bytes (0: no monitor).
    max_heap_bytes: int = 0
    actions: tuple[OverloadAction, ...] = ()
    # The runtime key's limit when no connections monitor is configured (-1: unset).
    runtime_max_connections: int = -1

    @property
    def global_cx_limit(self) -> int:
        """The global downstream connection limit in force; -1 for none."""
        if self.max_connections > 0:
            return self.max_connections
        return self.runtime_max_connections

    @property
    def global_cx_count_all(self) -> bool:
        """True for the runtime key: as in Envoy, every accepted connection counts
        (admin and ``ignore_global_conn_limit`` listeners too, which are not refused);
        with the monitor only the connections it allowed count."""
        return self.max_connections <= 0 and self.runtime_max_connections >= 0

    @property
    def monitors(self) -> tuple[str, ...]:
        names = []
        if self.max_connections > 0:
            names.append(CONNECTIONS_MONITOR)
        if self.max_heap_bytes > 0:
            names.append(HEAP_MONITOR)
        return tuple(names)


@dataclass(frozen=True, slots=True)
class Watchdog:
    """Envoy's bootstrap.v3.Watchdog with Envoy's defaults (0: disabled)."""

    miss_s: float = 0.2
    megamiss_s: float = 1.0
    kill_s: float = 0.0
    max_kill_jitter_s: float = 0.0
    multikill_s: float = 0.0
    multikill_threshold_percent: float = 0.0

    @property
    def loop_interval_s(self) -> float:
        """Envoy's guard dog interval: the smallest of the enabled timeouts."""
        enabled = [
            t for t in (self.miss_s, self.megamiss_s, self.kill_s, self.multikill_s) if t > 0
        ]
        return min(enabled) if enabled else 0.2


@dataclass(frozen=True, slots=True)
class Watchdogs:
    main_thread: Watchdog = Watchdog()
    worker: Watchdog = Watchdog()


def compile_overload(bootstrap: Any, file: str) -> OverloadConfig:
    """The overload manager and the runtime-key limit, checked as Envoy checks them."""
    runtime_limit = runtime_max_connections(bootstrap)
    if not bootstrap.HasField("overload_manager"):
        return OverloadConfig(runtime_max_connections=runtime_limit)
    om = bootstrap.overload_manager
    path = "overload_manager"
    max_connections = 0
    max_heap = 0
    seen: set[str] = set()
    for i, monitor in enumerate(om.resource_monitors):
        here = f"{join(path, 'resource_monitors')}[{i}]"
        name = monitor.name
        payload = unpack(monitor.typed_config) if monitor.HasField("typed_config") else None
        type_name = payload.DESCRIPTOR.full_name if payload is not None else ""
        if name == CONNECTIONS_MONITOR and type_name == DOWNSTREAM_CONNECTIONS_TYPE:
            max_connections = int(payload.max_active_downstream_connections)  # type: ignore[union-attr]
        elif name == HEAP_MONITOR and type_name == FIXED_HEAP_TYPE:
            max_heap = int(payload.max_heap_size_bytes)  # type: ignore[union-attr]
        else:
            type_url = monitor.typed_config.type_url.rsplit("/", 1)[-1]
            raise ConfigError(
                file,
                here,
                f"Didn't find a registered implementation for '{name}' with type URL: '{type_url}'",
            )
        if name in seen:
            raise ConfigError(file, here, f"Duplicate resource monitor {name}")
        seen.add(name)
    if max_connections > 0 and runtime_limit >= 0:
        log.warning(BOTH_LIMITS_WARNING, file=file)
    actions: list[OverloadAction] = []
    for i, action in enumerate(om.actions):
        actions.append(_action(action, f"{join(path, 'actions')}[{i}]", seen, actions, file))
    return OverloadConfig(
        refresh_interval_s=duration_or(om, "refresh_interval", 1.0),
        max_connections=max_connections,
        max_heap_bytes=max_heap,
        actions=tuple(actions),
        runtime_max_connections=runtime_limit,
    )


def _action(
    action: Any, path: str, monitors: Container[str], before: list[OverloadAction], file: str
) -> OverloadAction:
    name = action.name
    if name not in WELL_KNOWN_ACTIONS:
        raise ConfigError(file, join(path, "name"), f"Unknown Overload Manager Action {name}")
    if name not in SUPPORTED_ACTIONS:
        raise ConfigError(
            file, join(path, "name"), f"overload action {name} not supported by proxyd"
        )
    if any(a.name == name for a in before):
        raise ConfigError(file, path, f"Duplicate overload action {name}")
    triggers: list[Trigger] = []
    for j, trigger in enumerate(action.triggers):
        here = f"{join(path, 'triggers')}[{j}]"
        if trigger.name not in monitors:
            raise ConfigError(
                file, join(here, "name"),
                f"Unknown trigger resource {trigger.name} for overload action {name}",
            )  # fmt: skip
        if any(t.monitor == trigger.name for t in triggers):
            raise ConfigError(file, here, f"Duplicate trigger resource for overload action {name}")
        triggers.append(Trigger(trigger.name, float(trigger.threshold.value)))
    return OverloadAction(name, tuple(triggers))


def runtime_max_connections(bootstrap: Any) -> int:
    """``overload.global_downstream_max_connections`` from the static layers of
    ``layered_runtime`` (the last layer that has it wins, as in Envoy), logging Envoy's
    deprecation warning when it is set; -1 when it is not (or is not an integer, which
    Envoy's ``getInteger`` ignores too)."""
    if not bootstrap.HasField("layered_runtime"):
        return -1
    value: Any = None
    for layer in bootstrap.layered_runtime.layers:
        if layer.WhichOneof("layer_specifier") != "static_layer":
            continue
        found = _struct_lookup(layer.static_layer, RUNTIME_KEY)
        if found is not None:
            value = found
    if value is None:
        return -1
    log.warning(RUNTIME_KEY_WARNING)
    number = _as_integer(value)
    return number if number is not None else -1


def _struct_lookup(struct: Any, key: str) -> Any:
    """``key`` in a static layer: a flat key ("a.b.c": 1) or nested maps (a: {b: {c: 1}})."""
    fields = struct.fields
    if key in fields:
        return _plain(fields[key])
    head, _, rest = key.partition(".")
    while rest:
        if head in fields and fields[head].WhichOneof("kind") == "struct_value":
            found = _struct_lookup(fields[head].struct_value, rest)
            if found is not None:
                return found
        more, _, rest = rest.partition(".")
        head = f"{head}.{more}"
    return None


def _plain(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    return None


def _as_integer(value: Any) -> int | None:
    if isinstance(value, float):
        return int(value) if value >= 0 and value == int(value) else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def compile_watchdogs(bootstrap: Any) -> Watchdogs:
    if not bootstrap.HasField("watchdogs"):
        return Watchdogs()
    w = bootstrap.watchdogs
    return Watchdogs(
        main_thread=_watchdog(w.main_thread_watchdog), worker=_watchdog(w.worker_watchdog)
    )


def _watchdog(w: Any) -> Watchdog:
    return Watchdog(
        miss_s=duration_or(w, "miss_timeout", 0.2),
        megamiss_s=duration_or(w, "megamiss_timeout", 1.0),
        kill_s=duration_or(w, "kill_timeout", 0.0),
        max_kill_jitter_s=duration_or(w, "max_kill_timeout_jitter", 0.0),
        multikill_s=duration_or(w, "multikill_timeout", 0.0),
        multikill_threshold_percent=float(w.multikill_threshold.value),
    )


def check_local_cluster(bootstrap: Any, static_clusters: Container[str], file: str) -> str:
    """``cluster_manager.local_cluster_name``: Envoy requires a static cluster of that
    name. Envoy uses it for zone-aware routing, which proxyd does not do, so a config
    where zone-aware routing could apply (``node.locality`` has a zone) is refused."""
    name = str(bootstrap.cluster_manager.local_cluster_name)
    if not name:
        return ""
    path = "cluster_manager.local_cluster_name"
    if name not in static_clusters:
        raise ConfigError(file, path, f"local cluster '{name}' must be defined")
    if bootstrap.node.locality.zone:
        raise ConfigError(
            file, path,
            "zone-aware routing (local_cluster_name with node.locality.zone) not supported "
            "by proxyd",
        )  # fmt: skip
    return name
