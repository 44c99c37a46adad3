"""``envoy.extensions.filters.http.compressor.v3.Compressor`` and ``CompressorPerRoute``
→ plain data.

The epoch carries::

    {"library_name": str, "library": {"library": "gzip" | "brotli" | "zstd", ...settings},
     "has_response": bool, "choose_first": bool,
     "response": {"enabled": FLAG, "min_content_length": int, "content_type": [str],
                  "disable_on_etag_header": bool, "remove_accept_encoding_header": bool,
                  "uncompressible_response_codes": [int]},
     "request": None | {"enabled": FLAG, "min_content_length": int, "content_type": [str]}}

with ``FLAG = {"default": bool, "runtime_key": str}``. As Envoy's
``ResponseDirectionConfig`` does, the response settings come from
``response_direction_config`` when it is set, else from the deprecated top-level fields
(``content_length``, ``content_type``, ``disable_on_etag_header``,
``remove_accept_encoding_header``, ``runtime_enabled``). Defaults are Envoy's:
``min_content_length`` 30, :data:`DEFAULT_CONTENT_TYPES`, enabled.

The per-route config is ``{"disabled": True}`` or ``{"response_direction_config": None |
{"remove_accept_encoding_header": bool | None}}``. What proxyd does not implement is left
out of the specs and refused by name: ``status_header_enabled``, a per-route
``compressor_library``, zstd's ``dictionary`` and brotli's
``disable_literal_context_modeling`` (the Python binding cannot set it).
"""

from __future__ import annotations

from typing import Any

from proxyd.config.proto import unpack
from proxyd.config.spec import LEAF, AnyOf, Spec
from proxyd.config.values import feature_flag, wrapped_or
from proxyd.protocol import compression

TYPE = "envoy.extensions.filters.http.compressor.v3.Compressor"
PER_ROUTE_TYPE = "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"

GZIP_TYPE = "envoy.extensions.compression.gzip.compressor.v3.Gzip"
BROTLI_TYPE = "envoy.extensions.compression.brotli.compressor.v3.Brotli"
ZSTD_TYPE = "envoy.extensions.compression.zstd.compressor.v3.Zstd"

FLAG: Spec = {"default_value": LEAF, "runtime_key": LEAF}
COMMON: Spec = {"enabled": FLAG, "min_content_length": LEAF, "content_type": LEAF}

# chunk_size only sizes Envoy's output slices; proxyd accepts it and writes each
# compressed piece whole (the bytes the client decodes are the same).
LIBRARIES: dict[str, Spec] = {
    GZIP_TYPE: {
        "memory_level": LEAF,
        "compression_level": LEAF,
        "compression_strategy": LEAF,
        "window_bits": LEAF,
        "chunk_size": LEAF,
    },
    BROTLI_TYPE: {
        "quality": LEAF,
        "encoder_mode": LEAF,
        "window_bits": LEAF,
        "input_block_bits": LEAF,
        "chunk_size": LEAF,
    },
    ZSTD_TYPE: {
        "compression_level": LEAF,
        "enable_checksum": LEAF,
        "strategy": LEAF,
        "chunk_size": LEAF,
    },
}

SPEC: Spec = {
    "content_length": LEAF,
    "content_type": LEAF,
    "disable_on_etag_header": LEAF,
    "remove_accept_encoding_header": LEAF,
    "runtime_enabled": FLAG,
    "compressor_library": {
        "name": LEAF,
        "typed_config": AnyOf("compressor library", LIBRARIES),
    },
    "request_direction_config": {"common_config": COMMON},
    "response_direction_config": {
        "common_config": COMMON,
        "disable_on_etag_header": LEAF,
        "remove_accept_encoding_header": LEAF,
        "uncompressible_response_codes": LEAF,
    },
    "choose_first": LEAF,
}

PER_ROUTE_SPEC: Spec = {
    "disabled": LEAF,
    "overrides": {"response_direction_config": {"remove_accept_encoding_header": LEAF}},
}

