"""The admin API's pages, in Envoy's paths and shapes; no I/O here.

:class:`AdminPages` maps a request (method, path, query) to a :class:`Response`, reading
the master's state. ``server.py`` moves the bytes.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from proxyd import __version__ as _version
from proxyd import ipc, pipes
from proxyd.config.node import Node
from proxyd.epoch import Cluster, Endpoint
from proxyd.master.admin.config_dump import add_dynamic, config_dump

if TYPE_CHECKING:
    from proxyd.master.master import Master

TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"

# The circuit breaker thresholds /clusters shows for each routing priority.
_THRESHOLDS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")
_HOST_STATS = ("cx_active", "cx_connect_fail", "cx_total", "rq_active", "rq_error", "rq_pending_active", "rq_success", "rq_timeout", "rq_total")  # fmt: skip


def version_string() -> str:
    """Envoy's "<revision>/<version>/<status>/<build type>/<ssl>" shape."""
    return f"proxyd/{_version}/Clean/RELEASE/{ssl.OPENSSL_VERSION.split()[0]}"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = TEXT
    # Run after the response went out (e.g. begin a graceful stop).
    after: Callable[[], None] | None = None
    # Awaited before the response goes out (e.g. until the workers run a change).
    before: Callable[[], Awaitable[None]] | None = None


def _text(status: int, text: str) -> Response:
    return Response(status, text.encode())


def _json(value: Any, status: int = 200) -> Response:
    return Response(status, (json.dumps(value, indent=1) + "\n").encode(), JSON)


def _duration(seconds: float) -> str:
    return f"{int(seconds)}s"


def _rate(value: float) -> str:
    """A success rate as Envoy prints a double: 100, 66.66666666666667, -1."""
    return str(int(value)) if value == int(value) else repr(value)


def host_key(address: str, port: int) -> str:
    """A host or listener as Envoy's admin pages print it ("ip:port", or a pipe's path
    for port 0: a bound TCP listener always has its real port here)."""
    return pipes.host_label(address, port)


def address_json(address: str, port: int) -> dict[str, Any]:
    """Envoy's JSON of a core.v3.Address: a socket_address, or a pipe for port 0."""
    if port == 0:
        return {"pipe": {"path": address}}
    return {"socket_address": {"address": address, "port_value": port}}


def _locality(e: Endpoint) -> dict[str, str]:
    """An endpoint's locality ("region/zone/sub_zone" in the epoch) as Envoy's fields."""
    parts = e.locality.split("/", 2) if e.locality else []
    parts += [""] * (3 - len(parts))
    return {"region": parts[0], "zone": parts[1], "sub_zone": parts[2]}


