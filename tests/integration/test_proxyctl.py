"""proxyctl against a real master, and without one."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support import VENV_BIN, ProxydProcess, http_config


def _ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "proxyctl"), *args], capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def proxy(tmp_path: Path, upstream):
    up = upstream("up")
    with ProxydProcess(tmp_path, http_config(0, 0, {"up": [up.port]})) as p:
        yield p


def test_missing_socket_is_a_clear_error_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "none.sock"
    for command in ("status", "reload", "stop"):
        res = _ctl("--control-socket", str(path), command)
        assert res.returncode == 2
        assert f"no control socket at {path}" in res.stderr
        assert "Traceback" not in res.stderr


def test_stale_socket_file_is_a_clear_error_exit_2(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens
    res = _ctl("--control-socket", str(path), "status")
    assert res.returncode == 2
    assert "not running" in res.stderr


def test_status_table_and_json(proxy: ProxydProcess) -> None:
    res = proxy.ctl("status")
    assert res.returncode == 0, res.stderr
    assert f"pid {proxy.pid}" in res.stdout
    assert "state LIVE" in res.stdout
    assert "WORKER" in res.stdout and "RSS" in res.stdout
    status = proxy.status()
    for pid in (w["pid"] for w in status["workers"]):
        assert str(pid) in res.stdout
    assert status["concurrency"] == 2
    assert status["config"] == str(proxy.config_path)
    assert status["uptime_s"] >= 0
    assert {"id", "pid", "rss", "cpu_percent", "epoch", "started_at"} <= set(status["workers"][0])


def test_control_socket_is_private(proxy: ProxydProcess) -> None:
    mode = os.stat(proxy.control_socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_stop_is_graceful_and_removes_the_socket(proxy: ProxydProcess) -> None:
    res = proxy.ctl("stop")
    assert res.returncode == 0, res.stderr
    assert "stopping proxyd" in res.stdout
    assert proxy.proc.wait(20) == 0
    assert not os.path.exists(proxy.control_socket)
