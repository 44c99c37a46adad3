"""``envoy.extensions.filters.http.cache.v3.CacheConfig`` (and, in :mod:`.config_v2`,
``cache_v2.v3.CacheV2Config``) → plain data::

    {"disabled": bool, "store": STORE, "label": str (the storage's name in cache_v2's
     stats), "allowed_vary": [StringMatch wire], "ignore_request_cache_control": bool,
     "v2": bool}

    STORE = "simple" | "simple_v2"
          | {"path": str, "max_bytes": int (0: none), "max_count": int (0: none),
             "threads": int}

The storage is the in-memory simple cache (``SimpleHttpCacheConfig``,
``SimpleHttpCacheV2Config``) or the file-system cache (``FileSystemHttpCacheConfig``,
``FileSystemHttpCacheV2Config``: :mod:`.disk`). Of the file-system cache's fields,
``max_individual_cache_entry_size_bytes``, ``cache_subdivisions``, ``evict_fraction``,
``max_eviction_period``, ``min_eviction_period`` and ``create_cache_path`` are accepted
and change nothing, as in Envoy 1.40, which does not implement them; a missing
``cache_path`` makes every lookup a miss and stores nothing, as in Envoy 1.40.

``key_creator_params.exclude_scheme`` / ``exclude_host`` and ``max_body_bytes`` are
accepted and change nothing: Envoy 1.40 keys by scheme and host with them set, and
stores responses longer than ``max_body_bytes`` (tests/compat/test_cache_compat.py
holds both to it).

``key_creator_params.query_parameters_included`` / ``_excluded`` are left out of the
specs, so they are refused by name. ``typed_config`` is required unless ``disabled``
(Envoy's check).
"""

from __future__ import annotations

import os
from typing import Any

from proxyd.config.matchers import string_match
from proxyd.config.proto import join, unpack
from proxyd.config.spec import LEAF, STRING_MATCHER, AnyOf, Spec
from proxyd.config.values import wrapped_or
from proxyd.epoch import to_wire
from proxyd.errors import ConfigError

TYPE = "envoy.extensions.filters.http.cache.v3.CacheConfig"
SIMPLE_TYPE = "envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
SIMPLE_V2_TYPE = "envoy.extensions.http.cache_v2.simple_http_cache.v3.SimpleHttpCacheV2Config"
FS_TYPE = "envoy.extensions.http.cache.file_system_http_cache.v3.FileSystemHttpCacheConfig"
FS_V2_TYPE = "envoy.extensions.http.cache_v2.file_system_http_cache.v3.FileSystemHttpCacheV2Config"

# The labels Envoy's cache_v2 stats carry for its storages.
LABELS = {
    SIMPLE_V2_TYPE: "envoy_extensions_http_cache_v2_simple",
    FS_V2_TYPE: "envoy_extensions_http_cache_v2_file_system_http_cache",
}

FS_SPEC: Spec = {
    "manager_config": {"thread_pool": {"thread_count": LEAF}, "id": LEAF},
    "cache_path": LEAF,
    "max_cache_size_bytes": LEAF,
    "max_individual_cache_entry_size_bytes": LEAF,
    "max_cache_entry_count": LEAF,
    "cache_subdivisions": LEAF,
    "evict_fraction": LEAF,
    "max_eviction_period": LEAF,
    "min_eviction_period": LEAF,
    "create_cache_path": LEAF,
}


def spec(simple_type: str, fs_type: str) -> Spec:
    return {
        "typed_config": AnyOf("HTTP cache storage", {simple_type: {}, fs_type: FS_SPEC}),
        "disabled": LEAF,
        "allowed_vary_headers": STRING_MATCHER,
        "key_creator_params": {"exclude_scheme": LEAF, "exclude_host": LEAF},
        "max_body_bytes": LEAF,
        "ignore_request_cache_control_header": LEAF,
    }


SPEC: Spec = spec(SIMPLE_TYPE, FS_TYPE)


def _storage(any_msg: Any, v2: bool) -> tuple[Any, str]:
    """(the plain storage config, its stats label)."""
    type_name = any_msg.type_url.rsplit("/", 1)[-1]
    if type_name in (SIMPLE_TYPE, SIMPLE_V2_TYPE):
        return ("simple_v2" if v2 else "simple"), LABELS[SIMPLE_V2_TYPE]
    msg = unpack(any_msg)
    assert msg is not None  # the allow-list walk resolved every type URL
    threads = msg.manager_config.thread_pool.thread_count or os.cpu_count() or 1
    return {
        "path": msg.cache_path,
        "max_bytes": wrapped_or(msg, "max_cache_size_bytes", 0),
        "max_count": wrapped_or(msg, "max_cache_entry_count", 0),
        "threads": threads,
    }, LABELS[FS_V2_TYPE]


def compile_config(msg: Any, path: str, file: str, v2: bool) -> dict[str, Any]:
    disabled = msg.HasField("disabled") and msg.disabled.value
    if not disabled and not msg.HasField("typed_config"):
        raise ConfigError(
            file, join(path, "typed_config"), "at least one of typed_config or disabled must be set"
        )
    store, label = ("simple", "") if disabled else _storage(msg.typed_config, v2)
    return {
        "disabled": bool(disabled),
        "store": store,
        "label": label,
        "allowed_vary": [
            to_wire(string_match(m, f"{join(path, 'allowed_vary_headers')}[{i}]", file))
            for i, m in enumerate(msg.allowed_vary_headers)
        ],
        "ignore_request_cache_control": msg.ignore_request_cache_control_header,
        "v2": v2,
    }


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    return compile_config(msg, path, file, v2=False)
