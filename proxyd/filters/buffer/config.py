"""``envoy.extensions.filters.http.buffer.v3.Buffer`` and ``BufferPerRoute`` → plain data.

The epoch carries ``{"max_request_bytes": n}`` for the filter and for a route either the
same or ``{"disabled": True}``. Envoy's proto constraints (max_request_bytes required and
greater than 0; ``disabled`` must be true; one of ``disabled`` or ``buffer``) are checked
by :mod:`proxyd.config.rules` on the way in, with the field path.
"""

from __future__ import annotations

from typing import Any

from proxyd.config.spec import LEAF, Spec

TYPE = "envoy.extensions.filters.http.buffer.v3.Buffer"
SPEC: Spec = {"max_request_bytes": LEAF}

PER_ROUTE_TYPE = "envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
PER_ROUTE_SPEC: Spec = {"disabled": LEAF, "buffer": SPEC}


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    return {"max_request_bytes": msg.max_request_bytes.value}


def compile_per_route(msg: Any, path: str, file: str) -> dict[str, Any]:
    if msg.WhichOneof("override") == "disabled":
        return {"disabled": True}
    return compile(msg.buffer, path + ".buffer", file)
