"""clusters[].outlier_detection → epoch OutlierDetection, with Envoy's defaults resolved.

``proxyd.config.supported`` has already rejected the fields proxyd does not implement
(``monitors``) and broken proto constraints (durations greater than 0s, percentages at
most 100), so only the checks Envoy makes in code are here:

* ``max_ejection_time`` may not be smaller than ``base_ejection_time``; when it is not
  set it is max(300 s, base_ejection_time), as in Envoy's DetectorConfig.
* ``successful_active_health_check_uneject_host`` (Envoy's default: true) lets a
  passing active health check end an ejection (the master's health checker tells
  the outlier detector of each check that passed).
"""

from __future__ import annotations

from typing import Any

from proxyd.config.proto import join
from proxyd.config.values import duration_or, wrapped_or
from proxyd.epoch import OutlierDetection
from proxyd.errors import ConfigError

DEFAULT_MAX_EJECTION_TIME_S = 300.0
_DEFAULTS = OutlierDetection()

# Wrapped integer fields, named as in the proto and in OutlierDetection.
_COUNTS = (
    "consecutive_5xx",
    "max_ejection_percent",
    "enforcing_consecutive_5xx",
    "enforcing_success_rate",
    "success_rate_minimum_hosts",
    "success_rate_request_volume",
    "success_rate_stdev_factor",
    "consecutive_gateway_failure",
    "enforcing_consecutive_gateway_failure",
    "consecutive_local_origin_failure",
    "enforcing_consecutive_local_origin_failure",
    "enforcing_local_origin_success_rate",
    "failure_percentage_threshold",
    "enforcing_failure_percentage",
    "enforcing_failure_percentage_local_origin",
    "failure_percentage_minimum_hosts",
    "failure_percentage_request_volume",
)


def compile_outlier_detection(c: Any, path: str, file: str) -> OutlierDetection | None:
    """The cluster's OutlierDetection, or None when it has none. ``path`` names the
    ``outlier_detection`` field."""
    if not c.HasField("outlier_detection"):
        return None
    od = c.outlier_detection
    base = duration_or(od, "base_ejection_time", _DEFAULTS.base_ejection_time_s)
    max_time = duration_or(od, "max_ejection_time", max(DEFAULT_MAX_EJECTION_TIME_S, base))
    if max_time < base:
        raise ConfigError(
            file,
            join(path, "max_ejection_time"),
            "outlier detector's max_ejection_time cannot be smaller than base_ejection_time",
        )
    jitter = duration_or(od, "max_ejection_time_jitter", 0.0)
    if jitter < 0:
        raise ConfigError(file, join(path, "max_ejection_time_jitter"), "must not be negative")
    counts = {name: wrapped_or(od, name, getattr(_DEFAULTS, name)) for name in _COUNTS}
    return OutlierDetection(
        interval_s=duration_or(od, "interval", _DEFAULTS.interval_s),
        base_ejection_time_s=base,
        max_ejection_time_s=max_time,
        max_ejection_time_jitter_s=jitter,
        split_external_local_origin_errors=od.split_external_local_origin_errors,
        always_eject_one_host=wrapped_or(od, "always_eject_one_host", False),
        successful_active_health_check_uneject_host=wrapped_or(
            od, "successful_active_health_check_uneject_host", True
        ),
        **counts,
    )
