"""The allow-list of a route configuration (RDS's RouteConfiguration and the inline
``route_config``): virtual hosts, routes and their actions, retry and hedge policies,
header mutations, per-filter configs, and the generic matcher tree a virtual host (or an
HTTP filter's ExtensionWithMatcher) may use. :mod:`proxyd.config.supported` puts it in
the bootstrap's coverage tree; the vocabulary is :mod:`proxyd.config.spec`'s.
"""

from __future__ import annotations

from proxyd.config import http_filters
from proxyd.config.lb_policy import HASH_POLICY
from proxyd.config.spec import HEADER_MATCHER, LEAF, REGEX, STRING_MATCHER, AnyOf, Spec
from proxyd.filters.cors import config as cors_config

# type.tracing.v3.CustomTag (proxyd.config.tracing; metadata tags are refused).
CUSTOM_TAGS: Spec = {
    "tag": LEAF,
    "literal": {"value": LEAF},
    "environment": {"name": LEAF, "default_value": LEAF},
    "request_header": {"name": LEAF, "default_value": LEAF},
}
# core.v3.Metadata on clusters, endpoints and routes: kept as written (/config_dump);
# no proxyd feature reads it (subset load balancing and the metadata access-log
# operators are refused), as in Envoy without a consumer.
METADATA: Spec = {"filter_metadata": LEAF, "typed_filter_metadata": LEAF}

# typed_per_filter_config values: each filter's per-route type, or the FilterConfig
# wrapper (enable/disable, with or without a config) around one.
_PER_ROUTE: dict[str, Spec] = http_filters.per_route_types()
PER_FILTER_CONFIG: Spec = AnyOf(
    "per-route filter config",
    {
        **_PER_ROUTE,
        http_filters.FILTER_CONFIG_TYPE: {
            "config": AnyOf("per-route filter config", _PER_ROUTE),
            "disabled": LEAF,
        },
    },
)

# request/response_headers_to_add/remove of a route configuration, virtual host or
# route (proxyd.config.routes.header_mutations; proxyd.protocol.header_mutations).
_HEADER_OPTION: Spec = {
    "header": {"key": LEAF, "value": LEAF},
    "append_action": LEAF,
    "keep_empty_value": LEAF,
}
HEADER_MUTATIONS: dict[str, Spec] = {
    "request_headers_to_add": _HEADER_OPTION,
    "request_headers_to_remove": LEAF,
    "response_headers_to_add": _HEADER_OPTION,
    "response_headers_to_remove": LEAF,
}

# config.route.v3.RetryPolicy (proxyd.config.retries; retry_on names are checked there).
PREVIOUS_HOSTS_TYPE = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
PREVIOUS_PRIORITIES_TYPE = (
    "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig"
)
RETRY_POLICY: Spec = {
    "retry_on": LEAF,
    "retry_host_predicate": {
        "name": LEAF,
        "typed_config": AnyOf("retry host predicate", {PREVIOUS_HOSTS_TYPE: {}}),
    },
    "host_selection_retry_max_attempts": LEAF,
    "retry_priority": {
        "name": LEAF,
        "typed_config": AnyOf(
            "retry priority", {PREVIOUS_PRIORITIES_TYPE: {"update_frequency": LEAF}}
        ),
    },
    "num_retries": LEAF,
    "per_try_timeout": LEAF,
    "per_try_idle_timeout": LEAF,
    "retry_back_off": {"base_interval": LEAF, "max_interval": LEAF},
    "rate_limited_retry_back_off": {
        "reset_headers": {"name": LEAF, "format": LEAF},
        "max_interval": LEAF,
    },
    "retriable_headers": HEADER_MATCHER,
    "retriable_request_headers": HEADER_MATCHER,
    "retriable_status_codes": LEAF,
}

# config.route.v3.HedgePolicy (proxyd.config.retries; proxyd.worker.hedging).
# initial_requests and additional_request_chance: Envoy 1.40 accepts them and does not
# act on them (they are not implemented there); proxyd does the same (see docs).
HEDGE_POLICY: Spec = {
    "hedge_on_per_try_timeout": LEAF,
    "initial_requests": LEAF,
    "additional_request_chance": {"numerator": LEAF, "denominator": LEAF},
}

