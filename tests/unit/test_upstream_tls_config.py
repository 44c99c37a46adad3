"""Upstream TLS config (proxyd.config.upstream_tls): a cluster's transport_socket
with an UpstreamTlsContext → epoch.UpstreamTls, its client SSLContext, and what is
refused by name. Certificates from tests/tls_certs.py."""

from __future__ import annotations

import copy
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyd.config import compile_bootstrap
from proxyd.epoch import Epoch, SanMatch, StringMatch, UpstreamTls, from_wire, to_wire
from proxyd.errors import ConfigError
from proxyd.protocol.upstream_tls_context import client_context, dns_san_accepts
from proxyd.worker.stats import StatsStore
from proxyd.worker.upstream_tls import UpstreamTlsPlan, host_name

BASE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent / "config_corpus" / "good-full.yaml").read_text()
)
CLUSTER = "static_resources.clusters[0]"
TS = f"{CLUSTER}.transport_socket"
CTX = f"{TS}.typed_config"
TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def with_tls(**ctx: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d["static_resources"]["clusters"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": TLS_TYPE, **ctx},
    }
    return d


def tls_of(data: dict[str, Any]) -> UpstreamTls | None:
    return compile_bootstrap(data, "conf.yaml").epoch_template.clusters[0].tls


def reject(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(data, "conf.yaml")
    return info.value


def test_no_validation_context_verifies_nothing_as_envoy() -> None:
    tls = tls_of(with_tls())
    assert tls == UpstreamTls()
    assert (tls.min_version, tls.max_version) == ("TLSv1_2", "TLSv1_2")  # Envoy's client
    ctx = client_context(tls)
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert tls_of(copy.deepcopy(BASE)) is None  # no transport_socket: plaintext


def test_everything_supported_travels_to_the_worker(certs) -> None:
    d = with_tls(
        sni="api.example.com",
        allow_renegotiation=True,
        max_session_keys=0,
        common_tls_context={
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": certs.client},
                    "private_key": {"inline_string": Path(certs.client_key).read_text()},
                }
            ],
            "tls_params": {
                "tls_minimum_protocol_version": "TLSv1_2",
                "tls_maximum_protocol_version": "TLSv1_3",
                "cipher_suites": ["[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-RSA-AES128-GCM-SHA256]"],
            },
            "alpn_protocols": ["http/1.1"],
            "validation_context": {
                "trusted_ca": {"filename": certs.ca},
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"prefix": "spiffe://"}}
                ],
                "match_subject_alt_names": [{"exact": "api.example.com"}],
            },
        },
    )
    options = d["static_resources"]["clusters"][0]["typed_extension_protocol_options"]
    options[HTTP_OPTIONS]["upstream_http_protocol_options"] = {
        "auto_sni": True,
        "auto_san_validation": True,
        "override_auto_sni_header": "X-Sni",
    }
    tls = tls_of(d)
    assert tls is not None
    assert tls.sni == "api.example.com"
    assert tls.certificate is not None
    assert tls.certificate.certificate_chain == Path(certs.client).read_bytes()
    assert tls.certificate.private_key == Path(certs.client_key).read_bytes()
    assert tls.trusted_ca == Path(certs.ca).read_bytes()
    assert (tls.min_version, tls.max_version) == ("TLSv1_2", "TLSv1_3")
    assert tls.alpn == ("http/1.1",)
    assert tls.allow_renegotiation and tls.max_session_keys == 0
    assert (tls.auto_sni, tls.auto_san_validation, tls.sni_header) == (True, True, "x-sni")
    # The deprecated matcher applies to every SAN type, as Envoy's does.
    exact = StringMatch("exact", "api.example.com")
    assert tls.san_matchers == (
        SanMatch("URI", StringMatch("prefix", "spiffe://")),
        SanMatch("DNS", exact),
        SanMatch("URI", exact),
        SanMatch("EMAIL", exact),
        SanMatch("IP_ADDRESS", exact),
    )
    # Through the wire form a worker receives, into a context it can use.
    epoch = compile_bootstrap(d, "conf.yaml").epoch_template
    assert from_wire(Epoch, to_wire(epoch)).clusters[0].tls == tls
    ctx = client_context(tls)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert not ctx.options & ssl.OP_NO_RENEGOTIATION  # allow_renegotiation
    assert ctx.options & ssl.OP_NO_TICKET  # max_session_keys 0
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3


