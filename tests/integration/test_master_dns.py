"""The master's DNS: the client against a real DNS server on loopback, the refresher's
per-name schedules, and a STRICT_DNS cluster through proxyd."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from proxyd.epoch import Cluster, DnsSettings, Endpoint, Epoch
from proxyd.master.dns import DnsRefresher, Target, needs_dns
from proxyd.master.dns_client import DnsClient, HostsFile
from proxyd.master.dns_protocol import Answer, DnsLookupError, SystemConfig
from tests.dns_server import DnsServer
from tests.integration.master_fixtures import upstream_name
from tests.support import ProxydProcess, http_config


@pytest.fixture
def dns_server():
    with DnsServer() as server:
        yield server


def _client(server: DnsServer, tmp_path: Path, **settings) -> DnsClient:
    hosts = tmp_path / "hosts"
    if not hosts.exists():
        hosts.write_text("127.0.0.9 filed.test\n")
    return DnsClient(
        DnsSettings(resolvers=(("127.0.0.1", server.port),), **settings),
        system=SystemConfig((), search=("corp.test",), timeout_s=1.0),
        hosts=HostsFile(str(hosts)),
    )


# -- the client -----------------------------------------------------------------------


def test_client_follows_lookup_family(dns_server: DnsServer, tmp_path: Path) -> None:
    dns_server.set("svc.test", ["10.0.0.1", "10.0.0.2", "fd00::1"], ttl=7)
    dns_server.set("v4only.test", ["10.0.0.3"], ttl=9)
    client = _client(dns_server, tmp_path)

    async def main() -> None:
        lookup = client.lookup
        assert await lookup("svc.test", "V4_ONLY") == Answer(("10.0.0.1", "10.0.0.2"), 7)
        assert await lookup("svc.test", "V6_ONLY") == Answer(("fd00::1",), 7)
        assert await lookup("svc.test", "AUTO") == Answer(("fd00::1",), 7)
        assert await lookup("svc.test", "V4_PREFERRED") == Answer(("10.0.0.1", "10.0.0.2"), 7)
        assert (await lookup("svc.test", "ALL")).addresses == ("10.0.0.1", "10.0.0.2", "fd00::1")
        # AUTO falls back to A when there is no AAAA; V6_ONLY gets nothing.
        assert await lookup("v4only.test", "AUTO") == Answer(("10.0.0.3",), 9)
        assert await lookup("v4only.test", "V6_ONLY") == Answer(())

    trio.run(main)
    assert dns_server.count("v4only.test", "AAAA") == 2 and dns_server.count("v4only.test") == 1


def test_client_ttl_of_cname_chain_search_nxdomain_and_hosts(dns_server: DnsServer, tmp_path: Path) -> None:  # fmt: skip
    dns_server.set("pool.test", ["10.0.0.5"], ttl=60)
    dns_server.set_cname("www.test", "pool.test", ttl=4)
    dns_server.set("api.corp.test", ["10.0.0.6"], ttl=30)
    dns_server.set("filed.test", ["10.9.9.9"], ttl=30)
    client = _client(dns_server, tmp_path)

    async def main() -> None:
        assert await client.lookup("www.test", "V4_ONLY") == Answer(("10.0.0.5",), 4)
        # One label: the search domain first.
        assert await client.lookup("api", "V4_ONLY") == Answer(("10.0.0.6",), 30)
        assert await client.lookup("missing.test", "V4_ONLY") == Answer(())
        # The hosts file wins over DNS, with no TTL (the refresh rate applies).
        assert await client.lookup("filed.test", "V4_ONLY") == Answer(("127.0.0.9",))
        assert await client.lookup("FILED.test.", "AUTO") == Answer(("127.0.0.9",))

    trio.run(main)
    assert dns_server.count("filed.test") == 0
    assert dns_server.count("api.corp.test") == 1 and dns_server.count("api") == 0


def test_client_tcp_fallback_errors_and_next_server(dns_server: DnsServer, tmp_path: Path) -> None:
    dns_server.set("svc.test", ["10.0.0.1"], ttl=5)
    dns_server.truncate = True

    async def main() -> None:
        client = _client(dns_server, tmp_path)
        assert await client.lookup("svc.test", "V4_ONLY") == Answer(("10.0.0.1",), 5)
        assert dns_server.tcp_asked == 1
        dns_server.truncate = False
        dns_server.fail = True
        with pytest.raises(DnsLookupError, match="SERVFAIL"):
            await client.lookup("svc.test", "V4_ONLY")
        dns_server.fail = False
        # A server that never answers: the next one does.
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:
            await mute.bind(("127.0.0.1", 0))
            settings = DnsSettings(resolvers=(mute.getsockname(), ("127.0.0.1", dns_server.port)))
            both = DnsClient(settings, system=SystemConfig((), timeout_s=0.5))
            assert (await both.lookup("svc.test", "V4_ONLY")).addresses == ("10.0.0.1",)
        with_tcp = _client(dns_server, tmp_path, use_tcp=True)
        assert (await with_tcp.lookup("svc.test", "V4_ONLY")).addresses == ("10.0.0.1",)
        assert dns_server.tcp_asked == 2

    trio.run(main)


def test_resolvers_as_fallback_only_without_system_servers(dns_server: DnsServer) -> None:
    ours = (("127.0.0.1", dns_server.port),)
    settings = DnsSettings(resolvers=ours, resolvers_as_fallback=True)
    assert DnsClient(settings, system=SystemConfig((("10.1.1.1", 53),))).servers == (("10.1.1.1", 53),)  # fmt: skip
    assert DnsClient(settings, system=SystemConfig(())).servers == ours
    assert DnsClient(DnsSettings(resolvers=ours), system=SystemConfig((("10.1.1.1", 53),))).servers == ours  # fmt: skip


# -- the refresher --------------------------------------------------------------------


def _cluster(name: str, kind: str = "STRICT_DNS", refresh_s: float = 60.0, **dns) -> Cluster:
    ep = Endpoint(address="svc.test", port=80, hostname="svc.test")
    return Cluster(
        name, kind, 1.0, "ROUND_ROBIN", (ep,), dns_lookup_family="V4_ONLY",
        dns_refresh_rate_s=refresh_s, dns=DnsSettings(**dns) if dns else None,
    )  # fmt: skip


class Table:
    """A lookup function: answers (or errors) per cluster, with a log of the calls."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer | Exception] = {}
        self.calls: list[tuple[str, float]] = []

    async def __call__(self, target: Target) -> Answer:
        self.calls.append((target.cluster, trio.current_time()))
        answer = self.answers[target.cluster]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def times(self, cluster: str) -> list[float]:
        return [round(t) for c, t in self.calls if c == cluster]


