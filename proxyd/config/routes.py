"""An inline route_config → epoch RouteConfig, with the checks Envoy makes in code.

Domains and header names are lower-cased; a domain may appear in only one virtual host
of a route config and "*" only once ("Only a single wildcard domain is permitted");
regexes must compile as RE2 would; a route's cluster must exist ("unknown cluster").
A route redirects, answers directly (direct_response, its body read now) or names a
cluster.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Container
from typing import Any

from proxyd.config.http_filters import compile_per_filter_config, merge_overrides
from proxyd.config.matchers import header_match, string_match
from proxyd.config.proto import join, unpack
from proxyd.config.retries import with_retry_policies
from proxyd.config.route_matcher import compile_matcher, route_actions
from proxyd.config.tracing import compile_route_tracing
from proxyd.config.uri_template import TemplateError, match_regex, rewrite_substitution
from proxyd.config.values import check_regex, duration_or, enum_name, wrapped_or
from proxyd.epoch import (
    DirectResponse,
    FilterOverride,
    HashPolicy,
    HeaderAdd,
    HeaderMutations,
    MirrorPolicy,
    QueryMatch,
    Redirect,
    Route,
    RouteConfig,
    RouteMatch,
    RuntimeFraction,
    VirtualHost,
    WeightedTarget,
)
from proxyd.errors import ConfigError
from proxyd.protocol.header_mutations import ACTIONS, FRAMING, parse_value
from proxyd.protocol.redirect import re2_substitution

# type.v3.FractionalPercent.DenominatorType, by number.
DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}

# Envoy's RouteAction.timeout default; 0 disables it.
DEFAULT_ROUTE_TIMEOUT_S = 15.0


class RouteTargets(frozenset[str]):
    """The cluster names a route may name; ``http2`` are those that speak HTTP/2 to
    their hosts (proxyd.worker.h2_upstream: no retry policy on their routes)."""

    http2: frozenset[str] = frozenset()
    http2_downstream: frozenset[str] = frozenset()


class AnyCluster:
    """RDS routes are not checked against the clusters (Envoy's validate_clusters
    defaults to false there): a missing cluster answers 503 at request time."""

    http2: frozenset[str] = frozenset()
    http2_downstream: frozenset[str] = frozenset()

    def __contains__(self, name: object) -> bool:
        return True


def route_targets(clusters: Any) -> RouteTargets:
    """RouteTargets for compiled epoch Clusters."""
    targets = RouteTargets(c.name for c in clusters)
    targets.http2 = frozenset(c.name for c in clusters if c.http2 or c.http2_downstream)
    targets.http2_downstream = frozenset(c.name for c in clusters if c.http2_downstream)
    return targets


def compile_route_config(rc: Any, path: str, clusters: Container[str], file: str) -> RouteConfig:
    domains_seen: set[str] = set()
    rc_filters = compile_per_filter_config(rc, path, file)
    rc_headers = header_mutations(rc, path, file)
    most_specific_wins = rc.most_specific_header_mutations_wins
    vhosts = []
    for i, vh in enumerate(rc.virtual_hosts):
        here = f"{join(path, 'virtual_hosts')}[{i}]"
        domains = []
        for j, domain in enumerate(vh.domains):
            d = domain.lower()
            if d in domains_seen:
                where = f"{here}.domains[{j}]"
                if d == "*":
                    raise ConfigError(
                        file,
                        where,
                        f"only a single wildcard domain is permitted in route '{rc.name}'",
                    )
                raise ConfigError(
                    file,
                    where,
                    f"only unique values for domains are permitted: duplicate entry of "
                    f"domain {d} in route '{rc.name}'",
                )
            domains_seen.add(d)
            domains.append(d)
        vh_filters = compile_per_filter_config(vh, here, file)
        vh_headers = header_mutations(vh, here, file)
        routes: list[Route] = []
        sources: list[tuple[Any, str]] = []

        def add_route(r: Any, route_path: str) -> int:
            route = _route(r, route_path, clusters, file, (rc_filters, vh_filters))  # noqa: B023
            levels = [rc_headers, vh_headers, header_mutations(r, route_path, file)]  # noqa: B023
            if not most_specific_wins:
                levels.reverse()  # Envoy evaluates the route's first: the outermost wins
            kept = tuple(m for m in levels if m is not None)
            if kept:
                route = dataclasses.replace(route, header_mutations=kept)
            routes.append(route)  # noqa: B023
            sources.append((r, route_path))  # noqa: B023
            return len(routes) - 1  # noqa: B023

        for k, r in enumerate(vh.routes):
            add_route(r, f"{join(here, 'routes')}[{k}]")
        matcher = None
        if vh.HasField("matcher"):
            if vh.routes:
                raise ConfigError(
                    file, join(here, "matcher"), "only one of routes or matcher can be specified"
                )
            matcher = compile_matcher(
                vh.matcher, join(here, "matcher"), file, route_actions(add_route, file)
            )
        kept_routes = with_retry_policies(vh, here, sources, tuple(routes), file)
        _check_http2_retries(kept_routes, sources, clusters, file)
        vhosts.append(
            VirtualHost(name=vh.name, domains=tuple(domains), routes=kept_routes, matcher=matcher)
        )
    return RouteConfig(
        name=rc.name,
        virtual_hosts=tuple(vhosts),
        internal_only_headers=tuple(dict.fromkeys(n.lower() for n in rc.internal_only_headers)),
    )


def _route(
    r: Any,
    path: str,
    clusters: Container[str],
    file: str,
    outer: tuple[dict[str, FilterOverride], ...],
) -> Route:
    match = _route_match(r.match, join(path, "match"), file)
    levels = (*outer, compile_per_filter_config(r, path, file))
    filter_configs = merge_overrides(*levels)
    kind = r.WhichOneof("action")
    if kind == "redirect":
        redirect = _redirect(r.redirect, join(path, "redirect"), file)
        return Route(
            name=r.name, match=match, cluster="", filter_configs=filter_configs, redirect=redirect
        )
    if kind == "direct_response":
        direct = _direct_response(r.direct_response, join(path, "direct_response"), file)
        return Route(
            name=r.name,
            match=match,
            cluster="",
            filter_configs=filter_configs,
            direct_response=direct,
        )
    action = r.route
    specifier = action.WhichOneof("cluster_specifier")
    weighted: tuple[WeightedTarget, ...] = ()
    weight_header = ""
    if specifier == "cluster":
        _check_cluster(action.cluster, join(path, "route.cluster"), clusters, file, "cluster")
    elif specifier == "weighted_clusters":
        weighted = _weighted_clusters(
            action.weighted_clusters, join(path, "route.weighted_clusters"), clusters, file, levels
        )
        weight_header = action.weighted_clusters.header_name.lower()
    elif specifier != "cluster_header":  # the coverage tree refused the plugins by name
        raise ConfigError(file, join(path, "route.cluster"), "a cluster is required")
    regex = substitution = ""
    if action.HasField("path_rewrite_policy"):
        here = join(path, "route.path_rewrite_policy")
        if action.prefix_rewrite or action.HasField("regex_rewrite"):
            raise ConfigError(
                file,
                join(path, "route"),
                "Specify only one of prefix_rewrite, regex_rewrite or path_rewrite_policy",
            )
        if not r.match.HasField("path_match_policy"):
            raise ConfigError(
                file, here, "path_rewrite_policy needs the route's match to be a path_match_policy"
            )
        pattern, names = _template_regex(r.match, join(path, "match"), file)
        rewrite_config = unpack(action.path_rewrite_policy.typed_config)
        assert rewrite_config is not None  # the allow-list took only the uri_template one
        template = rewrite_config.path_template_rewrite
        try:
            substitution = rewrite_substitution(template, names)
        except TemplateError as exc:
            raise ConfigError(
                file, join(here, "typed_config.path_template_rewrite"), str(exc)
            ) from None
        regex = f"^{pattern}$"
    if action.HasField("regex_rewrite"):
        if action.prefix_rewrite:
            raise ConfigError(
                file,
                join(path, "route"),
                "Specify only one of prefix_rewrite, regex_rewrite or path_rewrite_policy",
            )
        regex, substitution = _regex_rewrite(
            action.regex_rewrite, join(path, "route.regex_rewrite"), file
        )
    host_regex = host_substitution = ""
    if action.HasField("host_rewrite_path_regex"):
        host_regex, host_substitution = _regex_rewrite(
            action.host_rewrite_path_regex, join(path, "route.host_rewrite_path_regex"), file
        )
    return Route(
        name=r.name,
        match=match,
        cluster=action.cluster,
        decorator_operation=r.decorator.operation,
        decorator_propagate=wrapped_or(r.decorator, "propagate", True),
        tracing=compile_route_tracing(r, path, file),
        cluster_header=action.cluster_header.lower(),
        cluster_not_found_status=_NOT_FOUND_CODES[
            enum_name(action, "cluster_not_found_response_code")
        ],
        weighted=weighted,
        weight_header=weight_header,
        prefix_rewrite=action.prefix_rewrite or None,
        regex_rewrite=regex,
        regex_substitution=substitution,
        host_rewrite=action.host_rewrite_literal,
        host_rewrite_header=action.host_rewrite_header.lower(),
        auto_host_rewrite=action.auto_host_rewrite.value,
        timeout_s=duration_or(action, "timeout", DEFAULT_ROUTE_TIMEOUT_S),
        priority=_priority(action, join(path, "route.priority"), file),
        filter_configs=filter_configs,
        stream_duration_set=action.HasField("max_stream_duration"),
        max_stream_duration_s=(
            duration_or(action.max_stream_duration, "max_stream_duration", 0.0)
            if action.max_stream_duration.HasField("max_stream_duration")
            else None
        ),
        grpc_timeout_header_max_s=(
            duration_or(action.max_stream_duration, "grpc_timeout_header_max", 0.0)
            if action.max_stream_duration.HasField("grpc_timeout_header_max")
            else None
        ),
        grpc_timeout_header_offset_s=duration_or(
            action.max_stream_duration, "grpc_timeout_header_offset", 0.0
        ),
        max_grpc_timeout_s=(
            duration_or(action, "max_grpc_timeout", 0.0)
            if action.HasField("max_grpc_timeout")
            else None
        ),
        grpc_timeout_offset_s=duration_or(action, "grpc_timeout_offset", 0.0),
        hash_policy=_hash_policies(action, join(path, "route.hash_policy"), file),
        mirrors=_mirrors(action, join(path, "route.request_mirror_policies"), clusters, file),
        host_rewrite_regex=host_regex,
        host_rewrite_substitution=host_substitution,
        idle_timeout_s=(
            duration_or(action, "idle_timeout", 0.0) if action.HasField("idle_timeout") else None
        ),
        upgrades=compile_upgrades(
            action.upgrade_configs, join(path, "route.upgrade_configs"), file
        ),
        connect_terminate=connect_terminates(action.upgrade_configs),
    )


def connect_terminates(configs: Any) -> bool:
    """A route's upgrade_configs has CONNECT with a connect_config: proxyd answers the
    CONNECT itself and tunnels to a host of the route's cluster."""
    return any(
        uc.upgrade_type.lower() == "connect" and uc.HasField("connect_config") for uc in configs
    )


