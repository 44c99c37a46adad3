"""``proxyctl explain``: how the live epoch would serve a request, without sending it.

The master compiles the listener plans of its running epoch exactly as a worker does
(:class:`proxyd.worker.plan.CompiledEpoch`, with a throwaway stats store and access-log
writers that are never opened), then follows the worker's own steps for one request:
the path normalization of the connection manager, the route table's match (walked by
:func:`proxyd.protocol.route_explain.explain_match`, which records why each virtual host
and route did or did not match), the route's plan (rewrites, header edits, timeouts,
retry policy, the HTTP filters that run and their per-route config), the cluster pick
(weighted_clusters with each cluster's odds, or cluster_header), and the hosts with
their health, priority and weight.

"Next pick": each worker keeps its own balancer state (round-robin position, EDF
schedule, active requests), so the control socket asks every worker which host it would
pick next, from a copy of its balancer (:mod:`proxyd.master.peeks`,
:mod:`proxyd.worker.peek`; nothing is taken), and :func:`add_worker_picks` puts the
answers in. Until then (or when no worker answers) it is the pick of the balancer
compiled here. With a hash policy on a RING_HASH or MAGLEV cluster the pick is exact
without asking: the ring depends on the hosts alone.
"""

from __future__ import annotations

import math
from typing import Any, cast
from urllib.parse import urlsplit

from proxyd.epoch import Epoch, HeaderMutations, Listener, Route
from proxyd.protocol.epoch_diff import plain
from proxyd.protocol.http1_headers import RequestIdGenerator
from proxyd.protocol.path_normalize import PathAction
from proxyd.protocol.route_explain import explain_match
from proxyd.worker.accesslog import prepare_writers
from proxyd.worker.durations import RouteDuration
from proxyd.worker.plan import CompiledEpoch, HeaderPick, ListenerPlan, RoutePlan, WeightedPick
from proxyd.worker.request_transforms import strip_port
from proxyd.worker.stats import StatsStore
from proxyd.worker.upstream import ClusterState


class ExplainError(Exception):
    """The question cannot be answered (no such listener, a bad URL); the message says why."""


def parse_request(url: str, header_lines: list[str]) -> tuple[str, str, dict[str, str]]:
    """(Host value, request target, lower-case headers with repeats joined by ",") of
    ``url`` ("http://host[:port]/path?query", or "/path" with a Host header) and the
    ``Name: value`` lines."""
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ExplainError(f"header {line!r} is not 'Name: value'")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    if url.startswith("/"):
        target = url
        host = headers.get("host", headers.get(":authority", ""))
    else:
        parts = urlsplit(url if "://" in url else "http://" + url)
        if not parts.netloc:
            raise ExplainError(f"URL {url!r} has no host (give http://host/path, or /path with -H 'Host: …')")  # fmt: skip
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        host = headers.get("host", parts.netloc)
    headers.pop(":authority", None)
    headers.pop("host", None)
    return host, target, headers


def choose_listener(
    epoch: Epoch, selector: str, ports: dict[str, int], url: str
) -> tuple[Listener, str]:
    """The listener a request is explained on, and how it was chosen: ``selector`` (a
    name or a port), else the one whose port the URL names, else the only one."""
    for lst in epoch.listeners:
        if lst.tcp_proxy is not None and selector in (lst.name, str(ports.get(lst.name, lst.port))):
            raise ExplainError(
                f"listener {lst.name!r} runs the TCP proxy (envoy.filters.network.tcp_proxy): "
                f"it has no routes to explain"
            )
    # A TCP proxy listener has no routes: requests are explained on the HTTP ones.
    listeners = tuple(lst for lst in epoch.listeners if lst.hcm is not None)
    if not listeners:
        raise ExplainError(f"epoch {epoch.number} has no HTTP listeners")
    names = ", ".join(f"{lst.name} (port {ports.get(lst.name, lst.port)})" for lst in listeners)
    if selector:
        for lst in listeners:
            if lst.name == selector:
                return lst, "by name (--listener)"
        if selector.isdigit():
            for lst in listeners:
                if ports.get(lst.name, lst.port) == int(selector):
                    return lst, f"by port {selector} (--listener)"
        raise ExplainError(f"no listener {selector!r}; the listeners are: {names}")
    if len(listeners) == 1:
        return listeners[0], "the only listener"
    port = urlsplit(url if "://" in url else "http://" + url).port if not url.startswith("/") else None  # fmt: skip
    for lst in listeners:
        if port is not None and ports.get(lst.name, lst.port) == port:
            return lst, f"by the URL's port {port}"
    raise ExplainError(f"several listeners: choose one with --listener NAME|PORT ({names})")


