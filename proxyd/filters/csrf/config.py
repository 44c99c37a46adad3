"""``envoy.extensions.filters.http.csrf.v3.CsrfPolicy`` → plain data (filter and route).

The same message is the per-route config; the most specific level replaces the filter's
whole, as Envoy's ``resolveMostSpecificPerFilterConfig``. The epoch carries::

    {"filter_enabled": [runtime_key, numerator, denominator],
     "shadow_enabled": [runtime_key, numerator, denominator] | None,
     "additional_origins": [StringMatch wire]}

``filter_enabled`` is required (Envoy's validation; checked by
:mod:`proxyd.config.rules`).
"""

from __future__ import annotations

from typing import Any

from proxyd.config.matchers import string_match
from proxyd.config.proto import join
from proxyd.config.spec import LEAF, STRING_MATCHER, Spec
from proxyd.epoch import to_wire

TYPE = "envoy.extensions.filters.http.csrf.v3.CsrfPolicy"
_FRACTION: Spec = {"default_value": {"numerator": LEAF, "denominator": LEAF}, "runtime_key": LEAF}
SPEC: Spec = {
    "filter_enabled": _FRACTION,
    "shadow_enabled": _FRACTION,
    "additional_origins": STRING_MATCHER,
}

PER_ROUTE_TYPE = TYPE
PER_ROUTE_SPEC = SPEC

# type.v3.FractionalPercent.DenominatorType, by number.
_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    return {
        "filter_enabled": _fraction(msg.filter_enabled),
        "shadow_enabled": _fraction(msg.shadow_enabled) if msg.HasField("shadow_enabled") else None,
        "additional_origins": [
            to_wire(string_match(m, f"{join(path, 'additional_origins')}[{i}]", file))
            for i, m in enumerate(msg.additional_origins)
        ],
    }


compile_per_route = compile


def _fraction(rf: Any) -> list[Any]:
    dv = rf.default_value
    return [rf.runtime_key, dv.numerator, _DENOMINATORS[dv.denominator]]
