"""Runtime lookups on the request path: Envoy's ``Runtime::Snapshot`` reads.

The master merges the layers (``proxyd.master.runtime``) and sends the values in the
epoch; a worker turns them into a :class:`Snapshot` once per epoch. Everything that
depends only on the runtime and the config (a route's ``runtime_fraction``) is resolved
then, so a request pays for one random draw at most.

Envoy's rules (``source/common/runtime/runtime_impl.cc``):

* ``featureEnabled(key, FractionalPercent default, random)``: the key's fractional
  percent if it has one; else its unsigned integer value as a percentage (out of
  HUNDRED; a value over 100 is always enabled); else the default. Enabled when
  ``random % denominator < numerator``.
* ``getInteger(key, default)``: the key's unsigned integer value, else the default.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from typing import Any

from proxyd.epoch import RuntimeFraction, RuntimeValue

# One 64-bit draw per request that needs one, as Envoy's stream id (a random uint64).
RANDOM = random.Random(os.urandom(32))


class Snapshot:
    """The runtime of one epoch: values by key."""

    __slots__ = ("values",)

    def __init__(self, values: Iterable[RuntimeValue] = ()) -> None:
        self.values: dict[str, RuntimeValue] = {v.key: v for v in values}

    def fraction(self, key: str, numerator: int, denominator: int) -> tuple[int, int]:
        """The (numerator, denominator) ``featureEnabled`` compares a draw with: the
        key's value, else the default given."""
        entry = self.values.get(key)
        if entry is not None:
            if entry.denominator:
                return entry.numerator, entry.denominator
            if entry.uint is not None:
                if entry.uint > 100:
                    return 1, 1  # Envoy: an integer over 100 is always enabled
                return entry.uint, 100
        return numerator, denominator

    def runtime_fraction(self, rf: RuntimeFraction) -> tuple[int, int]:
        return self.fraction(rf.runtime_key, rf.numerator, rf.denominator)

    def integer(self, key: str, default: int) -> int:
        """Envoy's ``getInteger``: the key's unsigned integer value, else ``default``."""
        entry = self.values.get(key)
        if entry is not None and entry.uint is not None:
            return entry.uint
        return default

    def feature_flag(self, flag: dict[str, Any]) -> bool:
        """A ``RuntimeFeatureFlag`` compiled to ``{"default": bool, "runtime_key": str}``
        (proxyd.config.values.feature_flag): the key's boolean when it has a key."""
        key: str = flag["runtime_key"]
        return self.boolean(key, flag["default"]) if key else bool(flag["default"])

    def double(self, key: str, default: float) -> float:
        """Envoy's ``getDouble``: the key's value when it reads as a number, else
        ``default``."""
        entry = self.values.get(key)
        if entry is not None and "_" not in entry.raw:
            try:
                return float(entry.raw.strip())
            except ValueError:
                pass
        return default

    def boolean(self, key: str, default: bool) -> bool:
        """Envoy's ``getBoolean`` (a ``RuntimeFeatureFlag``): the key's value when it
        is "true" or "false" (any case), else ``default``."""
        entry = self.values.get(key)
        if entry is not None:
            text = entry.raw.strip(" \t\n\v\f\r").lower()
            if text == "true":
                return True
            if text == "false":
                return False
        return default


EMPTY = Snapshot()
