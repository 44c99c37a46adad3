"""gRPC health checking with a real proxyd and real grpcio servers (grpc.health.v1).

An HTTP/2 cluster of two gRPC servers and a port nobody serves: /clusters and the
health_check.* stats follow the status each server reports, flipped by the test
(SERVING ↔ NOT_SERVING, an unknown service answered NOT_FOUND, an answer too late).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from proxyd.epoch import HeaderToAdd, HealthCheck
from proxyd.master.health.checker import HealthChecker, _Session
from proxyd.master.health.state import Result
from proxyd.stats import StatsStore
from tests.grpc_health_server import NOT_SERVING, SERVING, HealthServer
from tests.support import ProxydProcess, free_port, wait_for

CHECK = """    health_checks:
    - timeout: 0.5s
      interval: 0.2s
      no_traffic_interval: 0.2s
      unhealthy_threshold: 2
      healthy_threshold: 2
      grpc_health_check:
        service_name: app
        authority: app.internal
        initial_metadata:
        - header: { key: x-hc, value: "1" }"""


def grpc_config(admin: int, ports: list[int], check: str = CHECK) -> str:
    """A bootstrap with one HTTP/2 cluster named ``backend`` (and no listener)."""
    eps = "".join(
        f"""
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {p} }}"""
        for p in ports
    )
    return f"""admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
{check}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:{eps}
"""


def _flags(p: ProxydProcess, port: int) -> str:
    text = p.admin("/clusters")[1]
    line = next(x for x in text.splitlines() if f"127.0.0.1:{port}::health_flags::" in x)
    return line.rsplit("::", 1)[1]


def _hc(p: ProxydProcess, name: str) -> int:
    return p.stats().get(f"cluster.backend.health_check.{name}", -1)


def test_health_follows_the_served_status(tmp_path: Path) -> None:
    with HealthServer() as a, HealthServer() as b:
        a.set("app", SERVING)  # b does not know "app" yet: NOT_FOUND
        dead = free_port()
        with ProxydProcess(
            tmp_path,
            grpc_config(0, [a.port, b.port, dead]),
            extra_args=("--log-level", "debug"),
        ) as p:
            # Warm-up: each host was checked once before the server went live.
            assert _flags(p, a.port) == "healthy"
            assert _flags(p, b.port) == "/failed_active_hc"
            assert _flags(p, dead) == "/failed_active_hc"
            assert _hc(p, "healthy") == 1
            assert _hc(p, "network_failure") >= 1  # the dead port
            assert p.stats()["cluster.backend.membership_healthy"] == 1
            service, metadata = a.calls[0]
            assert service == "app" and metadata.get("x-hc") == "1"

            b.set("app", SERVING)  # two passes in a row (healthy_threshold)
            wait_for(lambda: _flags(p, b.port) == "healthy", timeout=5)
            assert _hc(p, "healthy") == 2

            # NOT_SERVING is an active failure (out at the first one, see the unit tests).
            failures = _hc(p, "failure")
            a.set("app", NOT_SERVING)
            wait_for(lambda: _flags(p, a.port) == "/failed_active_hc", timeout=5)
            assert _hc(p, "failure") > failures
            assert _hc(p, "healthy") == 1
            wait_for(lambda: p.stats()["cluster.backend.membership_healthy"] == 1, timeout=5)

            a.set("app", SERVING)
            wait_for(lambda: _flags(p, a.port) == "healthy", timeout=5)
            stats = p.stats()
            assert stats["cluster.backend.health_check.healthy"] == 2
            assert stats["cluster.backend.health_check.success"] >= 4
            assert stats["cluster.backend.health_check.attempt"] >= (
                stats["cluster.backend.health_check.success"]
                + stats["cluster.backend.health_check.failure"]
            )


def test_a_late_answer_is_a_timeout(tmp_path: Path) -> None:
    with HealthServer() as slow, HealthServer() as ok:
        slow.set("app", SERVING)
        ok.set("app", SERVING)
        slow.delay_s = 5.0
        with ProxydProcess(tmp_path, grpc_config(0, [slow.port, ok.port])) as p:
            assert _flags(p, slow.port) == "/failed_active_hc/active_hc_timeout"
            assert _flags(p, ok.port) == "healthy"
            assert _hc(p, "network_failure") >= 1
            slow.delay_s = 0.0
            wait_for(lambda: _flags(p, slow.port) == "healthy", timeout=10)


def _probe(port: int, times: int = 1, **kw: Any) -> list[Result]:
    """Run the checker's gRPC probe ``times`` against 127.0.0.1:``port``, in-process."""
    fields: dict[str, Any] = {"grpc_service_name": "app", **kw}
    hc = HealthCheck(
        kind="grpc", timeout_s=0.5, interval_s=1.0, unhealthy_threshold=1,
        healthy_threshold=1, **fields,
    )  # fmt: skip
    checker = HealthChecker(StatsStore(), lambda _cluster: True)
    session = _Session(checker, ("backend", "127.0.0.1", port), hc)

    async def main() -> list[Result]:
        return [await session.check_once() for _ in range(times)]

    return trio.run(main)


def test_probe_results() -> None:
    """Each answer gives Envoy's kind of result (which decides how fast a host is out)."""
    with HealthServer() as server:
        server.set("app", SERVING)
        # A fast answer can end the call before the half-close is written: still read.
        assert _probe(server.port, times=50) == [Result.SUCCESS] * 50
        server.set("app", NOT_SERVING)
        assert _probe(server.port) == [Result.ACTIVE_FAILURE]
        assert _probe(server.port, grpc_metadata=(HeaderToAdd("x-hc", "2"),)) == [
            Result.ACTIVE_FAILURE
        ]
        assert server.calls[-1] == ("app", {"x-hc": "2", **server.calls[-1][1]})
        server.set("app", 0)  # UNKNOWN
        assert _probe(server.port) == [Result.ACTIVE_FAILURE]
        server.set("other", SERVING)
        assert _probe(server.port, grpc_service_name="nope") == [Result.ACTIVE_FAILURE]
        server.set("app", SERVING)
        server.delay_s = 2.0
        assert _probe(server.port) == [Result.TIMEOUT]
    assert _probe(free_port()) == [Result.NETWORK_FAILURE]
