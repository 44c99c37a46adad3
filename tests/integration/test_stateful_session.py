"""Sticky sessions with real processes: two workers, HTTP/1.1 and HTTP/2 clients, and a
reload that takes the session's host away.

* The cookie one worker made is honoured by every worker and over HTTP/2 (the session
  is in the cookie, not in a worker).
* After a reload removes the host a cookie names, the cookie's requests go to the
  balancer's pick and get a new cookie (the session's map of hosts is the new
  epoch's); a strict route answers them 503.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import ProxydProcess, UpstreamServer, bootstrap, http_listener, static_cluster

SESSION = "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession"
PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute"
)
COOKIE = (
    "type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState"
)
STATE = {
    "name": "envoy.http.stateful_session.cookie",
    "typed_config": {"@type": COOKIE, "cookie": {"name": "sticky", "ttl": "300s"}},
}


def config(ports: list[int]) -> str:
    strict = {"@type": PER_ROUTE, "stateful_session": {"session_state": STATE, "strict": True}}
    routes = {
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/strict"},
                        "route": {"cluster": "svc"},
                        "typed_per_filter_config": {"envoy.filters.http.stateful_session": strict},
                    },
                    {"match": {"prefix": "/"}, "route": {"cluster": "svc"}},
                ],
            }
        ]
    }
    filters = [
        {
            "name": "envoy.filters.http.stateful_session",
            "typed_config": {"@type": SESSION, "session_state": STATE},
        }
    ]
    doc = bootstrap([http_listener("ingress", 0, routes, filters)], [static_cluster("svc", ports)])
    return yaml.safe_dump(doc, sort_keys=False)


def _sticky(r: httpx.Response) -> str | None:
    line = r.headers.get("set-cookie")
    return line.split(";", 1)[0] if line else None


def test_sessions_across_workers_codecs_and_a_reload(tmp_path: Path) -> None:
    ups = [UpstreamServer(n).start() for n in ("a", "b", "c")]
    try:
        with ProxydProcess(tmp_path, config([u.port for u in ups]), concurrency=2) as p:
            url = f"http://127.0.0.1:{p.listener_port()}"
            first = httpx.get(url + "/")
            host = first.headers["x-upstream-name"]
            cookie = _sticky(first)
            assert cookie is not None and cookie.startswith("sticky=")
            # New connections (the kernel spreads them over the workers) and HTTP/2 stick.
            seen: set[Any] = set()
            for _ in range(8):
                r = httpx.get(url + "/", headers={"cookie": cookie})
                seen.add((r.headers["x-upstream-name"], _sticky(r)))
            with httpx.Client(http1=False, http2=True) as h2:
                for _ in range(4):
                    r = h2.get(url + "/", headers={"cookie": cookie})
                    assert r.http_version == "HTTP/2"
                    seen.add((r.headers["x-upstream-name"], _sticky(r)))
            assert seen == {(host, None)}
            # The host leaves the cluster.
            rest = [u.port for u in ups if u.name != host]
            p.config_path.write_text(config(rest))
            res = p.ctl("reload")
            assert res.returncode == 0, res.stderr
            after = [httpx.get(url + "/", headers={"cookie": cookie}) for _ in range(4)]
            assert {r.headers["x-upstream-name"] for r in after} <= {u.name for u in ups} - {host}
            assert all(_sticky(r) not in (None, cookie) for r in after)
            strict = httpx.get(url + "/strict", headers={"cookie": cookie})
            assert (strict.status_code, strict.text) == (503, "no healthy upstream")
            # A new session on the strict route works as any other.
            fresh = httpx.get(url + "/strict")
            again = httpx.get(url + "/strict", headers={"cookie": _sticky(fresh) or ""})
            assert again.headers["x-upstream-name"] == fresh.headers["x-upstream-name"]
    finally:
        for u in ups:
            u.stop()