def compile_upgrades(configs: Any, path: str, file: str) -> tuple[tuple[str, bool], ...]:
    """upgrade_configs of a connection manager or a route: (lower-case type, enabled;
    unset is true). CONNECT is one of them ("connect"); a route's ``connect_config``
    (terminate the CONNECT here) is read by :func:`connect_terminates`. An upgrade's own
    ``filters`` are refused by the allow-list."""
    out: list[tuple[str, bool]] = []
    for i, uc in enumerate(configs):
        here = f"{path}[{i}]"
        kind = uc.upgrade_type.lower()
        # (connect_config is a route's: the connection manager's UpgradeConfig has none.)
        takes_connect_config = "connect_config" in uc.DESCRIPTOR.fields_by_name
        if kind != "connect" and takes_connect_config and uc.HasField("connect_config"):
            raise ConfigError(
                file,
                join(here, "connect_config"),
                "connect_config is only for upgrade_type CONNECT",
            )
        out.append((kind, uc.enabled.value if uc.HasField("enabled") else True))
    return tuple(out)


def _hash_policies(action: Any, path: str, file: str) -> tuple[HashPolicy, ...]:
    """RouteAction.hash_policy in order (proxyd.protocol.hash_policy). As in Envoy, a
    connection_properties policy with source_ip false hashes nothing and is left out."""
    out: list[HashPolicy] = []
    for i, hp in enumerate(action.hash_policy):
        here = f"{path}[{i}]"
        kind = hp.WhichOneof("policy_specifier")
        terminal = hp.terminal
        if kind == "header":
            regex = substitution = ""
            if hp.header.HasField("regex_rewrite"):
                regex, substitution = _regex_rewrite(
                    hp.header.regex_rewrite, join(here, "header.regex_rewrite"), file
                )
            out.append(
                HashPolicy(
                    "header",
                    hp.header.header_name.lower(),
                    terminal,
                    regex=regex,
                    substitution=substitution,
                )
            )
        elif kind == "cookie":
            ck = hp.cookie
            out.append(
                HashPolicy(
                    "cookie",
                    ck.name,
                    terminal,
                    ttl_s=ck.ttl.seconds if ck.HasField("ttl") else -1,
                    path=ck.path,
                    attributes=tuple((a.name, a.value) for a in ck.attributes),
                )
            )
        elif kind == "connection_properties":
            if hp.connection_properties.source_ip:
                out.append(HashPolicy("source_ip", "", terminal))
        elif kind == "query_parameter":
            out.append(HashPolicy("query_parameter", hp.query_parameter.name, terminal))
        else:  # unset (the proto rules require one); filter_state is refused by name
            raise ConfigError(file, here, "a hash policy needs a policy specifier")
    return tuple(out)


