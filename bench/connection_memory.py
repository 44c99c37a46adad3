"""Where proxyd's memory per idle keep-alive connection goes, allocation site by site.

A companion to bench/idle_memory.py, which measures the total (RSS) beside Envoy. This
script runs a real worker (``proxyd.worker.process.Worker``) inside its own process, on
the epoch that bench/idle_memory.py's YAML compiles to, with itself as the master (Hello
and EpochMsg over a socketpair, as the master sends them) and a demo upstream. A client
in a child process (raw sockets, bench/idle_memory.py's ``exchange``) opens K keep-alive
connections and sends one request on each; tracemalloc compares a snapshot taken before
with one taken once they are all idle, and the allocation sites that grew are printed
per connection. Then ``sys.getsizeof`` of the pieces a DownstreamConnection allocates
at accept, for comparison.

    .venv/bin/python bench/connection_memory.py [--connections 2000] [--top 15]

tracemalloc sees what Python's allocators hand out (objects, buffers, coroutine frames,
and the httptools parser, which allocates with PyMem_Malloc); not the kernel's socket
buffers and not malloc's own overhead and fragmentation, so its total is below the RSS
growth bench/idle_memory.py reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import linecache
import socket
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import idle_memory  # noqa: E402 - bench/ is not a package; the sibling script is the client

from proxyd import ipc  # noqa: E402
from proxyd.config import load  # noqa: E402
from proxyd.log import configure  # noqa: E402
from proxyd.worker.downstream import DownstreamConnection  # noqa: E402
from proxyd.worker.process import Worker  # noqa: E402


def client(port: int, connections: int, window: int) -> int:
    """Child process: K connections, one request each; "ready N" on stdout, then hold
    them until stdin closes."""
    idle_memory.raise_nofile(connections + 256)
    socks: list[socket.socket | None] = [None] * connections
    kept, answered = idle_memory.exchange(socks, ("127.0.0.1", port), window=window, timeout=120.0)
    print(f"ready {answered}", flush=True)
    sys.stdin.read()
    for s in kept:
        if s is not None:
            s.close()
    return 0


async def run_client(port: int, connections: int, window: int) -> tuple[trio.Process, int]:
    """Start the client child; return it once all its connections sit idle."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--client", str(port), "--connections", str(connections),
         "--window", str(window)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        data = await proc.stdout.receive_some(100)
        if not data:
            raise RuntimeError("the client exited before its connections were idle")
        line += data
    return proc, int(line.split()[1])


async def release_client(proc: trio.Process) -> None:
    assert proc.stdin is not None
    await proc.stdin.aclose()
    await proc.wait()


def listening_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(4096)
    return s


async def measure(connections: int, window: int, top: int, upstreams: tuple[int, int]) -> None:
    lsock = listening_socket()
    port = lsock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "proxyd.yaml"
        cfg.write_text(
            idle_memory.PROXY_CONFIG.format(
                admin=idle_memory.free_port(),
                listen=port,
                upstream1=upstreams[0],
                upstream2=upstreams[1],
            )  # fmt: skip
        )
        epoch = dataclasses.replace(load(str(cfg)).epoch_template, number=1)
    master_end, worker_end = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    master = ipc.Channel(master_end)
    worker = Worker(ipc.Channel(worker_end), 0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        name = epoch.listeners[0].name
        await master.send(ipc.Hello(0, ipc.WIRE_VERSION, (name,), 1), [lsock.fileno()])
        await master.send(ipc.EpochMsg(epoch))
        while not isinstance((await master.receive())[0], ipc.Ready):
            pass

        async def drain_reports() -> None:
            while True:
                await master.receive()  # stats reports: read and dropped

        nursery.start_soon(drain_reports)
        # Warm-up: the upstream pools fill as they will during the measured pass.
        proc, _ = await run_client(port, window, window)
        await release_client(proc)
        await trio.sleep(0.5)  # the worker notices the closes and frees those connections
        gc.collect()
        before = tracemalloc.take_snapshot()
        proc, answered = await run_client(port, connections, window)
        await trio.sleep(0.5)
        gc.collect()
        after = tracemalloc.take_snapshot()
        await release_client(proc)
        await master.send(ipc.Stop())
        nursery.cancel_scope.cancel()

    by_file = after.compare_to(before, "filename")
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"{answered}/{connections} connections answered and idle on one in-process worker")
    print(f"tracemalloc growth: {total / connections:,.0f} bytes per connection, of which:\n")
    print(f"{'bytes/conn':>10s} {'blocks/conn':>11s}  allocation site")
    for s in stats[:top]:
        frame = s.traceback[0]
        where = short(frame.filename)
        code = linecache.getline(frame.filename, frame.lineno).strip()
        print(f"{s.size_diff / connections:10,.0f} {s.count_diff / connections:11.2f}  "
              f"{where}:{frame.lineno}  {code[:70]}")  # fmt: skip
    print("\nby file:")
    for s in by_file[:top]:
        if s.size_diff >= connections:  # at least a byte per connection
            print(f"{s.size_diff / connections:10,.0f} {s.count_diff / connections:11.2f}  "
                  f"{short(s.traceback[0].filename)}")  # fmt: skip


def short(filename: str) -> str:
    for marker in ("/proxyd/", "/site-packages/", "/lib/python3"):
        if marker in filename:
            return filename[filename.index(marker) + 1 :]
    return filename


def sizes() -> None:
    """sys.getsizeof of what a DownstreamConnection holds while idle (after __init__)."""
    from types import SimpleNamespace

    from proxyd.worker.buffers import BufferPool
    from proxyd.worker.deadlines import Timers

    worker = SimpleNamespace(timers=Timers(), buffers=BufferPool())
    with listening_socket() as lsock, socket.create_connection(lsock.getsockname()):
        accepted, peer = lsock.accept()
        with accepted:
            conn = DownstreamConnection(worker, "front", accepted, peer)  # type: ignore[arg-type]
        rb = conn.rb
        pieces = [
            ("DownstreamConnection (slots object)", sys.getsizeof(conn)),
            ("rb: ReceiveBuffer (no buffer while idle)", sys.getsizeof(rb)),
            ("deadline: Deadline", sys.getsizeof(conn.deadline)),
            ("remote: str", sys.getsizeof(conn.remote)),
            ("the receive buffer, only while bytes arrive", 0),
        ]  # fmt: skip
    print("\nsys.getsizeof of what an idle DownstreamConnection holds:")
    for what, n in pieces:
        print(f"{n:8,d}  {what}")
    print(f"{sum(n for _, n in pieces):8,d}  total (the request-head parser is the worker's)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        return client(args.client, args.connections, args.window)
    configure("warning")
    idle_memory.raise_nofile(args.connections + 1024)
    with tempfile.TemporaryDirectory() as tmp, idle_memory.demo_upstreams(Path(tmp)) as ups:
        tracemalloc.start(1)
        trio.run(measure, args.connections, args.window, args.top, ups)
        tracemalloc.stop()
    sizes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
