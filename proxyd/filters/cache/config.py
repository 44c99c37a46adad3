"""``envoy.extensions.filters.http.cache.v3.CacheConfig`` (and, in :mod:`.config_v2`,
``cache_v2.v3.CacheV2Config``) → plain data::

    {"disabled": bool, "store": str (the storage's label),
     "allowed_vary": [StringMatch wire], "ignore_request_cache_control": bool,
     "v2": bool}

``key_creator_params.exclude_scheme`` / ``exclude_host`` and ``max_body_bytes`` are
accepted and change nothing: Envoy 1.40 keys by scheme and host with them set, and
stores responses longer than ``max_body_bytes`` (tests/compat/test_cache_compat.py
holds both to it).

The storage is the in-memory simple cache (``SimpleHttpCacheConfig``,
``SimpleHttpCacheV2Config``); the file-system caches and
``key_creator_params.query_parameters_included`` / ``_excluded`` are left out of the
specs, so they are refused by name. ``typed_config`` is required unless ``disabled``
(Envoy's check).
"""

from __future__ import annotations

from typing import Any

from proxyd.config.matchers import string_match
from proxyd.config.proto import join
from proxyd.config.spec import LEAF, STRING_MATCHER, AnyOf, Spec
from proxyd.epoch import to_wire
from proxyd.errors import ConfigError

TYPE = "envoy.extensions.filters.http.cache.v3.CacheConfig"
SIMPLE_TYPE = "envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
SIMPLE_V2_TYPE = "envoy.extensions.http.cache_v2.simple_http_cache.v3.SimpleHttpCacheV2Config"


def spec(storage_type: str) -> Spec:
    return {
        "typed_config": AnyOf("HTTP cache storage", {storage_type: {}}),
        "disabled": LEAF,
        "allowed_vary_headers": STRING_MATCHER,
        "key_creator_params": {"exclude_scheme": LEAF, "exclude_host": LEAF},
        "max_body_bytes": LEAF,
        "ignore_request_cache_control_header": LEAF,
    }


SPEC: Spec = spec(SIMPLE_TYPE)


def compile_config(msg: Any, path: str, file: str, v2: bool) -> dict[str, Any]:
    disabled = msg.HasField("disabled") and msg.disabled.value
    if not disabled and not msg.HasField("typed_config"):
        raise ConfigError(
            file, join(path, "typed_config"), "at least one of typed_config or disabled must be set"
        )
    return {
        "disabled": bool(disabled),
        "store": "simple_v2" if v2 else "simple",
        "allowed_vary": [
            to_wire(string_match(m, f"{join(path, 'allowed_vary_headers')}[{i}]", file))
            for i, m in enumerate(msg.allowed_vary_headers)
        ],
        "ignore_request_cache_control": msg.ignore_request_cache_control_header,
        "v2": v2,
    }


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    return compile_config(msg, path, file, v2=False)