def test_a_minimum_above_the_default_maximum_raises_it() -> None:
    tls = tls_of(
        with_tls(common_tls_context={"tls_params": {"tls_minimum_protocol_version": "TLSv1_3"}})
    )
    assert tls is not None and (tls.min_version, tls.max_version) == ("TLSv1_3", "TLSv1_3")


def test_raw_buffer_is_plaintext() -> None:
    d = copy.deepcopy(BASE)
    d["static_resources"]["clusters"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.raw_buffer",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3."
            "RawBuffer"
        },
    }
    assert tls_of(d) is None


@pytest.mark.parametrize(
    ("ctx", "field", "words"),
    [
        (
            {"common_tls_context": {"alpn_protocols": ["h2", "http/1.1"]}},
            f"{CTX}.common_tls_context.alpn_protocols",
            "on a cluster that speaks http/1.1 is not supported by proxyd",
        ),
        (
            {"common_tls_context": {"tls_params": {"cipher_suites": ["NO-SUCH-CIPHER"]}}},
            f"{CTX}.common_tls_context.tls_params.cipher_suites",
            "NO-SUCH-CIPHER",
        ),
        (
            {"common_tls_context": {"tls_params": {"ecdh_curves": ["X25519:brainpool"]}}},
            f"{CTX}.common_tls_context.tls_params.ecdh_curves",
            "curve 'brainpool' not supported by proxyd",
        ),
        (
            {
                "common_tls_context": {
                    "tls_params": {
                        "tls_minimum_protocol_version": "TLSv1_3",
                        "tls_maximum_protocol_version": "TLSv1_2",
                    }
                }
            },
            f"{CTX}.common_tls_context.tls_params",
            "above the maximum",
        ),
        (
            {"common_tls_context": {"validation_context": {"crl": {"inline_string": "x"}}}},
            f"{CTX}.common_tls_context.validation_context.crl",
            "not supported by proxyd",
        ),
        (
            {"enforce_rsa_key_usage": True},
            f"{CTX}.enforce_rsa_key_usage",
            "not supported by proxyd",
        ),
    ],
)
def test_refused_by_name(ctx: dict[str, Any], field: str, words: str) -> None:
    err = reject(with_tls(**ctx))
    assert err.path == field
    assert words in err.reason


def test_client_certificate_errors_name_the_field(certs, tmp_path) -> None:
    def client(chain: str, key: str) -> dict[str, Any]:
        return {
            "certificate_chain": {"filename": chain},
            "private_key": {"filename": key},
        }

    err = reject(
        with_tls(common_tls_context={"tls_certificates": [client(certs.client, certs.other_key)]})
    )
    assert err.path == f"{CTX}.common_tls_context.tls_certificates[0]"
    assert "OpenSSL refused" in err.reason
    missing = str(tmp_path / "missing.pem")
    err = reject(
        with_tls(common_tls_context={"tls_certificates": [client(missing, certs.client_key)]})
    )
    assert err.path == f"{CTX}.common_tls_context.tls_certificates[0].certificate_chain.filename"
    two = [client(certs.client, certs.client_key)] * 2
    err = reject(with_tls(common_tls_context={"tls_certificates": two}))
    assert err.path == f"{CTX}.common_tls_context.tls_certificates"


