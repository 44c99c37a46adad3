"""Priority failover and panic mode with a real proxyd, real upstreams and active health
checking (which is what makes a host unhealthy here).

* P0 host "a", P1 host "b": all traffic to "a"; stopping "a" fails it over to "b" once
  the health check notices; a new upstream on a's port brings the traffic back.
* Panic: one live host and two dead ports in one level is 33% healthy, below Envoy's
  default 50% threshold, so requests go to all three hosts (some fail) and
  ``cluster.<name>.lb_healthy_panic`` counts them; with the threshold at 0 they do not.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.integration.master_fixtures import get
from tests.support import (
    ProxydProcess,
    UpstreamServer,
    free_port,
    grouped_config,
    lb_endpoint,
    wait_for,
)


class Client:
    """Sends requests to the listener and remembers how many it sent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0

    def served_by(self, n: int) -> Counter[str]:
        """Who answered n requests: the upstream's name, or the status when not 200."""
        out: Counter[str] = Counter()
        for _ in range(n):
            status, headers, _ = get(self.port)
            self.sent += 1
            out[headers.get("x-upstream-name", "") if status == 200 else str(status)] += 1
        return out

    def panics(self, p: ProxydProcess) -> int:
        """cluster.svc.lb_healthy_panic once every worker has reported every request."""
        total = "http.ingress_http.downstream_rq_total"
        wait_for(lambda: p.stats().get(total, 0) >= self.sent)
        return p.stats().get("cluster.svc.lb_healthy_panic", 0)


def test_failover_to_the_next_priority_and_back(tmp_path: Path) -> None:
    a, b = UpstreamServer("a").start(), UpstreamServer("b").start()
    groups = [
        {"lb_endpoints": [lb_endpoint(a.port)]},
        {"priority": 1, "lb_endpoints": [lb_endpoint(b.port)]},
    ]
    config = grouped_config(0, 0, groups)
    back = None
    try:
        with ProxydProcess(tmp_path, config) as p:
            client = Client(p.listener_port())
            assert client.served_by(20) == Counter({"a": 20})

            a.stop()
            # Until the check notices, requests to "a" fail; then P1 takes them all.
            wait_for(lambda: client.served_by(4) == Counter({"b": 4}), timeout=10)
            assert client.served_by(20) == Counter({"b": 20})
            text = p.admin("/clusters")[1]
            assert f"svc::127.0.0.1:{a.port}::health_flags::/failed_active_hc" in text
            assert f"svc::127.0.0.1:{b.port}::priority::1" in text
            # P1 took the load because P0 had none left: that is not panic.
            assert client.panics(p) == 0

            back = UpstreamServer("a2", port=a.port).start()
            wait_for(lambda: client.served_by(4) == Counter({"a2": 4}), timeout=10)
            assert client.served_by(20) == Counter({"a2": 20})
    finally:
        b.stop()
        if back is not None:
            back.stop()


def test_panic_routes_to_unhealthy_hosts(tmp_path: Path) -> None:
    a = UpstreamServer("a").start()
    dead = [free_port(), free_port()]
    groups = [{"lb_endpoints": [lb_endpoint(a.port), lb_endpoint(dead[0]), lb_endpoint(dead[1])]}]
    (tmp_path / "panic").mkdir()
    (tmp_path / "off").mkdir()
    try:
        config = grouped_config(0, 0, groups)
        with ProxydProcess(tmp_path / "panic", config) as p:
            client = Client(p.listener_port())
            # 1 of 3 healthy: panic, all three hosts take requests; the dead ones fail.
            got = client.served_by(30)
            assert got["a"] > 0 and got["503"] > 0 and set(got) == {"a", "503"}
            assert client.panics(p) == 30

        config = grouped_config(
            0, 0, groups, common_lb_config={"healthy_panic_threshold": {"value": 0}}
        )
        with ProxydProcess(tmp_path / "off", config) as p:
            client = Client(p.listener_port())
            assert client.served_by(30) == Counter({"a": 30})
            assert client.panics(p) == 0
    finally:
        a.stop()
