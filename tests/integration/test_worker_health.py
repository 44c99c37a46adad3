"""Worker health: a wedged worker is replaced; a worker above the RSS limit is replaced
gracefully (a new one starts, then the old one drains) without one failed request."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

from proxyd.master.workers import RSS_REPLACE_MIN_INTERVAL_S, RssLimit
from tests.integration.master_fixtures import ClientLoop, get
from tests.support import ProxydProcess, http_config, wait_for

MB = 1024 * 1024


def _config(tmp_path: Path, upstream) -> str:
    up = upstream("up")
    return http_config(0, 0, {"up": [up.port]})


def _answered_of(port: int, n: int, wait_s: float) -> int:
    """Open n connections at once, send a GET on each; how many got a 200 in wait_s."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(n)]
    try:
        for s in socks:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        deadline = time.monotonic() + wait_s
        answered = 0
        for s in socks:
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                if s.recv(12).startswith(b"HTTP/1.1 200"):
                    answered += 1
            except OSError:
                pass  # hashed to the stopped worker's socket: it waits in that backlog
        return answered
    finally:
        for s in socks:
            s.close()


def test_wedged_worker_is_replaced_while_the_other_keeps_serving(tmp_path: Path, upstream) -> None:
    config = _config(tmp_path, upstream)
    timeout_s = 2.0
    args = ("--worker-heartbeat-timeout-s", str(timeout_s))
    with ProxydProcess(tmp_path, config, concurrency=2, extra_args=args) as p:
        port = p.listener_port()
        victim, survivor = p.worker_pids()
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            # While the victim is stopped, the other worker answers its share at once.
            # The kernel spreads new connections over both workers' sockets by hash,
            # so of 16 connections opened together, some reach the survivor (all 16
            # landing on the stopped worker has odds of 1 in 65,536).
            served_meanwhile = _answered_of(port, 16, wait_s=timeout_s - 0.7)
            assert served_meanwhile > 0

            def replaced() -> int | None:
                pids = [w["pid"] for w in p.status()["workers"] if w["epoch"] >= 1]
                new = [x for x in pids if x not in (victim, survivor, 0)]
                return new[0] if new and survivor in pids else None

            # Replaced because the heartbeat timed out, not before (the upper bound is
            # wait_for's, generous: a loaded machine must not fail this).
            new_pid = wait_for(replaced, timeout=timeout_s + 20, interval=0.05)
            took = time.monotonic() - stopped_at
            assert took >= timeout_s - 0.1, f"replaced after {took:.1f} s, before the timeout"
            assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == "zombie"
            assert sorted(p.worker_pids()) == sorted([survivor, new_pid])
            # Both sockets are served again: every request succeeds.
            assert all(get(port, timeout=3)[0] == 200 for _ in range(40))
            log = p.log()
            assert '"worker_unresponsive"' in log and "no heartbeat for" in log
        finally:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(victim, sig)
                except ProcessLookupError:
                    pass  # already killed by the master (the usual case)


class SlowClients:
    """Threads sending ``/delay/2000`` (keep-alive, a new connection each) until stopped."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.results: list[tuple[int | str, str]] = []  # (status or error, connection header)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/delay/2000")
                resp = conn.getresponse()
                resp.read()
                self.results.append((resp.status, (resp.getheader("connection") or "").lower()))
            except (OSError, http.client.HTTPException) as exc:
                self.results.append((f"{type(exc).__name__}: {exc}", ""))
            finally:
                conn.close()

    def __enter__(self) -> SlowClients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def _measure_worker_rss_mb(tmp_path: Path, config: str) -> int:
    """The smallest worker RSS of a proxyd like the one under test, once it serves."""
    with ProxydProcess(tmp_path / "measure", config, concurrency=2) as p:
        return min(w["rss"] for w in p.status()["workers"]) // MB


def test_worker_above_rss_limit_is_replaced_gracefully(tmp_path: Path, upstream) -> None:
    config = _config(tmp_path, upstream)
    (tmp_path / "measure").mkdir()
    limit_mb = max(1, _measure_worker_rss_mb(tmp_path, config) - 8)
    args = ("--worker-rss-limit-mb", str(limit_mb))
    # Every worker is above this limit from the start: each slot is replaced once, and
    # the replacements (above the limit too) are left alone for the drain period.
    with ProxydProcess(tmp_path, config, concurrency=2, extra_args=args) as p:
        port = p.listener_port()
        first = p.worker_pids()
        with ClientLoop(port, threads=4) as clients, SlowClients(port) as slow:

            def both_replaced() -> bool:
                workers = p.status()["workers"]
                return all(w["pid"] not in first and w["epoch"] >= 1 for w in workers)

            wait_for(both_replaced, timeout=20, interval=0.05)
            # The replaced workers drain: their slow requests finish, then they exit.
            wait_for(lambda: not any(psutil.pid_exists(x) and _running(x) for x in first), 10)
            ok_then = clients.snapshot()[0]
            wait_for(lambda: clients.snapshot()[0] >= ok_then + 100, timeout=20)
        status = p.status()
        assert status["extra_workers"] == []
        assert [w["rss_replacements"] for w in status["workers"]] == [1, 1]
        assert p.stats()["server.proxyd.worker_rss_replacements"] == 2
        log = p.log()
    assert clients.failed == [], clients.failed[:5]
    assert clients.ok > 100
    assert slow.results and all(r[0] == 200 for r in slow.results), slow.results
    # Some slow requests were in flight on a worker when it began to drain: it finished
    # them (200) and said it closes the connection.
    assert any(r == (200, "close") for r in slow.results), slow.results
    replaced = [json.loads(x) for x in log.splitlines() if '"worker_rss_replaced"' in x]
    assert sorted(e["worker_id"] for e in replaced) == [0, 1]  # once per slot, no storm
    for e in replaced:
        assert e["old_pid"] in first and e["new_pid"] not in first
        assert e["rss"] > limit_mb * MB
    assert '"worker_killed"' not in log


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_rss_limit_replaces_above_the_limit_at_most_once_per_interval() -> None:
    limit = RssLimit(100 * MB, interval_s=RSS_REPLACE_MIN_INTERVAL_S)
    assert not limit.should_replace(100 * MB, now=0.0)  # at the limit is fine
    assert limit.should_replace(100 * MB + 1, now=0.0)
    limit.replaced(now=0.0)
    assert not limit.should_replace(200 * MB, now=RSS_REPLACE_MIN_INTERVAL_S - 0.1)
    assert limit.should_replace(200 * MB, now=RSS_REPLACE_MIN_INTERVAL_S)
    off = RssLimit(0, interval_s=1.0)
    assert not off.should_replace(10**12, now=0.0)


@pytest.mark.parametrize("value", ["-1", "x"])
def test_rss_limit_flag_rejects_bad_values(value: str) -> None:
    from proxyd.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["-c", "x.yaml", "--worker-rss-limit-mb", value])