def _mirrors(
    action: Any, path: str, clusters: Container[str], file: str
) -> tuple[MirrorPolicy, ...]:
    """RouteAction.request_mirror_policies, checked as Envoy 1.40 checks them: exactly
    one of cluster and cluster_header, a named cluster known (unless RDS)."""
    out = []
    for i, m in enumerate(action.request_mirror_policies):
        here = f"{path}[{i}]"
        if m.cluster and m.cluster_header:
            raise ConfigError(
                file,
                here,
                f"Only one of cluster '{m.cluster}' or cluster_header '{m.cluster_header}' "
                "in request mirror policy can be specified",
            )
        if not m.cluster and not m.cluster_header:
            raise ConfigError(
                file,
                here,
                "Exactly one of cluster or cluster_header in request mirror policy need to be "
                "specified",
            )
        if m.cluster:
            _check_cluster(m.cluster, join(here, "cluster"), clusters, file, "shadow cluster")
            if m.cluster in getattr(clusters, "http2", ()):
                raise ConfigError(
                    file,
                    join(here, "cluster"),
                    f"a shadow to the HTTP/2 cluster '{m.cluster}' is not supported by proxyd",
                )
        fraction = None
        if m.HasField("runtime_fraction"):
            rf = m.runtime_fraction
            fraction = RuntimeFraction(
                runtime_key=rf.runtime_key,
                numerator=rf.default_value.numerator,
                denominator=DENOMINATORS[rf.default_value.denominator],
            )
        out.append(
            MirrorPolicy(
                cluster=m.cluster,
                cluster_header=m.cluster_header.lower(),
                fraction=fraction,
                host_suffix=not m.disable_shadow_host_suffix_append,
            )
        )
    return tuple(out)


