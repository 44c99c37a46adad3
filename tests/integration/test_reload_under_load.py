"""Zero loss under load: hot restarts and reloads while clients never stop.

Two kinds of Python clients count every outcome themselves: some open a new connection
per request, others keep their connection alive (and open a new one only after a
response that said ``connection: close``, as every HTTP/1.1 client does). ``wrk`` joins
in where it is installed. Any failed request or connection error fails the test.
"""

from __future__ import annotations

import http.client
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.test_hot_restart import MasterLine, gone
from tests.support import ProxydProcess, http_config, wait_for

WRK = shutil.which("wrk") or ("/usr/bin/wrk" if Path("/usr/bin/wrk").exists() else None)


@dataclass
class Load:
    """Client threads hammering ``port`` until stopped; every outcome counted."""

    port: int
    fresh_threads: int = 3
    keepalive_threads: int = 3
    ok: int = 0
    failures: list[tuple[float, str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _count(self, kind: str, error: str | None) -> None:
        with self._lock:
            if error is None:
                self.ok += 1
            else:
                self.failures.append((time.monotonic(), kind, error))

    def _fresh(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/", headers={"connection": "close"})
                resp = conn.getresponse()
                resp.read()
                self._count("fresh", None if resp.status == 200 else f"status {resp.status}")
            except (OSError, http.client.HTTPException) as exc:
                self._count("fresh", f"{type(exc).__name__}: {exc}")
            finally:
                conn.close()

    def _keepalive(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                self._count("keepalive", None if resp.status == 200 else f"status {resp.status}")
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self._count("keepalive", f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Load:
        for target, n in ((self._fresh, self.fresh_threads), (self._keepalive, self.keepalive_threads)):  # fmt: skip
            for _ in range(n):
                t = threading.Thread(target=target, daemon=True)
                t.start()
                self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def wait_more(self, n: int, timeout: float = 20.0) -> None:
        """Until ``n`` more requests succeeded (the load really runs between steps)."""
        start = self.ok
        wait_for(lambda: self.ok >= start + n, timeout=timeout)


class Wrk:
    """``wrk`` for as long as the block lasts; its summary parsed at the end."""

    def __init__(self, port: int, tmp_path: Path) -> None:
        self.out = tmp_path / "wrk.txt"
        self._file = open(self.out, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [WRK, "-t2", "-c16", "-d120s", f"http://127.0.0.1:{port}/"],
            stdout=self._file, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGINT)  # wrk prints its summary and exits
        try:
            self.proc.wait(20)
        finally:
            self._file.close()
        text = self.out.read_text()
        requests = re.search(r"(\d+) requests in", text)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)  # fmt: skip
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        assert requests is not None, text
        return {
            "requests": int(requests.group(1)),
            "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "text": text,  # type: ignore[dict-item]
        }


def _with_extra(text: str, port: int, second: int, cluster_port: int) -> str:
    """The config plus a second listener (on ``second``) and a cluster "c" it routes to."""
    listener = text.split("  clusters:")[0].split("  listeners:\n", 1)[1]
    listener = listener.replace("name: ingress", "name: second").replace(f"port_value: {port}", f"port_value: {second}")  # fmt: skip
    text = text.replace("  clusters:", listener + "  clusters:", 1)
    return text + (
        "  - name: c\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n"
        "      cluster_name: c\n      endpoints:\n      - lb_endpoints:\n"
        f"        - endpoint:\n            address:\n              socket_address: {{ address: 127.0.0.1, port_value: {cluster_port} }}\n"
    )


def _after(events: list[tuple[float, str]], failure: tuple[float, str, str]) -> str:
    """A failure told with the last step that began before it, for the reader."""
    at, kind, error = failure
    step = max((e for e in events if e[0] <= at), default=(at, "start"))
    return f"{kind} client, {at - step[0]:.3f} s after {step[1]}: {error}"


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "clients",
    [
        "fresh",
        "keepalive",
    ],
)
def test_five_hot_restarts_and_five_reloads_under_load(
    tmp_path: Path, upstream, clients: str
) -> None:
    a, c = upstream("a"), upstream("c")
    # Every listener on port 0: the second gets a new port each time a reload adds it.
    base = http_config(0, 0, {"a": [a.port]})
    extra = _with_extra(base, 0, 0, c.port)
    args = ("--drain-time-s", "5", "--parent-shutdown-time-s", "15")
    p = ProxydProcess(tmp_path, base, concurrency=2, extra_args=args).start()
    port = p.listener_port()
    line = MasterLine(p)
    wrk = None
    events: list[tuple[float, str]] = []
    try:
        keepalive = clients == "keepalive"
        with Load(
            port, fresh_threads=3 if not keepalive else 2, keepalive_threads=3 if keepalive else 0
        ) as load:
            wrk = Wrk(port, tmp_path) if WRK and keepalive else None
            load.wait_more(200)
            old_masters = []
            for i in range(5):
                before = line.master_pid
                events.append((time.monotonic(), f"hot restart {i + 1} begins"))
                res = line.hot_restart()
                assert res.returncode == 0, res.stderr
                assert line.master_pid != before
                old_masters.append(before)
                load.wait_more(200)
                # Reloads alternately add and remove a listener port and a cluster.
                p.config_path.write_text(extra if i % 2 == 0 else base)
                events.append((time.monotonic(), f"reload {i + 1} begins"))
                res = p.ctl("reload")
                assert res.returncode == 0, res.stderr
                load.wait_more(200)
            # Let every old master finish draining while the load goes on.
            wait_for(lambda: all(gone(pid) for pid in old_masters), timeout=30)
            load.wait_more(200)
            wrk_result = wrk.stop() if wrk is not None else None
            wrk = None
        masters = line.pids
        assert len(set(masters)) == 6, masters
        summary = (
            f"python clients: {load.ok} ok, {len(load.failures)} failed; "
            + (
                f"wrk: {wrk_result['requests']} requests, {wrk_result['socket_errors']} socket errors, "
                f"{wrk_result['non_2xx']} non-2xx"
                if wrk_result
                else "wrk: not run"
            )
        )  # fmt: skip
        print(f"\nLOAD SUMMARY ({clients}; 5 hot restarts, 5 reloads): {summary}")
        (tmp_path / "summary.txt").write_text(summary + "\n")
        assert load.failures == [], [_after(events, f) for f in load.failures[:20]]
        if wrk_result is not None:
            assert wrk_result["socket_errors"] == 0, wrk_result["text"]
            assert wrk_result["non_2xx"] == 0, wrk_result["text"]
            assert wrk_result["requests"] > 0
    finally:
        if wrk is not None:
            wrk.stop()
        line.stop()
