"""SDS and static secrets in TLS contexts (proxyd.config.secrets): what is compiled
into the epoch, what waits for the master to fill it in, and what is refused (by field
path, naming the files)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyd.config import compile_bootstrap
from proxyd.config.secrets import CompiledSecret, fill_downstream, fill_upstream
from proxyd.epoch import ConfigSource, DownstreamTls, Epoch, SdsSecret, UpstreamTls, from_wire, to_wire
from proxyd.epoch_types.listeners import same_but_secrets
from proxyd.errors import ConfigError

BASE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent / "config_corpus" / "good-full.yaml").read_text()
)
CHAIN = "static_resources.listeners[0].filter_chains[0]"
COMMON = f"{CHAIN}.transport_socket.typed_config.common_tls_context"
TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS_TYPE = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
)
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def cert(chain: str, key: str) -> dict[str, Any]:
    return {"certificate_chain": {"filename": chain}, "private_key": {"filename": key}}


def with_common(
    common: dict[str, Any], secrets: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": TLS_TYPE, "common_tls_context": common},
    }
    if secrets is not None:
        d["static_resources"]["secrets"] = secrets
    return d


def tls_of(data: dict[str, Any]) -> DownstreamTls:
    tls = compile_bootstrap(data, "conf.yaml").epoch_template.listeners[0].tls
    assert tls is not None
    return tls


def reject(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(data, "conf.yaml")
    return info.value


@pytest.fixture
def sds_path(tmp_path) -> Path:
    path = tmp_path / "sds.yaml"
    path.write_text(yaml.safe_dump({"resources": []}))
    return path


def sds(name: str, path: Path, **source: Any) -> dict[str, Any]:
    return {"name": name, "sds_config": {"path_config_source": {"path": str(path)}, **source}}


def test_a_static_secret_is_compiled_into_the_context(certs) -> None:
    tls = tls_of(
        with_common(
            {"tls_certificate_sds_secret_configs": [{"name": "web"}]},
            [{"name": "web", "tls_certificate": cert(certs.server, certs.server_key)}],
        )
    )
    assert tls.certificates[0].certificate_chain == Path(certs.server).read_bytes()
    assert tls.certificates[0].dns_names == ("example.com", "*.example.org")
    assert not tls.sds_certificates and not tls.sds_missing


def test_a_static_validation_secret(certs) -> None:
    tls = tls_of(
        with_common(
            {
                "tls_certificates": [cert(certs.server, certs.server_key)],
                "validation_context_sds_secret_config": {"name": "ca"},
            },
            [{"name": "ca", "validation_context": {"trusted_ca": {"filename": certs.ca}}}],
        )
    )
    assert tls.trusted_ca == Path(certs.ca).read_bytes()


def test_an_sds_file_reference_waits_to_be_filled(certs, sds_path) -> None:
    data = with_common(
        {
            "tls_certificate_sds_secret_configs": [
                sds("web", sds_path, initial_fetch_timeout="2s")
            ],
            "combined_validation_context": {
                "default_validation_context": {
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": "a"}}
                    ]
                },
                "validation_context_sds_secret_config": sds("ca", sds_path),
            },
        }
    )
    tls = tls_of(data)
    assert tls.certificates == () and tls.sds_missing == ("web", "ca")
    assert tls.sds_certificates == (SdsSecret("web", _file(sds_path, 2.0)),)
    assert tls.sds_validation == SdsSecret("ca", _file(sds_path, 15.0))
    epoch = compile_bootstrap(data, "conf.yaml").epoch_template
    assert from_wire(Epoch, to_wire(epoch)).listeners[0].tls == tls
    # The master fills it in when both secrets are there.
    server = CompiledSecret(
        "web",
        certificate=tls_of(
            with_common({"tls_certificates": [cert(certs.server, certs.server_key)]})
        ).certificates[0],
    )
    ca = CompiledSecret("ca", validation=True, trusted_ca=Path(certs.ca).read_bytes())
    assert fill_downstream(tls, {"web": server}).sds_missing == ("ca",)
    assert fill_downstream(tls, {"web": server, "ca": server}).sds_missing == ("ca",)  # no CA in it
    filled = fill_downstream(tls, {"web": server, "ca": ca})
    assert filled.sds_missing == () and filled.certificates == (server.certificate,)
    assert filled.trusted_ca == ca.trusted_ca and len(filled.san_matchers) == 1
    # A rotation is not a listener change (its connections are not drained).
    lst = epoch.listeners[0]
    other = CompiledSecret(
        "web",
        certificate=tls_of(
            with_common({"tls_certificates": [cert(certs.other, certs.other_key)]})
        ).certificates[0],
    )
    a = _with_tls(lst, filled)
    b = _with_tls(lst, fill_downstream(tls, {"web": other, "ca": ca}))
    assert a != b and same_but_secrets(a, b)


def _with_tls(lst: Any, tls: DownstreamTls) -> Any:
    import dataclasses

    return dataclasses.replace(lst, tls=tls)


def test_upstream_sds_references(certs, sds_path) -> None:
    d = copy.deepcopy(BASE)
    d["static_resources"]["clusters"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": UPSTREAM_TLS_TYPE,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [sds("client", sds_path)],
                "validation_context_sds_secret_config": sds("ca", sds_path),
            },
        },
    }
    tls = compile_bootstrap(d, "conf.yaml").epoch_template.clusters[0].tls
    assert isinstance(tls, UpstreamTls)
    assert tls.sds_missing == ("client", "ca") and tls.certificate is None
    ca = CompiledSecret("ca", validation=True, trusted_ca=Path(certs.ca).read_bytes())
    assert fill_upstream(tls, {"ca": ca}).sds_missing == ("client",)


def _file(path: Any, initial: float) -> ConfigSource:
    return ConfigSource(kind="path", path=str(path), initial_fetch_timeout_s=initial)


@pytest.mark.parametrize(
    ("source", "where", "text"),
    [
        (
            {
                "api_config_source": {
                    "api_type": "GRPC",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "x"}}],
                }
            },
            "",
            "the management server cluster 'x' must be a static cluster",
        ),
        ({"ads": {}}, "", "an 'ads' config source needs dynamic_resources.ads_config"),
        (
            {"path_config_source": {"path": "/nonexistent/sds.yaml"}},
            "sds_config.path_config_source.path",
            "paths must refer to an existing path in the system: '/nonexistent/sds.yaml' does not exist",
        ),
    ],
)
def test_sds_sources_refused(source: dict[str, Any], where: str, text: str) -> None:
    exc = reject(
        with_common({"tls_certificate_sds_secret_configs": [{"name": "web", "sds_config": source}]})
    )
    if where:
        assert exc.path == f"{COMMON}.tls_certificate_sds_secret_configs[0].{where}"
    else:  # checked with the other management-server sources, by listener
        assert exc.path == "static_resources.listeners[0] (SDS secret 'web')"
    assert text in exc.reason


def test_the_older_path_form_is_read_as_path_config_source(sds_path) -> None:
    tls = tls_of(
        with_common(
            {
                "tls_certificate_sds_secret_configs": [
                    {"name": "web", "sds_config": {"path": str(sds_path)}}
                ]
            }
        )
    )
    assert tls.sds_certificates == (SdsSecret("web", _file(sds_path, 15.0)),)


def test_unknown_static_secret() -> None:
    exc = reject(with_common({"tls_certificate_sds_secret_configs": [{"name": "nope"}]}))
    assert exc.path == f"{COMMON}.tls_certificate_sds_secret_configs[0].name"
    assert exc.reason == "Unknown static secret: nope"


def test_a_secret_of_the_wrong_kind(certs) -> None:
    exc = reject(
        with_common(
            {"tls_certificate_sds_secret_configs": [{"name": "ca"}]},
            [{"name": "ca", "validation_context": {"trusted_ca": {"filename": certs.ca}}}],
        )
    )
    assert "secret 'ca' holds no tls_certificate" in str(exc)


def test_static_certificate_key_mismatch_names_the_files(certs) -> None:
    exc = reject(with_common({"tls_certificates": [cert(certs.server, certs.other_key)]}))
    assert exc.path == f"{COMMON}.tls_certificates[0]"
    assert f"certificate_chain '{certs.server}'" in exc.reason
    assert f"private_key '{certs.other_key}'" in exc.reason
    assert "KEY_VALUES_MISMATCH" in exc.reason


def test_static_secret_key_mismatch_names_the_files(certs) -> None:
    exc = reject(
        with_common(
            {"tls_certificate_sds_secret_configs": [{"name": "web"}]},
            [{"name": "web", "tls_certificate": cert(certs.server, certs.other_key)}],
        )
    )
    assert exc.path == "static_resources.secrets[0].tls_certificate"
    assert certs.other_key in exc.reason


def test_unreadable_and_bad_pem_files(certs, tmp_path) -> None:
    exc = reject(
        with_common({"tls_certificates": [cert(str(tmp_path / "missing.pem"), certs.server_key)]})
    )
    assert exc.path == f"{COMMON}.tls_certificates[0].certificate_chain.filename"
    assert "missing.pem" in exc.reason
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    exc = reject(with_common({"tls_certificates": [cert(str(bad), certs.server_key)]}))
    assert exc.path == f"{COMMON}.tls_certificates[0]" and str(bad) in exc.reason
    exc = reject(
        with_common(
            {
                "tls_certificates": [cert(certs.server, certs.server_key)],
                "validation_context": {"trusted_ca": {"filename": str(bad)}},
            }
        )
    )
    assert exc.path == f"{COMMON}.validation_context.trusted_ca" and str(bad) in exc.reason


def test_duplicate_and_unsupported_static_secrets(certs) -> None:
    web = {"name": "web", "tls_certificate": cert(certs.server, certs.server_key)}
    exc = reject(
        with_common({"tls_certificates": [cert(certs.server, certs.server_key)]}, [web, web])
    )
    assert exc.path == "static_resources.secrets[1].name"
    exc = reject(
        with_common(
            {"tls_certificates": [cert(certs.server, certs.server_key)]},
            [{"name": "g", "generic_secret": {"secret": {"inline_string": "x"}}}],
        )
    )
    assert exc.path == "static_resources.secrets[0].generic_secret"
    assert "not supported by proxyd" in exc.reason


def test_sds_from_a_file_needs_the_node_identity(sds_path) -> None:
    # Envoy: "TlsCertificateSdsApi: node 'id' and 'cluster' are required".
    data = with_common({"tls_certificate_sds_secret_configs": [sds("web", sds_path)]})
    data.pop("node", None)
    exc = reject(data)
    assert exc.path == "node" and "'id' and 'cluster' are required" in exc.reason


def test_config_dump_redacts_an_inline_private_key() -> None:
    from proxyd.master.admin.config_dump import redacted_secret

    secret = {
        "name": "s",
        "tls_certificate": {
            "certificate_chain": {"inline_string": "CERT"},
            "private_key": {"inline_string": "KEY"},
        },
    }
    out = redacted_secret(secret)
    assert out["tls_certificate"]["private_key"] == {"inline_string": "[redacted]"}
    assert out["tls_certificate"]["certificate_chain"] == {"inline_string": "CERT"}
    assert secret["tls_certificate"]["private_key"] == {"inline_string": "KEY"}  # a copy
