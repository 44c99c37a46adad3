"""URI-template routes (RouteMatch.path_match_policy, RouteAction.path_rewrite_policy),
proxyd beside real Envoy on the same YAML: which route a path takes (or 404) and the
path the upstream receives after the template rewrite."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.support import UpstreamServer, bootstrap, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

MATCH = "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"
REWRITE = (
    "type.googleapis.com/envoy.extensions.path.rewrite.uri_template.v3.UriTemplateRewriteConfig"
)
NAMES = ("a", "b", "c", "d")


def route(cluster: str, template: str, rewrite: str = "") -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": cluster}
    if rewrite:
        action["path_rewrite_policy"] = {
            "name": "envoy.path.rewrite.uri_template.uri_template_rewriter",
            "typed_config": {"@type": REWRITE, "path_template_rewrite": rewrite},
        }
    return {
        "match": {
            "path_match_policy": {
                "name": "envoy.path.match.uri_template.uri_template_matcher",
                "typed_config": {"@type": MATCH, "path_template": template},
            }
        },
        "route": action,
    }


ROUTES = [
    route("a", "/books/{author}/{title}", "/library/{title}/{author}"),
    route("b", "/static/**"),
    route(
        "c",
        "/videos/*/{id}/{format}/{rendition}/{segment=**}.ts",
        "/{id}/{format}/{rendition}/{segment}.ts",
    ),
    route("d", "/files/{path=**}", "/f/{path}"),
    route("a", "/x/{name=users/*}/profile", "/{name}"),
    route("b", "/shop/*/items/{item}", "/item/{item}/info"),
    route("c", "/deep/**/end"),
    route("d", "/tail/{rest=**}/end", "/{rest}"),
]


def config(ports: dict[str, int]) -> str:
    route_config = {
        "name": "local",
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": ROUTES}],
    }
    doc = bootstrap(
        [http_listener("ingress", 0, route_config, stat_prefix="ingress_http")],
        [static_cluster(n, [ports[n]]) for n in NAMES],
    )
    return yaml.safe_dump(doc, sort_keys=False)


PATHS = [
    "/books/tolkien/hobbit",
    "/books/tolkien/hobbit?edition=2",
    "/books/tolkien",
    "/books/tolkien/hobbit/extra",
    "/books//hobbit",
    "/books/t%20k/the.hobbit",
    "/books/a*b/c",
    "/books/a[b]/c",
    "/books/a^b/c",
    "/books/a|b/c",
    "/books/a{b}/c",
    "/static/a*b/[c]",
    "/books/Tolkien/Hobbit",
    "/static/",
    "/static",
    "/static/a/b/c.css",
    "/static/a//b",
    "/videos/h264/123/mp4/720p/seg/1.ts",
    "/videos/h264/123/mp4/720p/1.ts",
    "/videos/h264/123/mp4/720p/.ts",
    "/videos/h264/123/mp4/720p/1.mp4",
    "/files/",
    "/files/a/b",
    "/files",
    "/x/users/bob/profile",
    "/x/admins/bob/profile",
    "/x/users/profile",
    "/shop/acme/items/42",
    "/shop/acme/items/42/",
    "/shop//items/42",
    "/BOOKS/tolkien/hobbit",
    "/deep/a/b/end",
    "/deep/end",
    "/deep//end",
    "/deep/a/end/x",
    "/tail/a/b/end",
    "/tail/end",
    "/tail//end",
]


def play(port: int, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"host": "x"})
        r = conn.getresponse()
        return {
            "status": r.status,
            "upstream": r.getheader("x-upstream-name"),
            "body": r.read().decode("latin-1"),
        }
    finally:
        conn.close()


def play_all(port_of: PortOf) -> dict[str, Any]:
    port = port_of("ingress")
    return {path: play(port, path) for path in PATHS}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    upstreams = {n: UpstreamServer(n).start() for n in NAMES}
    try:
        ports = {n: u.port for n, u in upstreams.items()}
        yield run_pair(config(ports), tmp_path_factory.mktemp("uri"), play_all)
    finally:
        for u in upstreams.values():
            u.stop()


@pytest.mark.parametrize("path", PATHS)
def test_proxyd_routes_templates_like_envoy(results: Pair, path: str) -> None:
    assert results.proxyd.replies[path] == results.envoy.replies[path]


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    e = results.envoy.replies
    assert "/library/hobbit/tolkien" in e["/books/tolkien/hobbit"]["body"]
    assert e["/books/tolkien"]["status"] == 404
    assert e["/static/a/b/c.css"]["upstream"] == "b"
    assert "/123/mp4/720p/seg/1.ts" in e["/videos/h264/123/mp4/720p/seg/1.ts"]["body"]
    assert "/users/bob" in e["/x/users/bob/profile"]["body"]
