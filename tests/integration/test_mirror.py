"""request_mirror_policies against a shadow cluster that stops answering: the client's
responses come from the primary as if there were no shadow, and the shadows that wait
are bounded by the shadow cluster's circuit breakers (the rest overflow at once), so a
dead shadow cannot pile up work in the worker. The comparison with Envoy is
tests/compat/test_mirror_compat.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    ProxydProcess,
    UpstreamServer,
    dump_yaml,
    http_listener,
    static_cluster,
    wait_for,
)

REQUESTS = 10


@pytest.fixture
def stuck_port() -> Iterator[int]:
    """A port whose socket listens but never accepts: connections complete in the
    kernel's backlog and nothing is ever read or answered."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


def test_a_stuck_shadow_never_delays_the_client_and_its_waits_are_bounded(
    tmp_path: Path, stuck_port: int
) -> None:
    with UpstreamServer("primary") as primary:
        shadow = static_cluster("shadow", [stuck_port])
        shadow["circuit_breakers"] = {
            "thresholds": [{"max_connections": 2, "max_pending_requests": 1, "max_requests": 2}]
        }
        route = {
            "match": {"prefix": "/"},
            # No route timeout: a shadow waits for its answer until the worker stops.
            "route": {
                "cluster": "primary",
                "timeout": "0s",
                "request_mirror_policies": [{"cluster": "shadow"}],
            },
        }
        rc = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]}
        config = dump_yaml(
            {
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
                "static_resources": {
                    "listeners": [http_listener("ingress", 0, rc)],
                    "clusters": [static_cluster("primary", [primary.port]), shadow],
                },
            }
        )
        with ProxydProcess(tmp_path, config, concurrency=1) as proxy:
            port = proxy.listener_port("ingress")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                for i in range(REQUESTS):
                    r = client.post(f"/echo/{i}", content=b"body %d" % i)
                    assert r.status_code == 200
                    assert r.headers["x-upstream-name"] == "primary"
                    assert r.json()["body_bytes"] == len(b"body %d" % i)

            def stats() -> dict[str, int]:
                s = proxy.stats()
                return {
                    k: s.get(f"cluster.shadow.{k}", 0)
                    for k in (
                        "upstream_rq_total",
                        "upstream_rq_pending_overflow",
                        "upstream_rq_pending_active",
                        "upstream_cx_active",
                    )
                }

            # Two shadows on the two connections allowed, one pending, the rest refused.
            expected = {
                "upstream_rq_total": 2,
                "upstream_rq_pending_overflow": REQUESTS - 3,
                "upstream_rq_pending_active": 1,
                "upstream_cx_active": 2,
            }
            wait_for(lambda: stats() == expected, timeout=10)
            assert proxy.stats().get("server.proxyd.worker_exceptions", 0) == 0
