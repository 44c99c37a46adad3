"""The stateful session filter (sticky sessions): real Envoy and real proxyd on one YAML.

Three demo upstreams ``a``, ``b``, ``c`` (each says who it is in ``x-upstream-name``).
Listener ``ingress`` has the filter with a cookie session state (``sticky``, path ``/``,
ttl 60s), then the router. Its routes:

* ``/svc``: cluster ``svc`` (the three hosts, round robin, no health checks);
* ``/hc``: cluster ``hc``, the same hosts with an HTTP health check whose port for ``c``
  (the endpoint's ``health_check_config``) is a dead one, so ``c`` serves but is
  unhealthy; ``/hcany``: cluster ``hc_any``, the same with ``override_host_status``
  UNKNOWN and UNHEALTHY; ``/healthy-only``: cluster ``only_healthy`` (no health
  checks) whose ``override_host_status`` is HEALTHY alone;
* ``/status/``: cluster ``svc`` with retries on 5xx that avoid the hosts tried;
* ``/dead``: cluster ``dead``, one host that refuses connections; ``/ring``: cluster
  ``ring`` (RING_HASH) with a route hash policy that makes a cookie;
* ``/off``: the filter disabled per route; ``/strict``: a per-route session with
  ``strict``; ``/hdr``: a per-route header-based session (``x-session``);
  ``/scoped``: a per-route cookie ``scoped`` with path ``/scoped`` and no ttl;
  ``/attrs``: a per-route cookie with attributes and a ttl of 1.9s (whole seconds count).

Each case sends requests with and without session cookies (made here in Envoy's
format, or taken from a response) and records which upstream answered and what the
response said of the session (its Set-Cookie decoded: the address it names, the
attributes, the ttl left). Envoy's and proxyd's records must be equal.
"""

from __future__ import annotations

import base64
import http.client
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyd.filters.stateful_session.session import parse_cookie_message
from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import PortOf, run_pair
from tests.support import FAST_HEALTH_CHECK, UpstreamServer, bootstrap, free_port, http_listener

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

NAME = "envoy.filters.http.stateful_session"
SESSION = "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession"
PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute"
)
COOKIE = (
    "type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState"
)
PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)
HEADER = (
    "type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState"
)


def _cookie_state(name: str, **cookie: Any) -> dict[str, Any]:
    return {
        "name": "envoy.http.stateful_session.cookie",
        "typed_config": {"@type": COOKIE, "cookie": {"name": name, **cookie}},
    }


def _route(prefix: str, cluster: str, per_route: dict[str, Any] | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"match": {"prefix": prefix}, "route": {"cluster": cluster}}
    if per_route is not None:
        r["typed_per_filter_config"] = {NAME: {"@type": PER_ROUTE, **per_route}}
    return r


def _cluster(name: str, ports: list[int], **extra: Any) -> dict[str, Any]:
    endpoints = []
    for port, hc_port in ports_and_checks(ports, extra.pop("hc_ports", {})):
        ep: dict[str, Any] = {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
        }
        if hc_port:
            ep["health_check_config"] = {"port_value": hc_port}
        endpoints.append({"endpoint": ep})
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
        **extra,
    }


def ports_and_checks(ports: list[int], hc_ports: dict[int, int]) -> list[tuple[int, int]]:
    return [(p, hc_ports.get(p, 0)) for p in ports]


