"""Downstream TLS config (proxyd.config.tls) and the peer certificate checks
(proxyd.protocol.tls_context): built from dicts, certificates from tests/tls_certs.py."""

from __future__ import annotations

import copy
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyd.config import compile_bootstrap
from proxyd.epoch import DownstreamTls, Epoch, SanMatch, StringMatch, from_wire, to_wire
from proxyd.errors import ConfigError
from proxyd.protocol.tls_context import (
    SanChecker,
    certificate_names,
    peer_subject,
    pick_certificate,
    server_context,
    split_ciphers,
)

BASE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent / "config_corpus" / "good-full.yaml").read_text()
)
CHAIN = "static_resources.listeners[0].filter_chains[0]"
TLS_PATH = f"{CHAIN}.transport_socket.typed_config"
TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def with_tls(certs: Any, **ctx: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    common = {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": certs.server},
                "private_key": {"filename": certs.server_key},
            }
        ],
        **ctx.pop("common", {}),
    }
    d["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": TLS_TYPE, "common_tls_context": common, **ctx},
    }
    return d


def tls_of(data: dict[str, Any]) -> DownstreamTls:
    epoch = compile_bootstrap(data, "conf.yaml").epoch_template
    tls = epoch.listeners[0].tls
    assert tls is not None
    return tls


def reject(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(data, "conf.yaml")
    return info.value


def test_certificates_are_read_by_the_master_and_travel_as_pem(certs) -> None:
    tls = tls_of(with_tls(certs))
    assert tls.certificates[0].certificate_chain == Path(certs.server).read_bytes()
    assert tls.certificates[0].private_key == Path(certs.server_key).read_bytes()
    assert (tls.min_version, tls.max_version) == ("TLSv1_2", "TLSv1_3")  # Envoy's defaults
    assert tls.session_tickets and not tls.require_client_certificate
    # Through the wire form a worker receives, and into a context it can use.
    epoch = compile_bootstrap(with_tls(certs), "conf.yaml").epoch_template
    again = from_wire(Epoch, to_wire(epoch))
    assert again.listeners[0].tls == tls
    assert server_context(tls).verify_mode == ssl.CERT_NONE


def test_inline_pem_and_a_plain_chain(certs) -> None:
    d = with_tls(certs)
    cert = d["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]
    entry = cert["typed_config"]["common_tls_context"]["tls_certificates"][0]
    entry["certificate_chain"] = {"inline_string": Path(certs.server).read_text()}
    assert tls_of(d).certificates[0].certificate_chain == Path(certs.server).read_bytes()
    plain = copy.deepcopy(BASE)
    assert compile_bootstrap(plain, "conf.yaml").epoch_template.listeners[0].tls is None


def test_unreadable_file_and_mismatched_key_name_the_field(certs, tmp_path) -> None:
    d = with_tls(certs)
    ts = d["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]
    entry = ts["typed_config"]["common_tls_context"]["tls_certificates"][0]
    entry["private_key"] = {"filename": str(tmp_path / "missing.key")}
    err = reject(d)
    assert err.path == f"{TLS_PATH}.common_tls_context.tls_certificates[0].private_key.filename"
    assert "cannot read" in err.reason
    entry["private_key"] = {"filename": certs.other_key}  # another certificate's key
    err = reject(d)
    assert err.path == f"{TLS_PATH}.common_tls_context.tls_certificates[0]"
    assert "OpenSSL refused" in err.reason


@pytest.mark.parametrize(
    ("ctx", "field", "words"),
    [
        (
            {"common": {"tls_params": {"cipher_suites": ["NO-SUCH-CIPHER"]}}},
            "common_tls_context.tls_params.cipher_suites",
            "NO-SUCH-CIPHER",
        ),
        (
            {"common": {"tls_params": {"ecdh_curves": ["X25519:P-224", "P-256"]}}},
            "common_tls_context.tls_params.ecdh_curves",
            "curve 'P-224'",
        ),
        (
            {"common": {"tls_params": {"ecdh_curves": ["P-224"]}}},
            "common_tls_context.tls_params.ecdh_curves",
            "P-224",
        ),
        (
            {
                "common": {
                    "tls_params": {
                        "tls_minimum_protocol_version": "TLSv1_3",
                        "tls_maximum_protocol_version": "TLSv1_2",
                    }
                }
            },
            "common_tls_context.tls_params",
            "above the maximum",
        ),
        (
            {"common": {"alpn_protocols": ["h3"]}},
            "common_tls_context.alpn_protocols",
            "not supported by proxyd",
        ),
        ({"require_client_certificate": True}, "require_client_certificate", "trusted_ca"),
        (
            {"common": {"validation_context": {"match_typed_subject_alt_names": []}}},
            "common_tls_context.validation_context.trusted_ca",
            "trusted_ca",
        ),
        (
            {"common": {"validation_context": {"allow_expired_certificate": True}}},
            "common_tls_context.validation_context.allow_expired_certificate",
            "not supported",
        ),
        ({"session_timeout": "10s"}, "session_timeout", "not supported"),
    ],
)
def test_refused_settings_name_their_field(certs, ctx, field, words) -> None:
    err = reject(with_tls(certs, **ctx))
    assert err.path == f"{TLS_PATH}.{field}"
    assert words in err.reason


def test_settings_that_compile(certs) -> None:
    tls = tls_of(
        with_tls(
            certs,
            require_client_certificate=True,
            disable_stateless_session_resumption=True,
            common={
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_3",
                    "cipher_suites": [
                        "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-RSA-AES128-GCM-SHA256]"
                    ],
                    "ecdh_curves": ["P-256"],
                },
                "validation_context": {
                    "trusted_ca": {"filename": certs.ca},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"prefix": "spiffe://test/"}}
                    ],
                },
            },
        )
    )
    assert tls.alpn == ("h2", "http/1.1")
    assert tls.min_version == "TLSv1_3" and tls.ecdh_curve == "prime256v1"
    assert tls.trusted_ca == Path(certs.ca).read_bytes() and tls.require_client_certificate
    assert tls.san_matchers == (SanMatch("URI", StringMatch("prefix", "spiffe://test/")),)
    assert not tls.session_tickets
    ctx = server_context(tls)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.options & ssl.OP_NO_TICKET


