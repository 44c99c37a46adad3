"""What xDS has delivered, and the epoch template it makes with the static config.

:class:`XdsState` keeps, per resource type, the accepted resources by name and the
last rejected update (Envoy's ``error_state``). :meth:`XdsState.apply` takes one
state-of-the-world response resource by resource, as Envoy does: every good resource is
taken, a bad one is refused and its last good version stays, and any refusal NACKs the
response. For LDS and CDS the response is the whole set (a missing resource is
removed); for RDS and EDS it adds or replaces the resources it holds.

:meth:`XdsState.compose` lays the dynamic resources over the static epoch template,
with Envoy's warming rules:

* a cluster of type EDS waits for its ClusterLoadAssignment; a listener whose HTTP
  connection manager uses RDS waits for its RouteConfiguration;
* while a new or updated resource warms, the previous version (if any) keeps serving
  (make before break); a resource that never warms joins without what it waits for
  once its source's ``initial_fetch_timeout`` has passed (an EDS cluster with no hosts,
  an RDS listener with no routes), as Envoy's init manager gives up waiting;
* static EDS clusters and static RDS listeners are always present (empty until their
  resources arrive), because static routes were checked against them.

Composed clusters and listeners are cached with the resources they came from, so an EDS
update to one cluster rebuilds that cluster only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxyd.config.secrets import (
    CompiledSecret,
    fill_downstream,
    fill_upstream,
    has_sds,
    secret_refs,
)
from proxyd.epoch import (
    Cluster,
    ConfigSource,
    DownstreamTls,
    Endpoint,
    Epoch,
    Listener,
    UpstreamTls,
)
from proxyd.errors import ConfigError
from proxyd.master.xds import resources as rs
from proxyd.master.xds.resources import Context, Resource


@dataclass(frozen=True)
class Rejection:
    """Envoy's UpdateFailureState: the last update of a type that was refused."""

    version: str
    details: str
    when: float  # wall clock
    # The resource that was refused (its name and Any), when one was.
    name: str = ""
    failed: Any = None


@dataclass(frozen=True)
class Applied:
    """What one response did: the names it changed, why it was (partly) refused (""
    when every resource was taken), and the names of the resources it held."""

    changed: list[str]
    error: str
    names: tuple[str, ...] = ()


@dataclass
class TypeState:
    type_url: str
    resources: dict[str, Resource] = field(default_factory=dict)
    version: str = ""  # of the last accepted update
    rejected: Rejection | None = None
    # Counters as Envoy names them under its stat scope (update_attempt, ...).
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("update_attempt", "update_success", "update_rejected", "update_failure"), 0
        )
    )