def _check_http2_retries(
    routes: tuple[Route, ...], sources: list[tuple[Any, str]], clusters: Any, file: str
) -> None:
    """Retries on a route to an HTTP/2 cluster run on its streams
    (proxyd.worker.h2_retrying); hedging there, and any retry policy on a route to a
    use_downstream_protocol_config cluster, are refused."""
    http2 = getattr(clusters, "http2", ())
    downstream = getattr(clusters, "http2_downstream", ())
    for route, (_, route_path) in zip(routes, sources, strict=True):
        if route.retry is None:
            continue
        for name in (route.cluster, *(w.name for w in route.weighted)):
            if not name or name not in http2:
                continue
            if name in downstream:
                what = (
                    "a retry policy on a route to the use_downstream_protocol_config or auto_config"
                )
            elif route.retry.hedge_on_per_try_timeout:
                what = "hedge_on_per_try_timeout on a route to the HTTP/2"
            else:
                continue
            raise ConfigError(
                file,
                join(route_path, "route.retry_policy"),
                f"{what} cluster '{name}' is not supported by proxyd",
            )


def _check_cluster(name: str, path: str, clusters: Container[str], file: str, what: str) -> None:
    """A cluster a route names must exist (unless RDS)."""
    if name not in clusters:
        raise ConfigError(file, path, f"unknown {what} '{name}'")


