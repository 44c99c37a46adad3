"""The master side of every HTTP filter: its config compiler, by proto type name."""

from __future__ import annotations

from types import ModuleType

from proxyd.filters.buffer import config as buffer_config
from proxyd.filters.compressor import config as compressor_config
from proxyd.filters.decompressor import config as decompressor_config
from proxyd.filters.fault import config as fault_config
from proxyd.filters.local_ratelimit import config as local_ratelimit_config
from proxyd.filters.rbac import config as rbac_config

COMPILERS: dict[str, ModuleType] = {m.TYPE: m for m in (buffer_config, fault_config)}
COMPILERS[local_ratelimit_config.TYPE] = local_ratelimit_config
COMPILERS[rbac_config.TYPE] = rbac_config
COMPILERS[compressor_config.TYPE] = compressor_config
COMPILERS[decompressor_config.TYPE] = decompressor_config


def compiler(type_name: str) -> ModuleType | None:
    """The config module of the filter whose typed_config is ``type_name``."""
    return COMPILERS.get(type_name)
