"""Envoy v3 bootstrap → validated configuration → epoch (plain data).

``load(path)`` is the whole API; every problem is a :class:`proxyd.errors.ConfigError`
naming the file, the field path and the reason. See ``loader`` for the steps.
"""

from proxyd.config.loader import AdminConfig, LoadedConfig, compile_bootstrap, load

__all__ = ["AdminConfig", "LoadedConfig", "compile_bootstrap", "load"]