class XdsState:
    def __init__(self) -> None:
        self.types = {t: TypeState(t) for t in rs.TYPES}
        # When each resource was first seen waiting (for initial_fetch_timeout).
        self._waiting_since: dict[tuple[str, str], float] = {}
        # Composed values by name, with the identities they were built from.
        self._clusters: dict[str, tuple[Resource, Resource | None, Cluster]] = {}
        self._listeners: dict[str, tuple[Resource, Resource | None, Listener]] = {}
        # The dynamic resources in the last composed epoch (the "active" ones).
        self.active_clusters: dict[str, Resource] = {}
        self.active_listeners: dict[str, Resource] = {}
        # Earliest monotonic time at which a warming resource times out (or inf).
        self.next_timeout = float("inf")
        # The SDS secrets delivered, by name, as the last compose saw them.
        self._secrets: dict[str, CompiledSecret] = {}

    # -- updates ----------------------------------------------------------------------

    def apply(
        self,
        type_url: str,
        version: str,
        resources: Sequence[Any],
        origin: str,
        ctx: Context,
        check: Callable[[str, dict[str, Resource]], None] | None = None,
    ) -> Applied:
        """Apply one response, resource by resource, as Envoy does.

        Each good resource is taken; a bad one is refused and its previous version (if
        any) stays; for LDS and CDS a resource missing from the response is removed.
        Any refusal makes the whole response a NACK (``Applied.error``) and keeps the
        type's version. ``check`` may refuse the resulting set as a whole (listener
        addresses, names taken by static resources): then nothing changes and it raises
        ConfigError."""
        ts = self.types[type_url]
        ts.counts["update_attempt"] += 1
        file = f"{rs.SHORT[type_url]} update version '{version}' from {origin}"
        fresh: dict[str, Resource] = {}
        named: list[str] = []  # every name the response holds, good or bad
        refused: list[tuple[str, Any, ConfigError]] = []
        for i, any_msg in enumerate(resources):
            path = f"resources[{i}]"
            name = ""
            try:
                message = rs.decode(type_url, any_msg, path, file)
                name = rs.name_of(type_url, message)
                named.append(name)
                path = f"{path} ({rs.label(type_url, name)})"
                if name in fresh:
                    raise ConfigError(file, path, f"duplicate {rs.label(type_url, name)}")
                old = ts.resources.get(name)
                # (A secret is read again: the files it names may have changed.)
                if old is not None and old.raw == any_msg.value and type_url != rs.SECRET:
                    fresh[name] = old  # unchanged: keep the compiled value and its time
                    continue
                fresh[name] = rs.compile_resource(
                    type_url, message, any_msg.value, version, path, file, ctx
                )
            except ConfigError as exc:
                refused.append((name, any_msg, exc))
                kept = ts.resources.get(name) if name else None
                if kept is not None and name not in fresh:
                    fresh[name] = kept  # the last good version stays
        new_set = fresh if type_url in rs.WILDCARD else {**ts.resources, **fresh}
        if check is not None:
            try:
                check(file, new_set)
            except ConfigError as exc:
                ts.counts["update_rejected"] += 1
                ts.rejected = Rejection(version, str(exc), time.time())
                raise
        changed = [n for n, r in new_set.items() if ts.resources.get(n) is not r]
        changed += [n for n in ts.resources if n not in new_set]
        ts.resources = new_set
        if refused:
            ts.counts["update_rejected"] += 1
            name, any_msg, _ = refused[0]
            details = "; ".join(str(exc) for _, _, exc in refused)
            ts.rejected = Rejection(version, details, time.time(), name, any_msg)
            return Applied(changed, details, tuple(named))
        ts.version = version
        ts.rejected = None
        ts.counts["update_success"] += 1
        return Applied(changed, "", tuple(named))

    def reject_unreadable(self, type_url: str, version: str, details: str) -> None:
        """An update that could not even be read (a bad file, a bad response body)."""
        ts = self.types[type_url]
        ts.counts["update_attempt"] += 1
        ts.counts["update_rejected"] += 1
        ts.rejected = Rejection(version, details, time.time())

    # -- what is wanted ---------------------------------------------------------------

    def wanted(self, static: Epoch, type_url: str) -> dict[ConfigSource, set[str]]:
        """For RDS, EDS and SDS: the names each source must deliver, by source."""
        out: dict[ConfigSource, set[str]] = {}
        if type_url == rs.SECRET:
            values: list[Any] = [*self._all_clusters(static), *self._all_listeners(static)]
            for value in values:
                for ref in secret_refs(value):
                    out.setdefault(ref.source, set()).add(ref.name)
        elif type_url == rs.ENDPOINT:
            for c in self._all_clusters(static):
                if c.eds_source is not None:
                    out.setdefault(c.eds_source, set()).add(c.eds_service_name)
        elif type_url == rs.ROUTE:
            for lst in self._all_listeners(static):
                hcm = lst.hcm
                if hcm is not None and hcm.rds_source is not None:
                    out.setdefault(hcm.rds_source, set()).add(hcm.rds_route_config_name)
        return out

    def clusters_in_use(self, static: Epoch) -> Iterable[Cluster]:
        """Static, delivered and active clusters (a name may repeat)."""
        return self._all_clusters(static)

    def listeners_in_use(self, static: Epoch) -> Iterable[Listener]:
        return self._all_listeners(static)

    def _all_clusters(self, static: Epoch) -> Iterable[Cluster]:
        yield from static.clusters
        for r in self.types[rs.CLUSTER].resources.values():
            yield r.value
        for r in self.active_clusters.values():
            yield r.value

    def _all_listeners(self, static: Epoch) -> Iterable[Listener]:
        yield from static.listeners
        for r in self.types[rs.LISTENER].resources.values():
            yield r.value
        for r in self.active_listeners.values():
            yield r.value

    # -- composition ------------------------------------------------------------------

    def compose(self, static: Epoch, now: float | None = None) -> Epoch:
        """The epoch template: static resources, then the dynamic ones that are warm."""
        now = time.monotonic() if now is None else now
        self.next_timeout = float("inf")
        endpoints = self.types[rs.ENDPOINT].resources
        routes = self.types[rs.ROUTE].resources
        self._secrets = {n: r.value for n, r in self.types[rs.SECRET].resources.items()}

        clusters: list[Cluster] = [self._eds_filled(c, endpoints) for c in static.clusters]
        active_clusters: dict[str, Resource] = {}
        for name, res in self.types[rs.CLUSTER].resources.items():
            chosen = self._warm_or_previous(res, self.active_clusters.get(name), endpoints, now)
            if chosen is not None:
                active_clusters[name] = chosen
                clusters.append(self._composed_cluster(chosen, endpoints))
        self.active_clusters = active_clusters

        listeners: list[Listener] = [self._rds_filled(lst, routes) for lst in static.listeners]
        active_listeners: dict[str, Resource] = {}
        for name, res in self.types[rs.LISTENER].resources.items():
            chosen = self._warm_or_previous(res, self.active_listeners.get(name), routes, now)
            if chosen is not None:
                active_listeners[name] = chosen
                listeners.append(self._composed_listener(chosen, routes))
        self.active_listeners = active_listeners
        live = {(rs.CLUSTER, n) for n in self.types[rs.CLUSTER].resources} | {
            (rs.LISTENER, n) for n in self.types[rs.LISTENER].resources
        }
        for key in [k for k in self._waiting_since if k not in live]:
            del self._waiting_since[key]
        return self._secrets_filled(
            dataclasses.replace(static, listeners=tuple(listeners), clusters=tuple(clusters))
        )

    def preview(self, static: Epoch) -> Epoch:
        """What :meth:`compose` would make of ``static`` with the resources active now,
        changing nothing (no warming clock, no cache): ``proxyctl reload --dry-run``."""
        endpoints = self.types[rs.ENDPOINT].resources
        routes = self.types[rs.ROUTE].resources
        clusters = [self._eds_filled(c, endpoints) for c in static.clusters]
        clusters += [self._eds_filled(r.value, endpoints) for r in self.active_clusters.values()]
        listeners = [self._rds_filled(lst, routes) for lst in static.listeners]
        listeners += [self._rds_filled(r.value, routes) for r in self.active_listeners.values()]
        self._secrets = {n: r.value for n, r in self.types[rs.SECRET].resources.items()}
        return self._secrets_filled(
            dataclasses.replace(static, listeners=tuple(listeners), clusters=tuple(clusters))
        )

    def _secrets_filled(self, epoch: Epoch) -> Epoch:
        """The SDS secrets' values put into the TLS contexts that name them."""
        secrets = self._secrets
        listeners = tuple(fill_listener(x, secrets) for x in epoch.listeners)
        clusters = tuple(fill_cluster(c, secrets) for c in epoch.clusters)
        return dataclasses.replace(epoch, listeners=listeners, clusters=clusters)

    def warming(self) -> tuple[list[Resource], list[Resource]]:
        """(clusters, listeners) delivered but not in the last composed epoch as sent."""
        clusters = [
            r
            for n, r in self.types[rs.CLUSTER].resources.items()
            if self.active_clusters.get(n) is not r
        ]
        listeners = [
            r
            for n, r in self.types[rs.LISTENER].resources.items()
            if self.active_listeners.get(n) is not r
        ]
        return clusters, listeners

    def _needs(self, res: Resource) -> tuple[str, ConfigSource | None]:
        """The RDS/EDS name a resource waits for, and the source it comes from."""
        if res.type_url == rs.CLUSTER:
            c: Cluster = res.value
            return c.eds_service_name, c.eds_source
        hcm = res.value.hcm
        if hcm is None:  # a TCP proxy listener waits for nothing
            return "", None
        return hcm.rds_route_config_name, hcm.rds_source

    def _warm_or_previous(
        self,
        res: Resource,
        previous: Resource | None,
        needed: dict[str, Resource],
        now: float,
    ) -> Resource | None:
        name, source = self._needs(res)
        key = (res.type_url, res.name)
        # The initial_fetch_timeout of each thing it still waits for: its routes or
        # endpoints, and the SDS secrets its TLS contexts name (Envoy warms on both).
        waits = [source.initial_fetch_timeout_s] if source is not None and name not in needed else []  # fmt: skip
        waits += [
            ref.initial_fetch_timeout_s
            for ref in secret_refs(res.value)
            if ref.name not in self._secrets
        ]
        if not waits:
            self._waiting_since.pop(key, None)
            return res
        since = self._waiting_since.setdefault(key, now)
        timeout = 0.0 if 0.0 in waits else max(waits)  # 0: waits without a limit
        deadline = since + timeout
        if timeout > 0 and now >= deadline:
            return res  # waited long enough: joins without it, as Envoy's init does
        if timeout > 0:
            self.next_timeout = min(self.next_timeout, deadline)
        return previous

    def _eds_filled(self, c: Cluster, endpoints: dict[str, Resource]) -> Cluster:
        if c.eds_source is None:
            return c
        cla = endpoints.get(c.eds_service_name)
        return c if cla is None else _with_endpoints(c, cla.value)

    def _composed_cluster(self, res: Resource, endpoints: dict[str, Resource]) -> Cluster:
        c: Cluster = res.value
        cla = endpoints.get(c.eds_service_name) if c.eds_source is not None else None
        cached = self._clusters.get(res.name)
        if cached is not None and cached[0] is res and cached[1] is cla:
            return cached[2]
        composed = c if cla is None else _with_endpoints(c, cla.value)
        self._clusters[res.name] = (res, cla, composed)
        return composed

    def _rds_filled(self, lst: Listener, routes: dict[str, Resource]) -> Listener:
        if lst.hcm is None or lst.hcm.rds_source is None:
            return lst
        rc = routes.get(lst.hcm.rds_route_config_name)
        return lst if rc is None else _with_routes(lst, rc.value)

    def _composed_listener(self, res: Resource, routes: dict[str, Resource]) -> Listener:
        lst: Listener = res.value
        hcm = lst.hcm
        rc = (
            routes.get(hcm.rds_route_config_name)
            if hcm is not None and hcm.rds_source is not None
            else None
        )
        cached = self._listeners.get(res.name)
        if cached is not None and cached[0] is res and cached[1] is rc:
            return cached[2]
        composed = lst if rc is None else _with_routes(lst, rc.value)
        self._listeners[res.name] = (res, rc, composed)
        return composed


