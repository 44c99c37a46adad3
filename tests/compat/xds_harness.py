"""What the xDS compatibility scenarios run against: targets, config sources, probes.

A **target** is a proxy that takes a bootstrap (Envoy v3, as a dict) and serves what xDS
tells it: :class:`Target` is the protocol (``start(bootstrap, workdir)`` returns the admin
URL as soon as the admin answers, *before* initialization is done, because the scenarios
watch initialization; ``stop()``). :class:`EnvoyTarget` runs real Envoy.

A **source** is one way of delivering resources: ADS, per-type gRPC, REST-JSON polling
(all three through :class:`tests.xds_server.XdsServer`) or ``path_config_source`` files.
Each source gives the config-source snippets for the bootstrap and the resources, pushes
a snapshot, and waits until the target has applied (``wait_applied``) or rejected
(``wait_rejected``) a version, with the evidence that source can give: the server's
ACK/NACK log for gRPC, the version the next REST poll carries, Envoy's subscription
stats (``…update_rejected``, ``…version_text``) for every source.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

import yaml
from google.protobuf.message import Message

from tests.compat.envoy_runner import EnvoyRunner
from tests.support import ProxydProcess, wait_for
from tests.xds_server import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SeenRequest,
    XdsServer,
    resource_name,
    write_discovery_file,
)

NODE = {"id": "compat-node", "cluster": "compat-cluster"}
HTTP2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}
ADS_SOURCE = {"ads": {}, "resource_api_version": "V3"}
REFRESH_DELAY = "0.1s"  # REST polls every 100-200 ms (Envoy adds up to one delay of jitter)


# -- targets -------------------------------------------------------------------------------


class Target(Protocol):
    name: str

    def start(self, bootstrap: dict[str, Any], workdir: Path) -> str:
        """Start on ``bootstrap``; return the admin URL once the admin answers."""
        ...

    def stop(self) -> None: ...


class _EnvoyNoWait(EnvoyRunner):
    """EnvoyRunner that returns as soon as the admin answers at all (LIVE or 503)."""

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if self.learn_admin_port():
                    url = f"http://127.0.0.1:{self.admin_port}/ready"
                    with urllib.request.urlopen(url, timeout=1.0):
                        return
            except urllib.error.HTTPError as exc:
                exc.close()
                return  # 503 PRE_INITIALIZING: the admin is up, init is not done
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass  # not listening yet, or the address file half written
            if time.monotonic() > deadline:
                raise TimeoutError(f"envoy admin not up:\n{self.log_text()}")
            time.sleep(0.05)


class EnvoyTarget:
    name = "envoy"

    def __init__(self) -> None:
        self._runner: _EnvoyNoWait | None = None

    def start(self, bootstrap: dict[str, Any], workdir: Path) -> str:
        self._runner = _EnvoyNoWait(yaml.safe_dump(bootstrap, sort_keys=False))
        self._runner.__enter__()
        return f"http://127.0.0.1:{self._runner.admin_port}"

    def log_text(self) -> str:
        return self._runner.log_text() if self._runner else ""

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.__exit__(None, None, None)
            self._runner = None


# -- probes ----------------------------------------------------------------------------------


def admin_get(admin: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(admin + path, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def ready_state(admin: str) -> str:
    """``/ready``'s body: LIVE, PRE_INITIALIZING, ..."""
    return admin_get(admin, "/ready")[1].strip()


def listener_port(admin: str, name: str, timeout: float = 15.0) -> int:
    """The port listener ``name`` is bound to (``/listeners``, the same in Envoy and
    proxyd), once it is there: listeners on port 0 get theirs from the kernel."""

    def port() -> int:
        status, body = admin_get(admin, "/listeners?format=json")
        if status != 200:
            return 0
        for entry in json.loads(body).get("listener_statuses", []):
            if entry["name"] == name:
                return int(entry["local_address"]["socket_address"]["port_value"])
        return 0

    return int(wait_for(port, timeout=timeout))


def stats(admin: str) -> dict[str, str]:
    """Admin ``/stats``: counters, gauges and text readouts (quotes removed)."""
    out = {}
    for line in admin_get(admin, "/stats")[1].splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            out[name] = value.strip().strip('"')
    return out