def compile_epoch(epoch: Epoch) -> CompiledEpoch:
    """The worker's compile of ``epoch`` (no file or socket is opened)."""
    paths = {key for lst in epoch.listeners for key in lst.access_log_keys}
    return CompiledEpoch(epoch, {}, StatsStore(), prepare_writers({}, paths), "127.0.0.1", RequestIdGenerator())  # fmt: skip


def explain(
    epoch: Epoch,
    method: str,
    url: str,
    header_lines: list[str],
    selector: str = "",
    ports: dict[str, int] | None = None,
    source_ip: str = "",
) -> dict[str, Any]:
    """The explanation document (plain data) of one request on ``epoch``; ``source_ip``
    is the client's address as the connection would see it ("" unknown), for hash
    policies on source_ip."""
    ports = ports or {}
    host, target, headers = parse_request(url, header_lines)
    listener, how = choose_listener(epoch, selector, ports, url)
    compiled = compile_epoch(epoch)
    plan = compiled.plans[listener.name]
    hcm = listener.hcm
    assert hcm is not None  # choose_listener chooses HTTP listeners only
    doc: dict[str, Any] = {
        "epoch": epoch.number,
        "request": {"method": method.upper(), "host": host, "path": target, "headers": headers},
        "listener": {
            "name": listener.name,
            "address": listener.address,
            "port": ports.get(listener.name, listener.port),
            "chosen": how,
        },
        "filter_chain": {
            "chosen": (
                "the listener's first filter chain (a connection's SNI and transport "
                "choose among its chains; explain does not)"
                if listener.chains
                else "the listener's only filter chain"
            ),
            "network_filter": "envoy.filters.network.http_connection_manager",
            "stat_prefix": hcm.stat_prefix,
            "route_config": hcm.route_config.name,
        },
        "notes": [],
    }
    path = target
    transforms = plan.transforms
    if transforms is not None and transforms.path is not None and path[:1] == "/":
        new, action = transforms.path.apply(path)
        doc["path_normalization"] = {"path": new, "action": action.name}
        if action is PathAction.REJECT:
            doc["result"] = {"status": 400, "reason": "path normalization rejects the path"}
            return doc
        if action is PathAction.REDIRECT:
            doc["result"] = {"status": 307, "reason": f"redirect to the normalized path {new!r}"}
            return doc
        path = new
    if transforms is not None and transforms.strip:
        port = ports.get(listener.name, listener.port)
        stripped = strip_port(
            host, transforms.strip, cast(Any, _Local(f"{listener.address}:{port}"))
        )
        if stripped is not None:
            doc["host_port_stripped"] = {"host": stripped, "mode": transforms.strip}
            host = stripped
    if plan.internal_only:
        doc["notes"].append("internal_only_headers are kept (as for an internal client)")
    if method.upper() == "CONNECT":
        doc["result"] = {"status": 404, "reason": "CONNECT is not routed"}
        return doc
    match = explain_match(plan.routes, host, path, headers)
    route: Route | None = match.pop("_route")
    doc["match"] = match
    maybes = [e for e in match["routes"] if e["verdict"] == "maybe"]
    candidates = [(e["name"], e["index"]) for e in maybes]
    if route is None:
        if match["virtual_host"] is None:
            reason = f"no virtual host matches Host {host!r}"
        else:
            reason = f"no route of virtual host {match['virtual_host']!r} matches"
        doc["route"] = None
        doc["result"] = {"status": 404 if not maybes else None, "reason": reason}
        doc["filters"] = _filters(plan, None)
        if maybes:
            doc["result"]["maybe_routes"] = [n for n, _ in candidates]
        return doc
    rp = plan.route_plans[id(route)]
    doc["route"] = _route_doc(route, rp, plan, path)
    req = _Request(headers, path, source_ip)
    doc["clusters"], chosen = _clusters(route, rp, req, compiled.clusters)
    target_plan = chosen if chosen is not None else rp
    if chosen is None and _variants(rp):
        target_plan = _variants(rp)[0]
        doc["notes"].append(f"filters shown for the first weighted cluster ({target_plan.cluster_name!r}); per-cluster filter configs may differ")  # fmt: skip
    doc["filters"] = _filters(plan, target_plan)
    doc["header_mutations"] = _mutations(route.header_mutations)
    doc["result"] = _result(route, rp, chosen, doc["clusters"])
    if maybes:
        doc["result"]["maybe_routes"] = [n for n, _ in candidates]
    return doc


