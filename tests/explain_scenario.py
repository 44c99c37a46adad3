"""A route table for ``proxyctl explain`` tests (unit: compiled in-process; integration:
run by a real proxyd): two virtual hosts, routes with path, header, query, grpc and
runtime_fraction matchers, a weighted_clusters route, a cluster_header route, a
direct_response, a rewrite with header edits, a retry policy, and a fault filter that one
route disables and one configures per route."""

from __future__ import annotations

from typing import Any

from tests.support import bootstrap, http_listener, static_cluster

FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
CLUSTERS = ("web", "api", "blue", "green", "ring")


def routes() -> dict[str, Any]:
    return {
        "name": "explained",
        "virtual_hosts": [
            {
                "name": "api_host",
                "domains": ["api.example.com", "*.api.example.com"],
                "request_headers_to_add": [{"header": {"key": "x-vh", "value": "api"}}],
                "routes": [
                    {
                        "name": "users",
                        "match": {
                            "safe_regex": {"regex": "/users/[0-9]+"},
                            "headers": [{"name": "x-env", "string_match": {"exact": "prod"}}],
                        },
                        "route": {
                            "cluster": "api",
                            "timeout": "3s",
                            "idle_timeout": "20s",
                            "regex_rewrite": {
                                "pattern": {"regex": "^/users/([0-9]+)$"},
                                "substitution": "/v2/user/\\1",
                            },
                            "retry_policy": {"retry_on": "5xx,reset", "num_retries": 2},
                        },
                        "request_headers_to_add": [
                            {"header": {"key": "x-route", "value": "users"}}
                        ],
                        "typed_per_filter_config": {
                            "fault": {
                                "@type": FAULT,
                                "abort": {"http_status": 418, "percentage": {"numerator": 0}},
                            }
                        },
                    },
                    {
                        "name": "search",
                        "match": {
                            "prefix": "/search",
                            "query_parameters": [{"name": "q", "present_match": True}],
                        },
                        "route": {"cluster": "api", "prefix_rewrite": "/find"},
                    },
                    {
                        "name": "rpc",
                        "match": {"prefix": "/rpc/", "grpc": {}},
                        "route": {"cluster": "api"},
                        "typed_per_filter_config": {
                            "fault": {"@type": FILTER_CONFIG, "disabled": True}
                        },
                    },
                    {"name": "api_rest", "match": {"prefix": "/"}, "route": {"cluster": "api"}},
                ],
            },
            {
                "name": "default",
                "domains": ["*"],
                "routes": [
                    {
                        "name": "canary",
                        "match": {
                            "prefix": "/canary",
                            "runtime_fraction": {
                                "default_value": {"numerator": 0},
                                "runtime_key": "routing.canary",
                            },
                        },
                        "route": {"cluster": "green"},
                    },
                    {
                        "name": "split",
                        "match": {"prefix": "/split"},
                        "route": {
                            "weighted_clusters": {
                                "clusters": [
                                    {"name": "blue", "weight": 3},
                                    {"name": "green", "weight": 1},
                                ],
                                "header_name": "x-split",
                            }
                        },
                    },
                    {
                        "name": "by_header",
                        "match": {"prefix": "/pick"},
                        "route": {"cluster_header": "x-cluster"},
                    },
                    {
                        "name": "sticky",
                        "match": {"prefix": "/sticky"},
                        "route": {
                            "cluster": "ring",
                            "hash_policy": [{"header": {"header_name": "x-user"}}],
                        },
                    },
                    {
                        "name": "hello",
                        "match": {"path": "/hello"},
                        "direct_response": {"status": 200, "body": {"inline_string": "hi"}},
                    },
                    {"name": "web_rest", "match": {"prefix": "/"}, "route": {"cluster": "web"}},
                ],
            },
        ],
    }


def config(ports: dict[str, list[int]], listen_port: int = 0) -> dict[str, Any]:
    """The bootstrap: one listener ("edge") and one STATIC cluster per name in
    ``CLUSTERS`` with the given upstream ports."""
    fault = {"name": "fault", "typed_config": {"@type": FAULT}}
    clusters = [static_cluster(name, ports[name]) for name in CLUSTERS]
    clusters[-1]["lb_policy"] = "RING_HASH"
    return bootstrap([http_listener("edge", listen_port, routes(), [fault])], clusters)