def fill_cluster(c: Cluster, secrets: dict[str, CompiledSecret]) -> Cluster:
    """``c`` with SDS values in its TLS contexts (the same object when it has none)."""

    def fill(tls: UpstreamTls | None) -> UpstreamTls | None:
        return fill_upstream(tls, secrets) if tls is not None and has_sds(tls) else tls

    if not secret_refs(c):
        return c
    return dataclasses.replace(
        c,
        tls=fill(c.tls),
        tls_matches=tuple(dataclasses.replace(m, tls=fill(m.tls)) for m in c.tls_matches),
    )


def fill_listener(lst: Listener, secrets: dict[str, CompiledSecret]) -> Listener:
    """``lst`` with SDS values in its TLS contexts (the same object when it has none)."""

    def fill(tls: DownstreamTls | None) -> DownstreamTls | None:
        return fill_downstream(tls, secrets) if tls is not None and has_sds(tls) else tls

    if not secret_refs(lst):
        return lst
    return dataclasses.replace(
        lst,
        tls=fill(lst.tls),
        chains=tuple(dataclasses.replace(c, tls=fill(c.tls)) for c in lst.chains),
        default_chain=(
            dataclasses.replace(lst.default_chain, tls=fill(lst.default_chain.tls))
            if lst.default_chain is not None
            else None
        ),
    )


def _with_endpoints(c: Cluster, value: Any) -> Cluster:
    """``value`` is the LoadAssignment proxyd.config.endpoints compiled from a
    ClusterLoadAssignment."""
    endpoints: tuple[Endpoint, ...] = value.endpoints
    return dataclasses.replace(
        c, endpoints=endpoints, overprovisioning_factor=value.overprovisioning_factor
    )


def _with_routes(lst: Listener, route_config: Any) -> Listener:
    assert lst.hcm is not None
    return dataclasses.replace(lst, hcm=dataclasses.replace(lst.hcm, route_config=route_config))
