"""HTTP filters: one package per filter, its config compiler beside its runtime.

Each ``proxyd/filters/<name>/`` has

* ``config.py`` (master side, may import protobuf): ``TYPE`` (the typed_config's full
  proto name), ``SPEC`` (its allow-list tree for :mod:`proxyd.config.supported`),
  ``compile(msg, path, file)`` → plain data for the epoch, and, when the filter takes
  per-route config, ``PER_ROUTE_TYPE``, ``PER_ROUTE_SPEC`` and
  ``compile_per_route(msg, path, file)``;
* ``filter.py`` (worker side, never imports protobuf): ``Factory``, a
  :class:`proxyd.filters.api.FilterFactory` made once per epoch and route from the
  plain data, which makes one :class:`proxyd.filters.api.HttpFilter` per stream.

The two sides are listed once each, with plain imports so the layering can be read
from the code: :mod:`proxyd.filters.compilers` (imported by the config layer) and
:mod:`proxyd.filters.runtimes` (imported by the worker). The router
(``envoy.filters.http.router``) is the terminal filter and is in neither.
"""