def get(port: int, path: str) -> tuple[int, str | None]:
    """GET ``path`` on 127.0.0.1:``port``: (status, x-upstream-name), or (0, error)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-upstream-name")
    except (OSError, http.client.HTTPException) as exc:
        return 0, type(exc).__name__
    finally:
        conn.close()


def wait_routing(
    port: int, expected: dict[str, tuple[int, str | None]], timeout: float = 5
) -> None:
    """Wait until every path in ``expected`` answers (status, upstream) as given."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {path: get(port, path) for path in expected}
        if seen == expected:
            return
        if time.monotonic() > deadline:
            assert seen == expected, f"routing after {timeout} s: {seen}"
        time.sleep(0.05)


def stat_prefix(type_url: str, name: str = "") -> str:
    """Where Envoy keeps a subscription's stats: ``name`` is the cluster for EDS and
    ``<listener stat_prefix>.rds.<route config>`` for RDS."""
    return {
        CLUSTER: "cluster_manager.cds",
        LISTENER: "listener_manager.lds",
        ROUTE: f"http.{name}",
        ENDPOINT: f"cluster.{name}",
    }[type_url]


def _stat_names(type_url: str, resources: list[Message], rds_prefix: str) -> list[str]:
    if type_url == ENDPOINT:
        return [stat_prefix(ENDPOINT, resource_name(r)) for r in resources]
    if type_url == ROUTE:
        return [stat_prefix(ROUTE, f"{rds_prefix}.rds.{resource_name(r)}") for r in resources]
    return [stat_prefix(type_url)]


def wait_stat(admin: str, predicate: Any, timeout: float = 5) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        s = stats(admin)
        if predicate(s):
            return s
        if time.monotonic() > deadline:
            raise TimeoutError(f"stats condition not met within {timeout} s")
        time.sleep(0.05)


# -- sources -----------------------------------------------------------------------------------


class Source:
    """One way of delivering xDS resources; subclasses say how."""

    name = ""
    server_sees_subscriptions = True  # whether the source can see what the client asks for

    def __init__(self, rds_stat_prefix: str) -> None:
        self.rds_stat_prefix = rds_stat_prefix  # the listener's stat_prefix, for RDS stats
        self.pushed: dict[str, list[Message]] = {}

    def bootstrap(self) -> dict[str, Any]:
        raise NotImplementedError

    def config_source(self, type_url: str, name: str = "") -> dict[str, Any]:
        """The ConfigSource for resources of ``type_url`` (``name``: which one)."""
        raise NotImplementedError

    def push(self, type_url: str, version: str, resources: list[Message]) -> None:
        raise NotImplementedError

    def wait_applied(self, admin: str, type_url: str, version: str) -> None:
        names = _stat_names(type_url, self.pushed[type_url], self.rds_stat_prefix)
        wait_stat(admin, lambda s: all(s.get(f"{n}.version_text") == version for n in names))

    def wait_rejected(
        self, admin: str, type_url: str, bad_version: str, good_version: str
    ) -> SeenRequest | None:
        """Wait for the target to reject ``bad_version``; return the NACK where there is one."""
        names = _stat_names(type_url, self.pushed[type_url], self.rds_stat_prefix)

        def rejected(s: dict[str, str]) -> bool:
            return any(int(s.get(f"{n}.update_rejected", "0")) > 0 for n in names)

        s = wait_stat(admin, rejected)
        assert all(s.get(f"{n}.version_text") == good_version for n in names)
        return None


class _ServerSource(Source):
    def __init__(self, xds: XdsServer, rds_stat_prefix: str) -> None:
        super().__init__(rds_stat_prefix)
        self.xds = xds

    def _xds_cluster(self, name: str, port: int, http2: bool) -> dict[str, Any]:
        ep = {
            "endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
            }
        }
        cluster: dict[str, Any] = {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [ep]}]},
        }
        if http2:
            cluster["typed_extension_protocol_options"] = HTTP2_OPTIONS
        return cluster

    def bootstrap(self) -> dict[str, Any]:
        return {
            "node": NODE,
            "static_resources": {
                "clusters": [
                    self._xds_cluster("xds_cluster", self.xds.grpc_port, http2=True),
                    self._xds_cluster("xds_rest", self.xds.rest_port, http2=False),
                ]
            },
            "dynamic_resources": {
                "lds_config": self.config_source(LISTENER),
                "cds_config": self.config_source(CLUSTER),
            },
        }

    def push(self, type_url: str, version: str, resources: list[Message]) -> None:
        self.pushed[type_url] = resources
        self.xds.set_resources(type_url, version, resources)

    def wait_applied(self, admin: str, type_url: str, version: str) -> None:
        self.xds.wait_for_ack(type_url, version, timeout=5)
        super().wait_applied(admin, type_url, version)

    def wait_rejected(
        self, admin: str, type_url: str, bad_version: str, good_version: str
    ) -> SeenRequest | None:
        nack = self.xds.wait_for_nack(type_url, bad_version, timeout=5)
        super().wait_rejected(admin, type_url, bad_version, good_version)
        return nack


