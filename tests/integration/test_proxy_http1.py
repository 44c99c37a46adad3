"""HTTP/1.1 through a real proxyd (master + 2 workers) to real demo upstreams.

Everything here looks at what the client and the upstream saw: bodies (by length and
SHA-256, as the demo upstream's ``/echo`` reports them), headers, connection reuse on
both sides, balancing, and the memory of the workers while a large upload streams.

One proxyd serves the whole module, with two listeners on the same routes:

* ``inner``: the connection manager's defaults (``use_remote_address: false``);
* ``edge``: ``use_remote_address: true``, so x-forwarded-for is appended.

Routes: ``x-pick: rr`` → cluster ``rr`` (two endpoints, ROUND_ROBIN); ``x-pick: timed``
→ cluster ``single`` with a 2.5 s route timeout; anything else → cluster ``single``.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
import pytest
import yaml

from tests.support import ProxydProcess, UpstreamServer, http_listener, static_cluster

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
MiB = 1 << 20


def _pick(value: str) -> list[dict[str, Any]]:
    return [{"name": "x-pick", "string_match": {"exact": value}}]


def _listener(name: str, port: int, **hcm_fields: Any) -> dict[str, Any]:
    routes = [
        {"match": {"prefix": "/", "headers": _pick("rr")}, "route": {"cluster": "rr"}},
        {
            "match": {"prefix": "/", "headers": _pick("timed")},
            "route": {"cluster": "single", "timeout": "2.5s"},
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "single"}},
    ]
    route_config = {
        "name": "local_route",
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
    }
    return http_listener(name, port, route_config, **hcm_fields)


def proxy_config(
    admin_port: int, inner_port: int, edge_port: int, single: int, rr: list[int]
) -> str:
    boot = {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                _listener("inner", inner_port),
                _listener("edge", edge_port, use_remote_address=True),
            ],
            "clusters": [static_cluster("single", [single]), static_cluster("rr", rr)],
        },
    }
    return yaml.safe_dump(boot, sort_keys=False)


@dataclass
class Setup:
    proxy: ProxydProcess
    inner: int  # listener ports
    edge: int
    single: UpstreamServer
    rr: list[UpstreamServer]

    def url(self, path: str, edge: bool = False) -> str:
        return f"http://127.0.0.1:{self.edge if edge else self.inner}{path}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    single = UpstreamServer("single").start()
    rr = [UpstreamServer("rr-b").start(), UpstreamServer("rr-c").start()]
    try:
        text = proxy_config(0, 0, 0, single.port, [u.port for u in rr])
        with ProxydProcess(tmp_path_factory.mktemp("proxyd"), text, concurrency=2) as p:
            yield Setup(p, p.listener_port("inner"), p.listener_port("edge"), single, rr)
    finally:
        for u in (single, *rr):
            u.stop()


def echo_headers(info: dict[str, Any]) -> dict[str, list[str]]:
    """The request headers the upstream saw, name → values in order."""
    out: dict[str, list[str]] = {}
    for name, value in info["headers"]:
        out.setdefault(name, []).append(value)
    return out


def raw_get(
    port: int, path: str, headers: list[tuple[str, str]], host: str = "test.local"
) -> http.client.HTTPResponse:
    """One GET with exactly these header lines (plus Host), on a new connection; read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        with resp:
            resp.body = resp.read()  # type: ignore[attr-defined]
        return resp
    finally:
        conn.close()


# -- plain requests ---------------------------------------------------------------------


def test_get_returns_upstream_body_and_name(setup: Setup) -> None:
    r = httpx.get(setup.url("/hello/world?x=1"), timeout=10)
    assert r.status_code == 200
    assert r.headers["x-upstream-name"] == "single"
    assert r.text == "Hello from single (GET /hello/world?x=1)\n"
    assert r.headers["server"] == "envoy"
    assert int(r.headers["x-envoy-upstream-service-time"]) >= 0


def test_head_and_status_codes_pass_through(setup: Setup) -> None:
    with httpx.Client(timeout=10) as c:
        # Not 204/304: the demo upstream sends a body with those, which no proxy may
        # forward (test_errors_vs_envoy.py compares what proxyd and Envoy do with it).
        for code in (201, 302, 404, 500, 503):
            r = c.get(setup.url(f"/status/{code}"))
            assert r.status_code == code
            assert r.headers["x-upstream-name"] == "single"
        r = c.head(setup.url("/bytes/1234"))
        assert r.status_code == 200 and r.content == b""
        assert r.headers["content-length"] == "1234"


# -- bodies -----------------------------------------------------------------------------