def test_tls_inspector_is_accepted_and_other_listener_filters_are_not(certs) -> None:
    d = with_tls(certs)
    lst = d["static_resources"]["listeners"][0]
    inspector = "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3."
    lst["listener_filters"] = [
        {
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": inspector + "TlsInspector"},
        }
    ]
    assert tls_of(d)
    lst["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector"}]  # no type
    err = reject(d)
    assert err.path == "static_resources.listeners[0].listener_filters[0]"
    assert "typed_config" in err.reason
    original_dst = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3."
    lst["listener_filters"] = [
        {"name": "dst", "typed_config": {"@type": original_dst + "OriginalDst"}}
    ]
    err = reject(d)
    assert err.path.startswith("static_resources.listeners[0].listener_filters[0]")
    assert "not supported" in err.reason


def test_cipher_groups_are_flattened() -> None:
    assert split_ciphers(("[A|B]", "C")) == ["A", "B", "C"]


PEER = {
    "subject": ((("organizationName", "proxyd, tests"),), (("commonName", "client"),)),
    "subjectAltName": (
        ("URI", "spiffe://test/client"),
        ("DNS", "*.example.org"),
        ("IP Address", "10.0.0.1"),
        ("email", "a@b.test"),
    ),
}


@pytest.mark.parametrize(
    ("san_type", "match", "ok"),
    [
        ("URI", StringMatch("exact", "spiffe://test/client"), True),
        ("URI", StringMatch("exact", "spiffe://test/other"), False),
        ("DNS", StringMatch("exact", "www.example.org"), True),  # the wildcard SAN covers it
        ("DNS", StringMatch("exact", "a.b.example.org"), False),  # one label only
        ("DNS", StringMatch("suffix", ".example.org"), True),
        ("IP_ADDRESS", StringMatch("exact", "10.0.0.1"), True),
        ("EMAIL", StringMatch("exact", "a@b.test"), True),
        ("EMAIL", StringMatch("exact", "spiffe://test/client"), False),  # another type's SAN
    ],
)
def test_san_matchers(san_type, match, ok) -> None:
    assert SanChecker((SanMatch(san_type, match),)).accepts(PEER) is ok
    assert SanChecker((SanMatch(san_type, match),)).accepts(None) is False


def test_peer_subject_is_printed_as_envoy_does() -> None:
    assert peer_subject(PEER) == "CN=client,O=proxyd\\, tests"
    assert peer_subject(None) == ""


def test_several_certificates_are_chosen_by_their_names(certs) -> None:
    tls = tls_of(
        with_tls(
            certs,
            common={
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": certs.server},
                        "private_key": {"filename": certs.server_key},
                    },
                    {
                        "certificate_chain": {"filename": certs.other},
                        "private_key": {"filename": certs.other_key},
                    },
                ]
            },
        )
    )
    names = [c.dns_names for c in tls.certificates]
    assert names == [("example.com", "*.example.org"), ("other.test",)]
    assert pick_certificate(names, "other.test") == 1
    assert pick_certificate(names, "OTHER.test") == 1
    assert pick_certificate(names, "a.example.org") == 0
    assert pick_certificate(names, "a.b.example.org") == 0  # no match: the first
    assert pick_certificate(names, "") == 0
    # A wildcard loses to an exact name in a later certificate.
    assert pick_certificate([("*.example.org",), ("www.example.org",)], "www.example.org") == 1


def test_certificate_names_fall_back_to_the_common_name(certs) -> None:
    assert certificate_names(Path(certs.ca).read_bytes()) == ("ca",)
    assert certificate_names(b"not a certificate") == ()
