"""The master side of every HTTP filter: its config compiler, by proto type name."""

from __future__ import annotations

from types import ModuleType

from proxyd.filters.buffer import config as buffer_config
from proxyd.filters.cache import config as cache_config
from proxyd.filters.cache import config_v2 as cache_v2_config
from proxyd.filters.composite import config as composite_config
from proxyd.filters.compressor import config as compressor_config
from proxyd.filters.cors import config as cors_config
from proxyd.filters.csrf import config as csrf_config
from proxyd.filters.decompressor import config as decompressor_config
from proxyd.filters.ext_authz import config as ext_authz_config
from proxyd.filters.fault import config as fault_config
from proxyd.filters.grpc_web import config as grpc_web_config
from proxyd.filters.header_mutation import config as header_mutation_config
from proxyd.filters.header_to_metadata import config as header_to_metadata_config
from proxyd.filters.health_check import config as health_check_config
from proxyd.filters.jwt_authn import config as jwt_authn_config
from proxyd.filters.local_ratelimit import config as local_ratelimit_config
from proxyd.filters.rbac import config as rbac_config
from proxyd.filters.set_metadata import config as set_metadata_config
from proxyd.filters.stateful_session import config as stateful_session_config

COMPILERS: dict[str, ModuleType] = {
    m.TYPE: m
    for m in (
        buffer_config,
        cache_config,
        cache_v2_config,
        composite_config,
        compressor_config,
        cors_config,
        csrf_config,
        decompressor_config,
        ext_authz_config,
        fault_config,
        grpc_web_config,
        header_mutation_config,
        header_to_metadata_config,
        health_check_config,
        jwt_authn_config,
        local_ratelimit_config,
        rbac_config,
        set_metadata_config,
        stateful_session_config,
    )
}


def compiler(type_name: str) -> ModuleType | None:
    """The config module of the filter whose typed_config is ``type_name``."""
    return COMPILERS.get(type_name)
