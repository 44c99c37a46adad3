"""Config sources (Envoy's core.v3.ConfigSource) and the bootstrap's dynamic_resources.

:func:`compile_config_source` turns one ConfigSource into the epoch's plain
:class:`~proxyd.epoch.ConfigSource`; :func:`check_sources` then checks every source of a
configuration against what it leans on, as Envoy does when it creates a subscription:

* ``ads: {}`` needs ``dynamic_resources.ads_config``;
* a REST source names exactly one cluster in ``cluster_names`` and has a
  ``refresh_delay``; a gRPC source has exactly one ``grpc_services`` entry with
  ``envoy_grpc`` and no ``cluster_names``;
* that cluster is a static one and not of type EDS, and a gRPC one speaks HTTP/2
  (``explicit_http_config.http2_protocol_options``).

proxyd speaks transport version V3 only and state-of-the-world only (``DELTA_GRPC``
and ``AGGREGATED_*`` API types are refused by name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxyd.config.proto import join
from proxyd.config.values import duration_or, enum_name
from proxyd.epoch import Cluster, ConfigSource, Epoch
from proxyd.errors import ConfigError

API_TYPES = {"REST": "rest", "GRPC": "grpc"}
# config_source.proto: initial_fetch_timeout defaults to 15 s; ApiConfigSource's
# request_timeout (REST) to 1 s.
DEFAULT_INITIAL_FETCH_TIMEOUT_S = 15.0
DEFAULT_REQUEST_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class DynamicResources:
    """``dynamic_resources``: where listeners and clusters come from, and the ADS stream."""

    lds: ConfigSource | None = None
    cds: ConfigSource | None = None
    # ads_config as a source of kind "grpc" (its cluster); None when there is none.
    ads: ConfigSource | None = None
    # layered_runtime's rtds_layer entries: (Runtime resource name, where it comes from).
    rtds: tuple[tuple[str, ConfigSource], ...] = ()

    @property
    def empty(self) -> bool:
        return self.lds is None and self.cds is None and not self.rtds


def compile_dynamic_resources(bootstrap: Any, file: str) -> DynamicResources:
    rtds = tuple(_rtds_sources(bootstrap, file))
    if not bootstrap.HasField("dynamic_resources"):
        return DynamicResources(rtds=rtds)
    dyn = bootstrap.dynamic_resources
    path = "dynamic_resources"
    ads = None
    if dyn.HasField("ads_config"):
        ads = _api_source(dyn.ads_config, 0.0, join(path, "ads_config"), file)
        if ads.kind != "grpc":
            raise ConfigError(
                file, join(path, "ads_config.api_type"), "ads_config needs api_type GRPC"
            )
    lds = cds = None
    if dyn.HasField("lds_config"):
        lds = compile_config_source(dyn.lds_config, join(path, "lds_config"), file)
    if dyn.HasField("cds_config"):
        cds = compile_config_source(dyn.cds_config, join(path, "cds_config"), file)
    return DynamicResources(lds=lds, cds=cds, ads=ads, rtds=rtds)


RTDS_SOURCE_PATH = "layered_runtime.layers[{}].rtds_layer.rtds_config"


def _rtds_sources(bootstrap: Any, file: str) -> Iterable[tuple[str, ConfigSource]]:
    """Each ``rtds_layer``: the Runtime resource it names and its ``rtds_config``."""
    for i, layer in enumerate(bootstrap.layered_runtime.layers):
        if layer.WhichOneof("layer_specifier") != "rtds_layer":
            continue
        path = RTDS_SOURCE_PATH.format(i)
        if not layer.rtds_layer.HasField("rtds_config"):
            raise ConfigError(
                file,
                path,
                "Missing config source specifier in envoy::config::core::v3::ConfigSource",
            )
        yield layer.rtds_layer.name, compile_config_source(layer.rtds_layer.rtds_config, path, file)


def rtds_source_paths(
    bootstrap: Any, dynamic: DynamicResources
) -> list[tuple[str, ConfigSource | None]]:
    """(field path, source) of each rtds_layer's rtds_config, for :func:`check_source`."""
    indexes = [
        i
        for i, layer in enumerate(bootstrap.layered_runtime.layers)
        if layer.WhichOneof("layer_specifier") == "rtds_layer"
    ]
    return [
        (RTDS_SOURCE_PATH.format(i), source)
        for i, (_, source) in zip(indexes, dynamic.rtds, strict=True)
    ]


