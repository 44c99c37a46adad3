"""``envoy.extensions.filters.http.cache_v2.v3.CacheV2Config`` → the same plain data as
:mod:`.config` (``"v2": True``). ``override_upstream_cluster`` is left out of the spec
(refused by name)."""

from __future__ import annotations

from typing import Any

from proxyd.config.spec import Spec
from proxyd.filters.cache.config import FS_V2_TYPE, SIMPLE_V2_TYPE, compile_config, spec

TYPE = "envoy.extensions.filters.http.cache_v2.v3.CacheV2Config"
SPEC: Spec = spec(SIMPLE_V2_TYPE, FS_V2_TYPE)


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    return compile_config(msg, path, file, v2=True)