def _weighted_clusters(
    wc: Any,
    path: str,
    clusters: Container[str],
    file: str,
    outer: tuple[dict[str, FilterOverride], ...],
) -> tuple[WeightedTarget, ...]:
    """WeightedCluster, checked as Envoy 1.40 checks it: every weight given, their sum
    above 0, every cluster known (total_weight is deprecated and ignored). ``outer`` are
    the route's typed_per_filter_config levels, least specific first."""
    out = []
    for i, c in enumerate(wc.clusters):
        here = f"{join(path, 'clusters')}[{i}]"
        if not c.HasField("weight"):
            raise ConfigError(file, join(here, "weight"), "Field 'weight' is missing")
        _check_cluster(c.name, join(here, "name"), clusters, file, "weighted cluster")
        out.append(
            WeightedTarget(
                name=c.name,
                weight=c.weight.value,
                header_mutations=header_mutations(c, here, file),
                host_rewrite=c.host_rewrite_literal,
                filter_configs=merge_overrides(*outer, compile_per_filter_config(c, here, file)),
            )
        )
    if sum(t.weight for t in out) <= 0:
        raise ConfigError(
            file,
            join(path, "clusters"),
            "Sum of weights in the weighted_cluster must be greater than 0.",
        )
    return tuple(out)


# RouteAction.ClusterNotFoundResponseCode by name → the HTTP status.
_NOT_FOUND_CODES = {"SERVICE_UNAVAILABLE": 503, "NOT_FOUND": 404, "INTERNAL_SERVER_ERROR": 500}

# RedirectAction.RedirectResponseCode by name → the HTTP status.
_REDIRECT_CODES = {
    "MOVED_PERMANENTLY": 301,
    "FOUND": 302,
    "SEE_OTHER": 303,
    "TEMPORARY_REDIRECT": 307,
    "PERMANENT_REDIRECT": 308,
}

# RouteConfiguration.max_direct_response_body_size_bytes default (proxyd does not
# accept the field).
MAX_DIRECT_RESPONSE_BODY = 4096


def _redirect(rd: Any, path: str, file: str) -> Redirect:
    """RedirectAction; a regex_rewrite is checked as RE2 would compile it, and its
    substitution as RE2's rewrite string (Envoy leaves a bad one to request time)."""
    code = enum_name(rd, "response_code")
    if code not in _REDIRECT_CODES:
        raise ConfigError(file, join(path, "response_code"), f"unknown response code {code}")
    scheme = "https" if rd.https_redirect else rd.scheme_redirect
    regex = substitution = ""
    if rd.HasField("regex_rewrite"):
        regex, substitution = _regex_rewrite(rd.regex_rewrite, join(path, "regex_rewrite"), file)
    return Redirect(
        scheme=scheme,
        host=rd.host_redirect,
        port=f":{rd.port_redirect}" if rd.port_redirect else "",
        path=rd.path_redirect,
        prefix_rewrite=rd.prefix_rewrite if rd.HasField("prefix_rewrite") else None,
        regex=regex,
        substitution=substitution,
        strip_query=rd.strip_query,
        status=_REDIRECT_CODES[code],
    )


