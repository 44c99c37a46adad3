"""The DNS fields of a cluster compile to DnsSettings (proxyd.config.dns)."""

from __future__ import annotations

import msgpack

from proxyd.config.loader import compile_bootstrap
from proxyd.epoch import Cluster, DnsSettings, Epoch, from_wire, to_wire
from tests.support import static_cluster

CARES = "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"


def _cluster(**fields) -> Cluster:
    c = static_cluster("svc", [8080])
    c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]["address"] = "svc.example.com"
    c.update(fields)
    loaded = compile_bootstrap({"static_resources": {"clusters": [c]}}, "test.yaml")
    return loaded.epoch_template.clusters[0]


def test_defaults_leave_dns_settings_unset() -> None:
    c = _cluster(type="STRICT_DNS")
    assert c.dns is None
    assert (c.type, c.endpoints[0].hostname) == ("STRICT_DNS", "svc.example.com")


def test_every_dns_field() -> None:
    c = _cluster(
        type="LOGICAL_DNS",
        respect_dns_ttl=True,
        dns_jitter="0.5s",
        dns_failure_refresh_rate={"base_interval": "1s"},
        typed_dns_resolver_config={
            "name": "envoy.network.dns_resolver.cares",
            "typed_config": {
                "@type": CARES,
                "resolvers": [
                    {"socket_address": {"address": "127.0.0.1", "port_value": 5353}},
                    {"socket_address": {"address": "::1", "port_value": 0}},  # 0: port 53
                ],
                "use_resolvers_as_fallback": True,
                "dns_resolver_options": {
                    "use_tcp_for_dns_lookups": True,
                    "no_default_search_domain": True,
                },
            },
        },
    )
    assert c.type == "LOGICAL_DNS"
    assert c.dns == DnsSettings(
        respect_dns_ttl=True,
        failure_base_s=1.0,
        failure_max_s=10.0,  # Envoy: ten times the base when max_interval is not set
        jitter_s=0.5,
        resolvers=(("127.0.0.1", 5353), ("::1", 53)),
        resolvers_as_fallback=True,
        use_tcp=True,
        no_default_search_domain=True,
    )
    epoch = Epoch(0, (), (c,))
    wire = msgpack.unpackb(msgpack.packb(to_wire(epoch)))
    assert from_wire(Epoch, wire) == epoch
