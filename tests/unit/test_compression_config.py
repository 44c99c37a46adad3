"""The compressor and decompressor configs through proxyd.config.compile_bootstrap: what
they compile to (Envoy's defaults filled in) and what is refused by name and path."""

from __future__ import annotations

from typing import Any

import pytest

from proxyd.config import compile_bootstrap
from proxyd.filters.compressor.config import DEFAULT_CONTENT_TYPES
from tests.unit.test_filter_config import HCM, base, compiled, hcm, reject, vhost

COMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"
DECOMPRESSOR = "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor"
LIB = "type.googleapis.com/envoy.extensions.compression.{0}.{1}.v3.{2}"
AT = f"{HCM}.http_filters[0].typed_config"


def _with(typed_config: dict[str, Any]) -> dict[str, Any]:
    d = base()
    hcm(d)["http_filters"][:2] = [{"name": "cmp", "typed_config": typed_config}]
    return d


def _compressor(lib: str = "gzip", kind: str = "Gzip", **fields: Any) -> dict[str, Any]:
    library = {"@type": LIB.format(lib, "compressor", kind), **fields.pop("library", {})}
    return {
        "@type": COMPRESSOR,
        "compressor_library": {"name": "n", "typed_config": library},
        **fields,
    }


def _decompressor(lib: str = "gzip", kind: str = "Gzip", **fields: Any) -> dict[str, Any]:
    library = {"@type": LIB.format(lib, "decompressor", kind), **fields.pop("library", {})}
    return {
        "@type": DECOMPRESSOR,
        "decompressor_library": {"name": "d", "typed_config": library},
        **fields,
    }


def _compiled(typed_config: dict[str, Any]) -> Any:
    return compiled(_with(typed_config)).http_filters[0].config


def test_compressor_defaults_are_envoys() -> None:
    c = _compiled(_compressor())
    assert c["library"] == {
        "library": "gzip",
        "compression_level": -1,
        "compression_strategy": 0,
        "memory_level": 5,
        "window_bits": 12,
        "chunk_size": 4096,
    }
    assert c["response"]["min_content_length"] == 30
    assert c["response"]["content_type"] == list(DEFAULT_CONTENT_TYPES)
    assert c["response"]["enabled"] == {"default": True, "runtime_key": ""}
    assert c["request"] is None and not c["has_response"]


def test_compressor_response_direction_replaces_the_deprecated_fields() -> None:
    c = _compiled(
        _compressor(
            "brotli",
            "Brotli",
            library={"quality": 5},
            content_length=500,
            response_direction_config={
                "common_config": {
                    "min_content_length": 10,
                    "enabled": {"default_value": False, "runtime_key": "k"},
                },
                "uncompressible_response_codes": [206],
            },
        )
    )
    assert c["library"]["quality"] == 5 and c["library"]["window_bits"] == 18
    assert c["response"]["min_content_length"] == 10
    assert c["response"]["enabled"] == {"default": False, "runtime_key": "k"}
    assert c["response"]["uncompressible_response_codes"] == [206] and c["has_response"]


def test_zstd_level_above_the_maximum_is_the_maximum() -> None:
    c = _compiled(_compressor("zstd", "Zstd", library={"compression_level": 99}))
    assert c["library"]["compression_level"] == 22


@pytest.mark.parametrize(
    ("config", "where"),
    [
        (
            _compressor(response_direction_config={"status_header_enabled": True}),
            "response_direction_config.status_header_enabled",
        ),
        (
            _compressor("brotli", "Brotli", library={"disable_literal_context_modeling": True}),
            "compressor_library.typed_config.disable_literal_context_modeling",
        ),
        (
            _compressor("zstd", "Zstd", library={"dictionary": {"inline_string": "x"}}),
            "compressor_library.typed_config.dictionary",
        ),
        (
            _decompressor("zstd", "Zstd", library={"dictionaries": [{"inline_string": "x"}]}),
            "decompressor_library.typed_config.dictionaries",
        ),
    ],
)
def test_unimplemented_fields_are_refused_by_name(config: dict[str, Any], where: str) -> None:
    err = reject(_with(config))
    assert err.path == f"{AT}.{where}"
    assert "not supported by proxyd" in err.reason


def test_library_ranges_are_checked_as_envoy_checks_them() -> None:
    err = reject(_with(_compressor(library={"window_bits": 16})))
    assert err.path == f"{AT}.compressor_library.typed_config.window_bits"


def test_per_route_overrides() -> None:
    d = _with(_compressor())
    vhost(d)["typed_per_filter_config"] = {
        "cmp": {
            "@type": PER_ROUTE,
            "overrides": {"response_direction_config": {"remove_accept_encoding_header": True}},
        }
    }
    routes = compiled(d).route_config.virtual_hosts[0].routes
    (override,) = routes[0].filter_configs
    assert override.config == {"response_direction_config": {"remove_accept_encoding_header": True}}
    d = _with(_compressor())
    vhost(d)["typed_per_filter_config"] = {
        "cmp": {"@type": PER_ROUTE, "overrides": {"compressor_library": {"name": "x"}}}
    }
    err = reject(d)
    assert err.path.endswith("typed_per_filter_config['cmp'].overrides.compressor_library")


def test_decompressor_defaults_are_envoys() -> None:
    c = _compiled(_decompressor())
    assert c["library"] == {"library": "gzip", "window_bits": 15, "max_inflate_ratio": 100}
    assert c["request"]["advertise_accept_encoding"] is True
    assert c["response"]["enabled"] == {"default": True, "runtime_key": ""}


def test_two_filters_may_share_a_name_as_in_envoy() -> None:
    d = base()
    filters = hcm(d)["http_filters"]
    filters[:2] = [
        {"name": "envoy.filters.http.compressor", "typed_config": _compressor()},
        {"name": "envoy.filters.http.compressor", "typed_config": _compressor("zstd", "Zstd")},
    ]
    epoch = compile_bootstrap(d, "conf.yaml").epoch_template
    manager = epoch.listeners[0].hcm
    assert manager is not None and len(manager.http_filters) == 2
