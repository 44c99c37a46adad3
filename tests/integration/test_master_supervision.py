"""The master and its workers as processes: visible, supervised, stopped cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from proxyd.master.workers import Backoff
from tests.integration.master_fixtures import ClientLoop, get
from tests.support import ProxydProcess, http_config, wait_for


@pytest.fixture
def proxy(tmp_path: Path, upstream):
    up = upstream("up")
    with ProxydProcess(tmp_path, http_config(0, 0, {"up": [up.port]})) as p:
        p.listen_port = p.listener_port()
        yield p


def test_master_and_two_workers_are_visible(proxy: ProxydProcess) -> None:
    master = psutil.Process(proxy.pid)
    children = master.children()
    assert len(children) == 2
    assert master.name() == "proxyd-master"
    assert any("proxyd" in part for part in master.cmdline())
    for child in children:
        assert "proxyd.worker" in child.cmdline()
        assert child.name() == "proxyd-worker"
    # What an operator sees: ps shows the kernel's comm name of each process.
    ps = subprocess.run(
        ["ps", "-o", "comm=", "-p", ",".join(str(p.pid) for p in (master, *children))],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert sorted(ps.stdout.split()) == ["proxyd-master", "proxyd-worker", "proxyd-worker"]
    status = proxy.status()
    assert status["pid"] == proxy.pid
    assert status["epoch"] == 1
    assert sorted(w["pid"] for w in status["workers"]) == sorted(c.pid for c in children)
    for w in status["workers"]:
        assert w["rss"] > 0
        assert isinstance(w["cpu_percent"], float)
        assert w["epoch"] == 1


def test_workers_log_like_their_master(tmp_path: Path, upstream) -> None:
    """--log-level and --log-format reach the workers: debug lines in JSON here, and
    none at the default info level (the fixture above)."""
    up = upstream("up")
    config = http_config(0, 0, {"up": [up.port]})
    with ProxydProcess(tmp_path, config, extra_args=("--log-level", "debug")) as p:
        wait_for(lambda: p.log().count('"epoch applied"') >= 2, timeout=10)
        applied = [json.loads(line) for line in p.log().splitlines() if '"epoch applied"' in line]
    assert sorted(e["worker_id"] for e in applied[:2]) == [0, 1]
    assert all(e["level"] == "debug" for e in applied)


def test_workers_do_not_log_below_the_masters_level(proxy: ProxydProcess) -> None:
    assert get(proxy.listen_port)[0] == 200
    assert '"master_' in proxy.log()  # the master's info lines are there
    assert "epoch applied" not in proxy.log()  # the workers' debug lines are not


def test_killed_worker_is_replaced_while_clients_keep_going(proxy: ProxydProcess) -> None:
    port = proxy.listen_port
    assert get(port)[0] == 200
    victim, survivor = proxy.worker_pids()
    with ClientLoop(port, threads=4) as clients:
        wait_for(lambda: clients.snapshot()[0] >= 50, timeout=20)
        os.kill(victim, signal.SIGKILL)

        def replaced() -> int | None:
            workers = proxy.status()["workers"]
            pids = [w["pid"] for w in workers if w["epoch"] >= 1]
            new = [p for p in pids if p not in (victim, survivor, 0)]
            return new[0] if new and survivor in pids else None

        # How soon is the machine's business (tests never assert on speed); that the
        # replacement comes, and serves, is the test's.
        new_pid = wait_for(replaced, timeout=30, interval=0.02)
        replaced_at = time.monotonic()
        ok_at_replacement = clients.snapshot()[0]
        # Enough traffic after the replacement that both sockets' queues are served.
        wait_for(lambda: clients.snapshot()[0] >= ok_at_replacement + 100, timeout=20)
    assert survivor in proxy.worker_pids()
    assert new_pid in proxy.worker_pids()
    # Only connections in flight on the killed worker may fail: at most one per client.
    assert len(clients.failed) <= clients.threads, clients.failed
    # Nothing failed once the replacement was ready (it accepts its share).
    late = [f for f in clients.failed if f[0] > replaced_at]
    assert late == [], late


def test_sigterm_drains_and_exits_0(tmp_path: Path, upstream) -> None:
    up = upstream("up")
    p = ProxydProcess(tmp_path, http_config(0, 0, {"up": [up.port]})).start()
    workers = psutil.Process(p.pid).children()
    assert get(p.listener_port())[0] == 200
    assert p.stop(signal.SIGTERM) == 0
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == []
    log = p.log()
    assert '"master_draining"' in log
    assert '"master_exited"' in log


def test_sigint_stops_fast(tmp_path: Path, upstream) -> None:
    up = upstream("up")
    p = ProxydProcess(tmp_path, http_config(0, 0, {"up": [up.port]})).start()
    workers = psutil.Process(p.pid).children()
    p.proc.send_signal(signal.SIGINT)
    assert p.proc.wait(10) == 0
    p.stop()
    assert psutil.wait_procs(workers, timeout=5)[1] == []
    assert '"master_draining"' not in p.log()


def test_worker_that_cannot_start_stops_the_master(tmp_path: Path, upstream) -> None:
    up = upstream("up")
    cfg = tmp_path / "proxyd.yaml"
    cfg.write_text(http_config(0, 0, {"up": [up.port]}))
    env = dict(os.environ, PROXYD_WORKER_COMMAND=f"{sys.executable} -c 'raise SystemExit(3)'")
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "proxyd", "-c", str(cfg), "--concurrency", "2",
         "--control-socket", str(tmp_path / "c.sock"), "--log-format", "json"],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert res.returncode == 1
    assert time.monotonic() - started < 25  # gave up rather than retrying forever
    assert "cannot start (exit code 3)" in res.stderr.splitlines()[-1]
    assert not (tmp_path / "c.sock").exists()


def test_second_master_on_the_same_control_socket_is_refused(
    proxy: ProxydProcess, tmp_path: Path
) -> None:
    cfg = tmp_path / "other.yaml"
    cfg.write_text(http_config(0, 0, {"up": [1]}))
    res = subprocess.run(
        [sys.executable, "-m", "proxyd", "-c", str(cfg), "--concurrency", "1",
         "--control-socket", proxy.control_socket],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 1
    assert "in use by another proxyd" in res.stderr
    assert proxy.status()["pid"] == proxy.pid  # the first one is untouched


def test_listener_port_in_use_is_a_clear_start_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "proxyd.yaml"
        cfg.write_text(http_config(port, 0, {"up": [1]}))
        res = subprocess.run(
            [sys.executable, "-m", "proxyd", "-c", str(cfg), "--concurrency", "1",
             "--control-socket", str(tmp_path / "c.sock")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert res.returncode == 1
    assert f"cannot bind listener 'ingress' to 127.0.0.1:{port}" in res.stderr


def test_backoff_restarts_at_once_after_one_crash_then_slows_down() -> None:
    b = Backoff()
    assert [b.next_delay(lived_s=0.1) for _ in range(4)] == [0.0, 0.25, 0.5, 1.0]
    assert max(b.next_delay(lived_s=0.1) for _ in range(20)) == 30.0
    # A worker that ran a while before crashing is a single crash again.
    assert b.next_delay(lived_s=60) == 0.0
