"""sd_notify: what a real proxyd tells a real NOTIFY_SOCKET, in order, and from whom."""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.test_hot_restart import MasterLine
from tests.support import ProxydProcess, http_config, wait_for


class NotifySocket:
    """A datagram socket standing in for systemd: records (sender pid, fields).

    Like systemd it reads all the time (a thread): the kernel queues only a few
    datagrams (net.unix.max_dgram_qlen, 10 by default) and the master's non-blocking
    send drops what does not fit, so a test that read only when it looks would lose
    messages whenever it looked away for a while (a hot restart, a slow start)."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.05)  # how often the reader looks at _stop
        self.messages: list[tuple[int, dict[str, str]]] = []
        self._received: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            pid = 0
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
            with self._lock:
                self._received.append((pid, data))

    def drain(self) -> list[tuple[int, dict[str, str]]]:
        """Every message received so far, in order."""
        with self._lock:
            received, self._received = self._received, []
        for pid, data in received:
            lines = data.decode().splitlines()
            assert data.endswith(b"\n"), data
            self.messages.append((pid, dict(line.split("=", 1) for line in lines)))
        return self.messages

    def wait(self, predicate, timeout: float = 20.0) -> list[tuple[int, dict[str, str]]]:
        wait_for(lambda: predicate(self.drain()), timeout=timeout)
        return self.messages

    def keys(self) -> list[str]:
        """The state changes in order (STATUS-only and WATCHDOG messages left out)."""
        out = []
        for _pid, fields in self.drain():
            for key in ("MAINPID", "READY", "RELOADING", "STOPPING"):
                if key in fields:
                    out.append(key)
        return out

    def close(self) -> None:
        self._stop.set()
        self._reader.join()
        self.sock.close()


@pytest.fixture
def proxy_factory(tmp_path: Path, upstream, monkeypatch: pytest.MonkeyPatch):
    up = upstream("up")
    started: list[ProxydProcess] = []

    def start(env: dict[str, str], *extra: str) -> ProxydProcess:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        p = ProxydProcess(tmp_path, http_config(0, 0, {"up": [up.port]}), extra_args=extra)
        started.append(p)
        return p.start()

    yield start
    for p in started:
        p.stop(signal.SIGKILL)


def test_ready_reloading_ready_stopping_in_order(tmp_path: Path, proxy_factory) -> None:
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    try:
        p = proxy_factory({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        notify.wait(lambda msgs: any(f.get("READY") == "1" for _, f in msgs))
        ready = next(f for _, f in notify.messages if "READY" in f)
        assert "epoch 1" in ready["STATUS"] and "2/2 workers ready" in ready["STATUS"]
        assert all(pid == p.pid for pid, _ in notify.messages)  # the master speaks, alone
        # Workers do not inherit NOTIFY_SOCKET: only masters talk to systemd.
        for pid in p.worker_pids():
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not any(e.startswith(b"NOTIFY_SOCKET=") for e in environ)

        before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert p.ctl("reload").returncode == 0
        after_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify.wait(lambda msgs: sum("READY" in f for _, f in msgs) >= 2)
        reloading = next(f for _, f in notify.messages if "RELOADING" in f)
        assert reloading["RELOADING"] == "1"
        assert before_us <= int(reloading["MONOTONIC_USEC"]) <= after_us
        p.proc.send_signal(signal.SIGTERM)
        notify.wait(lambda msgs: any("STOPPING" in f for _, f in msgs))
        assert p.proc.wait(20) == 0
        assert notify.keys() == ["READY", "RELOADING", "READY", "STOPPING"]
        assert notify.messages[-1][1]["STOPPING"] == "1"
    finally:
        notify.close()


def test_invalid_reload_still_returns_to_ready(tmp_path: Path, proxy_factory) -> None:
    notify = NotifySocket(str(tmp_path / "n.sock"))
    try:
        p = proxy_factory({"NOTIFY_SOCKET": str(tmp_path / "n.sock")})
        notify.wait(lambda msgs: any("READY" in f for _, f in msgs))
        p.config_path.write_text(p.config_path.read_text().replace("lb_policy", "lb_polcy"))
        assert p.ctl("reload").returncode == 1
        notify.wait(lambda msgs: sum("READY" in f for _, f in msgs) >= 2)
        assert notify.keys() == ["READY", "RELOADING", "READY"]
    finally:
        notify.close()


def test_abstract_socket_and_watchdog(proxy_factory) -> None:
    name = f"@proxyd-test-{uuid.uuid4().hex}"
    notify = NotifySocket(b"\0" + name[1:].encode())
    try:
        p = proxy_factory({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "200000"})
        notify.wait(lambda msgs: any("READY" in f for _, f in msgs))
        pings = sum("WATCHDOG" in f for _, f in notify.messages)
        # Every 0.1 s (WATCHDOG_USEC / 2): a handful more within 2 s.
        notify.wait(lambda msgs: sum("WATCHDOG" in f for _, f in msgs) >= pings + 5, timeout=2.5)
        assert all(pid == p.pid for pid, _ in notify.messages)
    finally:
        notify.close()


def test_no_watchdog_when_watchdog_pid_names_another_process(tmp_path: Path, proxy_factory) -> None:  # fmt: skip
    notify = NotifySocket(str(tmp_path / "n.sock"))
    try:
        env = {"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"}  # fmt: skip
        proxy_factory(env)
        notify.wait(lambda msgs: any("READY" in f for _, f in msgs))
        # A pacing gap: the window that must stay silent, five WATCHDOG_USEC long.
        time.sleep(0.5)
        assert not any("WATCHDOG" in f for _, f in notify.drain())
    finally:
        notify.close()


def test_hot_restart_moves_mainpid_to_the_new_master(tmp_path: Path, proxy_factory) -> None:
    notify = NotifySocket(str(tmp_path / "n.sock"))
    line = None
    try:
        p = proxy_factory({"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "400000"}, "--drain-time-s", "2")  # fmt: skip
        line = MasterLine(p)
        notify.wait(lambda msgs: any("READY" in f for _, f in msgs))
        res = line.hot_restart()
        assert res.returncode == 0, res.stderr
        new_pid = line.master_pid
        notify.wait(lambda msgs: any(f.get("MAINPID") == str(new_pid) for _, f in msgs))
        # The old master exited: what it said is all queued on the notify socket already
        # (a datagram is in the receiver's queue when the sender's send returns).
        assert p.proc.wait(20) == 0
        msgs = [(pid, f) for pid, f in notify.drain() if "WATCHDOG" not in f]
        assert [(pid, sorted(k for k in f if k != "STATUS")) for pid, f in msgs] == [
            (p.pid, ["READY"]),
            (p.pid, ["MONOTONIC_USEC", "RELOADING"]),
            (new_pid, ["MAINPID", "READY"]),
        ]
        # The watchdog moved too: the new master pings (its WATCHDOG_PID was dropped).
        count = sum(1 for pid, f in notify.drain() if pid == new_pid and "WATCHDOG" in f)
        notify.wait(lambda m: sum(1 for pid, f in m if pid == new_pid and "WATCHDOG" in f) > count, timeout=3)  # fmt: skip
        old_pings = [i for i, (pid, f) in enumerate(notify.messages) if pid == p.pid]
        mainpid_at = next(i for i, (_pid, f) in enumerate(notify.messages) if "MAINPID" in f)
        assert max(old_pings) < mainpid_at, "the old master spoke after handing over"
    finally:
        notify.close()
        if line is not None:
            line.stop()


def test_notifier_without_socket_is_silent() -> None:
    from proxyd.master.sd_notify import Notifier

    n = Notifier(environ={})
    assert not n.enabled and n.ready("x") is False
    missing = Notifier(environ={"NOTIFY_SOCKET": f"/nonexistent/{os.getpid()}/sock"})
    assert missing.enabled and missing.ready("x") is False  # logged, not raised