def config(ports: list[int], dead: int) -> str:
    a, b, c = ports
    checked = {"health_checks": [FAST_HEALTH_CHECK], "hc_ports": {c: dead}}
    routes = [
        _route("/svc", "svc"),
        _route("/hcany", "hc_any"),
        _route("/hc", "hc"),
        _route("/healthy-only", "only_healthy"),
        _route("/dead", "dead"),
        {
            "match": {"prefix": "/ring"},
            "route": {
                "cluster": "ring",
                "hash_policy": [{"cookie": {"name": "h", "ttl": "100s", "path": "/"}}],
            },
        },
        _route("/off", "svc", {"disabled": True}),
        _route(
            "/strict",
            "svc",
            {
                "stateful_session": {
                    "session_state": _cookie_state("sticky", path="/", ttl="60s"),
                    "strict": True,
                }
            },
        ),
        _route(
            "/hdr",
            "svc",
            {
                "stateful_session": {
                    "session_state": {
                        "name": "envoy.http.stateful_session.header",
                        "typed_config": {"@type": HEADER, "name": "x-session"},
                    }
                }
            },
        ),
        _route(
            "/scoped",
            "svc",
            {"stateful_session": {"session_state": _cookie_state("scoped", path="/scoped")}},
        ),
        _route(
            "/attrs",
            "svc",
            {
                "stateful_session": {
                    "session_state": _cookie_state(
                        "sticky",
                        ttl="1.9s",
                        attributes=[{"name": "SameSite", "value": "Strict"}, {"name": "Secure"}],
                    )
                }
            },
        ),
        {
            "match": {"prefix": "/status/"},
            "route": {
                "cluster": "svc",
                "retry_policy": {
                    "retry_on": "5xx",
                    "num_retries": 2,
                    "retry_host_predicate": [
                        {
                            "name": "envoy.retry_host_predicates.previous_hosts",
                            "typed_config": {"@type": PREVIOUS_HOSTS},
                        }
                    ],
                    "host_selection_retry_max_attempts": 5,
                },
            },
        },
    ]
    filters = [
        {
            "name": NAME,
            "typed_config": {
                "@type": SESSION,
                "session_state": _cookie_state("sticky", path="/", ttl="60s"),
            },
        }
    ]
    route_config = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}
    clusters = [
        _cluster("svc", ports),
        _cluster("hc", ports, **checked),
        _cluster(
            "hc_any",
            ports,
            **checked,
            common_lb_config={"override_host_status": {"statuses": ["UNKNOWN", "UNHEALTHY"]}},
        ),
        _cluster(
            "only_healthy",
            ports,
            common_lb_config={"override_host_status": {"statuses": ["HEALTHY"]}},
        ),
    ]
    clusters.append(_cluster("dead", [dead]))
    clusters.append({**_cluster("ring", ports), "lb_policy": "RING_HASH"})
    doc = bootstrap([http_listener("ingress", 0, route_config, filters)], clusters)
    return yaml.safe_dump(doc, sort_keys=False)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def envoy_cookie(address: str, expires: int = 0) -> str:
    """A cookie value as Envoy writes it (base64 of its ``envoy.Cookie`` message)."""
    raw = address.encode()
    msg = b"\x0a" + _varint(len(raw)) + raw + (b"\x10" + _varint(expires) if expires else b"")
    return base64.b64encode(msg).decode()


def _get(
    port: int, path: str, headers: dict[str, str] | list[tuple[str, str]]
) -> tuple[int, str, list[tuple[str, str]]]:
    """GET ``path``; ``headers`` as a list may repeat a name (one line each)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path)
        for name, value in headers.items() if isinstance(headers, dict) else headers:
            conn.putheader(name, value)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read().decode()
        return r.status, body, [(k.lower(), v) for k, v in r.getheaders()]
    finally:
        conn.close()


class Names:
    """Upstream addresses ("127.0.0.1:port") → the upstream's name, for the records."""

    def __init__(self, ups: list[UpstreamServer], dead: int) -> None:
        self.by_address = {f"127.0.0.1:{u.port}": u.name for u in ups}
        self.by_address[f"127.0.0.1:{dead}"] = "dead"
        self.address = {v: k for k, v in self.by_address.items()}

    def name(self, address: str) -> str:
        return self.by_address.get(address, f"?{address}")


def _set_cookie(value: str, names: Names) -> tuple[Any, ...]:
    """A Set-Cookie line with its value decoded: (cookie name, the upstream it names,
    the ttl its expiry leaves (rounded to tens of seconds), the attributes)."""
    head, _, attrs = value.partition("; ")
    name, _, quoted = head.partition("=")
    raw = base64.b64decode(quoted.strip('"'))
    parsed = parse_cookie_message(raw)
    assert parsed is not None, value
    address, expires = parsed
    left = round((expires - time.time()) / 10) * 10 if expires else None
    return (name, names.name(address), left, attrs, quoted.startswith('"'))


def _one(port: int, path: str, names: Names, **headers: str) -> dict[str, Any]:
    status, body, lines = _get(port, path, headers)
    upstream = next((v for k, v in lines if k == "x-upstream-name"), None)
    cookies = [_set_cookie(v, names) for k, v in lines if k == "set-cookie"]
    session = [v for k, v in lines if k == "x-session"]
    out: dict[str, Any] = {"status": status, "upstream": upstream, "cookies": cookies}
    if status >= 500:
        out["body"] = body
    if session:
        out["x-session"] = [names.name(base64.b64decode(v).decode()) for v in session]
    return out


