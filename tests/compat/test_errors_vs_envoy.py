"""Error answers and forwarded headers: real Envoy and real proxyd on the same YAML.

The bootstrap is ``tests/integration/test_proxy_errors.py``'s :func:`errors_config`
(listeners ``main``, ``small`` with ``max_request_headers_kb: 8``, ``edge`` with
``use_remote_address: true``; a ``good`` demo upstream, a ``dead`` cluster whose port
refuses connections, a 0.5 s route timeout on ``/delay``). Envoy and then proxyd
(``--concurrency 2``) run on that very text, one after the other on the same ports, and
every scenario below is played against each. A scenario returns plain data (status,
body, headers with dates and ids normalized, whether the connection closed, what the
upstream received); the two must be equal. Each difference is a proxyd bug or a
divergence to report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.integration.test_proxy_errors import (
    CONNECT_ERROR,
    LISTENERS,
    MalformedCase,
    RawConnection,
    Reply,
    big_headers_request,
    errors_config,
    exchange,
    malformed_cases,
)
from tests.support import ProxydProcess, UpstreamServer, free_port

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

Ports = dict[str, int]


def normalized_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Sorted (name, value) pairs; values that differ on every run are replaced by a shape."""
    out = []
    for name, value in headers:
        if name == "date":
            value = "<date>"
        elif name == "x-envoy-upstream-service-time":
            value = "<ms>" if value.isdigit() else f"<not a number: {value}>"
        elif name == "x-request-id" and UUID4.match(value):
            value = "<uuid4>"
        out.append((name, value))
    return sorted(out)


def local_reply(reply: Reply) -> dict[str, Any]:
    """What matters about an answer proxyd or Envoy made itself."""
    return {
        "status": reply.status,
        "body": reply.body.decode("latin-1"),
        "headers": normalized_headers(reply.headers),
        "closed": reply.closed,
    }


def proxied_reply(reply: Reply) -> dict[str, Any]:
    """What matters about an answer from the upstream, and what the upstream received."""
    out: dict[str, Any] = {
        "status": reply.status,
        "headers": normalized_headers(reply.headers),
        "closed": reply.closed,
    }
    if reply.header("content-type") == "application/json":
        info = json.loads(reply.body)
        out["upstream_saw"] = {
            "method": info["method"],
            "path": info["path"],
            "headers": normalized_headers([(k, v) for k, v in info["headers"]]),
            "body": (info["body_bytes"], info["body_sha256"]),
        }
    else:
        out["body"] = reply.body.decode("latin-1")
    return out


def described(reply: Reply) -> dict[str, Any]:
    return proxied_reply(reply) if reply.header("x-upstream-name") else local_reply(reply)


# -- scenarios: each plays against a server on `ports` and returns plain data ---------

Scenario = Callable[[Ports], Any]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = fn
        return fn

    return register


