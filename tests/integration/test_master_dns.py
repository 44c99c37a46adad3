"""STRICT_DNS: the master resolves names, workers get addresses."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from proxyd.epoch import Cluster, Endpoint, Epoch
from proxyd.master.dns import DnsResolver, refresh_interval
from tests.integration.master_fixtures import upstream_name
from tests.support import ProxydProcess, free_port, http_config


def _template(family: str = "V4_ONLY", hostname: str = "svc.test") -> Epoch:
    ep = Endpoint(address=hostname, port=80, hostname=hostname)
    cluster = Cluster("c", "STRICT_DNS", 1.0, "ROUND_ROBIN", (ep,), dns_lookup_family=family)
    return Epoch(0, (), (cluster,))


class FakeResolver:
    def __init__(self) -> None:
        self.answers: dict[int, list[str]] = {socket.AF_INET: ["10.0.0.1", "10.0.0.2"]}
        self.fail = False
        self.calls: list[int] = []

    async def __call__(self, host: str, port: int, family: int, type: int) -> list:
        self.calls.append(family)
        if self.fail:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure")
        addrs = self.answers.get(family, [])
        if not addrs:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(family, type, 6, "", (a, port)) for a in addrs + addrs]  # duplicates dropped


def test_resolver_expands_endpoints_keeps_last_good_and_follows_family() -> None:
    fake = FakeResolver()
    resolver = DnsResolver(fake)

    async def main() -> None:
        epoch = await resolver.resolve(_template())
        eps = epoch.clusters[0].endpoints
        assert [(e.address, e.port, e.hostname) for e in eps] == [
            ("10.0.0.1", 80, "svc.test"),
            ("10.0.0.2", 80, "svc.test"),
        ]
        fake.fail = True
        again = await resolver.resolve(_template())
        assert again.clusters == epoch.clusters  # a failed lookup keeps the last answer
        fake.fail = False
        fake.calls.clear()
        # AUTO: IPv6 first, then IPv4 when there is none.
        auto = await resolver.resolve(_template("AUTO"))
        assert fake.calls == [socket.AF_INET6, socket.AF_INET]
        assert len(auto.clusters[0].endpoints) == 2

    trio.run(main)


def test_refresh_interval_is_the_shortest_strict_dns_rate() -> None:
    import dataclasses

    epoch = _template()
    assert refresh_interval(epoch) == 5.0
    fast = dataclasses.replace(epoch.clusters[0], name="d", dns_refresh_rate_s=0.5)
    assert refresh_interval(dataclasses.replace(epoch, clusters=(*epoch.clusters, fast))) == 0.5
    assert refresh_interval(Epoch(0, (), ())) == float("inf")


def test_strict_dns_cluster_through_proxyd(tmp_path: Path, upstream) -> None:
    up = upstream("named")
    port, admin = free_port(), free_port()
    text = (
        http_config(port, admin, {"named": [up.port]})
        .replace("type: STATIC", "type: STRICT_DNS\n    dns_lookup_family: V4_ONLY")
        .replace(f"address: 127.0.0.1, port_value: {up.port}", f"address: localhost, port_value: {up.port}")
    )  # fmt: skip
    assert "localhost" in text
    with ProxydProcess(tmp_path, text, admin) as p:
        assert upstream_name(port) == "named"
        clusters = p.admin("/clusters")[1]
        assert f"named::127.0.0.1:{up.port}::hostname::localhost\n" in clusters
