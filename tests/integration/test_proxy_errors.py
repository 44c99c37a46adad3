"""Envoy's error answers through a real proxyd (master + 2 workers), over raw sockets.

No route → 404; an endpoint that refuses connections → 503; an upstream slower than the
route timeout → 504; malformed requests (the corpus in
``tests/compat/cases/malformed_requests.yaml``) → 400 and the connection closes; request
headers over ``max_request_headers_kb`` → 431 and close. After each, proxyd keeps serving
on the same workers (no worker crashed or was replaced).

:func:`errors_config` and :func:`exchange` are shared with
``tests/compat/test_errors_vs_envoy.py``, which sends the same requests to real Envoy.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ProxydProcess, UpstreamServer, free_port, http_listener, static_cluster

CASES_FILE = Path(__file__).resolve().parents[1] / "compat" / "cases" / "malformed_requests.yaml"

CONNECT_ERROR = "upstream connect error or disconnect/reset before headers"

# listener name → extra connection-manager fields
LISTENERS: dict[str, dict[str, Any]] = {
    "main": {},
    "small": {"max_request_headers_kb": 8},
    "edge": {"use_remote_address": True},
}


@dataclass(frozen=True)
class MalformedCase:
    """One request of the corpus and Envoy's answer to it (see the YAML file's header)."""

    name: str
    request: bytes
    status: int
    close: bool
    body: bytes | None  # the local reply's body; None for an answer from the upstream


def malformed_cases(local_replies_only: bool = False) -> list[MalformedCase]:
    cases = [
        MalformedCase(
            c["name"],
            c["request"].encode("latin-1"),
            int(c["status"]),
            bool(c["close"]),
            c["body"].encode() if "body" in c else None,
        )
        for c in yaml.safe_load(CASES_FILE.read_text())
    ]
    if local_replies_only:
        cases = [c for c in cases if c.status >= 400]
    return cases


def errors_config(admin_port: int, ports: dict[str, int], good_port: int, dead_port: int) -> str:
    """The bootstrap both proxyd and Envoy get: one listener per :data:`LISTENERS` entry.

    Routes (the same on every listener): ``/delay`` → ``good`` with a 0.5 s route
    timeout; ``/dead`` → ``dead`` (nothing listens on its port); ``/echo``, ``/status``
    and ``/bytes`` → ``good``; any other path has no route.
    """
    routes = [
        {"match": {"prefix": "/delay"}, "route": {"cluster": "good", "timeout": "0.5s"}},
        {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        *(
            {"match": {"prefix": p}, "route": {"cluster": "good"}}
            for p in ("/echo", "/status", "/bytes")
        ),
    ]
    route_config = {
        "name": "local_route",
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
    }
    listeners = [
        http_listener(name, ports[name], route_config, **extra) for name, extra in LISTENERS.items()
    ]
    boot = {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": listeners,
            "clusters": [static_cluster("good", [good_port]), static_cluster("dead", [dead_port])],
        },
    }
    return yaml.safe_dump(boot, sort_keys=False)


# -- a raw HTTP/1.1 client ----------------------------------------------------------------

PROBE = b"GET /echo HTTP/1.1\r\nHost: probe\r\n\r\n"


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]  # names lower-cased, in order
    body: bytes
    interim: list[int] = field(default_factory=list)  # 1xx statuses before this one
    # None until checked; True when the server closed the connection after this reply,
    # False when it answered a second request on it.
    closed: bool | None = None

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ",".join(values) if values else None


class RawConnection:
    """One client connection that sends bytes as given and parses what comes back."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def read_reply(self, head_request: bool = False) -> Reply:
        interim = []
        while True:
            reply = self._read_one(head_request)
            if not 100 <= reply.status < 200 or reply.status == 101:
                reply.interim = interim
                return reply
            interim.append(reply.status)

    def _read_one(self, head_request: bool) -> Reply:
        while b"\r\n\r\n" not in self.buf:
            if not self.fill():
                raise ConnectionError(f"closed before a complete response head: {self.buf!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        _, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        reply = Reply(int(status), reason, headers, b"")
        if head_request or reply.status in (204, 304) or 100 <= reply.status < 200:
            return reply
        if (reply.header("transfer-encoding") or "").lower() == "chunked":
            reply.body = self._read_chunked()
        elif reply.header("content-length") is not None:
            reply.body = self._read_exactly(int(reply.header("content-length") or 0))
        else:  # delimited by close
            while self.fill():
                pass
            reply.body, self.buf = self.buf, b""
        return reply

    def _read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise ConnectionError("closed mid-body")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _read_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self.fill():
                raise ConnectionError("closed mid-chunk")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read_chunked(self) -> bytes:
        out = []
        while True:
            size = int(self._read_line().split(b";")[0], 16)
            if size == 0:
                while self._read_line():
                    pass  # trailers
                return b"".join(out)
            out.append(self._read_exactly(size))
            self._read_line()

    def is_closed(self) -> bool:
        """Send a valid request: True if the server closed instead of answering it."""
        try:
            self.sock.sendall(PROBE)
            reply = self.read_reply()
        except (ConnectionError, TimeoutError):
            return True
        assert reply.status == 200, f"the follow-up request got {reply.status}"
        return False


def exchange(port: int, request: bytes, check_closed: bool = True) -> Reply:
    """Send ``request`` on a new connection, read one reply, then see if it stays open."""
    conn = RawConnection(port)
    try:
        conn.sock.sendall(request)
        reply = conn.read_reply(head_request=request.startswith(b"HEAD "))
        if check_closed:
            reply.closed = conn.is_closed()
        return reply
    finally:
        conn.close()


def big_headers_request(total_kb: int, path: str = "/echo") -> bytes:
    """A GET whose header block carries ``total_kb`` KiB in 1 KiB headers."""
    lines = b"".join(b"x-big-%03d: %s\r\n" % (i, b"a" * (1024 - 14)) for i in range(total_kb))
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n"


# -- fixtures -----------------------------------------------------------------------------


@dataclass
class Setup:
    proxy: ProxydProcess
    ports: dict[str, int]
    good: UpstreamServer
    worker_pids: list[int]

    def assert_still_serving(self) -> None:
        """Every listener answers a normal request, on the workers proxyd started with."""
        for port in self.ports.values():
            reply = exchange(port, b"GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reply.status == 200 and reply.header("x-upstream-name") == "good"
            assert reply.closed is False
        assert self.proxy.worker_pids() == self.worker_pids, "a worker was replaced"
        assert self.proxy.proc is not None and self.proxy.proc.poll() is None


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    good = UpstreamServer("good").start()
    try:
        text = errors_config(0, dict.fromkeys(LISTENERS, 0), good.port, free_port())
        with ProxydProcess(tmp_path_factory.mktemp("proxyd"), text, concurrency=2) as p:
            ports = {name: p.listener_port(name) for name in LISTENERS}
            pids = p.worker_pids()
            assert len(pids) == 2
            yield Setup(p, ports, good, pids)
    finally:
        good.stop()


# -- tests --------------------------------------------------------------------------------


def test_no_route_is_404(setup: Setup) -> None:
    for path in ("/nowhere", "/", "/ech"):
        reply = exchange(setup.ports["main"], f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert reply.status == 404
        assert reply.body == b""
        assert reply.header("server") == "envoy"
        assert reply.closed is False
    setup.assert_still_serving()


def test_refused_endpoint_is_503(setup: Setup) -> None:
    reply = exchange(setup.ports["main"], b"GET /dead HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.status == 503
    assert reply.body.decode().startswith(CONNECT_ERROR), reply.body
    assert reply.header("content-type") == "text/plain"
    assert reply.header("content-length") == str(len(reply.body))
    assert reply.closed is False
    setup.assert_still_serving()


def test_slow_upstream_is_504(setup: Setup) -> None:
    reply = exchange(setup.ports["main"], b"GET /delay/3000/echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.status == 504
    assert reply.body == b"upstream request timeout"
    assert reply.header("content-type") == "text/plain"
    assert reply.closed is False
    setup.assert_still_serving()


def test_a_route_timeout_only_applies_to_its_route(setup: Setup) -> None:
    reply = exchange(setup.ports["main"], b"GET /delay/100/echo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.status == 200  # 100 ms is inside the 0.5 s route timeout


@pytest.mark.parametrize("case", malformed_cases(local_replies_only=True), ids=lambda c: c.name)
def test_malformed_request_gets_its_status_and_close(setup: Setup, case: MalformedCase) -> None:
    reply = exchange(setup.ports["main"], case.request)
    assert (reply.status, reply.body) == (case.status, case.body)
    if case.close:
        assert reply.header("connection") == "close"
    assert reply.closed is case.close
    setup.assert_still_serving()


@pytest.mark.parametrize(
    ("listener", "total_kb"),
    [("small", 10), ("main", 70)],
    ids=["8kb-limit-10kb-sent", "default-60kb-limit-70kb-sent"],
)
def test_oversized_headers_are_431(setup: Setup, listener: str, total_kb: int) -> None:
    reply = exchange(setup.ports[listener], big_headers_request(total_kb))
    assert reply.status == 431
    assert reply.body == b"Request Header Fields Too Large"
    assert reply.closed is True
    setup.assert_still_serving()


@pytest.mark.parametrize(("listener", "total_kb"), [("small", 6), ("main", 50)])
def test_headers_under_the_limit_pass(setup: Setup, listener: str, total_kb: int) -> None:
    reply = exchange(setup.ports[listener], big_headers_request(total_kb))
    assert reply.status == 200
    assert reply.closed is False


def test_every_error_in_a_row_then_normal_traffic(setup: Setup) -> None:
    """The whole sequence on one proxyd, alternating listeners: still the same workers."""
    for case in malformed_cases(local_replies_only=True):
        # the exact status is test_malformed_request_gets_its_status_and_close's business
        reply = exchange(setup.ports["main"], case.request)
        assert reply.status >= 400 and reply.closed is case.close
    for _ in range(3):
        assert exchange(setup.ports["main"], b"GET /dead HTTP/1.1\r\nHost: x\r\n\r\n").status == 503
        assert exchange(setup.ports["main"], big_headers_request(70)).status == 431
    setup.assert_still_serving()
