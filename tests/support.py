"""Helpers shared by the integration and compatibility tests: ports, upstreams, proxyd.

Everything here starts real things: real upstream servers (``proxyd.demo``), real
``proxyd`` processes, real sockets on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from proxyd import demo, pipes
from proxyd.demo import _Server

__all__ = [
    "UpstreamServer",
    "PipeUpstreamServer",
    "TcpEchoServer",
    "free_port",
    "wait_for",
    "ProxydProcess",
    "http_config",
    "http_listener",
    "static_cluster",
    "VENV_BIN",
]

VENV_BIN = Path(sys.executable).parent


# libyaml's parser and emitter where PyYAML has them: the pure-Python ones take seconds
# on the large generated bootstraps (hundreds of listeners), libyaml a fraction of that.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, with libyaml."""
    return yaml.load(text, Loader=_YAML_LOADER)


def dump_yaml(data: Any) -> str:
    """``yaml.safe_dump(data, sort_keys=False)``, with libyaml."""
    return str(yaml.dump(data, Dumper=_YAML_DUMPER, sort_keys=False))


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# How often a server thread looks whether it should stop. stop() waits for it: with
# serve_forever's default (0.5 s) each stopped upstream cost a quarter of a second on
# average, in hundreds of test teardowns.
SHUTDOWN_POLL_S = 0.02


def _serving_thread(server: _Server) -> threading.Thread:
    return threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_S}, daemon=True
    )


class _NoDelayHandler(demo._Handler):
    """The demo upstream's handler with TCP_NODELAY on each connection, as Envoy and
    production servers set it.

    The handler sends a response's head and its body in two writes. With Nagle on, the
    body waits until the head is acknowledged, and a proxy's pooled keep-alive connection
    acknowledges late (delayed ACK, 40 ms on Linux): every proxied request took ~40 ms,
    about ten times the rest of its work, which made the integration and compatibility
    tests minutes slower without testing anything more. (A Unix socket has no Nagle:
    :class:`PipeUpstreamServer` keeps the plain handler.)
    """

    disable_nagle_algorithm = True


class UpstreamServer(demo.UpstreamServer):
    """:class:`proxyd.demo.UpstreamServer` answering without Nagle's delay (see
    :class:`_NoDelayHandler`); tests take their upstreams from here."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:  # noqa: D107
        super().__init__(name, host, port)
        self._server.RequestHandlerClass = _NoDelayHandler
        self._thread = _serving_thread(self._server)


class _PipeServer(_Server):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        # HTTPServer's own takes the address apart as (host, port).
        import socketserver

        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", 0


class PipeUpstreamServer(UpstreamServer):
    """The demo upstream on a Unix socket at ``path`` ("@name": abstract namespace);
    ``with PipeUpstreamServer("a", path) as up:``. Its ``port`` is 0 and ``host`` the
    path, so ``pipes.host_label(up.host, up.port)`` is how proxyd names it."""

    def __init__(self, name: str, path: str) -> None:  # noqa: D107 - see the class
        if not pipes.is_abstract(path) and os.path.exists(path):
            os.unlink(path)
        self._server = _PipeServer(name, pipes.sockaddr(path))  # type: ignore[arg-type]
        self.name = name
        self.host = path
        self.port = 0
        self._thread = _serving_thread(self._server)


class ThreadedTcpServer:
    """A loopback TCP server for tests: one thread accepts, one thread per connection
    runs :meth:`_serve` (what a subclass does with it), from construction until
    :meth:`close`. A subclass sets its own attributes before calling ``__init__``."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed: the test is over
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError


class TcpEchoServer:
    """A TCP echo server: echoes what arrives; after the client's end of stream it
    sends ``<eof>`` and closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> TcpEchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass  # not connected: Linux still wakes accept() on shutdown of a listener
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed: the test is over
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.sendall(b"<eof>")
            except OSError:
                pass  # the proxy closed it (a timeout case): nothing more to do


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def http_config(
    listen_port: int,
    admin_port: int,
    clusters: dict[str, list[int]],
    routes: str | None = None,
    *,
    hcm_extra: str = "",
    route_extra: str = "",
    cluster_extra: str = "",
) -> str:
    """An Envoy v3 bootstrap: one HTTP listener, one static cluster per entry.

    ``clusters`` maps a cluster name to upstream ports on 127.0.0.1. ``routes`` is the
    YAML of the single virtual host's ``routes`` list (indented for that place); by
    default every path goes to the first cluster. ``hcm_extra`` is added to the
    connection manager's typed_config, ``route_extra`` to the default route's action,
    ``cluster_extra`` to every cluster (each already indented).
    """
    first = next(iter(clusters))
    if routes is None:
        routes = f"""
              - match: {{ prefix: "/" }}
                route: {{ cluster: {first} {route_extra} }}"""
    out = [
        f"""admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listen_port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
{hcm_extra}
          route_config:
            name: local_route
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:{routes}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:"""
    ]
    for name, ports in clusters.items():
        eps = "".join(
            f"""
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {p} }}"""
            for p in ports
        )
        out.append(
            f"""
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
{cluster_extra}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:{eps}"""
        )
    return "".join(out) + "\n"


HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network."
    "http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def static_cluster(name: str, ports: list[int]) -> dict[str, Any]:
    """A STATIC round-robin cluster of upstreams on 127.0.0.1, as bootstrap data."""
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ports
    ]
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    }


def http_listener(
    name: str,
    port: int,
    route_config: dict[str, Any],
    http_filters: list[dict[str, Any]] | None = None,
    **hcm_fields: Any,
) -> dict[str, Any]:
    """A listener on 127.0.0.1 with one connection manager (stat_prefix = name unless
    ``hcm_fields`` name one), ``http_filters`` and then the router, as bootstrap data;
    ``hcm_fields`` are added to the connection manager."""
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        **hcm_fields,
        "route_config": route_config,
        "http_filters": [
            *(http_filters or []),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
        ],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def bootstrap(
    listeners: list[dict[str, Any]], clusters: list[dict[str, Any]], **fields: Any
) -> dict[str, Any]:
    """A bootstrap with an admin on 127.0.0.1 (port 0: the kernel picks one), the given
    static listeners and clusters, and ``fields`` (layered_runtime, …) at the top."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        **fields,
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