def test_transport_socket_matches_and_the_matcher_api() -> None:
    d = with_tls()
    cluster = d["static_resources"]["clusters"][0]
    cluster["transport_socket_matches"] = [
        {"name": "m", "match": {"tls": "yes"}, "transport_socket": cluster["transport_socket"]}
    ]
    compiled = compile_bootstrap(d, "conf.yaml").epoch_template.clusters[0]
    (m,) = compiled.tls_matches
    assert (m.name, m.labels, m.tls) == ("m", (("tls", '"yes"'),), compiled.tls)
    # The newer matcher-based choice (transport_socket_matcher) is refused by name.
    cluster["transport_socket_matcher"] = {
        "on_no_match": {
            "action": {
                "name": "x",
                "typed_config": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": "m",
                },
            }
        }
    }
    err = reject(d)
    assert err.path == f"{CLUSTER}.transport_socket_matcher"
    assert "not supported by proxyd" in err.reason


def test_the_deprecated_cluster_field_sets_auto_sni_too() -> None:
    d = with_tls()
    cluster = d["static_resources"]["clusters"][0]
    del cluster["typed_extension_protocol_options"]
    cluster["upstream_http_protocol_options"] = {"auto_sni": True, "auto_san_validation": True}
    tls = tls_of(d)
    assert tls is not None and tls.auto_sni and tls.auto_san_validation


def test_a_grpc_health_check_over_tls_is_refused() -> None:
    d = with_tls()
    cluster = d["static_resources"]["clusters"][0]
    cluster["health_checks"] = [
        {
            "timeout": "1s",
            "interval": "1s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "grpc_health_check": {},
        }
    ]
    options = cluster["typed_extension_protocol_options"][HTTP_OPTIONS]
    options["explicit_http_config"] = {"http2_protocol_options": {}}
    err = reject(d)
    assert err.path == f"{CLUSTER}.health_checks[0].grpc_health_check"
    assert "not supported by proxyd" in err.reason


def test_the_request_host_keys_an_auto_sni_connection() -> None:
    plan = UpstreamTlsPlan(UpstreamTls(auto_sni=True), "c", StatsStore())
    assert plan.keyed
    head = b"GET / HTTP/1.1\r\nHost: API.example.com:8443\r\nx: y\r\n\r\n"
    assert plan.key_of(head) == "API.example.com"
    assert plan.key_of(b"GET / HTTP/1.1\r\nx: y\r\n\r\n") is None
    other = UpstreamTlsPlan(UpstreamTls(auto_sni=True, sni_header="x-sni"), "c", StatsStore())
    assert other.key_of(b"GET / HTTP/1.1\r\nhost: a\r\nX-SNI: b.test\r\n\r\n") == "b.test"
    assert not UpstreamTlsPlan(UpstreamTls(), "c", StatsStore()).keyed
    assert host_name("[::1]:443") == "::1" and host_name("a.test") == "a.test"


def test_auto_san_validation_matches_dns_sans_and_wildcards() -> None:
    peer = {"subjectAltName": (("DNS", "example.com"), ("DNS", "*.example.org"), ("URI", "x"))}
    assert dns_san_accepts(peer, "Example.COM")
    assert dns_san_accepts(peer, "www.example.org")
    assert not dns_san_accepts(peer, "a.b.example.org")
    assert not dns_san_accepts(peer, "x")
    assert not dns_san_accepts(None, "example.com")


def test_clients_outside_the_pools_refuse_a_tls_cluster() -> None:
    """The statsd TCP sink (as xDS and trace export) would speak plaintext: refused."""
    d = copy.deepcopy(BASE)
    d["static_resources"]["clusters"][1]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": TLS_TYPE},
    }
    name = d["static_resources"]["clusters"][1]["name"]
    d["stats_sinks"] = [
        {
            "name": "envoy.stat_sinks.statsd",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.metrics.v3.StatsdSink",
                "tcp_cluster_name": name,
            },
        }
    ]
    err = reject(d)
    assert err.path == "stats_sinks[0].typed_config.tcp_cluster_name"
    assert "not supported by proxyd" in err.reason