def _seconds(value: float | None) -> float | None:
    return None if value is None or value == math.inf or value == 0 else value


def _route_doc(route: Route, rp: RoutePlan, plan: ListenerPlan, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": route.name}
    if route.redirect is not None:
        out["action"] = "redirect"
        out["redirect"] = plain(route.redirect)
    elif route.direct_response is not None:
        out["action"] = "direct_response"
        out["direct_response"] = {
            "status": route.direct_response.status,
            "body_bytes": len(route.direct_response.body),
        }
    elif route.weighted:
        out["action"] = "weighted_clusters"
    elif route.cluster_header:
        out["action"] = "cluster_header"
        out["cluster_header"] = route.cluster_header
    else:
        out["action"] = "cluster"
    rewrites: dict[str, Any] = {}
    if route.prefix_rewrite is not None:
        rewrites["prefix_rewrite"] = route.prefix_rewrite
    if route.regex_rewrite:
        rewrites["regex_rewrite"] = {"pattern": route.regex_rewrite, "substitution": route.regex_substitution}  # fmt: skip
    if route.host_rewrite:
        rewrites["host_rewrite_literal"] = route.host_rewrite
    if route.host_rewrite_header:
        rewrites["host_rewrite_header"] = route.host_rewrite_header
    if route.auto_host_rewrite:
        rewrites["auto_host_rewrite"] = True
    if route.host_rewrite_regex:
        rewrites["host_rewrite_path_regex"] = {"pattern": route.host_rewrite_regex, "substitution": route.host_rewrite_substitution}  # fmt: skip
    mutations = rp.mutations
    if mutations is None and rp.pick is not None:
        first = _variants(rp)
        mutations = first[0].mutations if first else None
    rewrite = mutations.rewrite if mutations is not None else None
    if rewrite is not None and rewrite.rewrites and route.redirect is None:
        upstream_path = rewrite.apply(path)
        if upstream_path != path:
            rewrites["upstream_path"] = upstream_path
    out["rewrites"] = rewrites
    local = route.redirect is not None or route.direct_response is not None
    retry = plain(route.retry) if route.retry is not None and not local else None
    out["timeouts"] = {
        "route_timeout_s": _seconds(rp.timeout_s),
        "idle_timeout_s": _seconds(rp.stream_idle),
        "max_stream_duration_s": _seconds(rp.duration.limit)
        if isinstance(rp.duration, RouteDuration)
        else None,  # fmt: skip
        "per_try_timeout_s": _seconds(route.retry.per_try_timeout_s) if route.retry else None,
    }
    out["retry_policy"] = retry
    if route.hash_policy:
        out["hash_policy"] = plain(route.hash_policy)
    if route.mirrors:
        out["request_mirror_policies"] = plain(route.mirrors)
    return out


def _variants(rp: RoutePlan) -> tuple[RoutePlan, ...]:
    return rp.pick.plans if isinstance(rp.pick, WeightedPick) else ()


def _hosts(cluster: ClusterState) -> list[dict[str, Any]]:
    out = []
    for ep, host in zip(cluster.cluster.endpoints, cluster.hosts, strict=True):
        health = "healthy"
        if not ep.healthy:
            health = "unhealthy (active health check)"
        if ep.ejected:
            health = "ejected (outlier detection)"
        out.append(
            {
                "address": host.label,
                "hostname": ep.hostname or ep.endpoint_hostname,
                "health": health,
                "usable": ep.usable,
                "priority": ep.priority,
                "weight": host.weight,
                "locality": ep.locality,
            }
        )
    return out


class _Local:
    """The listener's address, where strip_port reads the connection's local address."""

    def __init__(self, address: str) -> None:
        self._address = address

    def local_address(self) -> str:
        return self._address


class _Request:
    """What a pick may read of the request: its headers, target and client address."""

    def __init__(self, headers: dict[str, str], path: str, source_ip: str) -> None:
        self.headers, self.path, self.source_ip = headers, path, source_ip


def _hash_pick(
    out: dict[str, Any], rp: RoutePlan, state: ClusterState, req: _Request
) -> dict[str, Any]:
    """RING_HASH, MAGLEV with a hash policy: the request's hash, as the worker computes
    it (proxyd.worker.manager.pick_host), picks the host. The ring or table depends on
    the hosts alone, so every worker picks the same one."""
    assert rp.hash is not None and state.hashing is not None
    generated: list[str] = []

    def make_cookie(policy: Any) -> str:
        generated.append(policy.name)
        return ""

    value = rp.hash.hash(req.headers, req.path, req.source_ip, make_cookie)
    if generated:
        out["next_pick"] = None
        out["next_pick_note"] = (
            f"cookie {generated[0]!r} would be generated from the connection's addresses; "
            "the host depends on it"
        )
    elif value is None:
        out["next_pick"] = None
        out["next_pick_note"] = "no hash policy gives this request a hash: a random host" + (
            "" if req.source_ip else " (give --source-ip for a source_ip policy)"
        )
    else:
        host = state.hashing.pick_hash(value)
        out["request_hash"] = value
        out["next_pick"] = host.label if host is not None else None
        out["next_pick_note"] = (
            "chosen by the request's hash; every worker picks the same host"
            if host is not None
            else "no healthy upstream: the request gets 503"
        )
    return out


def _cluster_doc(
    name: str, clusters: dict[str, ClusterState], rp: RoutePlan | None, req: _Request
) -> dict[str, Any]:
    state = clusters.get(name)
    out: dict[str, Any] = {"name": name, "exists": state is not None}
    if state is None:
        return out
    out["lb_policy"] = state.cluster.lb_policy
    out["hosts"] = _hosts(state)
    if rp is not None and rp.hash is not None and state.hashing is not None:
        out["no_healthy_upstream"] = state.hashing.pick() is None  # a random pick, no state
        return _hash_pick(out, rp, state, req)
    host = state.balancer.pick()
    out["no_healthy_upstream"] = host is None
    out["next_pick_source"] = "balancer"
    out["next_pick"] = host.label if host is not None else None
    out["next_pick_note"] = (
        "the pick of a balancer compiled by the master (no worker answered); each worker "
        "keeps its own balancer state, so the worker that accepts the request may pick another host"
        if host is not None
        else "no healthy upstream: the request gets 503"
    )
    return out


def _clusters(
    route: Route, rp: RoutePlan, req: _Request, clusters: dict[str, ClusterState]
) -> tuple[list[dict[str, Any]], RoutePlan | None]:
    """Each cluster the route may lead to, and the plan of the one chosen (None: a
    random weighted pick, or no cluster)."""
    if route.redirect is not None or route.direct_response is not None:
        return [], None
    headers = req.headers
    pick = rp.pick
    if isinstance(pick, WeightedPick):
        decided: RoutePlan | None = None
        raw = headers.get(pick.header) if pick.header else None
        if raw is not None and raw.isdigit() and raw.isascii() and len(raw) <= 20 and int(raw) < 1 << 64:  # fmt: skip
            decided = pick(headers)  # the header's value decides: no random number drawn
        out = []
        start = 0
        for plan, end in zip(pick.plans, pick.bounds, strict=True):
            doc = _cluster_doc(plan.cluster_name, clusters, plan, req)
            doc["weight"] = end - start
            doc["odds"] = (end - start) / pick.total if pick.total else 0.0
            doc["chosen"] = decided is plan if decided is not None else None
            target = next((t for t in route.weighted if t.name == plan.cluster_name), None)
            if target is not None and target.header_mutations is not None:
                doc["header_mutations"] = _mutations((target.header_mutations,))
            start = end
            out.append(doc)
        return out, decided
    if isinstance(pick, HeaderPick):
        name = headers.get(pick.header)
        if name is None:
            return [{"name": None, "exists": False, "from_header": pick.header, "chosen": True}], pick.none  # fmt: skip
        plan = pick(headers)
        doc = _cluster_doc(name, clusters, plan, req)
        doc["from_header"] = pick.header
        doc["chosen"] = True
        return [doc], plan
    doc = _cluster_doc(rp.cluster_name, clusters, rp, req)
    doc["chosen"] = True
    return [doc], rp


def _filters(plan: ListenerPlan, rp: RoutePlan | None) -> list[dict[str, Any]]:
    """Each HTTP filter of the connection manager: whether it runs for the request
    (the route's compiled chain), and the per-route config it runs with."""
    hcm = plan.listener.hcm
    assert hcm is not None
    running = {f.name for f in (rp.filters if rp is not None else plan.no_route_filters)}
    route_overrides: dict[str, Any] = {}
    if rp is not None:
        route_overrides = _overrides_of(plan, rp)
    out = []
    for f in hcm.http_filters:
        o = route_overrides.get(f.name) or route_overrides.get(f.type_name)
        if f.name in running:
            state = "runs"
        elif o is not None and o.disabled:
            state = "disabled on this route"
        elif f.disabled and (o is None or not (o.enabled or o.config is not None)):
            state = "disabled (in the connection manager; the route does not enable it)"
        else:
            state = "nothing to do on this route (not run)"
        out.append(
            {
                "name": f.name,
                "type": f.type_name.rsplit(".", 1)[-1] if "." in f.type_name else f.type_name,
                "state": state,
                "per_route_config": plain(o.config)
                if o is not None and o.config is not None
                else None,  # fmt: skip
            }
        )
    out.append({"name": "envoy.filters.http.router", "type": "router", "state": "runs" if rp is not None and rp.local is None else "answers locally", "per_route_config": None})  # fmt: skip
    return out


def _overrides_of(plan: ListenerPlan, rp: RoutePlan) -> dict[str, Any]:
    hcm = plan.listener.hcm
    assert hcm is not None
    for vh in hcm.route_config.virtual_hosts:
        for r in vh.routes:
            top = plan.route_plans.get(id(r))
            if top is rp:
                return {o.name: o for o in r.filter_configs}
            if top is not None and top.pick is not None:
                for t, variant in zip(r.weighted, _variants(top), strict=False):
                    if variant is rp:
                        return {o.name: o for o in t.filter_configs}
                if isinstance(top.pick, HeaderPick) and (rp is top.pick.none or rp in top.pick.plans.values()):  # fmt: skip
                    return {o.name: o for o in r.filter_configs}
    return {}


def _mutations(levels: tuple[HeaderMutations, ...]) -> list[dict[str, Any]]:
    """Header edits, one entry per level that has some, in the order the plan applies
    them (Envoy's order; most_specific_header_mutations_wins already folded in)."""
    out = []
    for m in levels:
        doc = {k: v for k, v in plain(m).items() if v}
        if doc:
            out.append(doc)
    return out


def _result(route: Route, rp: RoutePlan, chosen: RoutePlan | None, clusters: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {"route": route.name}
    if route.redirect is not None:
        out["status"] = route.redirect.status
        out["reason"] = "redirect"
        return out
    if route.direct_response is not None:
        out["status"] = route.direct_response.status
        out["reason"] = "direct_response"
        return out
    if chosen is None:
        out["cluster"] = None
        out["cluster_odds"] = {c["name"]: c["odds"] for c in clusters}
        out["reason"] = "weighted_clusters: a random pick by the odds above"
        return out
    out["cluster"] = chosen.cluster_name or None
    if chosen.cluster is None:
        out["status"] = chosen.not_found_status
        out["reason"] = "the cluster does not exist"
    elif any(c.get("no_healthy_upstream") for c in clusters if c.get("chosen")):
        out["status"] = 503
        out["reason"] = "no healthy upstream"
    else:
        out["reason"] = "forwarded upstream"
    return out


def clusters_to_peek(doc: dict[str, Any]) -> tuple[str, ...]:
    """The clusters of ``doc`` whose next host the workers should be asked for: those
    picked by the balancer's own state (not by the request's hash)."""
    return tuple(
        c["name"]
        for c in doc.get("clusters", ())
        if c.get("exists") and "request_hash" not in c and c.get("next_pick_source") == "balancer"
    )


def add_worker_picks(doc: dict[str, Any], answers: dict[int, Any]) -> None:
    """Put the workers' answers (worker id → ``ipc.PicksPeeked``) into ``doc``'s
    clusters: ``worker_picks`` (worker id → host), and ``next_pick`` when they agree."""
    if not answers:
        return
    for c in doc.get("clusters", ()):
        if c.get("next_pick_source") != "balancer":
            continue
        picks = {
            str(wid): a.picks[c["name"]]
            for wid, a in sorted(answers.items())
            if c["name"] in a.picks
        }
        if not picks:
            continue
        c["worker_picks"] = picks
        c["next_pick_source"] = "workers"
        stale = sorted(str(w) for w, a in answers.items() if a.epoch != doc["epoch"])
        labels = set(picks.values())
        if len(labels) == 1:
            c["next_pick"] = labels.pop() or None
            c["next_pick_note"] = "what every worker's balancer would pick next (nothing was taken)"
        else:
            c["next_pick"] = None
            c["next_pick_note"] = (
                "each worker's balancer would pick another host (nothing was taken); the "
                "kernel chooses the worker that accepts the connection"
            )
        if stale:
            c["next_pick_note"] += f"; worker(s) {', '.join(stale)} still run another epoch"
