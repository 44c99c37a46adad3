"""STRICT_DNS: the master resolves host names; workers only ever see addresses.

An epoch template from ``proxyd.config`` carries STRICT_DNS endpoints with ``hostname``
set. :class:`DnsResolver` turns each into one :class:`~proxyd.epoch.Endpoint` per
address (in the order the resolver returned them), following the cluster's
``dns_lookup_family``. The master re-resolves every ``dns_refresh_rate_s`` (Envoy's
default: 5 s) and publishes a new epoch only when an address changed. When a lookup
fails the last good answer is kept, as Envoy does.
"""

from __future__ import annotations

import dataclasses
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from proxyd.epoch import Cluster, Endpoint, Epoch
from proxyd.log import get_logger

DEFAULT_REFRESH_S = 5.0
LOOKUP_TIMEOUT_S = 5.0

# dns_lookup_family → the address families to try, in order; "ALL" takes both at once.
_FAMILY_ORDER: dict[str, tuple[int, ...]] = {
    "V4_ONLY": (socket.AF_INET,),
    "V6_ONLY": (socket.AF_INET6,),
    "AUTO": (socket.AF_INET6, socket.AF_INET),
    "V4_PREFERRED": (socket.AF_INET, socket.AF_INET6),
    "ALL": (socket.AF_UNSPEC,),
}

GetAddrInfo = Callable[..., Awaitable[list[Any]]]

log = get_logger("proxyd.master.dns")


def refresh_interval(epoch: Epoch) -> float:
    """How often to re-resolve: the shortest refresh rate of any STRICT_DNS cluster."""
    rates = [
        c.dns_refresh_rate_s or DEFAULT_REFRESH_S
        for c in epoch.clusters
        if c.type == "STRICT_DNS" and any(e.hostname for e in c.endpoints)
    ]
    return min(rates) if rates else math.inf


def needs_dns(template: Epoch) -> bool:
    return any(
        c.type == "STRICT_DNS" and any(e.hostname for e in c.endpoints) for c in template.clusters
    )


class DnsResolver:
    """Resolves the STRICT_DNS endpoints of an epoch template; keeps last good answers."""

    def __init__(self, getaddrinfo: GetAddrInfo | None = None) -> None:
        self._getaddrinfo: GetAddrInfo = getaddrinfo or trio.socket.getaddrinfo
        self._last_good: dict[tuple[str, int, str], tuple[str, ...]] = {}

    async def resolve(self, template: Epoch) -> Epoch:
        """``template`` with every STRICT_DNS host name replaced by its addresses."""
        if not needs_dns(template):
            return template
        wanted: set[tuple[str, int, str]] = set()
        for c in template.clusters:
            if c.type != "STRICT_DNS":
                continue
            family = c.dns_lookup_family
            for e in c.endpoints:
                if e.hostname:
                    wanted.add((e.hostname, e.port, family))
        answers: dict[tuple[str, int, str], tuple[str, ...]] = {}
        async with trio.open_nursery() as nursery:
            for key in wanted:
                nursery.start_soon(self._lookup_into, key, answers)
        clusters = tuple(self._expand(c, answers) for c in template.clusters)
        return dataclasses.replace(template, clusters=clusters)

    def _expand(
        self,
        cluster: Cluster,
        answers: dict[tuple[str, int, str], tuple[str, ...]],
    ) -> Cluster:
        if cluster.type != "STRICT_DNS":
            return cluster
        family = cluster.dns_lookup_family
        endpoints: list[Endpoint] = []
        for e in cluster.endpoints:
            if not e.hostname:
                endpoints.append(e)
                continue
            for address in answers.get((e.hostname, e.port, family), ()):
                endpoints.append(dataclasses.replace(e, address=address))
        return dataclasses.replace(cluster, endpoints=tuple(endpoints))

    async def _lookup_into(
        self,
        key: tuple[str, int, str],
        answers: dict[tuple[str, int, str], tuple[str, ...]],
    ) -> None:
        hostname, port, family = key
        try:
            with trio.fail_after(LOOKUP_TIMEOUT_S):
                addresses = await self.lookup(hostname, port, family)
        except (OSError, trio.TooSlowError) as exc:
            kept = self._last_good.get(key, ())
            log.warning(
                "dns_resolution_failed", hostname=hostname, error=str(exc) or type(exc).__name__,
                kept=list(kept),
            )  # fmt: skip
            answers[key] = kept
            return
        self._last_good[key] = addresses
        answers[key] = addresses

    async def lookup(self, hostname: str, port: int, lookup_family: str) -> tuple[str, ...]:
        """Addresses for ``hostname`` per Envoy's ``dns_lookup_family``, deduplicated."""
        families = _FAMILY_ORDER.get(lookup_family, _FAMILY_ORDER["AUTO"])
        last_error: OSError | None = None
        for family in families:
            try:
                infos = await self._getaddrinfo(hostname, port, family, socket.SOCK_STREAM)
            except OSError as exc:  # socket.gaierror: no address of this family
                last_error = exc
                continue
            addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
            if addresses:
                return addresses
        if last_error is not None:
            raise last_error
        raise OSError(f"no addresses for {hostname}")