def test_post_content_length_body_arrives_intact(setup: Setup) -> None:
    body = os.urandom(6 * MiB + 123)
    r = httpx.post(setup.url("/echo"), content=body, timeout=30)
    assert r.status_code == 200
    info = r.json()
    assert info["method"] == "POST"
    assert (info["body_bytes"], info["body_sha256"]) == (
        len(body),
        hashlib.sha256(body).hexdigest(),
    )
    assert echo_headers(info)["content-length"] == [str(len(body))]


def test_post_chunked_body_arrives_intact(setup: Setup) -> None:
    digest = hashlib.sha256()
    sizes = [1, 17, 65536, MiB, 3 * MiB + 5, 4096, 2]
    total = 0

    def chunks() -> Iterator[bytes]:
        nonlocal total
        for n in sizes:
            data = os.urandom(n)
            digest.update(data)
            total += n
            yield data

    r = httpx.post(setup.url("/echo"), content=chunks(), timeout=30)
    assert r.status_code == 200
    info = r.json()
    assert (info["body_bytes"], info["body_sha256"]) == (total, digest.hexdigest())
    assert echo_headers(info)["transfer-encoding"] == ["chunked"]


@pytest.mark.parametrize("kind", ["bytes", "chunked"])
def test_large_response_arrives_intact(setup: Setup, kind: str) -> None:
    n = 24 * MiB + 7
    fill = b"x" if kind == "bytes" else b"y"  # what the demo upstream sends
    digest = hashlib.sha256()
    got = 0
    with httpx.stream("GET", setup.url(f"/{kind}/{n}"), timeout=30) as r:
        assert r.status_code == 200
        if kind == "bytes":
            assert r.headers["content-length"] == str(n)
        else:
            assert r.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in r.headers
        for data in r.iter_raw():
            digest.update(data)
            got += len(data)
    assert got == n
    assert digest.hexdigest() == hashlib.sha256(fill * n).hexdigest()


# -- connections ------------------------------------------------------------------------


def test_keep_alive_reuses_both_connections(setup: Setup) -> None:
    conns_before = setup.single.connections
    reqs_before = setup.single.requests
    conn = http.client.HTTPConnection("127.0.0.1", setup.inner, timeout=10)
    conn.connect()
    sock = conn.sock
    local = sock.getsockname()
    conn.auto_open = 0  # a closed connection raises instead of silently reconnecting
    try:
        for i in range(50):
            conn.request("GET", f"/echo?i={i}")
            resp = conn.getresponse()
            info = json.loads(resp.read())
            assert resp.status == 200 and info["path"] == f"/echo?i={i}"
            assert resp.getheader("connection") is None  # not "close"
            assert conn.sock is sock and sock.getsockname() == local
    finally:
        conn.close()
    assert setup.single.requests - reqs_before == 50
    # One downstream connection lands on one worker, whose pool keeps its upstream
    # connection: far fewer upstream connections than requests.
    assert setup.single.connections - conns_before <= 2


def test_round_robin_spreads_over_both_endpoints(setup: Setup) -> None:
    seen: dict[str, int] = {}
    with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=1)) as c:
        for _ in range(20):
            r = c.get(setup.url("/"), headers={"x-pick": "rr"})
            assert r.status_code == 200
            name = r.headers["x-upstream-name"]
            seen[name] = seen.get(name, 0) + 1
    assert set(seen) == {"rr-b", "rr-c"}
    assert abs(seen["rr-b"] - seen["rr-c"]) <= 2, seen


# -- headers ----------------------------------------------------------------------------


def test_request_id_generated_when_absent_kept_when_present(setup: Setup) -> None:
    r = httpx.get(setup.url("/echo"), timeout=10)
    ids = echo_headers(r.json())["x-request-id"]
    assert len(ids) == 1 and UUID4.match(ids[0]), ids
    r2 = httpx.get(setup.url("/echo"), timeout=10)
    assert echo_headers(r2.json())["x-request-id"] != ids  # a new one per request

    r = httpx.get(setup.url("/echo"), headers={"x-request-id": "client-id-42"}, timeout=10)
    assert echo_headers(r.json())["x-request-id"] == ["client-id-42"]


def test_forwarded_headers_internal_listener(setup: Setup) -> None:
    """use_remote_address false: x-forwarded-for passes as it came, none is added."""
    r = httpx.get(setup.url("/echo"), timeout=10)
    h = echo_headers(r.json())
    assert h["x-forwarded-proto"] == ["http"]
    assert "x-forwarded-for" not in h
    assert h["x-envoy-expected-rq-timeout-ms"] == ["15000"]  # the default route timeout

    r = httpx.get(
        setup.url("/echo"),
        headers={"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"},
        timeout=10,
    )
    h = echo_headers(r.json())
    assert h["x-forwarded-for"] == ["203.0.113.9"]
    # Not at the edge, Envoy keeps the x-forwarded-proto it was given (Envoy 1.40 does).
    assert h["x-forwarded-proto"] == ["https"]


