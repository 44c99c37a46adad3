"""Run one ``python -m proxyd.worker`` the way the master does, without the master.

:class:`WorkerHarness` binds the SO_REUSEPORT listening sockets itself, starts the
worker with one end of a socketpair (``pass_fds``), sends ``Hello`` (with the socket
fds) and an ``EpochMsg`` built from :mod:`proxyd.epoch` objects, and waits for
``Ready``. A background thread reads everything the worker sends: ``Ready`` and
``EpochRefused`` messages go to queues, ``StatsReport`` counters are summed and gauges
kept.

:func:`make_epoch` builds the small epochs the tests need.
"""

from __future__ import annotations

import array
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from proxyd import epoch as ep
from proxyd import ipc


def listening_socket(address: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((address, port))
    s.listen(1024)
    return s


def make_epoch(
    number: int,
    port: int,
    clusters: dict[str, list[int]],
    routes: list[ep.Route] | None = None,
    *,
    listener_name: str = "ingress",
    hcm: dict[str, Any] | None = None,
    cluster: dict[str, Any] | None = None,
    listener: dict[str, Any] | None = None,
    unhealthy: frozenset[int] = frozenset(),
) -> ep.Epoch:
    """One listener on 127.0.0.1:port; one STATIC cluster per entry (ports on 127.0.0.1).

    Without ``routes`` every path goes to the first cluster.
    """
    first = next(iter(clusters))
    if routes is None:
        routes = [ep.Route("default", ep.RouteMatch("prefix", "/"), first)]
    rc = ep.RouteConfig("local_route", (ep.VirtualHost("all", ("*",), tuple(routes)),))
    manager = ep.HttpConnectionManager("ingress_http", "AUTO", rc, **(hcm or {}))
    lst = ep.Listener(listener_name, "127.0.0.1", port, manager, **(listener or {}))
    cls = tuple(
        ep.Cluster(
            name,
            "STATIC",
            (cluster or {}).get("connect_timeout_s", 1.0),
            "ROUND_ROBIN",
            tuple(ep.Endpoint("127.0.0.1", p, healthy=p not in unhealthy) for p in ports),
            **{k: v for k, v in (cluster or {}).items() if k != "connect_timeout_s"},
        )
        for name, ports in clusters.items()
    )
    return ep.Epoch(number, (lst,), cls)


class WorkerHarness:
    """``with WorkerHarness(epoch, tmp_path) as w:`` — a worker serving ``epoch``."""

    def __init__(self, epoch: ep.Epoch, tmp_path: Path, worker_id: int = 0) -> None:
        self.epoch = epoch
        self.worker_id = worker_id
        self.dir = Path(tmp_path)
        self.log_path = self.dir / f"worker{worker_id}.log"
        self.sockets: dict[str, socket.socket] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: queue.Queue[ipc.Ready] = queue.Queue()
        self.refused: queue.Queue[ipc.EpochRefused] = queue.Queue()
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, int] = {}
        self.reports = 0
        self._lock = threading.Lock()
        self._chan: socket.socket | None = None
        self._reader: threading.Thread | None = None

    def bound_port(self, name: str = "ingress") -> int:
        """The port of listener ``name``'s socket: ``make_epoch(n, 0, ...)`` has the
        kernel choose it when the harness binds, as the master does for port 0."""
        return int(self.sockets[name].getsockname()[1])

    # -- life cycle ---------------------------------------------------------------------

    def start(self, hello: ipc.Hello | None = None, timeout: float = 15.0) -> WorkerHarness:
        for lst in self.epoch.listeners:
            self.sockets[lst.name] = listening_socket(lst.address, lst.port)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "proxyd.worker",
                "--ipc-fd", str(child.fileno()),
                "--worker-id", str(self.worker_id),
            ],
            pass_fds=[child.fileno()],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        child.close()
        self._chan = parent
        names = tuple(self.sockets)
        fds = [s.fileno() for s in self.sockets.values()]
        if hello is None:
            hello = ipc.Hello(self.worker_id, ipc.WIRE_VERSION, names, len(fds))
        self._send(hello, fds)
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self._send(ipc.EpochMsg(self.epoch))
        if hello.wire_version == ipc.WIRE_VERSION:
            self.wait_ready(self.epoch.number, timeout)
        return self

    def wait_ready(self, number: int, timeout: float = 15.0) -> ipc.Ready:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no Ready for epoch {number}:\n{self.log()}")
            try:
                msg = self.ready.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"worker exited with {self.proc.returncode}:\n{self.log()}"
                    ) from None
                continue
            if msg.epoch == number:
                return msg

    def wait_refused(self, number: int, timeout: float = 15.0) -> ipc.EpochRefused:
        """The worker's EpochRefused for epoch ``number``."""
        try:
            msg = self.refused.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no EpochRefused for epoch {number}:\n{self.log()}") from None
        assert msg.epoch == number, msg
        return msg

    def send_epoch(
        self,
        epoch: ep.Epoch,
        new_sockets: dict[str, socket.socket] | None = None,
        wait: bool = True,
    ) -> None:
        if new_sockets:
            self.sockets.update(new_sockets)
            fds = [s.fileno() for s in new_sockets.values()]
            self._send(ipc.AddSockets(tuple(new_sockets), len(fds)), fds)
        self.epoch = epoch
        self._send(ipc.EpochMsg(epoch))
        if wait:
            self.wait_ready(epoch.number)

    def drain(self, deadline_s: float) -> None:
        self._send(ipc.Drain(deadline_s))

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            try:
                self._send(ipc.Stop())
            except OSError:
                pass  # the worker closed its end already; wait() below tells how it ended
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.close()
        return self.proc.returncode

    def wait_exit(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self._chan is not None:
            self._chan.close()
            self._chan = None
        for s in self.sockets.values():
            s.close()
        self.sockets.clear()
        if hasattr(self, "_log"):
            self._log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except FileNotFoundError:
            return ""

    def stat(self, name: str) -> int:
        with self._lock:
            if name in self.gauges:
                return self.gauges[name]
            return self.counters.get(name, 0)

    def wait_stat(self, name: str, value: int, timeout: float = 5.0) -> int:
        """Wait until a counter or gauge equals ``value`` (reports come once a second)."""
        deadline = time.monotonic() + timeout
        while self.stat(name) != value and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.stat(name)

    def __enter__(self) -> WorkerHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the channel --------------------------------------------------------------------

    def _send(self, msg: Any, fds: list[int] | None = None) -> None:
        assert self._chan is not None
        data = ipc.encode(msg)
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            sent = self._chan.sendmsg([data], anc)
            data = data[sent:]
        if data:
            self._chan.sendall(data)

    def _read_loop(self) -> None:
        decoder = ipc.FrameDecoder()
        chan = self._chan
        assert chan is not None
        while True:
            try:
                data = chan.recv(65536)
            except OSError:
                return
            if not data:
                return
            decoder.feed(data)
            while (msg := decoder.next_message()) is not None:
                if isinstance(msg, ipc.Ready):
                    self.ready.put(msg)
                elif isinstance(msg, ipc.EpochRefused):
                    self.refused.put(msg)
                elif isinstance(msg, ipc.StatsReport):
                    with self._lock:
                        self.reports += 1
                        for k, v in msg.counters.items():
                            self.counters[k] = self.counters.get(k, 0) + v
                        self.gauges.update(msg.gauges)


def rss_of(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


class RawUpstream:
    """A loopback TCP server that runs ``handler(sock)`` for each connection (a thread
    each): for upstreams that misbehave on purpose. ``connections`` counts those
    accepted, ``closed`` those whose handler returned (the socket is closed then)."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.closed = 0
        self._closed_changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass  # the proxy closed the connection: that is what some tests do
        finally:
            conn.close()
            with self._closed_changed:
                self.closed += 1
                self._closed_changed.notify_all()

    def wait_closed(self, n: int, timeout: float = 10.0) -> None:
        """Wait until ``n`` connections in all were closed by this side."""
        with self._closed_changed:
            if not self._closed_changed.wait_for(lambda: self.closed >= n, timeout):
                raise TimeoutError(f"{self.closed} connections closed, not {n}, in {timeout} s")

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped = True
        self.sock.close()


def read_head(conn: socket.socket) -> bytes:
    """Read one request head (and nothing after it, if the peer sends nothing more)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a content-length body: the head and the body may come
    in separate segments, and a later recv must not find the rest of this one."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a complete head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")[1:]
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    assert len(body) == length, "more bytes than the response announced"
    return head + b"\r\n\r\n" + body


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new connection and read until the proxy closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk


@pytest.fixture
def start_worker(tmp_path):
    """``w = start_worker(epoch)``: a running worker, stopped after the test."""
    started: list[WorkerHarness] = []

    def start(epoch: ep.Epoch, **kw: Any) -> WorkerHarness:
        w = WorkerHarness(epoch, tmp_path, **kw).start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
