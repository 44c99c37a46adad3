"""The systemd unit as shipped, checked by systemd itself, and socket activation."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.master_fixtures import get, upstream_name
from tests.support import VENV_BIN, free_port, http_config, wait_for

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "proxyd.service"
SOCKET_UNIT = ROOT / "systemd" / "proxyd.socket"


def settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_has_what_operations_need() -> None:
    s = settings(UNIT)
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["all"]  # the new master of a hot restart sends MAINPID=
    assert s["KillMode"] == ["mixed"]
    assert s["ExecStartPre"][0].endswith("proxyd --mode validate -c /etc/proxyd/proxyd.yaml")
    assert s["ExecReload"][0].endswith("proxyctl reload")
    assert s["ExecStart"][0].split()[0].endswith("/bin/proxyd")
    assert int(s["LimitNOFILE"][0]) >= 65536
    for key, value in (
        ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"), ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"), ("User", "proxyd"),
        ("RuntimeDirectory", "proxyd"),
    ):  # fmt: skip
        assert s[key] == [value], key
    assert "/run/proxyd/control.sock" in s["Environment"][0]
    # A graceful stop must fit in the stop timeout.
    drain = float(s["ExecStart"][0].split("--drain-time-s")[1].split()[0])
    assert drain < float(s["TimeoutStopSec"][0].rstrip("s"))


def _verify(tmp_path: Path, *units: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on copies whose /opt/proxyd/.venv is this venv."""
    names = []
    for unit in units:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/proxyd/.venv/bin", str(VENV_BIN)))
        names.append(str(copy))
    return subprocess.run(
        ["systemd-analyze", "verify", *names], capture_output=True, text=True, timeout=60,
        cwd=tmp_path,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian package: systemd)")  # fmt: skip
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    res = _verify(tmp_path, UNIT, SOCKET_UNIT)
    # verify exits 0 on settings it ignores, so its output must be empty too.
    assert res.returncode == 0 and res.stderr.strip() == "" and res.stdout.strip() == "", res.stderr  # fmt: skip
    # And it does look: a misspelt value is reported.
    broken = tmp_path / "broken" / "proxyd.service"
    broken.parent.mkdir()
    broken.write_text(UNIT.read_text().replace("Type=notify", "Type=notfy"))
    assert "notfy" in _verify(broken.parent, broken).stderr


class Activated:
    """proxyd started the way systemd starts it with a socket unit: the socket as fd 3,
    LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES in the environment."""

    def __init__(self, tmp_path: Path, config: str, admin: int, sock: socket.socket, name: str) -> None:  # fmt: skip
        cfg = tmp_path / "proxyd.yaml"
        cfg.write_text(config)
        self.admin = admin
        self.log = open(tmp_path / "proxyd.log", "ab")  # noqa: SIM115 - closed in stop()
        launcher = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); "
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES=sys.argv[2]); "
            "os.execv(sys.executable, [sys.executable, *sys.argv[3:]])"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", launcher, str(sock.fileno()), name, "-m", "proxyd",
             "-c", str(cfg), "--concurrency", "2", "--control-socket", str(tmp_path / "c.sock"),
             "--log-format", "json"],
            pass_fds=(sock.fileno(),), stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.log_path = tmp_path / "proxyd.log"

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                return get(self.admin, "/ready")[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout=30)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            self.log.close()


def _socket_links(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue  # closed while we looked
    return out


def _listening(address: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, 0))
    s.listen(128)
    return s


def test_socket_activation_by_name(tmp_path: Path, upstream) -> None:
    up = upstream("up")
    configured, admin = free_port(), free_port()
    with _listening() as passed:
        port = passed.getsockname()[1]
        p = Activated(tmp_path, http_config(configured, admin, {"up": [up.port]}), admin, passed, "ingress")  # fmt: skip
        passed.close()  # only proxyd holds it now, as only systemd and proxyd would
        try:
            p.wait_ready()
            # The socket named "ingress" serves the listener "ingress", at systemd's port.
            assert {upstream_name(port) for _ in range(20)} == {"up"}
            with pytest.raises(ConnectionRefusedError):
                get(configured)
            assert f"ingress::127.0.0.1:{port}" in get(admin, "/listeners")[2].decode()
            log = p.log_path.read_text()
            assert '"inherited_socket"' in log
        finally:
            assert p.stop() == 0


def test_socket_activation_by_address_shared_by_all_workers(tmp_path: Path, upstream) -> None:
    up = upstream("up")
    admin = free_port()
    with _listening() as passed:
        port = passed.getsockname()[1]
        inode = os.fstat(passed.fileno()).st_ino
        p = Activated(tmp_path, http_config(port, admin, {"up": [up.port]}), admin, passed, "unnamed")  # fmt: skip
        passed.close()
        try:
            p.wait_ready()
            for _ in range(20):
                assert get(port)[0] == 200
            # Every worker holds that one socket (there is no other for the port).
            status = subprocess.run(
                [str(VENV_BIN / "proxyctl"), "--control-socket", str(tmp_path / "c.sock"), "status", "--json"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            workers = [w["pid"] for w in json.loads(status.stdout)["workers"]]
            assert len(workers) == 2
            for pid in workers:
                assert f"socket:[{inode}]" in _socket_links(pid)
        finally:
            assert p.stop() == 0
