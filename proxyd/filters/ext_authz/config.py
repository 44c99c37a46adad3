"""``envoy.extensions.filters.http.ext_authz.v3.ExtAuthz`` and ``ExtAuthzPerRoute`` →
plain data.

The epoch carries, for the filter::

    {"service": "http" | "grpc", "cluster": str, "timeout_ms": int,
     "path_prefix": str, "authority": str,
     "allowed_headers": [StringMatch wire] | None, "headers_to_add": [[name, value]],
     "upstream": [StringMatch wire], "upstream_append": [StringMatch wire],
     "client": [StringMatch wire] | None, "client_on_success": [StringMatch wire],
     "failure_mode_allow": bool, "failure_mode_allow_header_add": bool,
     "status_on_error": int, "body": None | [max_request_bytes, allow_partial, as_bytes],
     "enabled": None | [runtime_key, numerator, denominator], "stat_prefix": str,
     "charge_cluster": bool, "metadata": [[name, value]],
     "peer_certificate": bool, "tls_session": bool}

``allowed_headers`` is the top-level ``allowed_headers`` (or, for the HTTP service, the
deprecated ``authorization_request.allowed_headers``); None sends every header to a
gRPC service and only the always-sent ones to an HTTP service. ``client`` None: every
header of a denial goes to the client (Envoy's default).

A route's ``ExtAuthzPerRoute`` is ``{"disabled": bool, "context_extensions":
{name: value}}``; every level is kept (``PER_ROUTE_LEVELS``) and the context extensions
merge, the more specific winning, as Envoy merges them.

What proxyd does not implement is left out of :data:`SPEC` and refused by name
(``clear_route_cache``, ``metadata_context_namespaces`` and the other metadata fields, ``filter_enabled_metadata``,
``deny_at_disable``, ``disallowed_headers``, ``validate_mutations``,
``decoder_header_mutation_rules``, ``encode_raw_headers``,
``max_denied_response_body_bytes``, ``enforce_response_header_limits``,
``emit_filter_state_stats``, ``http_service.retry_policy``,
``authorization_response.dynamic_metadata_from_headers``, ``google_grpc``, and a
per-route ``check_settings`` that overrides the service or the body settings);
``transport_api_version`` other than V3 is refused, and so are ``allowed_headers`` both at
the top and in ``authorization_request`` (as Envoy refuses them) and an ``http_service``
without ``server_uri.timeout``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from proxyd.config.matchers import string_match
from proxyd.config.proto import join
from proxyd.config.spec import LEAF, STRING_MATCHER, Spec
from proxyd.config.values import duration_or, enum_name
from proxyd.epoch import to_wire
from proxyd.errors import ConfigError

TYPE = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE_TYPE = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
PER_ROUTE_LEVELS = True

DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_BAD_VALUE = re.compile(r"[\x00\r\n]")
# Headers the check sets itself.
_OWN = frozenset({"host", "content-length", "transfer-encoding", "connection"})
GRPC_DEFAULT_TIMEOUT_MS = 200  # Envoy's ext_authz default for grpc_service

_LIST: Spec = {"patterns": STRING_MATCHER}
_PERCENT: Spec = {"numerator": LEAF, "denominator": LEAF}
_BODY: Spec = {"max_request_bytes": LEAF, "allow_partial_message": LEAF, "pack_as_bytes": LEAF}
SPEC: Spec = {
    "grpc_service": {
        "envoy_grpc": {"cluster_name": LEAF, "authority": LEAF},
        "timeout": LEAF,
        "initial_metadata": {"key": LEAF, "value": LEAF},
    },
    "http_service": {
        "server_uri": {"uri": LEAF, "cluster": LEAF, "timeout": LEAF},
        "path_prefix": LEAF,
        "authorization_request": {
            "allowed_headers": _LIST,
            "headers_to_add": {"key": LEAF, "value": LEAF},
        },
        "authorization_response": {
            "allowed_upstream_headers": _LIST,
            "allowed_upstream_headers_to_append": _LIST,
            "allowed_client_headers": _LIST,
            "allowed_client_headers_on_success": _LIST,
        },
    },
    "transport_api_version": LEAF,
    "failure_mode_allow": LEAF,
    "failure_mode_allow_header_add": LEAF,
    "with_request_body": _BODY,
    "status_on_error": {"code": LEAF},
    "filter_enabled": {"default_value": _PERCENT, "runtime_key": LEAF},
    "stat_prefix": LEAF,
    "allowed_headers": _LIST,
    "charge_cluster_response_stats": LEAF,
    # The gRPC CheckRequest's client certificate and tls_session (proxyd.filters.ext_authz
    # .service.tls_peers).
    "include_peer_certificate": LEAF,
    "include_tls_session": LEAF,
}
PER_ROUTE_SPEC: Spec = {
    "disabled": LEAF,
    "check_settings": {"context_extensions": LEAF},
}


def _matchers(lst: Any, path: str, file: str) -> list[Any]:
    return [
        to_wire(string_match(p, f"{join(path, 'patterns')}[{i}]", file))
        for i, p in enumerate(lst.patterns)
    ]


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    version = enum_name(msg, "transport_api_version")
    if version not in ("AUTO", "V3"):
        raise ConfigError(
            file,
            join(path, "transport_api_version"),
            f"transport_api_version {version} not supported by proxyd (only V3)",
        )
    which = msg.WhichOneof("services")
    if which is None:
        raise ConfigError(file, path, "ext_authz needs a grpc_service or an http_service")
    out: dict[str, Any] = {
        "service": "grpc" if which == "grpc_service" else "http",
        "path_prefix": "",
        "authority": "",
        "allowed_headers": None,
        "headers_to_add": [],
        "upstream": [],
        "upstream_append": [],
        "client": None,
        "client_on_success": [],
        "metadata": [],
        "failure_mode_allow": msg.failure_mode_allow,
        "failure_mode_allow_header_add": msg.failure_mode_allow_header_add,
        "status_on_error": msg.status_on_error.code if msg.HasField("status_on_error") else 403,
        "body": None,
        "enabled": None,
        "stat_prefix": msg.stat_prefix,
        "charge_cluster": (
            msg.charge_cluster_response_stats.value
            if msg.HasField("charge_cluster_response_stats")
            else True
        ),
        "peer_certificate": msg.include_peer_certificate,
        "tls_session": msg.include_tls_session,
    }
    if out["status_on_error"] == 0:
        out["status_on_error"] = 403
    if which == "grpc_service":
        g = msg.grpc_service
        here = join(path, "grpc_service")
        if g.WhichOneof("target_specifier") != "envoy_grpc":
            raise ConfigError(
                file, join(here, "google_grpc"), "google_grpc not supported by proxyd"
            )
        out["cluster"] = g.envoy_grpc.cluster_name
        out["authority"] = g.envoy_grpc.authority or g.envoy_grpc.cluster_name
        timeout_s = duration_or(g, "timeout", 0.0)
        out["timeout_ms"] = round(timeout_s * 1000) if timeout_s else GRPC_DEFAULT_TIMEOUT_MS
        out["metadata"] = [[m.key.lower(), m.value] for m in g.initial_metadata]
    else:
        h = msg.http_service
        here = join(path, "http_service")
        uri = h.server_uri
        if not uri.cluster:
            raise ConfigError(file, join(here, "server_uri.cluster"), "a cluster is required")
        if not uri.HasField("timeout"):
            raise ConfigError(file, join(here, "server_uri.timeout"), "a timeout is required")
        out["cluster"] = uri.cluster
        out["timeout_ms"] = round(duration_or(uri, "timeout", 0.0) * 1000)
        out["authority"] = urlsplit(uri.uri).netloc or uri.cluster
        out["path_prefix"] = h.path_prefix
        if h.path_prefix and not h.path_prefix.startswith("/"):
            raise ConfigError(file, join(here, "path_prefix"), "path_prefix must start with '/'")
        req = h.authorization_request
        if req.HasField("allowed_headers"):
            out["allowed_headers"] = _matchers(
                req.allowed_headers, join(here, "authorization_request.allowed_headers"), file
            )
        for i, hv in enumerate(req.headers_to_add):
            name = hv.key.lower()
            where = f"{join(here, 'authorization_request.headers_to_add')}[{i}]"
            if not _TOKEN.fullmatch(name) or name in _OWN:
                raise ConfigError(
                    file, join(where, "key"), f"header '{name}' may not be added by proxyd"
                )
            if _BAD_VALUE.search(hv.value):
                raise ConfigError(file, join(where, "value"), "invalid header value")
            out["headers_to_add"].append([name, hv.value])
        resp = h.authorization_response
        rhere = join(here, "authorization_response")
        for field, key in (
            ("allowed_upstream_headers", "upstream"),
            ("allowed_upstream_headers_to_append", "upstream_append"),
            ("allowed_client_headers_on_success", "client_on_success"),
        ):
            if resp.HasField(field):
                out[key] = _matchers(getattr(resp, field), join(rhere, field), file)
        if resp.HasField("allowed_client_headers"):
            out["client"] = _matchers(
                resp.allowed_client_headers, join(rhere, "allowed_client_headers"), file
            )
    if msg.HasField("allowed_headers"):
        if out["allowed_headers"] is not None:
            raise ConfigError(
                file,
                join(path, "allowed_headers"),
                "Invalid duplicate configuration for allowed_headers (also in "
                "http_service.authorization_request)",
            )
        out["allowed_headers"] = _matchers(msg.allowed_headers, join(path, "allowed_headers"), file)
    if msg.HasField("with_request_body"):
        b = msg.with_request_body
        out["body"] = [b.max_request_bytes, b.allow_partial_message, b.pack_as_bytes]
    if msg.HasField("filter_enabled"):
        rf = msg.filter_enabled
        d = rf.default_value
        out["enabled"] = [rf.runtime_key, d.numerator, DENOMINATORS[d.denominator]]
    return out


def compile_per_route(msg: Any, path: str, file: str) -> dict[str, Any]:
    if msg.WhichOneof("override") is None:
        raise ConfigError(file, path, "ExtAuthzPerRoute needs disabled or check_settings")
    return {
        "disabled": msg.disabled,
        "context_extensions": dict(sorted(msg.check_settings.context_extensions.items())),
    }
