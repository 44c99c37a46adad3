"""STRICT_DNS and LOGICAL_DNS clusters through proxyd, pointed at a test DNS server
(typed_dns_resolver_config), with two upstreams on 127.0.0.1 and 127.0.0.2."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.dns_server import DnsServer
from tests.integration.master_fixtures import upstream_name
from tests.support import ProxydProcess, UpstreamServer, http_config, wait_for

CARES = "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"


@pytest.fixture
def dns_server():
    with DnsServer() as server:
        yield server


@pytest.fixture
def pair():
    """Upstreams "a" on 127.0.0.1 and "b" on 127.0.0.2, on the same port."""
    a = UpstreamServer("a", "127.0.0.1").start()
    b = UpstreamServer("b", "127.0.0.2", a.port).start()
    yield a, b
    a.stop()
    b.stop()


def _config(port: int, admin: int, up_port: int, dns_port: int, kind: str, extra: str) -> str:
    text = http_config(port, admin, {"svc": [up_port]}).replace(
        "type: STATIC",
        f"""type: {kind}
    dns_lookup_family: V4_ONLY
    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config:
        "@type": {CARES}
        resolvers:
        - socket_address: {{ address: 127.0.0.1, port_value: {dns_port} }}
{extra}""",
    )
    return text.replace("address: 127.0.0.1, port_value: " + str(up_port), "address: svc.test, port_value: " + str(up_port))  # fmt: skip


def _names(port: int, n: int) -> set[str]:
    return {upstream_name(port) for _ in range(n)}


def test_respect_dns_ttl_follows_the_record_ttl(tmp_path: Path, dns_server: DnsServer, pair) -> None:  # fmt: skip
    a, _ = pair
    dns_server.set("svc.test", ["127.0.0.1"], ttl=1)
    extra = "    dns_refresh_rate: 60s\n    respect_dns_ttl: true"
    with ProxydProcess(tmp_path, _config(0, 0, a.port, dns_server.port, "STRICT_DNS", extra)) as p:  # fmt: skip
        port = p.listener_port()
        assert _names(port, 4) == {"a"}
        dns_server.set("svc.test", ["127.0.0.2"], ttl=1)
        wait_for(lambda: upstream_name(port) == "b", timeout=8)
        assert _names(port, 4) == {"b"}
    assert dns_server.count("svc.test") >= 2


def test_without_respect_dns_ttl_the_refresh_rate_holds(tmp_path: Path, dns_server: DnsServer, pair) -> None:  # fmt: skip
    a, _ = pair
    dns_server.set("svc.test", ["127.0.0.1"], ttl=1)
    extra = "    dns_refresh_rate: 60s"
    with ProxydProcess(tmp_path, _config(0, 0, a.port, dns_server.port, "STRICT_DNS", extra)) as p:  # fmt: skip
        port = p.listener_port()
        assert _names(port, 2) == {"a"}
        dns_server.set("svc.test", ["127.0.0.2"], ttl=1)
        # The same 5 s in which the TTL-respecting cluster moved: no refresh (60 s) yet.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert upstream_name(port) == "a"
            time.sleep(0.2)  # the interval of the check, over the window asserted
    assert dns_server.count("svc.test") == 1


def test_logical_dns_uses_the_first_address(tmp_path: Path, dns_server: DnsServer, pair) -> None:
    a, b = pair
    dns_server.set("svc.test", ["127.0.0.1", "127.0.0.2"], ttl=1)
    extra = "    dns_refresh_rate: 60s\n    respect_dns_ttl: true"
    config = _config(0, 0, a.port, dns_server.port, "LOGICAL_DNS", extra)
    with ProxydProcess(tmp_path, config) as p:
        port = p.listener_port()
        assert _names(port, 10) == {"a"}
        assert b.requests == 0
        clusters = p.admin("/clusters")[1]
        assert f"svc::127.0.0.1:{a.port}::hostname::svc.test\n" in clusters
        assert "127.0.0.2" not in clusters
        dns_server.set("svc.test", ["127.0.0.2", "127.0.0.1"], ttl=1)
        wait_for(lambda: upstream_name(port) == "b", timeout=8)
        assert _names(port, 10) == {"b"}


def test_failed_lookups_keep_the_last_answer_and_retry_with_backoff(tmp_path: Path, dns_server: DnsServer, pair) -> None:  # fmt: skip
    a, _ = pair
    dns_server.set("svc.test", ["127.0.0.1"], ttl=1)
    extra = (
        "    dns_refresh_rate: 60s\n    respect_dns_ttl: true\n"
        "    dns_failure_refresh_rate: { base_interval: 0.2s, max_interval: 0.4s }"
    )
    with ProxydProcess(tmp_path, _config(0, 0, a.port, dns_server.port, "STRICT_DNS", extra)) as p:  # fmt: skip
        port = p.listener_port()
        assert upstream_name(port) == "a"
        dns_server.fail = True  # SERVFAIL from now on
        asked = dns_server.count("svc.test")
        # Retries come at most 0.4 s apart (not after the 60 s refresh rate).
        wait_for(lambda: dns_server.count("svc.test") >= asked + 5, timeout=8)
        assert _names(port, 4) == {"a"}  # the last good answer is kept
        dns_server.set("svc.test", ["127.0.0.2"], ttl=1)
        dns_server.fail = False
        wait_for(lambda: upstream_name(port) == "b", timeout=8)