ROUTE_CONFIG: dict[str, Spec] = {
    "name": LEAF,
    "virtual_hosts": {
        "name": LEAF,
        "domains": LEAF,
        "routes": {
            "name": LEAF,
            "match": {
                "prefix": LEAF,
                "path": LEAF,
                # CONNECT requests only (proxyd.protocol.routing.RouteTable.match_connect).
                "connect_matcher": {},
                "safe_regex": REGEX,
                "path_separated_prefix": LEAF,
                # proxyd.config.uri_template
                "path_match_policy": {
                    "name": LEAF,
                    "typed_config": AnyOf(
                        "path matcher",
                        {
                            "envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig": {
                                "path_template": LEAF
                            }
                        },
                    ),
                },
                "grpc": {},
                "case_sensitive": LEAF,
                "headers": HEADER_MATCHER,
                "query_parameters": {
                    "name": LEAF,
                    "string_match": STRING_MATCHER,
                    "present_match": LEAF,
                },
                # proxyd.protocol.routing, with the runtime's value for runtime_key.
                "runtime_fraction": {
                    "default_value": {"numerator": LEAF, "denominator": LEAF},
                    "runtime_key": LEAF,
                },
            },
            "route": {
                "cluster": LEAF,
                "cluster_header": LEAF,
                "cluster_not_found_response_code": LEAF,
                # runtime_key_prefix, use_hash_policy and ClusterWeight.cluster_header /
                # metadata_match are refused by name.
                "weighted_clusters": {
                    "clusters": {
                        "name": LEAF,
                        "weight": LEAF,
                        "host_rewrite_literal": LEAF,
                        "typed_per_filter_config": PER_FILTER_CONFIG,
                        **HEADER_MUTATIONS,
                    },
                    # Deprecated; Envoy 1.40 ignores it (the weights' sum is the total).
                    "total_weight": LEAF,
                    "header_name": LEAF,
                },
                "timeout": LEAF,
                "priority": LEAF,
                "prefix_rewrite": LEAF,
                "regex_rewrite": {"pattern": REGEX, "substitution": LEAF},
                "path_rewrite_policy": {
                    "name": LEAF,
                    "typed_config": AnyOf(
                        "path rewriter",
                        {
                            "envoy.extensions.path.rewrite.uri_template.v3.UriTemplateRewriteConfig": {  # noqa: E501
                                "path_template_rewrite": LEAF
                            }
                        },
                    ),
                },
                "host_rewrite_literal": LEAF,
                "host_rewrite_header": LEAF,
                "auto_host_rewrite": LEAF,
                "host_rewrite_path_regex": {"pattern": REGEX, "substitution": LEAF},
                # proxyd.worker.plan (RoutePlan.stream_idle).
                "idle_timeout": LEAF,
                # proxyd.config.routes.compile_upgrades (websocket and the like).
                "upgrade_configs": {"upgrade_type": LEAF, "enabled": LEAF, "connect_config": {}},
                "retry_policy": RETRY_POLICY,
                "hedge_policy": HEDGE_POLICY,
                # proxyd.worker.durations: the stream limit, and a grpc-timeout header's.
                "max_stream_duration": {
                    "max_stream_duration": LEAF,
                    "grpc_timeout_header_max": LEAF,
                    "grpc_timeout_header_offset": LEAF,
                },
                # Deprecated, with their own meaning in Envoy 1.40 (the router's timeout
                # of a gRPC request), used without max_stream_duration: durations.py.
                "max_grpc_timeout": LEAF,
                "grpc_timeout_offset": LEAF,
                # Deprecated; read by the CORS filter when no level has a CorsPolicy.
                "cors": cors_config.ROUTE_FIELD_SPEC,
                # proxyd.config.lb_policy; filter_state is refused by name.
                "hash_policy": HASH_POLICY,
                # proxyd.worker.mirror; trace_sampled changes nothing without tracing.
                "request_mirror_policies": {
                    "cluster": LEAF,
                    "cluster_header": LEAF,
                    "runtime_fraction": {
                        "default_value": {"numerator": LEAF, "denominator": LEAF},
                        "runtime_key": LEAF,
                    },
                    "trace_sampled": LEAF,
                    "disable_shadow_host_suffix_append": LEAF,
                },
            },
            "redirect": {
                "https_redirect": LEAF,
                "scheme_redirect": LEAF,
                "host_redirect": LEAF,
                "port_redirect": LEAF,
                "path_redirect": LEAF,
                "prefix_rewrite": LEAF,
                "regex_rewrite": {"pattern": REGEX, "substitution": LEAF},
                "response_code": LEAF,
                "strip_query": LEAF,
            },
            # body: environment_variable is refused (read at load by Envoy; not here).
            "direct_response": {
                "status": LEAF,
                "body": {"filename": LEAF, "inline_bytes": LEAF, "inline_string": LEAF},
            },
            "typed_per_filter_config": PER_FILTER_CONFIG,
            "metadata": METADATA,
            # Names a traced request's span (proxyd.worker.tracing); the
            # x-envoy-decorator-operation header propagate asks for is not sent (see docs).
            "decorator": {"operation": LEAF, "propagate": LEAF},
            # Sampling overrides and custom tags of a traced request (proxyd.config.tracing).
            "tracing": {
                "client_sampling": {"numerator": LEAF, "denominator": LEAF},
                "random_sampling": {"numerator": LEAF, "denominator": LEAF},
                "overall_sampling": {"numerator": LEAF, "denominator": LEAF},
                "custom_tags": CUSTOM_TAGS,
                "operation": LEAF,
                "upstream_operation": LEAF,
            },
            **HEADER_MUTATIONS,
        },
        "typed_per_filter_config": PER_FILTER_CONFIG,
        **HEADER_MUTATIONS,
        "retry_policy": RETRY_POLICY,
        "hedge_policy": HEDGE_POLICY,
        "include_request_attempt_count": LEAF,
        "metadata": METADATA,
        # Deprecated; read by the CORS filter when no level has a CorsPolicy.
        "cors": cors_config.ROUTE_FIELD_SPEC,
    },
    "typed_per_filter_config": PER_FILTER_CONFIG,
    **HEADER_MUTATIONS,
    "most_specific_header_mutations_wins": LEAF,
    "internal_only_headers": LEAF,
}


