"""``envoy.extensions.filters.http.composite.v3.Composite`` → plain data (it has no
fields). The filter does something only inside an ExtensionWithMatcher, whose
ExecuteFilterAction actions name the filter to run (proxyd.config.filter_matcher);
alone, it passes every stream on, as in Envoy."""

from __future__ import annotations

from typing import Any

from proxyd.config.spec import Spec

TYPE = "envoy.extensions.filters.http.composite.v3.Composite"
SPEC: Spec = {}


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    return {}