def _addresses(epoch: Epoch, cluster: str) -> list[str]:
    c = epoch.cluster(cluster)
    assert c is not None
    return [e.address for e in c.endpoints]


def test_each_cluster_refreshes_on_its_own_schedule() -> None:
    table = Table()
    template = Epoch(0, (), (
        _cluster("ttl", respect_dns_ttl=True),  # TTL 2 s
        _cluster("zero_ttl", respect_dns_ttl=True, refresh_s=7.0),  # TTL 0: the refresh rate
        _cluster("rate", refresh_s=5.0),  # TTL ignored
    ))  # fmt: skip
    table.answers = {
        "ttl": Answer(("10.0.0.1",), 2),
        "zero_ttl": Answer(("10.0.0.2",), 0),
        "rate": Answer(("10.0.0.3",), 2),
    }
    refresher = DnsRefresher(table)

    async def main() -> None:
        epoch = await refresher.resolve(template)
        assert _addresses(epoch, "ttl") == ["10.0.0.1"]
        assert needs_dns(template)
        with trio.move_on_after(14.5):  # answers never change: this only refreshes
            await refresher.wait_changed(lambda: template)
        assert table.times("ttl") == [0, 2, 4, 6, 8, 10, 12, 14]
        assert table.times("zero_ttl") == [0, 7, 14]
        assert table.times("rate") == [0, 5, 10]
        table.answers["ttl"] = Answer(("10.0.0.9",), 2)
        await refresher.wait_changed(lambda: template)  # returns: an answer changed
        assert _addresses(refresher.expand(template), "ttl") == ["10.0.0.9"]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_failures_keep_the_last_answer_and_back_off() -> None:
    table = Table()
    template = Epoch(0, (), (
        _cluster("fixed", refresh_s=5.0),
        _cluster(
            "backoff", refresh_s=60.0, respect_dns_ttl=True, failure_base_s=1.0, failure_max_s=4.0
        ),
    ))  # fmt: skip
    table.answers = {"fixed": Answer(("10.0.0.1",)), "backoff": Answer(("10.0.0.2",), 1)}
    refresher = DnsRefresher(table)

    async def main() -> None:
        await refresher.resolve(template)
        table.answers = {"fixed": DnsLookupError("SERVFAIL"), "backoff": OSError("refused")}
        table.calls.clear()
        with trio.move_on_after(38):
            await refresher.wait_changed(lambda: template)
        epoch = refresher.expand(template)
        assert _addresses(epoch, "fixed") == ["10.0.0.1"]  # kept
        assert _addresses(epoch, "backoff") == ["10.0.0.2"]
        # No dns_failure_refresh_rate: failures retry at dns_refresh_rate.
        assert table.times("fixed") == [5, 10, 15, 20, 25, 30, 35]
        # Jittered exponential backoff: below 1, 2, 4, 4, ... s (not the 60 s rate).
        backoff = [t for c, t in table.calls if c == "backoff"]
        gaps = [b - a for a, b in zip(backoff, backoff[1:], strict=False)]
        assert backoff[0] == pytest.approx(1.0)  # the TTL of the last good answer
        assert len(backoff) >= 10 and all(g <= 4.0 + 1e-6 for g in gaps)
        assert gaps[0] <= 1.0 + 1e-6 and gaps[1] <= 2.0 + 1e-6

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_strict_dns_empty_answer_removes_hosts_logical_dns_keeps_one() -> None:
    table = Table()
    template = Epoch(0, (), (
        _cluster("strict", refresh_s=1.0),
        _cluster("logical", "LOGICAL_DNS", refresh_s=1.0),
    ))  # fmt: skip
    two = Answer(("10.0.0.1", "10.0.0.2"))
    table.answers = {"strict": two, "logical": two}
    refresher = DnsRefresher(table)

    async def main() -> None:
        epoch = await refresher.resolve(template)
        assert _addresses(epoch, "strict") == ["10.0.0.1", "10.0.0.2"]
        assert _addresses(epoch, "logical") == ["10.0.0.1"]  # the first address only
        table.answers = {"strict": Answer(()), "logical": Answer(())}
        await refresher.wait_changed(lambda: template)
        epoch = refresher.expand(template)
        assert _addresses(epoch, "strict") == []  # NXDOMAIN/NODATA: no hosts (Envoy)
        assert _addresses(epoch, "logical") == ["10.0.0.1"]  # an empty answer is a failure

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_template_change_drops_old_names_and_resolves_new_ones() -> None:
    table = Table()
    table.answers = {"a": Answer(("10.0.0.1",)), "b": Answer(("10.0.0.2",))}
    refresher = DnsRefresher(table)
    current = Epoch(0, (), (_cluster("a", refresh_s=1.0),))

    async def main() -> None:
        nonlocal current
        await refresher.resolve(current)
        await refresher.resolve(current)  # known names keep their answers and schedules
        assert [c for c, _ in table.calls] == ["a"]
        current = Epoch(0, (), (_cluster("b", refresh_s=1.0),))
        await refresher.wait_changed(lambda: current)  # b is new: resolved at once
        assert _addresses(refresher.expand(current), "b") == ["10.0.0.2"]
        assert [c for c, _ in table.calls] == ["a", "b"]
        # A changed DNS setting makes a new name: resolved by the next resolve().
        changed = Epoch(0, (), (_cluster("b", refresh_s=2.0),))
        await refresher.resolve(changed)
        assert [c for c, _ in table.calls] == ["a", "b", "b"]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_no_dns_clusters_sleep_until_resolve_is_called() -> None:
    refresher = DnsRefresher(Table())
    static = Epoch(0, (), (dataclasses.replace(_cluster("s"), type="STATIC", endpoints=()),))

    async def main() -> None:
        assert not needs_dns(static)
        assert await refresher.resolve(static) is static
        with trio.move_on_after(3600) as scope:
            await refresher.wait_changed(lambda: static)
        assert scope.cancelled_caught

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- through proxyd ---------------------------------------------------------------------


def test_strict_dns_cluster_through_proxyd(tmp_path: Path, upstream) -> None:
    up = upstream("named")
    text = (
        http_config(0, 0, {"named": [up.port]})
        .replace("type: STATIC", "type: STRICT_DNS\n    dns_lookup_family: V4_ONLY")
        .replace(f"address: 127.0.0.1, port_value: {up.port}", f"address: localhost, port_value: {up.port}")
    )  # fmt: skip
    assert "localhost" in text
    with ProxydProcess(tmp_path, text) as p:
        assert upstream_name(p.listener_port()) == "named"
        clusters = p.admin("/clusters")[1]
        assert f"named::127.0.0.1:{up.port}::hostname::localhost\n" in clusters