def _regex_rewrite(rr: Any, here: str, file: str) -> tuple[str, str]:
    """A RegexMatchAndSubstitute, checked as RE2 would compile it, and its substitution
    as RE2's rewrite string (Envoy leaves a bad one to request time)."""
    regex = rr.pattern.regex
    substitution = rr.substitution
    check_regex(regex, join(here, "pattern.regex"), file)
    try:
        re2_substitution(substitution, re.compile(regex).groups)
    except ValueError as exc:
        raise ConfigError(file, join(here, "substitution"), str(exc)) from exc
    return regex, substitution


def _direct_response(dr: Any, path: str, file: str) -> DirectResponse:
    """DirectResponseAction; a body file is read now, as Envoy reads it at load."""
    if not 200 <= dr.status < 600:
        raise ConfigError(file, join(path, "status"), f"status {dr.status} is not in [200, 600)")
    body = b""
    if dr.HasField("body"):
        source = dr.body
        kind = source.WhichOneof("specifier")
        here = join(path, f"body.{kind}")
        if kind == "inline_string":
            body = source.inline_string.encode()
        elif kind == "inline_bytes":
            body = source.inline_bytes
        elif kind == "filename":
            try:
                with open(source.filename, "rb") as f:
                    body = f.read(MAX_DIRECT_RESPONSE_BODY + 1)
            except OSError as exc:
                raise ConfigError(
                    file, here, f"cannot read {source.filename}: {exc.strerror}"
                ) from exc
        else:  # the coverage tree refused the others by name
            raise ConfigError(file, here, "field not supported by proxyd")
        if len(body) > MAX_DIRECT_RESPONSE_BODY:
            size = "more than 4096" if kind == "filename" else str(len(body))
            raise ConfigError(
                file,
                here,
                f"response body size is {size} bytes; maximum is {MAX_DIRECT_RESPONSE_BODY}",
            )
    return DirectResponse(status=dr.status, body=body)


def _priority(action: Any, path: str, file: str) -> str:
    """RouteAction.priority: which of the cluster's circuit breaker thresholds (and
    connection pools) the route's requests use; Envoy's default is DEFAULT."""
    priority = enum_name(action, "priority")
    if priority not in ("DEFAULT", "HIGH"):
        raise ConfigError(file, path, f"unknown routing priority {priority} (DEFAULT or HIGH)")
    return priority


def _route_match(m: Any, path: str, file: str) -> RouteMatch:
    kind = m.WhichOneof("path_specifier")
    case_sensitive = wrapped_or(m, "case_sensitive", True)
    if kind == "safe_regex":
        value = m.safe_regex.regex
        check_regex(value, join(path, "safe_regex.regex"), file)
        case_sensitive = True  # Envoy ignores case_sensitive for safe_regex
    elif kind == "path_match_policy":
        # The uri_template matcher (the allow-list took no other): a full match of the
        # path without its query, as a safe_regex route (proxyd.config.uri_template).
        value = _template_regex(m, path, file)[0]
        kind, case_sensitive = "safe_regex", True
    elif kind in ("prefix", "path", "path_separated_prefix"):
        value = getattr(m, kind)
    elif kind == "connect_matcher":
        # CONNECT requests only (their target is an authority, not a path).
        kind, value = "connect", ""
        if m.HasField("runtime_fraction"):
            raise ConfigError(
                file,
                join(path, "runtime_fraction"),
                "runtime_fraction with connect_matcher is not supported by proxyd",
            )
    else:  # the coverage tree refused the others by name
        raise ConfigError(
            file, path, "one of prefix, path, safe_regex or path_separated_prefix is required"
        )
    headers = tuple(
        header_match(h, f"{join(path, 'headers')}[{i}]", file) for i, h in enumerate(m.headers)
    )
    fraction = None
    if m.HasField("runtime_fraction"):
        rf = m.runtime_fraction
        fraction = RuntimeFraction(
            runtime_key=rf.runtime_key,
            numerator=rf.default_value.numerator,
            denominator=DENOMINATORS[rf.default_value.denominator],
        )
    query = tuple(
        _query_match(q, f"{join(path, 'query_parameters')}[{i}]", file)
        for i, q in enumerate(m.query_parameters)
    )
    return RouteMatch(
        kind=kind,
        value=value,
        case_sensitive=case_sensitive,
        headers=headers,
        runtime_fraction=fraction,
        query=query,
        grpc=m.HasField("grpc"),
    )


