"""``proxyctl explain``'s text output: the master's explanation document, step by step.

The document comes from :func:`proxyd.master.explain.explain`; ``--json`` prints it as
it is, and :func:`format_explain` writes it for people.
"""

from __future__ import annotations

from typing import Any


def _value(v: Any) -> str:
    return "missing" if v is None else repr(v)


def _seconds(v: float | None) -> str:
    return "none" if v is None else f"{v:g}s"


def _edits(level: dict[str, Any]) -> str:
    """One level of header edits: "request add x-a: 1 (APPEND_IF_EXISTS_OR_ADD), ..."."""
    parts = []
    for side in ("request", "response"):
        for add in level.get(f"{side}_add", ()):
            parts.append(f"{side} add {add['name']}: {add['value']} ({add['action']})")
        for name in level.get(f"{side}_remove", ()):
            parts.append(f"{side} remove {name}")
    return ", ".join(parts)


def format_explain(doc: dict[str, Any]) -> str:
    req = doc["request"]
    lst = doc["listener"]
    fc = doc["filter_chain"]
    lines = [
        f"request   {req['method']} {req['path']}  Host: {req['host'] or '(none)'}"
        + "".join(f"\n          {k}: {v}" for k, v in req["headers"].items()),
        f"epoch     {doc['epoch']}",
        f"listener  {lst['name']} ({lst['address']}:{lst['port']}; {lst['chosen']})",
        f"chain     {fc['chosen']}: {fc['network_filter']} stat_prefix {fc['stat_prefix']!r}, "
        f"route config {fc['route_config']!r}",
    ]
    pn = doc.get("path_normalization")
    if pn:
        lines.append(f"path      normalized to {pn['path']!r} ({pn['action']})")
    hs = doc.get("host_port_stripped")
    if hs:
        lines.append(f"host      port stripped ({hs['mode']}): {hs['host']!r}")
    for note in doc.get("notes", ()):
        lines.append(f"note      {note}")
    match = doc.get("match")
    if match is not None:
        lines.append("")
        lines.append(f"virtual host (Host {match['host']!r}):")
        for step in match["domain_lookups"]:
            found = step["virtual_host"]
            verdict = f"-> virtual host {found!r}" if found else "no such domain"
            lines.append(f"  {step['kind']:<8} {step['domain']!r}: {verdict}")
        if match["virtual_host"] is None:
            lines.append("  no virtual host matches")
        else:
            lines.append("")
            lines.append(f"routes of {match['virtual_host']!r} (path {match['path']!r}):")
            for r in match["routes"]:
                mark = {"yes": "MATCH", "no": "no", "maybe": "maybe"}[r["verdict"]]
                lines.append(f"  [{r['index']}] {r['name'] or '(unnamed)'}: {mark} - {r['reason']}")
                for c in r.get("checks", ()):
                    ok = "ok" if c["matched"] else "FAILS"
                    lines.append(f"        {c['kind']} {c['name']!r} {c['matcher']}: {_value(c['value'])} {ok}")  # fmt: skip
    route = doc.get("route")
    if route is not None:
        lines += ["", f"route taken: {route['name'] or '(unnamed)'} ({route['action']})"]
        if route.get("cluster_header"):
            lines.append(f"  cluster from header {route['cluster_header']!r}")
        if route.get("redirect"):
            rd = {k: v for k, v in route["redirect"].items() if v not in ("", None, False)}
            lines.append(f"  redirect {rd}")
        if route.get("direct_response"):
            dr = route["direct_response"]
            lines.append(f"  direct_response {dr['status']} ({dr['body_bytes']} body bytes)")
        for name, value in route["rewrites"].items():
            lines.append(f"  rewrite {name}: {value}")
        t = route["timeouts"]
        lines.append(
            f"  timeouts: route {_seconds(t['route_timeout_s'])}, idle {_seconds(t['idle_timeout_s'])}, "
            f"max_stream_duration {_seconds(t['max_stream_duration_s'])}, per try {_seconds(t['per_try_timeout_s'])}"
        )  # fmt: skip
        rp = route.get("retry_policy")
        if rp:
            lines.append(
                f"  retry: on {rp['retry_on']!r}, {rp['num_retries']} retries, per try "
                f"{_seconds(rp['per_try_timeout_s'] or None)}, back-off {rp['base_interval_ms']}-{rp['max_interval_ms']} ms"
                + (f", status codes {rp['retriable_status_codes']}" if rp["retriable_status_codes"] else "")
            )  # fmt: skip
        else:
            lines.append("  retry: none")
        for level in doc.get("header_mutations", ()):
            lines.append(f"  header edits: {_edits(level)}")
        if route.get("hash_policy"):
            lines.append(f"  hash policy: {route['hash_policy']}")
        if route.get("request_mirror_policies"):
            lines.append(f"  mirrors: {route['request_mirror_policies']}")
    filters = doc.get("filters")
    if filters:
        lines += ["", "http filters:"]
        for f in filters:
            extra = f"  per-route config {f['per_route_config']}" if f["per_route_config"] else ""
            lines.append(f"  {f['name']} ({f['type']}): {f['state']}{extra}")
    clusters = doc.get("clusters")
    if clusters:
        lines += ["", "clusters:"]
        for c in clusters:
            head = f"  {c['name']!r}" if c["name"] is not None else "  (none)"
            if "from_header" in c:
                head += f" (from header {c['from_header']!r})"
            if "weight" in c:
                head += f" weight {c['weight']} ({c['odds']:.1%})"
                if c.get("chosen"):
                    head += " <- chosen by the weight header"
            if not c["exists"]:
                head += ": no such cluster"
            else:
                head += f": {c['lb_policy']}"
            lines.append(head)
            if c.get("header_mutations"):
                lines.append(f"      header edits: {'; '.join(_edits(m) for m in c['header_mutations'])}")  # fmt: skip
            for ep in c.get("hosts", ()):
                lines.append(
                    f"      {ep['address']}  {ep['health']}  priority {ep['priority']}  weight {ep['weight']}"
                    + (f"  locality {ep['locality']}" if ep["locality"] else "")
                )  # fmt: skip
            if c.get("exists"):
                pick = c.get("next_pick")
                lines.append(f"      next pick: {pick or '-'} ({c['next_pick_note']})")
                for worker, host in (c.get("worker_picks") or {}).items():
                    lines.append(f"        worker {worker}: {host or '(no host)'}")
    res = doc.get("result", {})
    lines.append("")
    parts = []
    if res.get("route"):
        parts.append(f"route {res['route']!r}")
    if res.get("cluster"):
        parts.append(f"cluster {res['cluster']!r}")
    if res.get("status"):
        parts.append(f"status {res['status']}")
    if res.get("maybe_routes"):
        parts.append(f"or, by runtime draw, {res['maybe_routes']}")
    lines.append(f"result: {', '.join(parts) or '-'} ({res.get('reason', '')})")
    return "\n".join(lines) + "\n"
