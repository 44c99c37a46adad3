"""The set_metadata filter, proxyd beside real Envoy on the same YAML.

Two set_metadata filters after a header_to_metadata one: the deprecated single-namespace
form, untyped entries that insert, merge (``allow_overwrite``: a scalar replaced, a list
appended to, an object merged key by key, another kind replaced) or are denied, and typed
entries. What each request's metadata holds is read back through
``%DYNAMIC_METADATA(...)%`` in response headers; ``set_metadata.overwrite_denied`` is
compared too."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
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

SET = "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config"
H2M = "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"
TYPED = {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
    "metadata_namespace": "inner",
    "value": {"x": "y"},
}
FIRST = {
    "metadata_namespace": "legacy",
    "value": {"a": 1, "l": ["x"], "s": "text", "f": 2.5, "b": True, "o": {"deep": {"k": "v"}}},
    "metadata": [
        {"metadata_namespace": "pre", "value": {"k": "set", "n": 7}},
        {
            "metadata_namespace": "merge",
            "value": {"int": 1, "list": ["a"], "key": ["val"], "tags": {"tag0": 1}},
        },
        {"metadata_namespace": "typed", "typed_value": TYPED},
        {"metadata_namespace": "empty"},
    ],
}
SECOND = {
    "metadata": [
        {
            "metadata_namespace": "merge",
            "allow_overwrite": True,
            "value": {"int": 2, "list": ["b", "c"], "key": 1, "tags": {"tag1": 1}, "new": "added"},
        },
        {"metadata_namespace": "legacy", "value": {"a": 2}},
        {"metadata_namespace": "pre", "allow_overwrite": True, "value": {"k": ["now a list"]}},
        {"metadata_namespace": "typed", "typed_value": TYPED},
        {"metadata_namespace": "typed2", "allow_overwrite": True, "typed_value": TYPED},
    ]
}
SHOWN = {
    "x-legacy-a": "%DYNAMIC_METADATA(legacy:a)%",
    "x-legacy-l": "%DYNAMIC_METADATA(legacy:l)%",
    "x-legacy-s": "%DYNAMIC_METADATA(legacy:s)%",
    "x-legacy-f": "%DYNAMIC_METADATA(legacy:f)%",
    "x-legacy-b": "%DYNAMIC_METADATA(legacy:b)%",
    "x-legacy-deep": "%DYNAMIC_METADATA(legacy:o:deep:k)%",
    "x-pre-k": "%DYNAMIC_METADATA(pre:k)%",
    "x-pre-n": "%DYNAMIC_METADATA(pre:n)%",
    "x-pre-seed": "%DYNAMIC_METADATA(pre:seed)%",
    "x-merge-int": "%DYNAMIC_METADATA(merge:int)%",
    "x-merge-list": "%DYNAMIC_METADATA(merge:list)%",
    "x-merge-key": "%DYNAMIC_METADATA(merge:key)%",
    "x-merge-tag0": "%DYNAMIC_METADATA(merge:tags:tag0)%",
    "x-merge-tag1": "%DYNAMIC_METADATA(merge:tags:tag1)%",
    "x-merge-new": "%DYNAMIC_METADATA(merge:new)%",
    "x-empty": "%DYNAMIC_METADATA(empty)%",
}


def config(upstream: int) -> str:
    route_config = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "route": {"cluster": "svc"},
                        "response_headers_to_add": [
                            {"header": {"key": k, "value": v}} for k, v in SHOWN.items()
                        ],
                    }
                ],
            }
        ],
    }
    filters = [
        {
            "name": "envoy.filters.http.header_to_metadata",
            "typed_config": {
                "@type": H2M,
                "request_rules": [
                    {
                        "header": "x-seed",
                        "on_header_present": {"metadata_namespace": "pre", "key": "seed"},
                    }
                ],
            },
        },
        {"name": "first", "typed_config": {"@type": SET, **FIRST}},
        {"name": "second", "typed_config": {"@type": SET, **SECOND}},
    ]
    listener = http_listener("ingress", 0, route_config, filters, stat_prefix="ingress_http")
    return yaml.safe_dump(
        bootstrap([listener], [static_cluster("svc", [upstream])]), sort_keys=False
    )


CASES: dict[str, dict[str, str]] = {
    "fresh": {},
    "namespace_already_set": {"x-seed": "s1"},
    "fresh_again": {},
}


def play_all(port_of: PortOf) -> dict[str, Any]:
    port = port_of("ingress")
    out: dict[str, Any] = {}
    for name, headers in CASES.items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/echo", headers={"host": "x", **headers})
        r = conn.getresponse()
        r.read()
        conn.close()
        out[name] = {"status": r.status, **{k: r.getheader(k) for k in SHOWN}}
    return out


def pick(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if "set_metadata" in k}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    upstream = UpstreamServer("svc").start()
    try:
        yield run_pair(
            config(upstream.port), Path(tmp_path_factory.mktemp("setmd")), play_all, pick
        )
    finally:
        upstream.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_metadata_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_overwrite_denied_counted_like_envoy(results: Pair) -> None:
    assert results.proxyd.stats == results.envoy.stats


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    fresh = results.envoy.replies["fresh"]
    assert fresh["x-merge-int"] == "2" and fresh["x-merge-tag0"] == "1"
    assert fresh["x-legacy-a"] == "1"  # the second filter may not overwrite
    assert results.envoy.replies["namespace_already_set"]["x-pre-n"] is None
    assert results.envoy.stats["http.ingress_http.set_metadata.overwrite_denied"] > 0