def compile_config_source(cs: Any, path: str, file: str) -> ConfigSource:
    version = enum_name(cs, "resource_api_version")
    if version not in ("AUTO", "V3"):  # AUTO is V3 since Envoy dropped V2
        raise ConfigError(
            file,
            join(path, "resource_api_version"),
            f"only V3 is supported by proxyd, not {version}",
        )
    initial = duration_or(cs, "initial_fetch_timeout", DEFAULT_INITIAL_FETCH_TIMEOUT_S)
    which = cs.WhichOneof("config_source_specifier")
    if which == "ads":
        return ConfigSource(kind="ads", initial_fetch_timeout_s=initial)
    if which == "path_config_source":
        if not cs.path_config_source.path:
            raise ConfigError(file, join(path, "path_config_source.path"), "a path is required")
        return ConfigSource(
            kind="path", path=cs.path_config_source.path, initial_fetch_timeout_s=initial
        )
    if which == "api_config_source":
        return _api_source(cs.api_config_source, initial, join(path, "api_config_source"), file)
    raise ConfigError(file, path, "one of path_config_source, api_config_source or ads is required")


def _api_source(api: Any, initial: float, path: str, file: str) -> ConfigSource:
    api_type = enum_name(api, "api_type")
    kind = API_TYPES.get(api_type)
    if kind is None:
        raise ConfigError(
            file,
            join(path, "api_type"),
            f"api_type {api_type} not supported by proxyd (supported: REST, GRPC)",
        )
    version = enum_name(api, "transport_api_version")
    if version not in ("AUTO", "V3"):
        raise ConfigError(
            file,
            join(path, "transport_api_version"),
            f"only V3 is supported by proxyd, not {version}",
        )
    if kind == "rest":
        if len(api.cluster_names) != 1:
            raise ConfigError(
                file,
                join(path, "cluster_names"),
                f"a REST source needs exactly one cluster name, got {len(api.cluster_names)}",
            )
        if api.grpc_services:
            raise ConfigError(
                file, join(path, "grpc_services"), "grpc_services is for api_type GRPC, not REST"
            )
        if not api.HasField("refresh_delay"):
            raise ConfigError(
                file, join(path, "refresh_delay"), "a REST source needs a refresh_delay"
            )
        cluster = api.cluster_names[0]
    else:
        if api.cluster_names:
            raise ConfigError(
                file,
                join(path, "cluster_names"),
                "cluster_names is for api_type REST; a GRPC source names its cluster in "
                "grpc_services[0].envoy_grpc.cluster_name",
            )
        if len(api.grpc_services) != 1:
            raise ConfigError(
                file,
                join(path, "grpc_services"),
                f"exactly one gRPC service is supported by proxyd, got {len(api.grpc_services)}",
            )
        if not api.grpc_services[0].HasField("envoy_grpc"):
            raise ConfigError(
                file, join(path, "grpc_services[0].envoy_grpc"), "an envoy_grpc cluster is required"
            )
        cluster = api.grpc_services[0].envoy_grpc.cluster_name
    return ConfigSource(
        kind=kind,
        cluster=cluster,
        refresh_delay_s=duration_or(api, "refresh_delay", 0.0),
        request_timeout_s=duration_or(api, "request_timeout", DEFAULT_REQUEST_TIMEOUT_S),
        initial_fetch_timeout_s=initial,
        node_on_first_message_only=api.set_node_on_first_message_only,
    )


RDS_SOURCE_PATH = "filter_chains[0].filters[0].typed_config.rds.config_source"
EDS_SOURCE_PATH = "eds_cluster_config.eds_config"


def epoch_sources(
    epoch: Epoch, listeners: str, clusters: str
) -> Iterable[tuple[str, ConfigSource]]:
    """(field path, source) of every RDS and EDS source the epoch's resources name;
    ``listeners`` and ``clusters`` are the paths of the two lists."""
    for i, c in enumerate(epoch.clusters):
        if c.eds_source is not None:
            yield f"{clusters}[{i}].{EDS_SOURCE_PATH}", c.eds_source
    for i, lst in enumerate(epoch.listeners):
        if lst.hcm is not None and lst.hcm.rds_source is not None:
            yield f"{listeners}[{i}].{RDS_SOURCE_PATH}", lst.hcm.rds_source


def check_source(
    source: ConfigSource,
    static_clusters: Mapping[str, Cluster],
    dynamic: DynamicResources,
    path: str,
    file: str,
) -> None:
    """Raise ConfigError when ``source`` cannot work with this configuration."""
    if source.kind == "ads":
        if dynamic.ads is None:
            raise ConfigError(
                file, path, "an 'ads' config source needs dynamic_resources.ads_config"
            )
        return
    if source.kind not in ("rest", "grpc"):
        return
    cluster = static_clusters.get(source.cluster)
    if cluster is None:
        raise ConfigError(
            file,
            path,
            f"the management server cluster '{source.cluster}' must be a static cluster "
            "(static_resources.clusters)",
        )
    if cluster.type == "EDS":
        raise ConfigError(
            file, path, f"the management server cluster '{source.cluster}' may not be of type EDS"
        )
    if source.kind == "grpc" and not cluster.http2:
        raise ConfigError(
            file,
            path,
            f"the gRPC cluster '{source.cluster}' needs explicit_http_config."
            "http2_protocol_options in its envoy.extensions.upstreams.http.v3."
            "HttpProtocolOptions (gRPC runs over HTTP/2)",
        )
