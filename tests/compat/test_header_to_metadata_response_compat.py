"""header_to_metadata ``response_rules``, proxyd beside real Envoy on the same YAML: what
the access log's %DYNAMIC_METADATA(...)% prints from the upstream's response headers
(present, missing, NUMBER, a regex rewrite, ``:status``, a request rule beside them,
and a route whose per-route config replaces the filter's), and that ``remove`` takes a
header off the response the client gets."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.support import UpstreamServer, bootstrap, http_listener, static_cluster, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

H2M = "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"
LOG = (
    "%REQ(X-ID)% up=%DYNAMIC_METADATA(resp:upstream)% ct=%DYNAMIC_METADATA(resp:kind)%"
    " len=%DYNAMIC_METADATA(resp:length)% miss=%DYNAMIC_METADATA(resp:missing)%"
    " st=%DYNAMIC_METADATA(resp:status)% req=%DYNAMIC_METADATA(req:id)%"
    " own=%DYNAMIC_METADATA(envoy.filters.http.header_to_metadata:upstream)%"
    " route=%DYNAMIC_METADATA(route:ct)% gone=%DYNAMIC_METADATA(req:gone)%"
    " after=%DYNAMIC_METADATA(req:after)%\n"
)
RESPONSE_RULES = [
    {
        "header": "x-upstream-name",
        "on_header_present": {"metadata_namespace": "resp", "key": "upstream", "type": "STRING"},
        "remove": True,
    },
    {
        "header": "content-type",
        "on_header_present": {
            "metadata_namespace": "resp",
            "key": "kind",
            "regex_value_rewrite": {"pattern": {"regex": "^[a-z]+/(.*)$"}, "substitution": "\\1"},
        },
    },
    {"header": "content-length", "on_header_present": {"metadata_namespace": "resp", "key": "length", "type": "NUMBER"}},
    {
        "header": "x-not-sent",
        "on_header_missing": {"metadata_namespace": "resp", "key": "missing", "value": "yes"},
    },
    {"header": ":status", "on_header_present": {"metadata_namespace": "resp", "key": "status"}},
    {"header": "x-upstream-name", "on_header_present": {"key": "upstream"}},
]  # fmt: skip
REQUEST_RULES = [
    {"header": "x-id", "on_header_present": {"metadata_namespace": "req", "key": "id"}},
    # A header a rule removed is missing for the rules after it.
    {"header": "x-gone", "on_header_present": {"metadata_namespace": "req", "key": "gone"}, "remove": True},
    {"header": "x-gone", "on_header_missing": {"metadata_namespace": "req", "key": "after", "value": "missing"}},
]  # fmt: skip
PER_ROUTE = {
    "@type": H2M,
    "response_rules": [
        {
            "header": "content-type",
            "on_header_present": {"metadata_namespace": "route", "key": "ct"},
        }
    ],
}


def config(upstream: int, log_path: str) -> str:
    route_config = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/own/"},
                        "route": {"cluster": "svc", "prefix_rewrite": "/"},
                        "typed_per_filter_config": {
                            "envoy.filters.http.header_to_metadata": PER_ROUTE
                        },
                    },
                    {"match": {"prefix": "/"}, "route": {"cluster": "svc"}},
                ],
            }
        ],
    }
    filt = {"@type": H2M, "request_rules": REQUEST_RULES, "response_rules": RESPONSE_RULES}
    listener = http_listener(
        "ingress",
        0,
        route_config,
        [{"name": "envoy.filters.http.header_to_metadata", "typed_config": filt}],
        stat_prefix="ingress_http",
        access_log=[
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": log_path,
                    "log_format": {"text_format_source": {"inline_string": LOG}},
                },
            }
        ],
    )
    return yaml.safe_dump(
        bootstrap([listener], [static_cluster("svc", [upstream])]), sort_keys=False
    )


CASES: dict[str, str] = {
    "echo": "/echo",
    "removed_request_header": "/echo",
    "status": "/status/404",
    "bytes": "/bytes/3",
    "per_route": "/own/echo",
}


def play_all(port_of: PortOf, log: Path) -> dict[str, Any]:
    port = port_of("ingress")
    out: dict[str, Any] = {}
    for name, path in CASES.items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        extra = {"x-gone": "here"} if name == "removed_request_header" else {}
        conn.request("GET", path, headers={"host": "x", "x-id": name, **extra})
        r = conn.getresponse()
        r.read()
        conn.close()
        out[name] = {"status": r.status, "x-upstream-name": r.getheader("x-upstream-name")}
    lines = wait_for(
        lambda: (t := log.read_text() if log.exists() else "").count("\n") >= len(CASES) and t,
        timeout=10,
    )
    log.write_text("")
    for line in lines.splitlines():
        name, _, rest = line.partition(" ")
        out[name]["log"] = rest
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    upstream = UpstreamServer("svc").start()
    log = tmp_path_factory.mktemp("h2m-resp-log") / "access.log"
    try:
        yield run_pair(
            config(upstream.port, str(log)),
            tmp_path_factory.mktemp("h2m-resp"),
            lambda port_of: play_all(port_of, log),
        )
    finally:
        upstream.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_response_metadata_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    e = results.envoy.replies
    assert "up=svc" in e["echo"]["log"] and "ct=json" in e["echo"]["log"]
    assert "miss=yes" in e["echo"]["log"] and "req=echo" in e["echo"]["log"]
    assert "len=3" in e["bytes"]["log"]
    assert e["echo"]["x-upstream-name"] is None  # removed
    assert "route=application/json" in e["per_route"]["log"]
    assert "gone=here after=missing" in e["removed_request_header"]["log"]