def matcher_spec(depth: int, actions: AnyOf) -> Spec:
    """An xds.type.matcher.v3.Matcher over the request headers (proxyd.config.route_matcher),
    nested matchers at most ``depth`` levels below this one, with ``actions``."""
    on_match: dict[str, Spec] = {"action": {"name": LEAF, "typed_config": actions}}
    if depth > 0:
        on_match["matcher"] = matcher_spec(depth - 1, actions)
    header_input: Spec = {
        "name": LEAF,
        "typed_config": AnyOf(
            "matcher input", {"envoy.type.matcher.v3.HttpRequestHeaderMatchInput": LEAF}
        ),
    }
    return {
        "matcher_tree": {
            "input": header_input,
            "exact_match_map": {"map": on_match},
            "prefix_match_map": {"map": on_match},
        },
        "matcher_list": {
            "matchers": {"predicate": _predicate_spec(header_input, 3), "on_match": on_match}
        },
        "on_no_match": on_match,
    }


XDS_STRING_MATCHER: dict[str, Spec] = dict(STRING_MATCHER)  # type: ignore[arg-type]


def _predicate_spec(header_input: Spec, depth: int) -> Spec:
    spec: dict[str, Spec] = {
        # xds.type.matcher.v3.StringMatcher: its RegexMatcher requires the google_re2
        # engine (Envoy's own StringMatcher made it optional).
        "single_predicate": {
            "input": header_input,
            "value_match": {**XDS_STRING_MATCHER, "safe_regex": {"google_re2": {}, "regex": LEAF}},
        },
    }
    if depth > 0:
        inner = _predicate_spec(header_input, depth - 1)
        spec["or_matcher"] = {"predicate": inner}
        spec["and_matcher"] = {"predicate": inner}
        spec["not_matcher"] = inner
    return spec


# VirtualHost.matcher: its actions are Routes and RouteLists with the allow-list of the
# virtual host's routes. Nested matchers: four levels below the virtual host's (Envoy's
# examples use three).
_ROUTE: Spec = ROUTE_CONFIG["virtual_hosts"]["routes"]  # type: ignore[index]
ROUTE_CONFIG["virtual_hosts"]["matcher"] = matcher_spec(  # type: ignore[index]
    4,
    AnyOf(
        "route action",
        {
            "envoy.config.route.v3.Route": _ROUTE,
            "envoy.config.route.v3.RouteList": {"routes": _ROUTE},
        },
    ),
)
