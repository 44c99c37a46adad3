"""``envoy.extensions.filters.http.decompressor.v3.Decompressor`` → plain data.

The epoch carries::

    {"library_name": str,
     "library": {"library": "gzip" | "brotli" | "zstd", "window_bits": int,
                 "max_inflate_ratio": int | None},
     "request": {"enabled": FLAG, "ignore_no_transform_header": bool,
                 "advertise_accept_encoding": bool},
     "response": {"enabled": FLAG, "ignore_no_transform_header": bool}}

with ``FLAG = {"default": bool, "runtime_key": str}`` (unset: enabled). Defaults are
Envoy's: gzip window bits 15, ``max_inflate_ratio`` 100, ``advertise_accept_encoding``
true. ``chunk_size`` and brotli's ``disable_ring_buffer_reallocation`` only size Envoy's
buffers: accepted, with no effect on what is decoded. zstd ``dictionaries`` are refused.
The filter has no per-route config in Envoy.
"""

from __future__ import annotations

from typing import Any

from proxyd.config.proto import unpack
from proxyd.config.spec import LEAF, AnyOf, Spec
from proxyd.config.values import feature_flag, wrapped_or
from proxyd.protocol import compression

TYPE = "envoy.extensions.filters.http.decompressor.v3.Decompressor"

GZIP_TYPE = "envoy.extensions.compression.gzip.decompressor.v3.Gzip"
BROTLI_TYPE = "envoy.extensions.compression.brotli.decompressor.v3.Brotli"
ZSTD_TYPE = "envoy.extensions.compression.zstd.decompressor.v3.Zstd"

FLAG: Spec = {"default_value": LEAF, "runtime_key": LEAF}
COMMON: Spec = {"enabled": FLAG, "ignore_no_transform_header": LEAF}

LIBRARIES: dict[str, Spec] = {
    GZIP_TYPE: {"window_bits": LEAF, "chunk_size": LEAF, "max_inflate_ratio": LEAF},
    BROTLI_TYPE: {"disable_ring_buffer_reallocation": LEAF, "chunk_size": LEAF},
    ZSTD_TYPE: {"chunk_size": LEAF},
}

SPEC: Spec = {
    "decompressor_library": {
        "name": LEAF,
        "typed_config": AnyOf("decompressor library", LIBRARIES),
    },
    "request_direction_config": {"common_config": COMMON, "advertise_accept_encoding": LEAF},
    "response_direction_config": {"common_config": COMMON},
}

DEFAULT_WINDOW_BITS = 15
DEFAULT_MAX_INFLATE_RATIO = 100


def _common(direction: Any) -> dict[str, Any]:
    common = direction.common_config
    return {
        "enabled": feature_flag(common, "enabled"),
        "ignore_no_transform_header": common.ignore_no_transform_header,
    }


def library(any_msg: Any) -> dict[str, Any]:
    type_name = any_msg.type_url.rsplit("/", 1)[-1]
    msg = unpack(any_msg)
    assert msg is not None  # the allow-list walk resolved every type URL
    if type_name == GZIP_TYPE:
        return {
            "library": compression.GZIP,
            "window_bits": wrapped_or(msg, "window_bits", DEFAULT_WINDOW_BITS),
            "max_inflate_ratio": wrapped_or(msg, "max_inflate_ratio", DEFAULT_MAX_INFLATE_RATIO),
        }
    name = compression.BROTLI if type_name == BROTLI_TYPE else compression.ZSTD
    return {"library": name, "window_bits": 0, "max_inflate_ratio": None}


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    request = _common(msg.request_direction_config)
    request["advertise_accept_encoding"] = wrapped_or(
        msg.request_direction_config, "advertise_accept_encoding", True
    )
    return {
        "library_name": msg.decompressor_library.name,
        "library": library(msg.decompressor_library.typed_config),
        "request": request,
        "response": _common(msg.response_direction_config),
    }
