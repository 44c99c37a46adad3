"""The bootstrap's stats fields → :class:`StatsSettings` (plain data for the master).

* ``stats_config``: ``stats_tags`` (regex, fixed value, or a default tag's name),
  ``use_all_default_tags``, ``stats_matcher`` (reject_all, exclusion_list,
  inclusion_list), ``histogram_bucket_settings`` (match, buckets); :func:`build_view` turns them into the
  :class:`proxyd.protocol.stats_tags.StatsView` the master renders and flushes with;
* ``stats_sinks``: ``envoy.stat_sinks.statsd`` (UDP ``address`` or ``tcp_cluster_name``,
  ``prefix``) and
  ``envoy.stat_sinks.dog_statsd`` (``address``, ``prefix``, ``max_bytes_per_datagram``);
* ``stats_flush_interval`` (5 s by default, as in Envoy) and ``stats_flush_on_admin``.

Errors are Envoy's, with the field path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from proxyd.config.matchers import string_match
from proxyd.config.proto import join, unpack
from proxyd.config.values import require_ip, socket_address
from proxyd.epoch import StringMatch
from proxyd.errors import ConfigError
from proxyd.protocol.routing import compile_string_match
from proxyd.protocol.stats_tags import (
    StatsMatcher,
    StatsView,
    TagProducer,
    TagSpec,
    UnknownDefaultTag,
)
from proxyd.protocol.statsd import StatsdFormat

STATSD_TYPE = "envoy.config.metrics.v3.StatsdSink"
DOG_STATSD_TYPE = "envoy.config.metrics.v3.DogStatsdSink"
DEFAULT_FLUSH_INTERVAL_S = 5.0


@dataclass(frozen=True, slots=True)
class StatsSink:
    """One statsd sink: where it sends and how it writes lines."""

    kind: str  # "statsd", "dog_statsd" (UDP to address:port) or "tcp_statsd"
    address: str
    port: int
    format: StatsdFormat
    # tcp_statsd: the static cluster whose hosts it connects to.
    cluster: str = ""


@dataclass(frozen=True, slots=True)
class StatsSettings:
    tags: tuple[TagSpec, ...] = ()
    use_all_default_tags: bool = True
    # "accept_all", "reject_all", "exclusion" or "inclusion", with its patterns.
    matcher_mode: str = "accept_all"
    matcher_patterns: tuple[StringMatch, ...] = ()
    sinks: tuple[StatsSink, ...] = ()
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S
    # stats_flush_on_admin: flush when /stats or /stats/prometheus is read, no timer.
    flush_on_admin: bool = False
    # histogram_bucket_settings: (match, bucket bounds ascending), first match wins.
    bucket_settings: tuple[tuple[StringMatch, tuple[float, ...]], ...] = ()


def build_view(settings: StatsSettings) -> StatsView:
    """The tag producer and matcher; the settings were checked by :func:`compile_stats`."""
    return StatsView(
        TagProducer(settings.tags, settings.use_all_default_tags),
        StatsMatcher(
            settings.matcher_mode,
            tuple(compile_string_match(p) for p in settings.matcher_patterns),
        ),
        tuple((compile_string_match(m), b) for m, b in settings.bucket_settings),
    )


def compile_stats(bootstrap: Any, static_clusters: set[str], file: str) -> StatsSettings:
    """``static_clusters``: the bootstrap's cluster names (a TCP statsd sink's cluster
    must be one, as in Envoy, which looks it up before CDS runs)."""
    config = bootstrap.stats_config
    tags = tuple(
        _tag(spec, f"stats_config.stats_tags[{i}]", file)
        for i, spec in enumerate(config.stats_tags)
    )
    use_all = config.use_all_default_tags.value if config.HasField("use_all_default_tags") else True
    try:
        TagProducer(tags, use_all)
    except UnknownDefaultTag as exc:
        index = next(i for i, t in enumerate(tags) if t.name == str(exc))
        raise ConfigError(
            file,
            f"stats_config.stats_tags[{index}]",
            f"No regex specified for tag specifier and no default regex for name: '{exc}'",
        ) from exc
    mode, patterns = _matcher(config, file)
    if bootstrap.stats_flush_on_admin and bootstrap.HasField("stats_flush_interval"):
        raise ConfigError(
            file,
            "stats_flush_interval",
            "Only one of stats_flush_interval or stats_flush_on_admin should be set!",
        )
    interval = DEFAULT_FLUSH_INTERVAL_S
    if bootstrap.HasField("stats_flush_interval"):
        interval = bootstrap.stats_flush_interval.ToTimedelta().total_seconds()
    sinks = tuple(
        _sink(sink, f"stats_sinks[{i}]", file) for i, sink in enumerate(bootstrap.stats_sinks)
    )
    for i, sink in enumerate(sinks):
        if sink.kind != "tcp_statsd":
            continue
        where = f"stats_sinks[{i}].typed_config.tcp_cluster_name"
        if not (bootstrap.node.id and bootstrap.node.cluster):
            raise ConfigError(
                file, where, "tcp statsd: node 'id' and 'cluster' are required (set them in 'node')"
            )
        if sink.cluster not in static_clusters:
            raise ConfigError(file, where, f"tcp statsd: unknown cluster '{sink.cluster}'")
    return StatsSettings(
        tags=tags,
        use_all_default_tags=use_all,
        matcher_mode=mode,
        matcher_patterns=patterns,
        sinks=sinks,
        flush_interval_s=interval,
        flush_on_admin=bootstrap.stats_flush_on_admin,
        bucket_settings=tuple(
            (
                string_match(
                    rule.match, f"stats_config.histogram_bucket_settings[{i}].match", file
                ),
                tuple(sorted(rule.buckets)),  # Envoy sorts them
            )
            for i, rule in enumerate(config.histogram_bucket_settings)
        ),
    )


def _tag(spec: Any, path: str, file: str) -> TagSpec:
    if not spec.tag_name:
        raise ConfigError(file, join(path, "tag_name"), "tag_name cannot be empty")
    which = spec.WhichOneof("tag_value")
    if which == "fixed_value":
        return TagSpec(spec.tag_name, fixed_value=spec.fixed_value)
    if spec.regex:
        try:
            re.compile(spec.regex)
        except re.error as exc:
            raise ConfigError(
                file, join(path, "regex"), f"Invalid regex '{spec.regex}': {exc}"
            ) from exc
    return TagSpec(spec.tag_name, regex=spec.regex)


def _matcher(config: Any, file: str) -> tuple[str, tuple[StringMatch, ...]]:
    if not config.HasField("stats_matcher"):
        return "accept_all", ()
    matcher = config.stats_matcher
    which = matcher.WhichOneof("stats_matcher")
    if which == "reject_all":
        return ("reject_all" if matcher.reject_all else "accept_all"), ()
    mode = "exclusion" if which == "exclusion_list" else "inclusion"
    patterns = getattr(matcher, which).patterns
    base = f"stats_config.stats_matcher.{which}.patterns"
    return mode, tuple(string_match(p, f"{base}[{i}]", file) for i, p in enumerate(patterns))


def _sink(sink: Any, path: str, file: str) -> StatsSink:
    if not sink.HasField("typed_config"):
        raise ConfigError(
            file,
            path,
            f"Didn't find a registered implementation for '{sink.name}' with type URL: ''",
        )
    config = unpack(sink.typed_config)
    assert config is not None  # check_bootstrap allowed only the two sink types
    type_name = sink.typed_config.type_url.rsplit("/", 1)[-1]
    here = join(path, "typed_config")
    prefix = config.prefix or "envoy"
    if type_name == STATSD_TYPE and config.WhichOneof("statsd_specifier") == "tcp_cluster_name":
        return StatsSink("tcp_statsd", "", 0, StatsdFormat(prefix=prefix), config.tcp_cluster_name)
    address, port = socket_address(config.address, join(here, "address"), file)
    require_ip(address, join(here, "address.socket_address"), file)
    if type_name == DOG_STATSD_TYPE:
        max_bytes = (
            config.max_bytes_per_datagram.value if config.HasField("max_bytes_per_datagram") else 0
        )
        fmt = StatsdFormat(prefix=prefix, use_tags=True, max_bytes_per_datagram=max_bytes)
        return StatsSink("dog_statsd", address, port, fmt)
    return StatsSink("statsd", address, port, StatsdFormat(prefix=prefix))
