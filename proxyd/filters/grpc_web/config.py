"""``envoy.extensions.filters.http.grpc_web.v3.GrpcWeb`` → plain data (it has no fields)."""

from __future__ import annotations

from typing import Any

from proxyd.config.spec import Spec

TYPE = "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
SPEC: Spec = {}


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    return {}
