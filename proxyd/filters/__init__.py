"""HTTP filters: one package per filter, its config compiler beside its runtime.

Each ``proxyd/filters/<name>/`` has

* ``config.py`` (master side, may import protobuf): ``TYPE`` (the typed_config's full
  proto name), ``SPEC`` (its allow-list tree for :mod:`proxyd.config.supported`),
  ``compile(msg, path, file)`` → plain data for the epoch, and, when the filter takes
  per-route config, ``PER_ROUTE_TYPE``, ``PER_ROUTE_SPEC`` and
  ``compile_per_route(msg, path, file)``;
* ``filter.py`` (worker side, never imports protobuf): ``Factory``, a
  :class:`proxyd.filters.api.FilterFactory` made once per epoch and route from the
  plain data, which makes one :class:`proxyd.filters.api.HttpFilter` per stream. Its
  stats scope is the connection manager's ``http.<stat_prefix>.``; a filter counts by
  Envoy's name below it (``fault.aborts_injected``, ``downstream_rq_too_large``).

:data:`PACKAGES` maps each filter's proto type to its package; the router
(``envoy.filters.http.router``) is the terminal filter and is not in it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

PACKAGES: dict[str, str] = {
    "envoy.extensions.filters.http.buffer.v3.Buffer": "proxyd.filters.buffer",
    "envoy.extensions.filters.http.fault.v3.HTTPFault": "proxyd.filters.fault",
}


def config_module(type_name: str) -> ModuleType | None:
    """The master-side compiler of the filter of ``type_name`` (None: not supported)."""
    pkg = PACKAGES.get(type_name)
    return importlib.import_module(pkg + ".config") if pkg else None


def runtime_module(type_name: str) -> ModuleType:
    """The worker-side runtime of the filter of ``type_name``."""
    return importlib.import_module(PACKAGES[type_name] + ".filter")