class AdminPages:
    def __init__(self, master: Master) -> None:
        self.master = master
        # path → (handler, POST only, help)
        self.routes: dict[str, tuple[Callable[[dict[str, list[str]]], Response], bool, str]] = {
            "/ready": (self.ready, False, "print server state, return 200 if LIVE, otherwise return 503"),
            "/server_info": (self.server_info, False, "print server version/status information"),
            "/stats": (self.stats, False, "print server stats"),
            "/stats/prometheus": (self.prometheus, False, "print server stats in prometheus format"),
            "/clusters": (self.clusters, False, "upstream cluster status"),
            "/config_dump": (self.config_dump, False, "dump current Envoy configs"),
            "/listeners": (self.listeners, False, "print listener info"),
            "/quitquitquit": (self.quit, True, "exit the server (gracefully: workers drain first)"),
            "/runtime": (self.runtime, False, "print runtime values"),
            "/runtime_modify": (self.runtime_modify, True, "Adds or modifies runtime values as passed in query parameters. To delete a previously added key, use an empty string as the value. Note that deletion only applies to overrides added via this endpoint; values loaded from disk can be modified via override but not deleted. E.g. ?key1=value1&key2=value2..."),
        }  # fmt: skip

    def handle(self, method: str, target: str, form: str = "") -> Response:
        """``form``: an application/x-www-form-urlencoded body, whose values join the
        query's (Envoy's admin reads both)."""
        path, _, query_string = target.partition("?")
        query = _parse_query(query_string)
        for key, values in _parse_query(form).items():
            query.setdefault(key, []).extend(values)
        route = self.routes.get(path)
        if route is None:
            return _text(404, self._help("invalid path. admin commands are:\n"))
        handler, post_only, _help = route
        if post_only and method != "POST":
            return _text(405, f"Method {method} not allowed, POST required.\n")
        if method not in ("GET", "HEAD", "POST"):
            return _text(405, f"Method {method} not allowed.\n")
        return handler(query)

    def _help(self, heading: str) -> str:
        lines = [heading]
        for path, (_h, post_only, text) in sorted(self.routes.items()):
            lines.append(f"  {path}{' (POST)' if post_only else ''}: {text}\n")
        return "".join(lines)

    # -- pages ------------------------------------------------------------------------

    def ready(self, _q: dict[str, list[str]]) -> Response:
        state = self.master.state
        return _text(200 if state == "LIVE" else 503, f"{state}\n")

    def server_info(self, _q: dict[str, list[str]]) -> Response:
        m = self.master
        opts = m.options
        # The node as proxyd sends it to management servers (proxyd.config.node).
        node = (m.loaded.node if m.loaded is not None else Node()).as_json()
        node.setdefault("id", "")
        node.setdefault("cluster", "")
        uptime = _duration(m.uptime_s())
        all_epochs = _duration(max(m.uptime_s(), time.time() - m.first_started_wall))
        return _json(
            {
                "version": version_string(),
                "state": m.state,
                "uptime_current_epoch": uptime,
                "uptime_all_epochs": all_epochs,
                "hot_restart_version": f"proxyd.{ipc.WIRE_VERSION}",
                "command_line_options": {
                    "base_id": "0",
                    "concurrency": opts.concurrency,
                    "config_path": opts.config_path,
                    "config_yaml": "",
                    "log_level": opts.log_level,
                    "log_format": opts.log_format,
                    "log_path": "",
                    "service_cluster": node["cluster"],
                    "service_node": node["id"],
                    "drain_time": _duration(opts.drain_time_s),
                    "parent_shutdown_time": _duration(opts.parent_shutdown_time_s),
                    "mode": "Serve",
                    "restart_epoch": opts.restart_epoch,
                    "disable_hot_restart": False,
                    "drain_strategy": "Gradual",
                    "socket_path": opts.control_socket,
                    "socket_mode": 0o600,
                },
                "node": node,
                "hot_restart_initializing": m.predecessor is not None and m.state == "INITIALIZING",
                "hot_restart_generation": m.generation,
                "restart_epoch": opts.restart_epoch,
                "pid": os.getpid(),
                "epoch": m.epoch.number,
                # proxyd's: the epoch each worker runs (draining ones too), and the
                # last epoch it refused, with the reason.
                "workers": [
                    {
                        "id": w.id,
                        "pid": w.pid,
                        "epoch": w.epoch,
                        "draining": w.draining,
                        "last_refusal": w.last_refusal(),
                    }
                    for w in m.workers.processes()
                    if w.alive
                ],
            }
        )

    def stats(self, q: dict[str, list[str]]) -> Response:
        fmt = (q.get("format") or [""])[0]
        if fmt == "prometheus":
            return self.prometheus(q)
        self.master.stats_flusher.flush_on_admin()
        self.master.refresh_server_stats()
        store = self.master.stats
        pattern = (q.get("filter") or [""])[0] or None
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                return _text(400, f"Invalid regex: {exc}\n")
        buckets = (q.get("histogram_buckets") or ["summary"])[0]
        if buckets not in ("summary", "cumulative", "none"):
            # Envoy's disjoint and detailed forms are not written by proxyd.
            return _text(400, f"histogram_buckets={buckets} not supported by proxyd\n")
        if fmt == "json":
            return _json(store.render_json(pattern))
        text = store.render_text(
            pattern, used_only="usedonly" in q, buckets=buckets == "cumulative"
        )
        return _text(200, text)

    def prometheus(self, _q: dict[str, list[str]]) -> Response:
        self.master.stats_flusher.flush_on_admin()
        self.master.refresh_server_stats()
        return Response(200, self.master.stats.render_prometheus().encode(), "text/plain; version=0.0.4; charset=UTF-8")  # fmt: skip

    def clusters(self, q: dict[str, list[str]]) -> Response:
        clusters = self.master.epoch.clusters
        if (q.get("format") or [""])[0] == "json":
            return _json({"cluster_statuses": [self._cluster_json(c) for c in clusters]})
        return _text(
            200, "".join(self._cluster_text(c) for c in sorted(clusters, key=lambda c: c.name))
        )

    def _cluster_text(self, c: Cluster) -> str:
        out = [f"{c.name}::observability_name::{c.name}\n"]
        default = (c.cb_max_connections, c.cb_max_pending_requests, c.cb_max_requests, c.cb_max_retries)  # fmt: skip
        high = c.cb_high
        for priority, values in (
            ("default_priority", default),
            ("high_priority", tuple(getattr(high, key) for key in _THRESHOLDS)),
        ):
            for key, value in zip(_THRESHOLDS, values, strict=True):
                out.append(f"{c.name}::{priority}::{key}::{value}\n")
        via_api = "true" if c.name in self.master.xds.state.active_clusters else "false"
        out.append(f"{c.name}::added_via_api::{via_api}\n")
        for e in c.endpoints:
            host = host_key(e.address, e.port)
            host_values = self.master.stats.host_stats(c.name, host)
            prefix = f"{c.name}::{host}::"
            out.extend(f"{prefix}{k}::{host_values.get(k, 0)}\n" for k in _HOST_STATS)
            out.append(f"{prefix}hostname::{e.endpoint_hostname or e.hostname}\n")
            out.append(f"{prefix}health_flags::{self._health_flags(c, e)}\n")
            out.append(f"{prefix}weight::{e.weight}\n")
            out.extend(f"{prefix}{k}::{v}\n" for k, v in _locality(e).items())
            out.append(f"{prefix}canary::false\n{prefix}priority::{e.priority}\n")
            rates = self.master.outlier.success_rates(c.name, e.address, e.port)
            out.append(f"{prefix}success_rate::{_rate(rates[0])}\n")
            out.append(f"{prefix}local_origin_success_rate::{_rate(rates[1])}\n")
        return "".join(out)

    def _cluster_json(self, c: Cluster) -> dict[str, Any]:
        hosts = []
        for e in c.endpoints:
            values = self.master.stats.host_stats(c.name, host_key(e.address, e.port))
            hosts.append(
                {
                    "address": address_json(e.address, e.port),
                    "stats": [
                        {"name": k, "value": str(values.get(k, 0)), **({"type": "GAUGE"} if k.endswith("_active") else {})}
                        for k in _HOST_STATS
                    ],
                    "health_status": self._health_status(c, e),
                    "weight": e.weight,
                    "hostname": e.endpoint_hostname or e.hostname,
                    "locality": {k: v for k, v in _locality(e).items() if v},
                    **({"priority": e.priority} if e.priority else {}),
                }
            )  # fmt: skip
        default = {
            "max_connections": c.cb_max_connections,
            "max_pending_requests": c.cb_max_pending_requests,
            "max_requests": c.cb_max_requests,
            "max_retries": c.cb_max_retries,
        }
        high = c.cb_high
        thresholds = [
            default,  # DEFAULT is the enum's zero value: Envoy's JSON leaves "priority" out
            {
                "priority": "HIGH",
                "max_connections": high.max_connections,
                "max_pending_requests": high.max_pending_requests,
                "max_requests": high.max_requests,
                "max_retries": high.max_retries,
            },
        ]
        out: dict[str, Any] = {
            "name": c.name,
            "observability_name": c.name,
            "circuit_breakers": {"thresholds": thresholds},
            "host_statuses": hosts,
        }
        if c.name in self.master.xds.state.active_clusters:
            out["added_via_api"] = True
        return out

    def _flags(self, c: Cluster, e: Endpoint) -> tuple[str, ...]:
        """Envoy's health flag names: active checking's, else the EDS status; an
        outlier ejection after failed_active_hc (Envoy's order)."""
        checked = self.master.health.flags(c.name, e.address, e.port)
        flags = checked if checked is not None else () if e.healthy else ("failed_eds_health",)
        if e.ejected:
            n = 1 if flags[:1] == ("failed_active_hc",) else 0
            flags = (*flags[:n], "failed_outlier_check", *flags[n:])
        return flags

    def _health_flags(self, c: Cluster, e: Endpoint) -> str:
        """Envoy's health_flags text: "healthy" or "/flag/flag"."""
        return "".join(f"/{f}" for f in self._flags(c, e)) or "healthy"

    def _health_status(self, c: Cluster, e: Endpoint) -> dict[str, Any]:
        """Envoy's HostHealthStatus for /clusters?format=json."""
        flags = self._flags(c, e)
        out: dict[str, Any] = {}
        if "failed_active_hc" in flags:
            out["failed_active_health_check"] = True
        if "failed_outlier_check" in flags:
            out["failed_outlier_check"] = True
        if "active_hc_timeout" in flags:
            out["active_hc_timeout"] = True
        out["eds_health_status"] = "UNHEALTHY" if "failed_eds_health" in flags else "HEALTHY"
        return out

    def config_dump(self, q: dict[str, list[str]]) -> Response:
        m = self.master
        if m.loaded is None:
            return _json({"configs": []})
        dump = config_dump(m.loaded.bootstrap_json, m.config_loaded_wall)
        include_eds = "include_eds" in q
        add_dynamic(dump, m.xds.state, include_eds)
        resource = (q.get("resource") or [""])[0]
        if resource:
            wanted = {
                "static_clusters": "ClustersConfigDump",
                "dynamic_active_clusters": "ClustersConfigDump",
                "dynamic_warming_clusters": "ClustersConfigDump",
                "static_listeners": "ListenersConfigDump",
                "dynamic_listeners": "ListenersConfigDump",
                "static_route_configs": "RoutesConfigDump",
                "dynamic_route_configs": "RoutesConfigDump",
                "dynamic_endpoint_configs": "EndpointsConfigDump",
                "bootstrap": "BootstrapConfigDump",
            }.get(resource)
            if wanted is None:
                return _text(404, f"{resource} not found in config dump\n")
            items = [
                {"@type": c["@type"], **item} if isinstance(item, dict) else item
                for c in dump["configs"]
                if c["@type"].endswith(wanted)
                for item in (
                    c.get(resource) if isinstance(c.get(resource), list) else [c.get(resource)]
                )
                if item is not None  # an empty list is left out of the dump
            ]
            return _json({"configs": items})
        return _json(dump)

    def listeners(self, q: dict[str, list[str]]) -> Response:
        m = self.master
        rows = []
        for listener in m.epoch.listeners:
            address, port = (
                m.sockets.address_of(listener.name)
                if listener.name in m.sockets
                else (listener.address, listener.port)
            )
            rows.append((listener.name, address, port))
        if (q.get("format") or [""])[0] == "json":
            return _json(
                {
                    "listener_statuses": [
                        {"name": n, "local_address": address_json(a, p)}
                        for n, a, p in rows
                    ]
                }
            )  # fmt: skip
        return _text(200, "".join(f"{n}::{host_key(a, p)}\n" for n, a, p in rows))

    def quit(self, _q: dict[str, list[str]]) -> Response:
        return Response(200, b"OK\n", after=lambda: self.master.request_stop(graceful=True))

    def runtime(self, _q: dict[str, list[str]]) -> Response:
        return _json(self.master.runtime.admin_json())

    def runtime_modify(self, q: dict[str, list[str]]) -> Response:
        """Into the admin layer (proxyd.master.runtime); answered once the workers
        run the epoch with the new values (or refused it)."""
        if not q:
            return _text(400, RUNTIME_MODIFY_USAGE)
        runtime = self.master.runtime
        if not runtime.has_admin_layer:
            return _text(503, "No admin layer specified")
        runtime.modify({key: values[-1] for key, values in q.items()})
        return Response(200, b"OK\n", before=self.master.publish_runtime)


def _parse_query(text: str) -> dict[str, list[str]]:
    """Query or form parameters as Envoy's admin decodes them: percent escapes only, a
    "+" stays a "+" (a /stats filter regex or a runtime value may hold one)."""
    return parse_qs(text.replace("+", "%2B"), keep_blank_values=True)


RUNTIME_MODIFY_USAGE = (
    "usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n"
    "       or send the parameters as form values\n"
    "use an empty value to remove a previously added override"
)


def access_log_line(
    method: str, path: str, protocol: str, status: int, received: int, sent: int,
    started: float, duration_ms: int, headers: dict[str, str],
) -> str:  # fmt: skip
    """One line in Envoy's default access log format."""
    stamp = datetime.datetime.fromtimestamp(started, datetime.UTC)
    start = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"

    def h(name: str) -> str:
        return headers.get(name) or "-"

    return (
        f'[{start}] "{method} {path} {protocol}" {status} - {received} {sent} {duration_ms} - '
        f'"{h("x-forwarded-for")}" "{h("user-agent")}" "{h("x-request-id")}" "{h("host")}" "-"\n'
    )