DEFAULT_MIN_CONTENT_LENGTH = 30
ZSTD_MAX_LEVEL = 22  # ZSTD_maxCLevel()
# Envoy's defaultContentEncoding(): the media types compressed when none are configured.
DEFAULT_CONTENT_TYPES = (
    "text/html",
    "text/plain",
    "text/css",
    "application/javascript",
    "application/x-javascript",
    "text/javascript",
    "text/x-javascript",
    "text/ecmascript",
    "text/js",
    "text/jscript",
    "text/x-js",
    "application/ecmascript",
    "application/x-json",
    "application/xml",
    "application/json",
    "image/svg+xml",
    "text/xml",
    "application/xhtml+xml",
    "application/grpc-web",
    "application/grpc-web+proto",
)


def _common(msg: Any, flag: str, length: str) -> dict[str, Any]:
    """A ``CommonDirectionConfig`` (or the deprecated top-level fields: ``flag`` and
    ``length`` name the fields)."""
    return {
        "enabled": feature_flag(msg, flag),
        "min_content_length": wrapped_or(msg, length, 0) or DEFAULT_MIN_CONTENT_LENGTH,
        "content_type": list(msg.content_type) or list(DEFAULT_CONTENT_TYPES),
    }


def library(any_msg: Any) -> dict[str, Any]:
    """The compressor library's settings, Envoy's defaults filled in."""
    type_name = any_msg.type_url.rsplit("/", 1)[-1]
    msg = unpack(any_msg)
    assert msg is not None  # the allow-list walk resolved every type URL
    if type_name == GZIP_TYPE:
        d = compression.GZIP_DEFAULTS
        level = msg.compression_level  # DEFAULT_COMPRESSION (0) is zlib's -1
        return {
            "library": compression.GZIP,
            "compression_level": level if level else d["compression_level"],
            "compression_strategy": msg.compression_strategy,
            "memory_level": wrapped_or(msg, "memory_level", d["memory_level"]),
            "window_bits": wrapped_or(msg, "window_bits", d["window_bits"]),
            "chunk_size": wrapped_or(msg, "chunk_size", d["chunk_size"]),
        }
    if type_name == BROTLI_TYPE:
        d = compression.BROTLI_DEFAULTS
        return {
            "library": compression.BROTLI,
            "quality": wrapped_or(msg, "quality", d["quality"]),
            "encoder_mode": msg.encoder_mode,
            "window_bits": wrapped_or(msg, "window_bits", d["window_bits"]),
            "input_block_bits": wrapped_or(msg, "input_block_bits", d["input_block_bits"]),
            "chunk_size": wrapped_or(msg, "chunk_size", d["chunk_size"]),
        }
    d = compression.ZSTD_DEFAULTS
    return {
        "library": compression.ZSTD,
        # No bound in the proto; zstd takes levels above its maximum as the maximum.
        "compression_level": min(
            wrapped_or(msg, "compression_level", d["compression_level"]), ZSTD_MAX_LEVEL
        ),
        "enable_checksum": msg.enable_checksum,
        "strategy": msg.strategy,
        "chunk_size": wrapped_or(msg, "chunk_size", d["chunk_size"]),
    }


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    if msg.HasField("response_direction_config"):
        rd = msg.response_direction_config
        response = _common(rd.common_config, "enabled", "min_content_length")
        codes = list(rd.uncompressible_response_codes)
    else:  # the deprecated top-level fields
        rd = msg
        response = _common(msg, "runtime_enabled", "content_length")
        codes = []
    response["disable_on_etag_header"] = rd.disable_on_etag_header
    response["remove_accept_encoding_header"] = rd.remove_accept_encoding_header
    response["uncompressible_response_codes"] = codes
    request = None
    if msg.HasField("request_direction_config"):
        request = _common(
            msg.request_direction_config.common_config, "enabled", "min_content_length"
        )
    return {
        "library_name": msg.compressor_library.name,
        "library": library(msg.compressor_library.typed_config),
        "has_response": msg.HasField("response_direction_config"),
        "choose_first": msg.choose_first,
        "response": response,
        "request": request,
    }


def compile_per_route(msg: Any, path: str, file: str) -> dict[str, Any]:
    if msg.WhichOneof("override") == "disabled":
        return {"disabled": True}
    overrides = msg.overrides
    if not overrides.HasField("response_direction_config"):
        return {"response_direction_config": None}
    rd = overrides.response_direction_config
    remove = (
        rd.remove_accept_encoding_header.value
        if rd.HasField("remove_accept_encoding_header")
        else None
    )
    return {"response_direction_config": {"remove_accept_encoding_header": remove}}