class AdsSource(_ServerSource):
    name = "ads"

    def bootstrap(self) -> dict[str, Any]:
        boot = super().bootstrap()
        boot["dynamic_resources"]["ads_config"] = {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
        }
        return boot

    def config_source(self, type_url: str, name: str = "") -> dict[str, Any]:
        return ADS_SOURCE


class GrpcSource(_ServerSource):
    name = "grpc"

    def config_source(self, type_url: str, name: str = "") -> dict[str, Any]:
        return {
            "resource_api_version": "V3",
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
            },
        }


class RestSource(_ServerSource):
    name = "rest"

    def config_source(self, type_url: str, name: str = "") -> dict[str, Any]:
        return {
            "resource_api_version": "V3",
            "api_config_source": {
                "api_type": "REST",
                "transport_api_version": "V3",
                "cluster_names": ["xds_rest"],
                "refresh_delay": REFRESH_DELAY,
            },
        }

    def wait_rejected(
        self, admin: str, type_url: str, bad_version: str, good_version: str
    ) -> SeenRequest | None:
        """REST has no NACK: the client polls again with the version it kept."""

        def polled_again() -> SeenRequest | None:
            sent = [s for s in self.xds.responses(type_url) if s.version == bad_version]
            if not sent or sent[0].status != 200:
                return None
            after = [r for r in self.xds.requests(type_url) if r.at > sent[0].at]
            return next((r for r in after if r.request.version_info == good_version), None)

        again = self.xds.wait_until(polled_again, timeout=5)
        assert not again.is_nack  # REST requests never carry error_detail
        Source.wait_rejected(self, admin, type_url, bad_version, good_version)
        return None


class FileSource(Source):
    """``path_config_source`` files, one per type and one per EDS cluster (Envoy's EDS
    rejects a ClusterLoadAssignment for another cluster), replaced by rename."""

    name = "file"
    server_sees_subscriptions = False

    def __init__(self, directory: Path, rds_stat_prefix: str) -> None:
        super().__init__(rds_stat_prefix)
        self.dir = directory

    def path(self, type_url: str, name: str = "") -> Path:
        base = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds"}[type_url]
        return self.dir / (f"{base}-{name}.json" if type_url == ENDPOINT else f"{base}.json")

    def bootstrap(self) -> dict[str, Any]:
        return {
            "node": NODE,
            "dynamic_resources": {
                "lds_config": self.config_source(LISTENER),
                "cds_config": self.config_source(CLUSTER),
            },
        }

    def config_source(self, type_url: str, name: str = "") -> dict[str, Any]:
        return {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(self.path(type_url, name))},
        }

    def push(self, type_url: str, version: str, resources: list[Message]) -> None:
        self.pushed[type_url] = resources
        if type_url == ENDPOINT:
            for r in resources:
                write_discovery_file(self.path(ENDPOINT, resource_name(r)), ENDPOINT, version, [r])
        else:
            write_discovery_file(self.path(type_url), type_url, version, resources)


class ProxydTarget:
    """proxyd on the same bootstrap, one worker, returning once its admin answers."""

    name = "proxyd"

    def __init__(self) -> None:
        self._proc: ProxydProcess | None = None

    def start(self, bootstrap: dict[str, Any], workdir: Path) -> str:
        config = {
            **bootstrap,
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        }
        self._proc = ProxydProcess(workdir, yaml.safe_dump(config, sort_keys=False), concurrency=1)
        self._proc.start(live=False)  # learns the admin port from --admin-address-path
        return f"http://127.0.0.1:{self._proc.admin_port}"

    def log_text(self) -> str:
        return self._proc.log() if self._proc else ""

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.__exit__(None, None, None)
            self._proc = None