def get(path: str, *headers: str, host: str = "x") -> bytes:
    lines = "".join(f"{h}\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{lines}\r\n".encode()


@scenario("no_route_404")
def _no_route(ports: Ports) -> Any:
    return local_reply(exchange(ports["main"], get("/nowhere")))


@scenario("refused_endpoint_503")
def _refused(ports: Ports) -> Any:
    reply = exchange(ports["main"], get("/dead"))
    assert reply.body.startswith(CONNECT_ERROR.encode()), reply.body
    return local_reply(reply)


@scenario("route_timeout_504")
def _timeout(ports: Ports) -> Any:
    return local_reply(exchange(ports["main"], get("/delay/3000/echo")))


@scenario("headers_10kb_over_8kb_limit_431")
def _over_small(ports: Ports) -> Any:
    return local_reply(exchange(ports["small"], big_headers_request(10)))


@scenario("headers_70kb_over_default_60kb_limit_431")
def _over_default(ports: Ports) -> Any:
    return local_reply(exchange(ports["main"], big_headers_request(70)))


def _headers(count: int, value_len: int, listener: str) -> Scenario:
    """``count`` headers ``x-hNNN: <value_len bytes>``, the status of the answer."""

    def play(ports: Ports) -> Any:
        req = get("/echo", *(f"x-h{i:03d}: {'a' * value_len}" for i in range(count)))
        return {"head_bytes": len(req), "status": exchange(ports[listener], req).status}

    return play


# Around the 8 KiB limit of "small", with 50 headers (Envoy also caps the count at 100):
# 50 * (value + 10) + 31 bytes of head, of which 50 * (value + 6) are names and values.
# Envoy 1.40: 8131 bytes pass, 8231 get 431.
SCENARIOS["small_head_7.9kb"] = _headers(50, 148, "small")
SCENARIOS["small_head_8131_bytes"] = _headers(50, 152, "small")
SCENARIOS["small_head_8231_bytes"] = _headers(50, 154, "small")
SCENARIOS["small_head_8.6kb"] = _headers(50, 165, "small")
# max_request_headers_count (default 100): Envoy 1.40 answers 95 short headers besides
# Host, and 431 to 96 (it counts the headers it adds: x-forwarded-proto, x-request-id,
# x-envoy-expected-rq-timeout-ms).
SCENARIOS["main_95_headers_plus_host"] = _headers(95, 1, "main")
SCENARIOS["main_96_headers_plus_host"] = _headers(96, 1, "main")
SCENARIOS["main_150_headers_plus_host"] = _headers(150, 1, "main")


def _forwarded(listener: str, path: str, *headers: str) -> Scenario:
    def play(ports: Ports) -> Any:
        return proxied_reply(exchange(ports[listener], get(path, *headers)))

    return play


CLIENT_HEADERS = (
    "x-forwarded-for: 203.0.113.9",
    "x-forwarded-proto: https",
    "x-request-id: client-id-42",
    "x-envoy-expected-rq-timeout-ms: 7",
    "x-envoy-retry-on: 5xx",
    "Connection: keep-alive, foo",
    "foo: bar",
    "Keep-Alive: timeout=5",
    "Proxy-Connection: keep-alive",
    "TE: gzip",
    "X-Custom: stays",
)

for _listener in ("main", "edge"):
    SCENARIOS[f"forwarded_{_listener}_plain"] = _forwarded(_listener, "/echo")
    SCENARIOS[f"forwarded_{_listener}_client_headers"] = _forwarded(
        _listener, "/echo", *CLIENT_HEADERS
    )
    SCENARIOS[f"forwarded_{_listener}_route_timeout"] = _forwarded(_listener, "/delay/0/echo")
    # Envoy's router-control headers from a client: what reaches the upstream?
    SCENARIOS[f"forwarded_{_listener}_client_rq_timeout_header"] = _forwarded(
        _listener, "/delay/0/echo", "x-envoy-upstream-rq-timeout-ms: 200"
    )
    SCENARIOS[f"{_listener}_client_rq_timeout_header_and_slow_upstream"] = _forwarded(
        _listener, "/delay/1000/echo", "x-envoy-upstream-rq-timeout-ms: 5000"
    )


@scenario("status_passthrough")
def _statuses(ports: Ports) -> Any:
    return [
        described(exchange(ports["main"], get(f"/status/{code}")))
        for code in (200, 201, 302, 404, 500, 502, 503)
    ]


@scenario("upstream_204_with_content_length_and_body")
def _bad_204(ports: Ports) -> Any:
    """The demo upstream answers 204 with content-length: 13 and 13 bytes of body.

    (What comes next on that client or upstream connection depends on when the stray
    bytes arrive, for Envoy as for proxyd, so only this answer is compared. The same
    holds for a 304 with a body, which both forward.)"""
    reply = exchange(ports["main"], get("/status/204"), check_closed=False)
    return {"status": reply.status, "content-length": reply.header("content-length")}


@scenario("expect_100_continue")
def _expect(ports: Ports) -> Any:
    """A client that waits for 100 Continue before it sends the body gets it, then the
    answer. (With the body sent at once, Envoy still sends the 100 and proxyd omits it,
    which RFC 9110 allows; that is not compared.)"""
    conn = RawConnection(ports["main"])
    try:
        conn.sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        while b"\r\n\r\n" not in conn.buf:
            if not conn.fill():
                break
        first = conn.buf.split(b"\r\n", 1)[0].decode("latin-1")
        conn.sock.sendall(b"hello")
        reply = conn.read_reply()
        return {"first_line": first, "interim": reply.interim, **proxied_reply(reply)}
    finally:
        conn.close()


def _malformed(case: MalformedCase) -> Scenario:
    def play(ports: Ports) -> Any:
        return described(exchange(ports["main"], case.request))

    return play


for _case in malformed_cases():
    SCENARIOS[f"malformed_{_case.name}"] = _malformed(_case)


# -- running the scenarios --------------------------------------------------------------


def _play(play: Scenario, ports: Ports) -> Any:
    try:
        return play(ports)
    except (OSError, AssertionError, ValueError) as exc:
        # a timeout or a reset is an answer too: keep it and compare it
        return f"{type(exc).__name__}: {exc}"


def play_all(ports: Ports) -> dict[str, Any]:
    """Every scenario, each on its own connections. Envoy waits up to 1 s for the client
    to close after a ``connection: close`` answer (its delayed_close_timeout), so the
    independent scenarios run side by side; the ones where the upstream misbehaves
    (``upstream_*``), which can leave a pooled upstream connection dirty, run one by one
    afterwards, in order."""
    serial = [name for name in SCENARIOS if name.startswith("upstream_")]
    parallel = [name for name in SCENARIOS if name not in serial]
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = {name: pool.submit(_play, SCENARIOS[name], ports) for name in parallel}
        out = {name: f.result() for name, f in futures.items()}
    for name in serial:
        out[name] = _play(SCENARIOS[name], ports)
    return out


@dataclass
class Results:
    envoy: dict[str, Any]
    proxyd: dict[str, Any]
    worker_pids_before: list[int]
    worker_pids_after: list[int]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    good = UpstreamServer("good").start()
    try:
        # Listeners and admin on port 0: each proxy binds its own, /listeners says which.
        text = errors_config(0, dict.fromkeys(LISTENERS, 0), good.port, free_port())
        with EnvoyRunner(text) as runner:
            envoy = play_all({name: runner.listener_port(name) for name in LISTENERS})
        with ProxydProcess(tmp_path_factory.mktemp("proxyd"), text, concurrency=2) as p:
            before = p.worker_pids()
            proxyd = play_all({name: p.listener_port(name) for name in LISTENERS})
            after = p.worker_pids()
        yield Results(envoy, proxyd, before, after)
    finally:
        good.stop()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_proxyd_answers_like_envoy(results: Results, name: str) -> None:
    assert results.proxyd[name] == results.envoy[name]


@pytest.mark.parametrize("case", malformed_cases(), ids=lambda c: c.name)
def test_envoy_answers_as_the_corpus_says(results: Results, case: MalformedCase) -> None:
    """Keeps tests/compat/cases/malformed_requests.yaml true to Envoy."""
    got = results.envoy[f"malformed_{case.name}"]
    assert got["status"] == case.status
    assert got["closed"] is case.close
    if case.body is not None:
        assert got["body"] == case.body.decode()


def test_envoy_local_replies_have_the_expected_shape(results: Results) -> None:
    """The facts the integration tests assume, checked on Envoy itself."""
    e = results.envoy
    assert e["no_route_404"]["status"] == 404 and e["no_route_404"]["body"] == ""
    assert e["refused_endpoint_503"]["status"] == 503
    assert ("content-type", "text/plain") in e["refused_endpoint_503"]["headers"]
    assert e["route_timeout_504"]["body"] == "upstream request timeout"
    for name in ("headers_10kb_over_8kb_limit_431", "headers_70kb_over_default_60kb_limit_431"):
        assert e[name]["status"] == 431 and e[name]["closed"] is True
    saw = e["forwarded_main_route_timeout"]["upstream_saw"]["headers"]
    assert ("x-envoy-expected-rq-timeout-ms", "500") in saw
    assert ("server", "envoy") in e["forwarded_main_plain"]["headers"]
    assert ("x-envoy-upstream-service-time", "<ms>") in e["forwarded_main_plain"]["headers"]


def test_no_proxyd_worker_was_replaced(results: Results) -> None:
    assert len(results.worker_pids_before) == 2
    assert results.worker_pids_after == results.worker_pids_before
