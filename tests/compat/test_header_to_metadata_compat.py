"""The header_to_metadata filter, proxyd beside real Envoy on the same YAML: what the
access log's %DYNAMIC_METADATA(...)% prints for each request (header present, missing,
cookie, NUMBER, regex rewrite of :path, the default namespace) and that ``remove``
takes the header off the request the upstream gets."""

from __future__ import annotations

import http.client
import json
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
    "%REQ(X-ID)% v=%DYNAMIC_METADATA(envoy.lb:version)% d=%DYNAMIC_METADATA(envoy.lb:default)%"
    " c=%DYNAMIC_METADATA(envoy.lb:flavor)% n=%DYNAMIC_METADATA(nums:num)%"
    " p=%DYNAMIC_METADATA(envoy.lb:cluster)% own=%DYNAMIC_METADATA(envoy.filters.http.header_to_metadata:drop)%\n"
)
RULES = [
    {
        "header": "x-version",
        "on_header_present": {"metadata_namespace": "envoy.lb", "key": "version", "type": "STRING"},
        "on_header_missing": {
            "metadata_namespace": "envoy.lb", "key": "default", "value": "true", "type": "STRING",
        },
    },
    {
        "cookie": "flavor",
        "on_header_present": {"metadata_namespace": "envoy.lb", "key": "flavor", "type": "STRING"},
    },
    {"header": "x-num", "on_header_present": {"metadata_namespace": "nums", "key": "num", "type": "NUMBER"}},
    {
        "header": ":path",
        "on_header_present": {
            "metadata_namespace": "envoy.lb",
            "key": "cluster",
            "regex_value_rewrite": {
                "pattern": {"regex": "^/(cluster[\\d\\w-]+)/?.*$"},
                "substitution": "\\1",
            },
        },
    },
    {"header": "x-drop", "on_header_present": {"key": "drop"}, "remove": True},
]  # fmt: skip


def config(upstream: int, log_path: str) -> str:
    route_config = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}],
            }
        ],
    }
    listener = http_listener(
        "ingress",
        0,
        route_config,
        [
            {
                "name": "envoy.filters.http.header_to_metadata",
                "typed_config": {"@type": H2M, "request_rules": RULES},
            }
        ],
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


CASES: dict[str, tuple[str, dict[str, str]]] = {
    "present": ("/echo", {"x-version": "v2"}),
    "missing": ("/echo", {}),
    "empty_is_present": ("/echo", {"x-version": ""}),
    "cookie": ("/echo", {"cookie": "a=1; flavor=vanilla; b=2"}),
    "no_cookie": ("/echo", {"cookie": "a=1"}),
    "number": ("/echo", {"x-num": "42"}),
    "number_fraction": ("/echo", {"x-num": "2.5"}),
    "not_a_number": ("/echo", {"x-num": "abc"}),
    "path_rewrite": ("/cluster-7/echo", {}),
    "path_no_match": ("/other/echo", {}),
    "removed": ("/echo", {"x-drop": "secret"}),
}


def play_all(port_of: PortOf, log: Path) -> dict[str, Any]:
    port = port_of("ingress")
    out: dict[str, Any] = {}
    for name, (path, headers) in CASES.items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path, headers={"host": "x", "x-id": name, **headers})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        seen = dict(json.loads(body)["headers"]) if body.startswith(b"{") else {}
        out[name] = {"status": r.status, "x-drop upstream": seen.get("x-drop")}
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
    log = tmp_path_factory.mktemp("h2m-log") / "access.log"
    try:
        yield run_pair(
            config(upstream.port, str(log)),
            tmp_path_factory.mktemp("h2m"),
            lambda port_of: play_all(port_of, log),
        )
    finally:
        upstream.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_metadata_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    e = results.envoy.replies
    assert "v=v2" in e["present"]["log"] and "d=true" in e["missing"]["log"]
    assert "c=vanilla" in e["cookie"]["log"] and "p=cluster-7" in e["path_rewrite"]["log"]
    assert e["removed"]["x-drop upstream"] is None
