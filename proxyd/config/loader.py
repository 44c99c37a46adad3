"""``load(path)``: an Envoy v3 bootstrap file → a validated, compiled LoadedConfig.

The steps, each raising ConfigError(file, field path, reason) on bad input:

1. read YAML or JSON (``source``);
2. parse into ``envoy.config.bootstrap.v3.Bootstrap`` (``proto``), taking the forms
   Envoy's parser takes: unknown fields and wrong types, as Envoy rejects them;
3. unwrap TypedStructs and move deprecated fields to their replacements, logging a
   warning for each deprecated field (``translate``, ``deprecated``);
4. reject every set field proxyd does not implement and every broken proto
   constraint (``supported``, ``rules``);
5. compile clusters, then listeners (whose routes must name existing clusters), then
   admin, to plain epoch data (``clusters``, ``listeners``, ``routes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format

from proxyd.config.clusters import compile_clusters
from proxyd.config.dynamic import (
    DynamicResources,
    check_source,
    compile_dynamic_resources,
    epoch_sources,
    rtds_source_paths,
)
from proxyd.config.feature_check import unsupported_instead
from proxyd.config.listeners import FILE_LOG_NAME, compile_listeners, typed_config
from proxyd.config.node import Node, compile_node
from proxyd.config.overload import (
    OverloadConfig,
    Watchdogs,
    check_local_cluster,
    compile_overload,
    compile_watchdogs,
)
from proxyd.config.proto import parse_bootstrap
from proxyd.config.routes import route_targets
from proxyd.config.runtime import RuntimeLayer, compile_layered_runtime
from proxyd.config.secrets import (
    CompiledSecret,
    compile_static_secrets,
    secret_refs,
    static_secrets,
)
from proxyd.config.source import read_config_file
from proxyd.config.stats import StatsSettings, compile_stats
from proxyd.config.supported import FILE_LOG_TYPE, STDOUT_LOG_TYPE, check_bootstrap
from proxyd.config.translate import Translation, log_deprecations, translate
from proxyd.config.upstream_tls import check_tls_cluster_uses
from proxyd.config.values import require_ip, socket_address
from proxyd.epoch import Epoch
from proxyd.errors import ConfigError


@dataclass(frozen=True)
class AdminConfig:
    """Where the admin HTTP API listens; ``access_log_path`` is "" when there is none
    ("-" for Envoy's stdout access logger)."""

    address: str
    port: int
    access_log_path: str
    # Envoy's admin.ignore_global_conn_limit (the runtime-key limit counts and refuses
    # admin connections unless it is set; the overload manager's monitor never does).
    ignore_global_conn_limit: bool = False
    profile_path: str = ""


@dataclass(frozen=True)
class LoadedConfig:
    # number=0: the master sets the number with dataclasses.replace.
    epoch_template: Epoch
    admin: AdminConfig | None
    # The bootstrap as plain JSON-able data (proto field names), for /config_dump.
    bootstrap_json: dict[str, Any]
    file: str
    # dynamic_resources and the node identity, for the master's xDS client.
    dynamic: DynamicResources = field(default_factory=DynamicResources)
    node: Node = field(default_factory=Node)
    # "Using deprecated option ..." for each deprecated field the file sets.
    deprecations: tuple[str, ...] = ()
    # overload_manager (and the runtime-key connection limit), watchdogs and
    # cluster_manager.local_cluster_name (proxyd.config.overload).
    overload: OverloadConfig = field(default_factory=OverloadConfig)
    watchdogs: Watchdogs = field(default_factory=Watchdogs)
    local_cluster_name: str = ""
    # stats_config, stats_sinks and the flush interval (proxyd.config.stats).
    stats: StatsSettings = field(default_factory=StatsSettings)
    # layered_runtime (proxyd.master.runtime reads the disk layers and keeps the admin one).
    runtime_layers: tuple[RuntimeLayer, ...] = ()
    # static_resources.secrets by name (what delivered listeners and clusters may name).
    secrets: dict[str, CompiledSecret] = field(default_factory=dict)


def load(path: str) -> LoadedConfig:
    """Read, validate and compile the bootstrap at ``path``. Raises ConfigError."""
    data = read_config_file(path)
    return compile_bootstrap(data, path)


def compile_bootstrap(data: dict[str, Any], file: str) -> LoadedConfig:
    """Validate and compile already-read bootstrap data; ``file`` names it in errors."""
    singles: list[str] = []  # single values read as lists of one, for error paths
    try:
        bootstrap = parse_bootstrap(data, file, singles)
    except ConfigError as exc:
        # Inside a feature proxyd lacks, the missing feature is the error to give.
        refusal = unsupported_instead(exc, data, bootstrap_pb2.Bootstrap.DESCRIPTOR)
        if refusal is exc:
            raise
        raise refusal from exc
    # As written (before translation), as Envoy's /config_dump shows it.
    bootstrap_json = json_format.MessageToDict(bootstrap, preserving_proto_field_name=True)
    translation = translate(bootstrap, "", file, singles)
    log_deprecations(translation)
    with translation.file_paths():
        return _compile(bootstrap, bootstrap_json, translation, file)


def _compile(
    bootstrap: Any, bootstrap_json: dict[str, Any], translation: Translation, file: str
) -> LoadedConfig:
    check_bootstrap(bootstrap, file)
    static = bootstrap.static_resources
    secrets = compile_static_secrets(static.secrets, "static_resources.secrets", file)
    with static_secrets(secrets):
        clusters = compile_clusters(static.clusters, "static_resources.clusters", file)
        listeners = compile_listeners(
            static.listeners, "static_resources.listeners", route_targets(clusters), file
        )
    admin = _admin(bootstrap, file) if bootstrap.HasField("admin") else None
    stats = compile_stats(bootstrap, {c.name for c in clusters}, file)
    dynamic = compile_dynamic_resources(bootstrap, file)
    template = Epoch(
        number=0,
        listeners=listeners,
        clusters=clusters,
        node_id=bootstrap.node.id,
        node_cluster=bootstrap.node.cluster,
    )
    static_clusters = {c.name: c for c in clusters}
    sources = [("dynamic_resources.lds_config", dynamic.lds), ("dynamic_resources.cds_config", dynamic.cds)]  # fmt: skip
    sources += epoch_sources(template, "static_resources.listeners", "static_resources.clusters")
    if dynamic.ads is not None:
        sources.append(("dynamic_resources.ads_config", dynamic.ads))
    sources += rtds_source_paths(bootstrap, dynamic)
    sds = [
        (f"static_resources.listeners[{i}] (SDS secret '{r.name}')", r)
        for i, lst in enumerate(listeners)
        for r in secret_refs(lst)
    ]
    sds += [
        (f"static_resources.clusters[{i}] (SDS secret '{r.name}')", r)
        for i, c in enumerate(clusters)
        for r in secret_refs(c)
    ]
    if (any(s is not None for _, s in sources) or sds) and not (
        bootstrap.node.id and bootstrap.node.cluster
    ):
        raise ConfigError(
            file,
            "node",
            "node 'id' and 'cluster' are required when resources come from config sources",
        )
    # SDS from a management server names its cluster as the other sources do.
    sources += [(where, r.source) for where, r in sds]
    for where, source in sources:
        if source is not None:
            check_source(source, static_clusters, dynamic, where, file)
    check_tls_cluster_uses(clusters, listeners, [s.cluster for s in stats.sinks], sources, file)
    local_cluster = check_local_cluster(bootstrap, static_clusters, file)
    return LoadedConfig(
        epoch_template=template,
        admin=admin,
        bootstrap_json=bootstrap_json,
        file=file,
        dynamic=dynamic,
        node=compile_node(bootstrap),
        deprecations=tuple(d.message() for d in translation.deprecations),
        overload=compile_overload(bootstrap, file),
        watchdogs=compile_watchdogs(bootstrap),
        local_cluster_name=local_cluster,
        stats=stats,
        runtime_layers=compile_layered_runtime(bootstrap, file),
        secrets=secrets,
    )


def _admin(bootstrap: Any, file: str) -> AdminConfig | None:
    admin = bootstrap.admin
    log_path = ""  # access_log_path is in access_log now (proxyd.config.deprecated)
    if len(admin.access_log) > 1:
        raise ConfigError(
            file, "admin.access_log", "only one admin access log is supported by proxyd"
        )
    if admin.access_log:
        log_path = _admin_log_path(admin.access_log[0], "admin.access_log[0]", file)
    if not admin.HasField("address"):
        return None  # as in Envoy: no address, no admin listener
    address, port = socket_address(admin.address, "admin.address", file)
    require_ip(address, "admin.address.socket_address", file)
    return AdminConfig(
        address=address,
        port=port,
        access_log_path=log_path,
        ignore_global_conn_limit=bool(admin.ignore_global_conn_limit),
        profile_path=str(admin.profile_path),
    )


STDOUT_LOG_NAME = "envoy.access_loggers.stdout"
# AdminConfig.access_log_path for Envoy's stdout access logger.
STDOUT = "-"


def _admin_log_path(entry: Any, path: str, file: str) -> str:
    if entry.HasField("typed_config") and entry.typed_config.type_url.endswith(STDOUT_LOG_TYPE):
        typed_config(entry, STDOUT_LOG_TYPE, STDOUT_LOG_NAME, "access logger", path, file)
        return STDOUT
    log = typed_config(entry, FILE_LOG_TYPE, FILE_LOG_NAME, "access logger", path, file)
    return str(log.path)