# An HTTP health check that notices a dead or revived host within a few tenths of a
# second (the demo upstreams answer /healthz).
FAST_HEALTH_CHECK: dict[str, Any] = {
    "timeout": "0.5s",
    "interval": "0.2s",
    "no_traffic_interval": "0.2s",
    "unhealthy_threshold": 1,
    "healthy_threshold": 1,
    "reuse_connection": False,
    "http_health_check": {"path": "/healthz"},
}


def lb_endpoint(port: int) -> dict[str, Any]:
    """One load_assignment lb_endpoint on 127.0.0.1:``port``, as bootstrap data."""
    return {
        "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    }


def grouped_config(listen: int, admin: int, groups: list[dict[str, Any]], **cluster: Any) -> str:
    """http_config with one cluster "svc" whose load_assignment.endpoints are ``groups``
    (priorities, localities), checked by FAST_HEALTH_CHECK, with ``cluster`` merged in."""
    data = load_yaml(http_config(listen, admin, {"svc": [1]}))
    (c,) = data["static_resources"]["clusters"]
    c["load_assignment"]["endpoints"] = groups
    c["health_checks"] = [FAST_HEALTH_CHECK]
    c.update(cluster)
    return dump_yaml(data)


class ProxydProcess:
    """A real ``proxyd`` master with its workers, started from a config file.

    ``with ProxydProcess(tmp_path, yaml_text, admin_port) as p:`` waits until the admin
    ``/ready`` answers 200; leaving the block stops it (SIGTERM, then SIGKILL).

    With ``admin_port`` 0 (the default) the config's admin address should have
    ``port_value: 0`` too: proxyd binds a free port itself and writes the address to
    ``--admin-address-path``, where :meth:`start` reads it (``p.admin_port``). Listeners
    with ``port_value: 0`` get their port the same way; :meth:`listener_port` asks the
    admin ``/listeners`` for it. Nothing picks a port before proxyd binds it.
    """

    def __init__(
        self,
        tmp_path: Path,
        config: str,
        admin_port: int = 0,
        concurrency: int = 2,
        extra_args: tuple[str, ...] = (),
        config_name: str = "proxyd.yaml",
    ) -> None:
        self.dir = Path(tmp_path)
        self.config_path = self.dir / config_name
        self.config_path.write_text(config)
        self.admin_port = admin_port
        self.control_socket = str(self.dir / "control.sock")
        self.log_path = self.dir / "proxyd.log"
        self.admin_address_path = self.dir / "admin.address"
        self.args = [
            sys.executable, "-m", "proxyd",
            *(() if admin_port else ("--admin-address-path", str(self.admin_address_path))),
            "-c", str(self.config_path),
            "--concurrency", str(concurrency),
            "--control-socket", self.control_socket,
            "--log-format", "json",
            "--drain-time-s", "5",
            *extra_args,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0, live: bool = True) -> ProxydProcess:
        """Start and wait until ``/ready`` says 200 (``live``), or until the admin
        answers at all (initialization may still be going on)."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        learn_port = self.admin_port == 0
        if learn_port:
            self.admin_address_path.unlink(missing_ok=True)  # a previous run's
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxyd exited with {self.proc.returncode}:\n{self.log()}")
            if learn_port:
                if not self.admin_address_path.exists():
                    time.sleep(0.05)
                    continue
                self.admin_port = admin_address_port(self.admin_address_path.read_text())
                learn_port = False
            try:
                if self.admin("/ready")[0] == 200 or not live:
                    return self
            except OSError:
                pass  # admin not listening yet
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"proxyd not ready within {timeout} s:\n{self.log()}")

    def listener_port(self, name: str = "ingress", timeout: float = 10.0) -> int:
        """The port listener ``name`` is bound to, from the admin ``/listeners``; waits
        up to ``timeout`` for it to be there (an LDS listener may come later)."""

        def port() -> int:
            doc = json.loads(self.admin("/listeners?format=json")[1])
            for entry in doc["listener_statuses"]:
                if entry["name"] == name:
                    return int(entry["local_address"]["socket_address"]["port_value"])
            return 0

        return int(wait_for(port, timeout=timeout))

    def admin(self, path: str, method: str = "GET") -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            with e:  # the error holds the response and its socket: close both now
                return e.code, e.read().decode()

    def stats(self) -> dict[str, int]:
        """The admin ``/stats`` counters and gauges as a dict."""
        out = {}
        for line in self.admin("/stats")[1].splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def ctl(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``proxyctl`` against this master's control socket."""
        return subprocess.run(
            [str(VENV_BIN / "proxyctl"), "--control-socket", self.control_socket, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def status(self) -> dict[str, Any]:
        res = self.ctl("status", "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.status()["workers"]]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> ProxydProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        children = _children_of(self.pid)
        self.stop()
        # No orphans: any worker left behind by a failed test is killed here.
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it exited on its own meanwhile


def admin_address_port(text: str) -> int:
    """The port in what ``--admin-address-path`` holds ("127.0.0.1:9901", no newline)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not an admin address: {text!r}")
    return int(port)


def _children_of(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
