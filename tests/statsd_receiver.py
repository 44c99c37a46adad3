"""A statsd-style UDP receiver for tests: a real socket on 127.0.0.1 (port 0, so the
kernel picks a free port) and a thread collecting every datagram and line it gets."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import defaultdict
from typing import Any

# name:value|type, a sample rate "|@0.5" (timers), then DogStatsD tags "|#k:v,k:v".
LINE = re.compile(
    r"^(?P<name>[^:|]+):(?P<value>-?\d+)\|(?P<type>c|g|ms|h)"
    r"(?:\|@(?P<rate>[0-9.e-]+))?(?:\|#(?P<tags>.*))?$"
)


class StatsdReceiver:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.datagrams: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatsdReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            with self._lock:
                self.datagrams.append(data)

    def count(self) -> int:
        with self._lock:
            return len(self.datagrams)

    def lines(self) -> list[str]:
        with self._lock:
            return [line for d in self.datagrams for line in d.decode().split("\n")]

    def parsed(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines():
            m = LINE.match(line)
            assert m is not None, f"not a statsd line: {line!r}"
            out.append(m.groupdict())
        return out

    def counter_sums(self) -> dict[str, int]:
        """Each counter's deltas summed over every flush received, keyed by the name
        and, for DogStatsD lines, the tags: ``name|#tags``."""
        sums: dict[str, int] = defaultdict(int)
        for p in self.parsed():
            if p["type"] == "c":
                key = p["name"] + (f"|#{p['tags']}" if p["tags"] else "")
                sums[key] += int(p["value"])
        return dict(sums)

    def gauges(self) -> dict[str, int]:
        """Each gauge's latest value (keyed as in :meth:`counter_sums`)."""
        out: dict[str, int] = {}
        for p in self.parsed():
            if p["type"] == "g":
                out[p["name"] + (f"|#{p['tags']}" if p["tags"] else "")] = int(p["value"])
        return out

    def timer_samples(self) -> dict[str, list[int]]:
        """Each timer's samples (keyed as in :meth:`counter_sums`); a line with a sample
        rate ``@r`` stands for ``round(1/r)`` samples of its value."""
        out: dict[str, list[int]] = defaultdict(list)
        for p in self.parsed():
            if p["type"] == "ms":
                times = round(1 / float(p["rate"])) if p["rate"] else 1
                key = p["name"] + (f"|#{p['tags']}" if p["tags"] else "")
                out[key].extend([int(p["value"])] * times)
        return dict(out)

    def wait_counter(self, key: str, total: int, timeout: float = 20.0) -> None:
        """Until the deltas of ``key`` add up to ``total``."""
        deadline = time.monotonic() + timeout
        while self.counter_sums().get(key, 0) != total:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{key} sums to {self.counter_sums().get(key)} not {total}; got {self.lines()[-50:]}"
                )
            time.sleep(0.05)


class TcpStatsdReceiver(StatsdReceiver):
    """The same on TCP: a listening socket; every accepted connection's bytes are
    collected, each newline-terminated line counted once it is complete."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.datagrams = []  # one entry per complete line
        self.connections: list[socket.socket] = []
        self.partial_tails: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        buffer = b""
        while not self._stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            buffer += data
            *complete, buffer = buffer.split(b"\n")
            with self._lock:
                self.datagrams.extend(complete)
        with self._lock:
            self.partial_tails.append(buffer)

    def close_connections(self) -> None:
        """Close every accepted connection from this side (the proxy must reconnect)."""
        with self._lock:
            conns, self.connections = self.connections, []
        for c in conns:
            c.close()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.close_connections()