def test_forwarded_headers_edge_listener(setup: Setup) -> None:
    """use_remote_address true: the client's address is appended to x-forwarded-for."""
    r = httpx.get(setup.url("/echo", edge=True), timeout=10)
    h = echo_headers(r.json())
    assert len(h["x-forwarded-for"]) == 1
    ipaddress.ip_address(h["x-forwarded-for"][0])  # one address, whatever it is
    assert h["x-forwarded-proto"] == ["http"]
    assert UUID4.match(h["x-request-id"][0])
    assert h["x-envoy-expected-rq-timeout-ms"] == ["15000"]

    r = httpx.get(
        setup.url("/echo", edge=True),
        headers={"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"},
        timeout=10,
    )
    h = echo_headers(r.json())
    xff = h["x-forwarded-for"]
    assert len(xff) == 1 and xff[0].startswith("203.0.113.9,"), xff
    ipaddress.ip_address(xff[0].split(",")[1])
    # At the edge with no trusted hops, Envoy sets x-forwarded-proto itself.
    assert h["x-forwarded-proto"] == ["http"]


def test_route_timeout_is_announced_upstream(setup: Setup) -> None:
    r = httpx.get(setup.url("/echo"), headers={"x-pick": "timed"}, timeout=10)
    assert r.status_code == 200
    assert echo_headers(r.json())["x-envoy-expected-rq-timeout-ms"] == ["2500"]
    # a client's own value never reaches the upstream
    r = httpx.get(setup.url("/echo"), headers={"x-envoy-expected-rq-timeout-ms": "7"}, timeout=10)
    assert echo_headers(r.json())["x-envoy-expected-rq-timeout-ms"] == ["15000"]


def test_upstream_service_time_on_response(setup: Setup) -> None:
    r = httpx.get(setup.url("/delay/200/echo"), timeout=10)
    assert r.status_code == 200
    assert int(r.headers["x-envoy-upstream-service-time"]) >= 200


def test_hop_by_hop_headers_are_not_forwarded(setup: Setup) -> None:
    resp = raw_get(
        setup.inner,
        "/echo",
        [
            ("Connection", "keep-alive, foo"),
            ("foo", "bar"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "gzip"),
            ("X-Custom", "stays"),
        ],
    )
    assert resp.status == 200
    h = echo_headers(json.loads(resp.body))  # type: ignore[attr-defined]
    for gone in ("connection", "foo", "keep-alive", "proxy-connection", "te"):
        assert gone not in h, (gone, h)
    assert h["x-custom"] == ["stays"]
    assert h["host"] == ["test.local"]


# -- a large upload streams -------------------------------------------------------------

UPLOAD_MIB = 1024  # 1 GiB: ~3 s on the 2-core machine this was written on


class RssSampler:
    """Peak RSS of some processes, sampled every 50 ms in a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]
        self.baseline = [p.memory_info().rss for p in self.procs]
        self.peak = list(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for i, p in enumerate(self.procs):
                self.peak[i] = max(self.peak[i], p.memory_info().rss)

    def growth(self) -> list[int]:
        return [peak - base for peak, base in zip(self.peak, self.baseline, strict=True)]

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.timeout(90)
def test_one_gib_upload_streams_in_bounded_memory(setup: Setup) -> None:
    pids = setup.proxy.worker_pids()
    assert len(pids) == 2
    # warm both workers up so the baseline includes their steady state
    with httpx.Client(timeout=10) as c:
        for _ in range(10):
            c.post(setup.url("/echo"), content=os.urandom(MiB))
    base = os.urandom(MiB)
    digest = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        for i in range(UPLOAD_MIB):
            data = i.to_bytes(8, "big") + base[8:]  # each MiB differs: order matters
            digest.update(data)
            yield data

    with RssSampler(pids) as rss, httpx.Client(timeout=60) as c:
        r = c.post(setup.url("/echo"), content=chunks())
    assert r.status_code == 200
    info = r.json()
    assert info["body_bytes"] == UPLOAD_MIB * MiB
    assert info["body_sha256"] == digest.hexdigest()
    assert max(rss.growth()) < 20 * MiB, f"worker RSS grew by {rss.growth()} bytes"
    assert setup.proxy.worker_pids() == pids
