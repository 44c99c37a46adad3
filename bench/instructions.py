"""Instructions per proxied request of one proxyd worker, counted by callgrind.

Requests per second and CPU time per request move by 10-20% from one run to the next
on a shared machine; the number of instructions a worker executes per request does not
(about ±2% here, from how often a read finds its bytes already there). That makes it
the measure for comparing two versions of the request path (A/B) on a noisy machine;
the figures that count against Envoy still come from ``bench/run.py``.

Starts nginx (100-byte responses) and proxyd with one worker on ``bench/run.py``'s
config, the worker under ``valgrind --tool=callgrind`` (through
``$PROXYD_WORKER_COMMAND``), warms up, then has callgrind count only the instructions
of the measured requests (a dump before and after them). The client is a small
fixed-count keep-alive client in this process's own Python, outside valgrind.

    .venv/bin/python bench/instructions.py [--requests 2000] [--connections 10]
                                           [--filters-on-route] [--tree DIR]

``--tree`` runs the proxyd source tree at DIR (a ``git worktree`` of another commit)
instead of this one. Needs valgrind and nginx (Debian packages; `make bench` installs
them when run as root). Each run takes about a minute: valgrind slows the worker some
fifty times.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as bench  # noqa: E402  (bench/run.py: the config and nginx set-up)

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

# The worker starts some fifty times slower under valgrind: the master must wait for it.
BOOT = (
    "import sys, runpy; import proxyd.master.workers as w; "
    "w.FIRST_READY_TIMEOUT_S = 900.0; sys.argv[0] = 'proxyd'; "
    "runpy.run_module('proxyd', run_name='__main__')"
)


def run_requests(port: int, connections: int, per_connection: int) -> int:
    """Send ``per_connection`` requests, one after another, on each of ``connections``
    keep-alive connections at once; the number of complete responses."""
    sel = selectors.DefaultSelector()
    left: dict[socket.socket, list] = {}
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        s.send(REQUEST)
        left[s] = [per_connection - 1, b""]
        sel.register(s, selectors.EVENT_READ)
    done = 0
    while left:
        events = sel.select(timeout=60)
        if not events:
            raise SystemExit("no response for 60 s")
        for key, _ in events:
            s = key.fileobj
            assert isinstance(s, socket.socket)
            state = left[s]
            data = s.recv(65536)
            if not data:
                raise SystemExit("proxyd closed a connection")
            state[1] += data
            while True:
                buf = state[1]
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                m = re.search(rb"content-length: *(\d+)", buf[:end].lower())
                length = int(m.group(1)) if m else 0
                if len(buf) < end + 4 + length:
                    break
                state[1] = buf[end + 4 + length :]
                done += 1
                if state[0] > 0:
                    state[0] -= 1
                    s.send(REQUEST)
                else:
                    sel.unregister(s)
                    s.close()
                    del left[s]
                    break
    return done


def bench_config(tree: Path, filters_on_route: bool, admin: int, listen: int, up: int) -> str:
    """The benchmark config of ``tree``'s own bench/run.py (an older tree may know no
    HTTP filters)."""
    spec = importlib.util.spec_from_file_location("tree_bench", tree / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    values = {"admin": admin, "listen": listen, "upstream": up}
    if "{route_filters}" in module.PROXY_CONFIG:
        values["route_filters"] = "" if filters_on_route else module.ROUTE_FILTERS_OFF
    text: str = module.PROXY_CONFIG.format(**values)
    return text


def total_instructions(path: str) -> int:
    for line in open(path, errors="replace"):
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--filters-on-route", action="store_true")
    ap.add_argument("--tree", type=Path, default=HERE.parent, help="proxyd source tree")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (apt-get install valgrind)")
    tree = args.tree.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="proxyd-instructions-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up, listen, admin = bench.free_port(), bench.free_port(), bench.free_port()
        (tmp / "nginx.conf").write_text(
            bench.NGINX_CONFIG.format(dir=tmp, port=up, body=bench.BODY.strip() + "\\n")
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.append(
            subprocess.Popen(
                [nginx, "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "nginx-error.log")]
            )
        )
        cfg = tmp / "proxyd.yaml"
        cfg.write_text(bench_config(tree, args.filters_on_route, admin, listen, up))
        out = tmp / "callgrind.out"
        env = dict(
            os.environ,
            PYTHONPATH=str(tree),
            PROXYD_WORKER_COMMAND=(
                f"valgrind --tool=callgrind --callgrind-out-file={out} "
                f"{sys.executable} -m proxyd.worker"
            ),
        )
        log = open(tmp / "proxyd.log", "wb")  # noqa: SIM115 - lives as long as the process
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", BOOT, "-c", str(cfg), "--concurrency", "1",
                 "--worker-heartbeat-timeout-s", "600", "--log-level", "warning",
                 "--control-socket", str(tmp / "ctl.sock")],  # fmt: skip
                cwd=tree,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{listen}/", timeout=10).read()
                break
            except OSError:
                if time.monotonic() > deadline or procs[-1].poll() is not None:
                    raise SystemExit(f"proxyd did not answer; see {tmp / 'proxyd.log'}") from None
                time.sleep(0.5)
        run_requests(listen, args.connections, 30)  # warm-up
        # callgrind_control finds the worker by the pid of its valgrind process.
        pid = next(
            p.split()[0]
            for p in subprocess.run(
                ["ps", "-eo", "pid,args"], capture_output=True, text=True
            ).stdout.splitlines()
            if f"--callgrind-out-file={out}" in p and "proxyd.worker" in p
        )
        subprocess.run(["callgrind_control", "--dump=warm-up", pid], capture_output=True)
        n = run_requests(listen, args.connections, args.requests // args.connections)
        subprocess.run(["callgrind_control", "--dump=measured", pid], capture_output=True)
        time.sleep(1)
        measured = next(
            f for f in sorted(glob.glob(f"{out}*")) if "measured" in open(f, errors="replace").read(4096)
        )
        per_request = total_instructions(measured) / n
        label = "route with filters" if args.filters_on_route else "route without filters"
        print(f"{tree}: {n} requests, {per_request:,.0f} instructions per request ({label})")
        return 0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