def _template_regex(m: Any, path: str, file: str) -> tuple[str, tuple[str, ...]]:
    config = unpack(m.path_match_policy.typed_config)
    assert config is not None  # the allow-list took only the uri_template matcher
    try:
        return match_regex(config.path_template)
    except TemplateError as exc:
        raise ConfigError(
            file, join(path, "path_match_policy.typed_config.path_template"), str(exc)
        ) from None


def _query_match(q: Any, path: str, file: str) -> QueryMatch:
    which = q.WhichOneof("query_parameter_match_specifier")
    if which == "string_match":
        return QueryMatch(q.name, string_match(q.string_match, join(path, "string_match"), file))
    if which == "present_match":
        return QueryMatch(q.name, None, q.present_match)
    # Envoy: a matcher with neither matches a parameter that is there.
    return QueryMatch(q.name)


def header_mutations(msg: Any, path: str, file: str) -> HeaderMutations | None:
    """The request/response_headers_to_add/remove of a route configuration, virtual
    host or route, with the checks Envoy's HeaderParser makes (None: it has none)."""
    if not (
        msg.request_headers_to_add
        or msg.request_headers_to_remove
        or msg.response_headers_to_add
        or msg.response_headers_to_remove
    ):
        return None
    return HeaderMutations(
        request_add=header_adds(msg, "request_headers_to_add", path, file),
        request_remove=_header_removes(msg, "request_headers_to_remove", path, file),
        response_add=header_adds(msg, "response_headers_to_add", path, file),
        response_remove=_header_removes(msg, "response_headers_to_remove", path, file),
    )


def _check_name(name: str, where: str, file: str, verb: str) -> str:
    low = name.lower()
    if low.startswith(":") or low == "host":
        raise ConfigError(file, where, f":-prefixed or host headers may not be {verb}")
    if low in FRAMING:
        raise ConfigError(
            file,
            where,
            f"proxyd frames each message itself: header mutations may not name '{low}'",
        )
    return low


def header_adds(msg: Any, field: str, path: str, file: str) -> tuple[HeaderAdd, ...]:
    """The HeaderValueOptions of ``msg.<field>``, checked as Envoy's HeaderParser does."""
    out = []
    for i, opt in enumerate(getattr(msg, field)):
        here = f"{join(path, field)}[{i}]"
        name = _check_name(opt.header.key, join(here, "header.key"), file, "modified")
        try:
            parse_value(opt.header.value)
        except ValueError as exc:
            raise ConfigError(file, join(here, "header.value"), str(exc)) from exc
        action = enum_name(opt, "append_action")
        if action not in ACTIONS:
            raise ConfigError(file, join(here, "append_action"), f"unknown append_action {action}")
        out.append(
            HeaderAdd(
                name=name,
                value=opt.header.value,
                action=action,
                keep_empty=opt.keep_empty_value,
            )
        )
    return tuple(out)


def _header_removes(msg: Any, field: str, path: str, file: str) -> tuple[str, ...]:
    return tuple(
        _check_name(name, f"{join(path, field)}[{i}]", file, "removed")
        for i, name in enumerate(getattr(msg, field))
    )
