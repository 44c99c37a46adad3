"""Hot restart: a new master takes the sockets over; the old one drains and exits.

The masters after the first are not children of the test (the old master starts the
new one and then exits), so :class:`MasterLine` follows the line by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.master_fixtures import get, upstream_name
from tests.support import ProxydProcess, http_config, wait_for

ROUTE_TO_B = """
              - match: { prefix: "/" }
                route: { cluster: b }"""


def gone(pid: int) -> bool:
    """The process exited (a zombie waiting for its parent counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class MasterLine:
    """A proxyd started by the test and the masters that hot restarts put after it."""

    def __init__(self, first: ProxydProcess) -> None:
        self.p = first
        self.pids = [first.pid]
        self._seen: set[int] = set()

    @property
    def master_pid(self) -> int:
        return self.pids[-1]

    def remember_children(self) -> None:
        for pid in self.pids:
            try:
                self._seen.update(c.pid for c in psutil.Process(pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass  # that master exited already

    def hot_restart(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``proxyctl hot-restart``; on success the new master is the one to follow."""
        self.remember_children()
        res = self.p.ctl("hot-restart", *args, timeout=timeout)
        if res.returncode == 0:
            new_pid = int(res.stdout.split("new master pid ")[1].split()[0])
            self.pids.append(new_pid)
        self.remember_children()
        return res

    def stop(self) -> None:
        """SIGTERM the current master, then make sure nothing of the line is left."""
        self.remember_children()
        try:
            os.kill(self.master_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it is gone already
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(gone(p) for p in self.pids):
            time.sleep(0.05)
        for pid in [*self.pids, *self._seen]:
            if not gone(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # exited meanwhile
        self.p.stop()


@pytest.fixture
def line(tmp_path: Path, upstream):
    a, b = upstream("a"), upstream("b")
    clusters = {"a": [a.port], "b": [b.port]}
    args = ("--drain-time-s", "10", "--parent-shutdown-time-s", "20")
    # Listener and admin on port 0: the new masters inherit the sockets, so the ports.
    p = ProxydProcess(tmp_path, http_config(0, 0, clusters), extra_args=args)
    p.start()
    ml = MasterLine(p)
    ml.port, ml.admin_port, ml.clusters = p.listener_port(), p.admin_port, clusters
    ml.upstreams = {"a": a, "b": b}
    try:
        yield ml
    finally:
        ml.stop()


def test_hot_restart_replaces_the_master_and_carries_state_over(line: MasterLine) -> None:
    p = line.p
    for _ in range(5):
        assert get(line.port)[0] == 200
    wait_for(lambda: p.stats().get("cluster.a.upstream_rq_total") == 5, timeout=10)
    old_workers = p.worker_pids()
    res = line.hot_restart()
    assert res.returncode == 0, res.stderr + p.log()
    assert "restart epoch 1" in res.stdout
    new_pid = line.master_pid
    assert new_pid != p.pid
    # The control socket and the admin address belong to the new master now.
    status = p.status()
    assert status["pid"] == new_pid
    assert status["restart_epoch"] == 1 and status["hot_restart_generation"] == 2
    assert not set(w["pid"] for w in status["workers"]) & set(old_workers)
    info = json.loads(p.admin("/server_info")[1])
    assert info["pid"] == new_pid
    assert info["hot_restart_generation"] == 2
    assert info["command_line_options"]["restart_epoch"] == 1
    assert info["state"] == "LIVE"
    assert get(line.port)[0] == 200
    # The old master had nothing in flight: it exits 0, with its workers.
    assert p.proc.wait(20) == 0
    assert all(gone(w) for w in old_workers)
    # Counters carried over (5 before, 1 after), gauges are the new master's.
    wait_for(lambda: p.stats().get("cluster.a.upstream_rq_total") == 6, timeout=10)
    stats = p.stats()
    assert stats["server.hot_restart_epoch"] == 1
    assert stats["server.hot_restart_generation"] == 2
    assert stats["server.proxyd.hot_restart_success"] == 1
    # The control socket file survived the old master's exit; a second hot restart works.
    assert os.path.exists(p.control_socket)
    res = line.hot_restart()
    assert res.returncode == 0, res.stderr
    assert p.status()["restart_epoch"] == 2
    assert get(line.port)[0] == 200


def test_slow_request_finishes_on_the_old_master(line: MasterLine, tmp_path: Path) -> None:
    p = line.p
    other = tmp_path / "to-b.yaml"
    other.write_text(http_config(0, 0, line.clusters, routes=ROUTE_TO_B))
    outcome: dict[str, object] = {}

    a = line.upstreams["a"]

    def slow() -> None:
        status, headers, _ = get(line.port, "/hold/slow", timeout=15)
        outcome.update(status=status, upstream=headers.get("x-upstream-name"))

    t = threading.Thread(target=slow)
    t.start()
    a.wait_requests(1)  # the request is at the upstream, on the old master's worker
    res = line.hot_restart("--config", str(other))
    assert res.returncode == 0, res.stderr + p.log()
    # New requests go to the new master (which routes to b) while the old one drains.
    assert {upstream_name(line.port) for _ in range(10)} == {"b"}
    assert p.proc.poll() is None, "the old master must wait for its slow request"
    a.release()  # the slow request ends now, within the old master's drain time
    t.join(15)
    assert outcome["status"] == 200
    assert outcome["upstream"] == "a"  # answered by the old master's epoch
    assert p.proc.wait(20) == 0
    assert {upstream_name(line.port) for _ in range(5)} == {"b"}


def test_invalid_config_fails_cleanly_and_changes_nothing(line: MasterLine, tmp_path: Path) -> None:
    p = line.p
    bad = tmp_path / "bad.yaml"
    bad.write_text(http_config(0, 0, line.clusters).replace("lb_policy", "lb_polcy"))
    workers = p.worker_pids()
    res = line.hot_restart("--config", str(bad))
    assert res.returncode == 1
    assert "hot-restart failed" in res.stderr
    assert "static_resources.clusters[0].lb_polcy" in res.stderr
    status = p.status()
    assert status["pid"] == p.pid
    assert status["restart_epoch"] == 0
    assert p.worker_pids() == workers
    assert upstream_name(line.port) == "a"
    assert p.admin("/ready") == (200, "LIVE\n")
    assert p.stats()["server.proxyd.hot_restart_failure"] == 1
    # The same master hot-restarts fine with its good config afterwards.
    assert line.hot_restart().returncode == 0


def test_new_master_killed_mid_handoff_leaves_the_old_one_serving(line: MasterLine) -> None:
    p = line.p
    workers = p.worker_pids()
    result: dict[str, subprocess.CompletedProcess[str]] = {}
    t = threading.Thread(target=lambda: result.update(res=p.ctl("hot-restart", timeout=120)))
    t.start()

    def new_master() -> int | None:
        for child in psutil.Process(p.pid).children():
            if "--hot-restart-socket" in child.cmdline() and '"hot_restart_sockets_received"' in p.log():  # fmt: skip
                return child.pid
        return None

    victim = wait_for(new_master, timeout=30, interval=0.01)
    os.kill(victim, signal.SIGKILL)
    t.join(60)
    res = result["res"]
    assert res.returncode == 1
    assert f"pid {victim}" in res.stderr and "killed by signal 9" in res.stderr
    assert p.status()["pid"] == p.pid
    assert p.worker_pids() == workers
    for _ in range(20):
        assert get(line.port)[0] == 200
    assert p.admin("/ready") == (200, "LIVE\n")
    assert gone(victim)
    # Whatever workers the killed master had started went with it.
    wait_for(lambda: all(gone(c) for c in line._seen - set(workers)), timeout=10)


def test_sigusr2_hot_restarts(line: MasterLine) -> None:
    p = line.p
    p.proc.send_signal(signal.SIGUSR2)
    new_pid = wait_for(lambda: (lambda s: s["pid"] if s["pid"] != p.pid else None)(p.status()), timeout=30)  # fmt: skip
    line.pids.append(new_pid)
    assert p.proc.wait(20) == 0
    assert get(line.port)[0] == 200
    assert '"hot_restart_succeeded"' in p.log()


def test_hot_restart_command_line() -> None:
    res = subprocess.run(
        [str(Path(os.sys.executable).parent / "proxyctl"), "hot-restart", "--help"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0
    assert "--config" in res.stdout and "--timeout" in res.stdout
    bad = subprocess.run(
        [os.sys.executable, "-m", "proxyd", "-c", "x.yaml", "--restart-epoch", "1"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "--hot-restart-socket" in bad.stderr
