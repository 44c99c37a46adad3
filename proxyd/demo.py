"""Demo upstreams, and the launcher behind ``make run``.

``python -m proxyd.demo --config conf/front-proxy.yaml`` starts the two demo services
of the front-proxy example (service1 and service2, on the ports the config's clusters
of those names point at: 127.0.0.1:18081 and :18082), then proxyd on that config, prints
the curl line to try, and stops everything on Ctrl-C (SIGINT) or SIGTERM: the signal
is passed on to proxyd (SIGTERM: graceful stop, SIGINT: fast stop), and proxyd's
processes are killed if they are still there :data:`STOP_GRACE_S` later.
``python -m proxyd.demo upstream --name NAME --port PORT`` runs one upstream.

The upstream is a small HTTP/1.1 keep-alive server from the standard library. It is also
what the integration and compatibility tests proxy to, so it understands a few paths:

* ``/delay/<ms>/...`` waits that long before answering;
* ``/hold/...`` waits until :meth:`UpstreamServer.release` is called (at most
  :data:`HOLD_LIMIT_S`), then answers the rest of the path: a request a test keeps in
  flight for as long as it needs, without guessing a delay;
* ``/status/<code>`` answers with that status;
* ``/bytes/<n>`` answers with n bytes (content-length), ``/chunked/<n>`` chunked;
* ``/echo`` answers with JSON describing the request: method, path, headers, and the
  length and SHA-256 of the body, which is read as it streams and never kept.

Every response carries ``x-upstream-name: <name>``. A test waits for requests to arrive
with :meth:`UpstreamServer.wait_requests` (a request counts once its head is read).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEMO_SERVICES = ("service1", "service2")
CHUNK = 64 * 1024
# After passing SIGTERM or SIGINT on, how long proxyd has to exit before it is killed.
STOP_GRACE_S = 15.0
HOLD_LIMIT_S = 60.0  # a /hold/ request nobody releases ends after this long


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # the demo upstream keeps quiet; proxyd's access log tells what happened

    def _body_chunks(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers are read and dropped
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, CHUNK))
                    if not data:
                        raise ConnectionError("client closed mid-chunk")
                    left -= len(data)
                    yield data
                self.rfile.readline(3)
        else:
            left = int(self.headers.get("content-length") or 0)
            while left:
                data = self.rfile.read(min(left, CHUNK))
                if not data:
                    raise ConnectionError("client closed mid-body")
                left -= len(data)
                yield data

    def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("x-upstream-name", self.server.name)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        self.server.count_request()
        digest = hashlib.sha256()
        size = 0
        for chunk in self._body_chunks():
            digest.update(chunk)
            size += len(chunk)
        path = self.path
        parts = path.split("?", 1)[0].split("/")
        if len(parts) > 2 and parts[1] == "delay":
            time.sleep(int(parts[2]) / 1000)
            parts = ["", *parts[3:]]
        elif len(parts) > 1 and parts[1] == "hold":
            self.server.released.wait(HOLD_LIMIT_S)
            parts = ["", *parts[2:]]
        head = parts[1] if len(parts) > 1 else ""
        arg = parts[2] if len(parts) > 2 else ""
        if head == "status" and arg.isdigit():
            self._send(int(arg), f"{self.server.name} status {arg}\n".encode())
        elif head == "bytes" and arg.isdigit():
            self._send(200, b"x" * int(arg), "application/octet-stream")
        elif head == "chunked" and arg.isdigit():
            self._send_chunked(int(arg))
        elif head == "echo":
            info = {
                "upstream": self.server.name,
                "method": self.command,
                "path": path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "body_bytes": size,
                "body_sha256": digest.hexdigest(),
            }
            self._send(200, json.dumps(info).encode(), "application/json")
        else:
            self._send(200, f"Hello from {self.server.name} ({self.command} {path})\n".encode())

    def _send_chunked(self, n: int) -> None:
        self.send_response(200)
        self.send_header("x-upstream-name", self.server.name)
        self.send_header("content-type", "application/octet-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        block = b"y" * CHUNK
        while n:
            k = min(n, CHUNK)
            self.wfile.write(b"%x\r\n" % k + block[:k] + b"\r\n")
            n -= k
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, name: str, addr: tuple[str, int]) -> None:
        self.name = name
        self.connections = 0
        self.requests = 0
        self.counted = threading.Condition()  # notified when either count moves
        self.released = threading.Event()  # set: /hold/ requests go on
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client (the proxy) that went away mid-exchange is normal here; say nothing.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.counted:
            self.connections += 1
            self.counted.notify_all()
        super().process_request(request, client_address)

    def count_request(self) -> None:
        with self.counted:
            self.requests += 1
            self.counted.notify_all()


class UpstreamServer:
    """A demo upstream in a background thread: ``with UpstreamServer("a") as up: up.port``."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server(name, (host, port))
        self.name = name
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        return self._server.connections

    @property
    def requests(self) -> int:
        """Requests whose head has been read so far."""
        return self._server.requests

    def wait_requests(self, n: int, timeout: float = 10.0) -> None:
        """Wait until at least ``n`` request heads have arrived (in all, since the start);
        TimeoutError after ``timeout`` seconds."""
        server = self._server
        with server.counted:
            if not server.counted.wait_for(lambda: server.requests >= n, timeout):
                raise TimeoutError(
                    f"upstream {self.name}: {server.requests} requests, not {n}, in {timeout} s"
                )

    def release(self) -> None:
        """Let the ``/hold/`` requests go on, those waiting and those still to come."""
        self._server.released.set()

    def hold(self) -> None:
        """After a :meth:`release`: hold the ``/hold/`` requests that come from now on."""
        self._server.released.clear()

    def start(self) -> UpstreamServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()  # a held request must not outlive its server by HOLD_LIMIT_S
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_ready(admin_url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(admin_url + "/ready", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)
    return False


class _StopOnSignals:
    """While installed, SIGTERM and SIGINT to the launcher go on to proxyd.

    proxyd runs in its own session (process group: the master and its workers), so
    a terminal's Ctrl-C reaches it only through here, once. A timer kills the whole
    group if it is still there STOP_GRACE_S after the first signal.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self._timer: threading.Timer | None = None
        self._previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)
        }

    def _handle(self, signum: int, _frame: Any) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signum)
        if self._timer is None:
            self._timer = threading.Timer(STOP_GRACE_S, self.kill_group)
            self._timer.daemon = True
            self._timer.start()

    def kill_group(self) -> None:
        """SIGKILL to what is left of proxyd's process group (the master, or workers
        it left behind); nothing when the group is empty."""
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is empty: everything exited

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._timer is not None:
            self._timer.cancel()


def _demo_ports(config: str) -> tuple[tuple[str, int], int, list[tuple[str, int]]]:
    """(admin address, listener port, [(service, port)]) from the
    config proxyd will run, so the launcher follows the file (and tests can move it)."""
    from proxyd.config import load

    loaded = load(config)
    if loaded.admin is None or not loaded.epoch_template.listeners:
        raise ValueError(f"{config}: the demo needs an admin address and a listener")
    admin = (loaded.admin.address, loaded.admin.port)
    listener = loaded.epoch_template.listeners[0]
    services = []
    for cluster in loaded.epoch_template.clusters:
        if cluster.name in DEMO_SERVICES and cluster.endpoints:
            services.append((cluster.name, cluster.endpoints[0].port))
    return admin, listener.port, services


def run_front_proxy(config: str, concurrency: int | None) -> int:
    from proxyd.errors import ConfigError

    try:
        admin, listen_port, services = _demo_ports(config)
    except (ConfigError, ValueError) as exc:
        print(f"cannot run the demo: {exc}", file=sys.stderr)
        return 1
    servers = []
    for name, port in services:
        try:
            servers.append(UpstreamServer(name, port=port).start())
        except OSError as exc:
            print(f"cannot start demo upstream {name} on port {port}: {exc}", file=sys.stderr)
            for s in servers:
                s.stop()
            return 1
    cmd = [sys.executable, "-m", "proxyd", "-c", config]
    if concurrency:
        cmd += ["--concurrency", str(concurrency)]
    proc = subprocess.Popen(cmd, start_new_session=True)
    stopper = _StopOnSignals(proc)
    try:
        if _wait_ready(f"http://{admin[0]}:{admin[1]}", proc):
            print(
                f"\nproxyd is up on port {listen_port} (admin on {admin[0]}:{admin[1]}). Try:\n\n"
                f"    curl -H 'Host: service1.example.com' localhost:{listen_port}/\n"
                f"    curl -H 'Host: service2.example.com' localhost:{listen_port}/\n\n"
                "Ctrl-C stops it.\n",
                flush=True,
            )
        return proc.wait()
    finally:
        stopper.kill_group()  # leftovers only: after proc.wait() the group is empty
        stopper.uninstall()
        for s in servers:
            s.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proxyd.demo", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command")
    up = sub.add_parser("upstream", help="run one demo upstream")
    up.add_argument("--name", required=True)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", default="conf/front-proxy.yaml")
    parser.add_argument("--concurrency", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "upstream":
        server = _Server(args.name, (args.host, args.port))
        print(f"upstream {args.name} on {args.host}:{server.server_address[1]}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass  # Ctrl-C is how the demo upstream is meant to stop
        return 0
    return run_front_proxy(args.config, args.concurrency)


if __name__ == "__main__":
    sys.exit(main())
