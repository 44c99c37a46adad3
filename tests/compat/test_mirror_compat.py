"""request_mirror_policies: real Envoy and real proxyd on the same YAML.

One listener; the primary cluster is the demo upstream (``/echo``), and two shadow
clusters (``shadow_a``, ``shadow_b``) are recording upstreams that keep what each
request brought (method, path, headers, body). ``dead`` points at a port nobody
listens on. The routes mirror to one or two shadows, by name or by ``cluster_header``,
with ``runtime_fraction`` 0 % and 100 %, with ``disable_shadow_host_suffix_append``,
with route header mutations, and to the dead cluster.

Every case is sent to Envoy and then proxyd with an ``x-case-id`` header; what the client
got and what each shadow received for that case must be equal. A dead shadow must not
change the client's response. The shadow clusters' request counters must agree too.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.support import ProxydProcess, UpstreamServer, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
BUFFER_LIMIT = 65536  # the listener's per_connection_buffer_limit_bytes


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _RecordingServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _handle(self) -> None:
        body = self._body()
        seen = {
            "method": self.command,
            "path": self.path,
            "headers": sorted((k.lower(), v) for k, v in self.headers.items()),
            "body": (len(body), hashlib.sha256(body).hexdigest()[:16]),
        }
        with self.server.cond:
            self.server.seen.append(seen)
            self.server.cond.notify_all()
        data = b"shadow says no"
        self.send_response(500)  # a shadow's answer never reaches the client
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.seen: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def by_case(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        with self.cond:
            for s in self.seen:
                case = dict(s["headers"]).get("x-case-id", "?")
                out.setdefault(case, []).append(s)
        return out

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "connect_timeout": "0.5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def route(prefix: str, mirrors: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": "primary", "request_mirror_policies": mirrors}
    action.update(extra.pop("action", {}))
    return {"match": {"prefix": prefix}, "route": action, **extra}


def fraction(numerator: int) -> dict[str, Any]:
    return {"default_value": {"numerator": numerator, "denominator": "HUNDRED"}}


def config(ports: dict[str, int]) -> str:
    routes = [
        route("/echo/one/", [{"cluster": "shadow_a"}]),
        route("/echo/two/", [{"cluster": "shadow_a"}, {"cluster": "shadow_b"}]),
        route("/echo/header/", [{"cluster_header": "x-mirror-to"}]),
        route("/echo/never/", [{"cluster": "shadow_a", "runtime_fraction": fraction(0)}]),
        route("/echo/always/", [{"cluster": "shadow_a", "runtime_fraction": fraction(100)}]),
        route(
            "/echo/nosuffix/",
            [{"cluster": "shadow_a", "disable_shadow_host_suffix_append": True}],
        ),
        route(
            "/echo/traced/",
            [{"cluster": "shadow_a", "trace_sampled": False}],
        ),
        route(
            "/echo/mutated/",
            [{"cluster": "shadow_a"}],
            request_headers_to_add=[
                {"header": {"key": "x-added", "value": "route"}},
                {
                    "header": {
                        "key": "x-client",
                        "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                    }
                },
            ],
            action={"prefix_rewrite": "/echo/rewritten/", "host_rewrite_literal": "up.example"},
        ),
        route("/echo/dead/", [{"cluster": "dead"}]),
        route("/echo/deadtoo/", [{"cluster": "dead"}, {"cluster": "shadow_b"}]),
        route("/", []),
    ]
    hcm = {
        "@type": HCM,
        "stat_prefix": "ingress_http",
        "route_config": {
            "name": "local",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [cluster(n, p) for n, p in ports.items()],
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


# name -> (method, path, headers, body)
Case = tuple[str, str, dict[str, str], bytes]
CASES: dict[str, Case] = {
    "get": ("GET", "/echo/one/a?q=1", {"host": "svc.example"}, b""),
    "host_with_port": ("GET", "/echo/one/b", {"host": "svc.example:8080"}, b""),
    "host_ipv6_with_port": ("GET", "/echo/one/c", {"host": "[::1]:8080"}, b""),
    "host_ip_no_port": ("GET", "/echo/one/d", {"host": "10.1.2.3"}, b""),
    "client_headers": (
        "GET",
        "/echo/one/e",
        {"host": "svc.example", "x-custom": "c1", "user-agent": "ua/2", "x-request-id": "rid-1"},
        b"",
    ),
    "client_xff": (
        "GET",
        "/echo/one/x",
        {"host": "svc.example", "x-forwarded-for": "203.0.113.9", "x-envoy-internal": "false"},
        b"",
    ),
    "post_body": ("POST", "/echo/one/f", {"host": "svc.example"}, b"hello shadow" * 100),
    "put_chunked": ("PUT", "/echo/one/g", {"host": "svc.example", "chunked": "1"}, b"c" * 3000),
    "body_over_buffer_limit": (
        "POST",
        "/echo/one/h",
        {"host": "svc.example"},
        b"B" * (BUFFER_LIMIT * 3),
    ),
    "two_shadows": ("POST", "/echo/two/a", {"host": "two.example"}, b"both"),
    "header_names_shadow_b": (
        "GET",
        "/echo/header/a",
        {"host": "h", "x-mirror-to": "shadow_b"},
        b"",
    ),
    "header_names_unknown": ("GET", "/echo/header/b", {"host": "h", "x-mirror-to": "nope"}, b""),
    "header_missing": ("GET", "/echo/header/c", {"host": "h"}, b""),
    "fraction_zero": ("GET", "/echo/never/a", {"host": "h"}, b""),
    "fraction_hundred": ("GET", "/echo/always/a", {"host": "h"}, b""),
    "no_suffix": ("GET", "/echo/nosuffix/a", {"host": "svc.example:81"}, b""),
    "trace_sampled_ignored": ("GET", "/echo/traced/a", {"host": "t"}, b""),
    "route_mutations": ("GET", "/echo/mutated/a", {"host": "m.example"}, b""),
    "dead_shadow": ("GET", "/echo/dead/a", {"host": "d"}, b""),
    "dead_shadow_body": ("POST", "/echo/dead/b", {"host": "d"}, b"x" * 5000),
    "dead_and_live_shadows": ("GET", "/echo/deadtoo/a", {"host": "d"}, b""),
    "no_mirror_route": ("GET", "/echo/plain", {"host": "p"}, b""),
}
# The last case sent: every shadow request of earlier cases was started before it.
BARRIER = "barrier"
BARRIER_CASE: Case = ("GET", "/echo/one/z", {"host": "z"}, b"")

# What differs by nature between runs and proxies.
_VARYING = {"x-request-id", "date", "x-envoy-expected-rq-timeout-ms"}


def send(port: int, case_id: str, case: Case) -> dict[str, Any]:
    method, path, headers, body = case
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        h = {k: v for k, v in headers.items() if k not in ("host", "chunked")}
        h["x-case-id"] = case_id
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", headers["host"])
        for k, v in h.items():
            conn.putheader(k, v)
        if "chunked" in headers:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for i in range(0, len(body), 1000):
                piece = body[i : i + 1000]
                conn.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
            conn.send(b"0\r\n\r\n")
        else:
            if body or method in ("POST", "PUT"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
        r = conn.getresponse()
        data = r.read()
        return {
            "status": r.status,
            "upstream": r.getheader("x-upstream-name"),
            "body_len": len(data),
        }
    except OSError as exc:
        return {"error": type(exc).__name__}
    finally:
        conn.close()


def shadow_view(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for s in seen:
        headers = [(k, v) for k, v in s["headers"] if k not in _VARYING]
        names = sorted({k for k, _ in s["headers"]} & _VARYING)
        out.append({**s, "headers": headers, "varying_present": names})
    return out


def play(port: int, shadows: dict[str, _RecordingServer], expected: dict[str, int]) -> dict:
    """Every case, then the barrier; then wait until each shadow has what ``expected``
    says (Envoy's counts; for Envoy itself, at least the barrier)."""
    clients = {name: send(port, name, case) for name, case in CASES.items()}
    clients[BARRIER] = send(port, BARRIER, BARRIER_CASE)
    a = shadows["shadow_a"]

    def arrived() -> bool:
        if BARRIER not in a.by_case():
            return False
        got = {n: len(s.seen) for n, s in shadows.items()}
        return all(got[n] >= expected.get(n, 0) for n in shadows)

    wait_for(arrived, timeout=15)
    out = {"clients": clients, "shadows": {}}
    for name, server in shadows.items():
        out["shadows"][name] = {k: shadow_view(v) for k, v in server.by_case().items()}
        with server.cond:
            server.seen.clear()
    return out


# (upstream_rq_completed: proxyd does not count it for any cluster yet.)
SHADOW_STATS = (
    "upstream_rq_total",
    "upstream_rq_503",
    "upstream_rq_5xx",
    "upstream_rq_500",
    "upstream_cx_connect_fail",
)


def stats_of(stats: dict[str, int]) -> dict[str, int]:
    return {
        f"{c}.{s}": stats.get(f"cluster.{c}.{s}", 0)
        for c in ("shadow_a", "shadow_b", "dead")
        for s in SHADOW_STATS
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, dict]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # bound, never listening: connections are refused
        shadows = {"shadow_a": _RecordingServer(), "shadow_b": _RecordingServer()}
        try:
            with UpstreamServer("primary") as primary:
                ports = {
                    "primary": primary.port,
                    "shadow_a": shadows["shadow_a"].port,
                    "shadow_b": shadows["shadow_b"].port,
                    "dead": dead_port,
                }
                text = config(ports)
                with EnvoyRunner(text) as envoy:
                    e = play(envoy.listener_port("ingress"), shadows, {})
                    wait_for(lambda: envoy_stats(envoy)["dead.upstream_cx_connect_fail"] >= 3)
                    e["stats"] = envoy_stats(envoy)
                expected = {n: sum(len(v) for v in e["shadows"][n].values()) for n in shadows}
                tmp = tmp_path_factory.mktemp("mirror")
                with ProxydProcess(tmp, text, concurrency=1) as proxy:
                    p = play(proxy.listener_port("ingress"), shadows, expected)
                    # Workers report counters in batches: wait for Envoy's numbers (a
                    # failure then shows what proxyd had).
                    try:
                        wait_for(lambda: stats_of(proxy.stats()) == e["stats"], timeout=5)
                    except TimeoutError:
                        pass  # compared in the test
                    p["stats"] = stats_of(proxy.stats())
                yield e, p
        finally:
            for server in shadows.values():
                server.stop()


def envoy_stats(envoy: EnvoyRunner) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/stats") as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return stats_of(out)


@pytest.mark.parametrize("name", [*CASES, BARRIER])
def test_client_response_same_as_envoy(results: tuple[dict, dict], name: str) -> None:
    e, p = results
    assert p["clients"][name] == e["clients"][name]


@pytest.mark.parametrize("name", [*CASES, BARRIER])
def test_shadows_received_the_same(results: tuple[dict, dict], name: str) -> None:
    e, p = results
    for shadow in ("shadow_a", "shadow_b"):
        assert (shadow, p["shadows"][shadow].get(name)) == (shadow, e["shadows"][shadow].get(name))


def test_shadow_cluster_stats_same_as_envoy(results: tuple[dict, dict]) -> None:
    e, p = results
    assert p["stats"] == e["stats"]


def test_what_envoy_does(results: tuple[dict, dict]) -> None:
    """Envoy's answers, as the comparisons rely on them."""
    e = results[0]
    a = e["shadows"]["shadow_a"]
    assert dict(a["get"][0]["headers"])["host"] == "svc.example-shadow"
    for name in ("dead_shadow", "dead_shadow_body", "dead_and_live_shadows"):
        assert e["clients"][name]["status"] == 200
        assert e["clients"][name]["upstream"] == "primary"
    assert "fraction_zero" not in a and "fraction_hundred" in a
    assert "dead_and_live_shadows" in e["shadows"]["shadow_b"]