def _names(lines: list[tuple[str, str]], header: str) -> list[str]:
    """The values of ``header`` (for set-cookie: the cookies' names)."""
    values = [v for k, v in lines if k == header]
    return [v.split("=", 1)[0] for v in values] if header == "set-cookie" else values


def _many(port: int, path: str, names: Names, n: int, **headers: str) -> dict[str, Any]:
    """``n`` requests: the upstreams that answered, and whether each response's cookie
    (if any) names the upstream that answered it."""
    seen: set[Any] = set()
    cookie_names_answerer = set()
    statuses = set()
    for _ in range(n):
        r = _one(port, path, names, **headers)
        seen.add(r["upstream"])
        statuses.add(r["status"])
        for c in r["cookies"]:
            cookie_names_answerer.add(c[1] == r["upstream"])
    return {
        "upstreams": sorted(seen, key=str),
        "statuses": sorted(statuses),
        "cookie_names_answerer": sorted(cookie_names_answerer),
    }


def play(port_of: PortOf, names: Names) -> dict[str, Any]:
    port = port_of("ingress")
    now = int(time.time())

    def cookie(upstream: str, name: str = "sticky", expires: int = now + 60) -> str:
        return f"{name}={envoy_cookie(names.address[upstream], expires)}"

    out: dict[str, Any] = {}
    first = _get(port, "/svc", {})
    line = next(v for k, v in first[2] if k == "set-cookie")
    answerer = next(v for k, v in first[2] if k == "x-upstream-name")
    made = _set_cookie(line, names)
    out["first"] = (first[0], made[1] == answerer, made[0], made[2:])
    # The cookie the proxy made takes the next requests to the same host, which then
    # sets no cookie.
    given = line.split(";", 1)[0]
    again = _many(port, "/svc", names, 4, cookie=given)
    out["again"] = (again["upstreams"] == [answerer], again["cookie_names_answerer"])
    out["again_one"] = {k: v for k, v in _one(port, "/svc", names, cookie=given).items()
                        if k != "upstream"}  # fmt: skip
    for who in ("a", "b", "c"):
        out[f"to_{who}"] = _many(port, "/svc", names, 4, cookie=cookie(who))
    # Among other cookies, quoted, with spaces.
    out["among"] = _many(
        port, "/svc", names, 3, cookie=f'x=1; sticky="{envoy_cookie(names.address["b"])}"; y=2'
    )
    # Envoy's old format: the base64 of the address itself.
    old = base64.b64encode(names.address["c"].encode()).decode()
    out["old_format"] = _many(port, "/svc", names, 3, cookie=f"sticky={old}")
    out["no_expiry"] = _many(port, "/svc", names, 3, cookie=cookie("a", expires=0))
    # Not taken: an expired cookie, an unknown host, garbage; the balancer picks.
    out["expired"] = _many(port, "/svc", names, 6, cookie=cookie("b", expires=now - 5))
    out["unknown"] = _many(port, "/svc", names, 6, cookie=cookie("dead"))
    for i, bad in enumerate(["!!!", "YWJj", "YWJjZA", "", '""', "YQ==YQ=="]):
        out[f"garbage{i}"] = _many(port, "/svc", names, 3, cookie=f"sticky={bad}")
    two = [("cookie", "a=1"), ("cookie", cookie("b")), ("cookie", cookie("c"))]
    out["cookie_lines"] = [_get(port, "/svc", two)[2] for _ in "xyz"]
    hdr_b, hdr_c = (base64.b64encode(names.address[u].encode()).decode() for u in "bc")
    lines = [("x-session", hdr_b), ("x-session", hdr_c)]
    out["header_lines"] = [_get(port, "/hdr", lines)[2] for _ in "xyz"]
    for key in ("cookie_lines", "header_lines"):
        out[key] = sorted(
            {(v, any(k in ("set-cookie", "x-session") for k, _ in r)) for r in out[key]
             for k, v in r if k == "x-upstream-name"}
        )  # fmt: skip
    # A host that refuses connections: the 503 names no host, or names the one tried.
    out["dead"] = _one(port, "/dead", names)
    out["dead_named"] = _one(port, "/dead", names, cookie=cookie("dead"))
    # A hashing cluster: the session's host comes first, and no hash (so no hash
    # cookie) is made for it; without a session cookie both cookies are made.
    ring = [_get(port, "/ring", {"cookie": cookie(u)}) for u in "abc"]
    out["ring_sticky"] = [
        (_names(r[2], "x-upstream-name"), _names(r[2], "set-cookie")) for r in ring
    ]
    fresh = _get(port, "/ring", {})
    out["ring_fresh"] = sorted(v.split("=", 1)[0] for k, v in fresh[2] if k == "set-cookie")
    out["other_name"] = _many(port, "/svc", names, 3, cookie=cookie("b", name="stick"))
    # Health: c fails its checks in hc and hc_any.
    out["hc_to_c"] = _many(port, "/hc", names, 6, cookie=cookie("c"))
    out["hc_to_a"] = _many(port, "/hc", names, 4, cookie=cookie("a"))
    out["hcany_to_c"] = _many(port, "/hcany", names, 4, cookie=cookie("c"))
    out["healthy_only"] = _many(port, "/healthy-only", names, 6, cookie=cookie("b"))
    # Per route: disabled, strict, header, scoped cookie.
    out["off"] = _many(port, "/off", names, 6, cookie=cookie("b"))
    out["strict_known"] = _many(port, "/strict", names, 3, cookie=cookie("c"))
    out["strict_unknown"] = _one(port, "/strict", names, cookie=cookie("dead"))
    out["strict_garbage"] = _many(port, "/strict", names, 3, cookie="sticky=!!!")
    out["strict_none"] = _many(port, "/strict", names, 3)
    hdr = base64.b64encode(names.address["b"].encode()).decode()
    out["hdr_to_b"] = _many(port, "/hdr", names, 3, **{"x-session": hdr})
    out["hdr_one"] = _one(port, "/hdr", names, **{"x-session": hdr})
    out["hdr_one"].pop("upstream")
    first_hdr = _one(port, "/hdr", names)
    out["hdr_new"] = (first_hdr["x-session"] == [first_hdr["upstream"]], first_hdr["cookies"])
    out["hdr_unknown"] = _many(port, "/hdr", names, 6, **{"x-session": "!!"})
    scoped = _one(port, "/scoped/x?y", names)
    out["scoped"] = (scoped["cookies"][0][1] == scoped["upstream"], scoped["cookies"][0][2:])
    out["scoped_query"] = len(_one(port, "/scoped?q", names)["cookies"])
    out["scoped_other"] = _one(port, "/scopedx", names)["cookies"]
    out["scoped_to_b"] = _many(port, "/scoped/z", names, 3, cookie=cookie("b", name="scoped"))
    attrs = _one(port, "/attrs", names)
    out["attrs"] = (attrs["cookies"][0][1] == attrs["upstream"], attrs["cookies"][0][2:])
    # Only the first attempt goes to the session's host: Envoy's retries are the
    # balancer's (and here avoid the hosts tried), so the last 503 is not c's.
    retried = _many(port, "/status/503", names, 3, cookie=cookie("c"))
    out["retry_c"] = (
        "c" in retried["upstreams"],
        retried["statuses"],
        retried["cookie_names_answerer"],
    )
    out["scoped_sticky_elsewhere"] = _many(
        port, "/scopedx", names, 6, cookie=cookie("b", name="scoped")
    )
    return out


def _hc_ready(stats: Any) -> bool:
    s = stats()
    return all(s.get(f"cluster.{c}.membership_healthy") == 2 for c in ("hc", "hc_any"))


def test_stateful_session_like_envoy(tmp_path: Path) -> None:
    ups = [UpstreamServer(n).start() for n in ("a", "b", "c")]
    dead = free_port()
    names = Names(ups, dead)
    try:
        pair = run_pair(
            config([u.port for u in ups], dead),
            tmp_path,
            lambda port_of: play(port_of, names),
            ready=_hc_ready,
        )
    finally:
        for u in ups:
            u.stop()
    envoy, proxyd = pair.envoy.replies, pair.proxyd.replies
    # What Envoy does, spelled out (the cases mean what they say).
    assert envoy["first"][:2] == (200, True)
    assert envoy["to_b"]["upstreams"] == ["b"]
    assert envoy["strict_unknown"]["status"] == 503
    assert envoy["hc_to_c"]["upstreams"] == ["a", "b"]
    assert envoy["hcany_to_c"]["upstreams"] == ["c"]
    assert envoy["off"]["upstreams"] == ["a", "b", "c"]
    for key in envoy:
        assert proxyd.get(key) == envoy[key], key
    assert proxyd == envoy
