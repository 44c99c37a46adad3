"""Small helpers the master and proxyctl tests share (beside tests/support.py)."""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field


def get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (closed after): status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def upstream_name(port: int, path: str = "/") -> str:
    status, headers, _ = get(port, path)
    assert status == 200, status
    return headers["x-upstream-name"]


@dataclass
class ClientLoop:
    """Threads sending requests (one connection each) until stopped; counts outcomes."""

    port: int
    threads: int = 4
    timeout: float = 3.0
    ok: int = 0
    failed: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, _, _ = get(self.port, "/", timeout=self.timeout)
                outcome = None if status == 200 else f"status {status}"
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            with self._lock:
                if outcome is None:
                    self.ok += 1
                else:
                    self.failed.append((time.monotonic(), outcome))

    def __enter__(self) -> ClientLoop:
        for _ in range(self.threads):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(self.timeout + 2)

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.ok, len(self.failed)
