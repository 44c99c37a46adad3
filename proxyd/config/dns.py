"""The DNS fields of a cluster → :class:`~proxyd.epoch.DnsSettings`, and Envoy's
LOGICAL_DNS shape check. ``proxyd.master.dns`` does the resolving."""

from __future__ import annotations

import dataclasses
from typing import Any

from proxyd.config.proto import join
from proxyd.config.supported import unpack
from proxyd.config.values import duration_or, require_ip, socket_address
from proxyd.epoch import DnsSettings
from proxyd.errors import ConfigError

DEFAULT_DNS_PORT = 53


def compile_dns(c: Any, path: str, file: str) -> DnsSettings | None:
    """The cluster's DNS settings; None when all are Envoy's defaults."""
    base_s, max_s = _failure_refresh(c, join(path, "dns_failure_refresh_rate"), file)
    settings = _resolver(c, join(path, "typed_dns_resolver_config"), file)
    settings = dataclasses.replace(
        settings,
        respect_dns_ttl=c.respect_dns_ttl,
        jitter_s=duration_or(c, "dns_jitter", 0.0),
        failure_base_s=base_s,
        failure_max_s=max_s,
    )
    return None if settings == DnsSettings() else settings


def check_logical_dns(c: Any, path: str, file: str) -> None:
    """Envoy: a LOGICAL_DNS cluster has exactly one host (same messages)."""
    if not c.HasField("load_assignment"):
        raise ConfigError(file, path, "LOGICAL_DNS clusters must have a single host")
    localities = c.load_assignment.endpoints
    if len(localities) != 1 or len(localities[0].lb_endpoints) != 1:
        raise ConfigError(
            file,
            join(path, "load_assignment"),
            "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint",
        )


def _failure_refresh(c: Any, path: str, file: str) -> tuple[float, float]:
    """(base, max) of dns_failure_refresh_rate; (0, 0) when it is not set."""
    if not c.HasField("dns_failure_refresh_rate"):
        return 0.0, 0.0
    rate = c.dns_failure_refresh_rate
    base = duration_or(rate, "base_interval", 0.0)
    if base <= 0:
        raise ConfigError(file, join(path, "base_interval"), "a base_interval is required")
    # Envoy's default max_interval is ten times the base.
    maximum = duration_or(rate, "max_interval", base * 10)
    if maximum < base:
        raise ConfigError(
            file,
            join(path, "max_interval"),
            "dns_failure_refresh_rate must have max_interval greater than or equal to the "
            "base_interval",
        )
    return base, maximum


def _resolver(c: Any, path: str, file: str) -> DnsSettings:
    if not c.HasField("typed_dns_resolver_config"):
        return DnsSettings()
    cares = unpack(c.typed_dns_resolver_config.typed_config)
    if cares is None:  # supported.py accepted only the c-ares type
        raise ConfigError(file, join(path, "typed_config"), "a c-ares resolver config is required")
    resolvers: list[tuple[str, int]] = []
    for i, address in enumerate(cares.resolvers):
        here = f"{join(path, 'typed_config.resolvers')}[{i}]"
        host, port = socket_address(address, here, file)
        require_ip(host, join(here, "socket_address"), file)
        resolvers.append((host, port or DEFAULT_DNS_PORT))
    options = cares.dns_resolver_options
    return DnsSettings(
        resolvers=tuple(resolvers),
        resolvers_as_fallback=cares.use_resolvers_as_fallback,
        use_tcp=options.use_tcp_for_dns_lookups,
        no_default_search_domain=options.no_default_search_domain,
    )
