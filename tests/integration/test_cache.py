"""The cache filter in proxyd alone, where Envoy cannot be compared: ``cache`` v3 with
``vary`` (Envoy 1.40 crashes on a response that varies on an allowed header), a chunked
upstream response answered from the cache with its length, and a filter before the
cache seeing the hit as it sees an upstream response."""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any

from tests.compat.cache_upstream import CacheUpstream
from tests.support import ProxydProcess, bootstrap, dump_yaml, http_listener, static_cluster

V1 = "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig"
V1_SIMPLE = (
    "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
)
HEADER_MUTATION = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
)


def _config(upstream: int) -> str:
    rc = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}],
            }
        ],
    }
    mutation = {
        "name": "mark",
        "typed_config": {
            "@type": HEADER_MUTATION,
            "mutations": {
                "response_mutations": [
                    {"append": {"header": {"key": "x-seen-by-mutation", "value": "yes"}}}
                ]
            },
        },
    }
    cache = {
        "name": "envoy.filters.http.cache",
        "typed_config": {
            "@type": V1,
            "typed_config": {"@type": V1_SIMPLE},
            "allowed_vary_headers": [{"exact": "x-variant"}],
        },
    }
    doc = bootstrap(
        [http_listener("ingress", 0, rc, [mutation, cache])], [static_cluster("svc", [upstream])]
    )
    return dump_yaml(doc)


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return {
            "status": r.status,
            "body": r.read().decode(),
            "headers": {k.lower(): v for k, v in r.getheaders()},
        }
    finally:
        conn.close()


def test_vary_chunked_and_filters_before_the_cache(tmp_path: Path) -> None:
    with CacheUpstream() as up, ProxydProcess(tmp_path, _config(up.port), concurrency=1) as p:
        port = p.listener_port("ingress")

        # vary on an allowed header: one stored response per value (none is a value too).
        path = "/vary?cc=max-age=60&vary=x-variant"
        bodies = [
            _get(port, path, {"x-variant": v} if v else {})["body"]
            for v in ("a", "a", "b", "b", "", "", "a")
        ]
        assert up.count(path) == 3
        assert bodies[0] == bodies[1] == bodies[6] and "/vary a" in bodies[0]
        assert bodies[2] == bodies[3] and "/vary b" in bodies[2]
        assert bodies[4] == bodies[5] and bodies[4] not in (bodies[0], bodies[2])

        # vary on a header that is not allowed: never stored.
        path = "/vary-other?cc=max-age=60&vary=x-other"
        _get(port, path)
        _get(port, path)
        assert up.count(path) == 2

        # A chunked response is stored whole and answered with its length.
        path = "/chunked?cc=max-age=60&chunked=1&body=0123456789abcdef"
        miss = _get(port, path)
        hit = _get(port, path)
        assert up.count(path) == 1
        assert miss["body"] == hit["body"] == "0123456789abcdef"
        assert "transfer-encoding" in miss["headers"]
        assert (
            hit["headers"]["content-length"] == "16" and "transfer-encoding" not in hit["headers"]
        )
        assert hit["headers"]["age"] == "0"

        # The filter before the cache sees the hit as it saw the upstream's response.
        assert miss["headers"]["x-seen-by-mutation"] == "yes"
        assert hit["headers"]["x-seen-by-mutation"] == "yes"
        assert hit["headers"]["server"] == miss["headers"]["server"]
