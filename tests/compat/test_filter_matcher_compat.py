"""Filters with a matcher around them (ExtensionWithMatcher) and the composite filter,
proxyd beside real Envoy on the same YAML.

Three wrapped filters in one chain:

1. a fault filter that aborts every request with 418, skipped (SkipFilter) when an
   ``exact_match_map`` on ``x-skip`` says "yes";
2. a composite filter whose ``matcher_list`` runs, by ``x-op``, a fault abort (429), a
   set_metadata or, in a nested matcher on ``:path`` prefixes, one of two others;
3. a set_metadata skipped when ``x-a`` is 1 and ``x-b`` is not 2 (and/not predicates),
   or when a ``prefix_match_map`` on ``x-tenant`` finds its prefix.

Each case compares the status and what each set_metadata left (read back by the route's
response headers through ``%DYNAMIC_METADATA%``); the fault and composite stats are
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

WITH_MATCHER = "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"
SKIP = "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter"
EXECUTE = "type.googleapis.com/envoy.extensions.filters.http.composite.v3.ExecuteFilterAction"
COMPOSITE = "type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite"
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
SET = "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config"
HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"


def _input(header: str) -> dict[str, Any]:
    return {"name": "h", "typed_config": {"@type": HEADER_INPUT, "header_name": header}}


def _single(header: str, exact: str) -> dict[str, Any]:
    return {"single_predicate": {"input": _input(header), "value_match": {"exact": exact}}}


def _skip() -> dict[str, Any]:
    return {"action": {"name": "skip", "typed_config": {"@type": SKIP}}}


def _execute(name: str, typed_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "action": {
            "name": "run",
            "typed_config": {
                "@type": EXECUTE,
                "typed_config": {"name": name, "typed_config": typed_config},
            },
        }
    }


def _abort(status: int) -> dict[str, Any]:
    return {"@type": FAULT, "abort": {"http_status": status, "percentage": {"numerator": 100}}}


def _mark(namespace: str, value: str) -> dict[str, Any]:
    """A set_metadata filter config: ``namespace``'s ``mark`` is ``value`` (read back by
    the route's response headers)."""
    return {"@type": SET, "metadata": [{"metadata_namespace": namespace, "value": {"mark": value}}]}


FILTERS = [
    {
        "name": "teapot",
        "typed_config": {
            "@type": WITH_MATCHER,
            "extension_config": {"name": "envoy.filters.http.fault", "typed_config": _abort(418)},
            "xds_matcher": {
                "matcher_tree": {
                    "input": _input("x-skip"),
                    "exact_match_map": {"map": {"yes": _skip()}},
                }
            },
        },
    },
    {
        "name": "composite",
        "typed_config": {
            "@type": WITH_MATCHER,
            "extension_config": {"name": "composite", "typed_config": {"@type": COMPOSITE}},
            "xds_matcher": {
                "matcher_list": {
                    "matchers": [
                        {"predicate": _single("x-op", "abort"), "on_match": _execute("f", _abort(429))},
                        {
                            "predicate": _single("x-op", "mutate"),
                            "on_match": _execute("m", _mark("composite", "hit")),
                        },
                        {
                            "predicate": _single("x-op", "by-path"),
                            "on_match": {
                                "matcher": {
                                    "matcher_tree": {
                                        "input": _input(":path"),
                                        "prefix_match_map": {
                                            "map": {
                                                "/echo/a": _execute("pa", _mark("path", "a")),
                                                "/echo/a/b": _execute("pb", _mark("path", "ab")),
                                            }
                                        },
                                    }
                                }
                            },
                        },
                    ]
                }
            },
        },
    },
    {
        "name": "third",
        "typed_config": {
            "@type": WITH_MATCHER,
            "extension_config": {
                "name": "envoy.filters.http.set_metadata",
                "typed_config": _mark("third", "on"),
            },
            "xds_matcher": {
                "matcher_list": {
                    "matchers": [
                        {
                            "predicate": {
                                "and_matcher": {
                                    "predicate": [
                                        _single("x-a", "1"),
                                        {"not_matcher": _single("x-b", "2")},
                                    ]
                                }
                            },
                            "on_match": _skip(),
                        }
                    ]
                },
                "on_no_match": {
                    "matcher": {
                        "matcher_tree": {
                            "input": _input("x-tenant"),
                            "prefix_match_map": {"map": {"skip-": _skip()}},
                        }
                    }
                },
            },
        },
    },
]  # fmt: skip


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
                            {
                                "header": {
                                    "key": f"x-{ns}",
                                    "value": f"%DYNAMIC_METADATA({ns}:mark)%",
                                }
                            }
                            for ns in ("composite", "path", "third")
                        ],
                    }
                ],
            }
        ],
    }
    listener = http_listener("ingress", 0, route_config, FILTERS, stat_prefix="ingress_http")
    return yaml.safe_dump(
        bootstrap([listener], [static_cluster("svc", [upstream])]), sort_keys=False
    )


SKIPPED = {"x-skip": "yes"}
CASES: dict[str, tuple[str, dict[str, str]]] = {
    "fault_runs_without_match": ("/echo", {}),
    "fault_runs_on_other_value": ("/echo", {"x-skip": "no"}),
    "fault_skipped": ("/echo", SKIPPED),
    "composite_abort": ("/echo", {**SKIPPED, "x-op": "abort"}),
    "composite_mutate": ("/echo", {**SKIPPED, "x-op": "mutate"}),
    "composite_no_match": ("/echo", {**SKIPPED, "x-op": "other"}),
    "composite_path_a": ("/echo/a/x", {**SKIPPED, "x-op": "by-path"}),
    "composite_path_ab": ("/echo/a/b/c", {**SKIPPED, "x-op": "by-path"}),
    "composite_path_none": ("/echo/z", {**SKIPPED, "x-op": "by-path"}),
    "third_skipped_and_not": ("/echo", {**SKIPPED, "x-a": "1"}),
    "third_runs_b_is_2": ("/echo", {**SKIPPED, "x-a": "1", "x-b": "2"}),
    "third_runs_a_is_other": ("/echo", {**SKIPPED, "x-a": "3"}),
    "third_skipped_by_prefix": ("/echo", {**SKIPPED, "x-tenant": "skip-me"}),
    "third_runs_other_tenant": ("/echo", {**SKIPPED, "x-tenant": "keep"}),
    "all_together": ("/echo/a/b", {**SKIPPED, "x-op": "mutate", "x-tenant": "skip-1"}),
}


def play_all(port_of: PortOf) -> dict[str, Any]:
    port = port_of("ingress")
    out: dict[str, Any] = {}
    for name, (path, headers) in CASES.items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path, headers={"host": "x", **headers})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        out[name] = {
            "status": r.status,
            "upstream": body.startswith(b"{"),
            **{h: r.getheader(h) for h in ("x-composite", "x-path", "x-third")},
        }
    return out


def pick(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if ".fault." in k or "composite" in k}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    upstream = UpstreamServer("svc").start()
    try:
        yield run_pair(
            config(upstream.port), Path(tmp_path_factory.mktemp("fmatch")), play_all, pick
        )
    finally:
        upstream.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_matching_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_stats_like_envoy(results: Pair) -> None:
    assert results.proxyd.stats == results.envoy.stats


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    e = results.envoy.replies
    assert e["fault_runs_without_match"]["status"] == 418
    assert e["fault_skipped"]["status"] == 200
    assert e["composite_abort"]["status"] == 429
    assert e["composite_mutate"]["x-composite"] == "hit"
    assert e["composite_path_ab"]["x-path"] == "ab"
    assert e["composite_path_a"]["x-path"] == "a"
    assert e["third_skipped_and_not"]["x-third"] is None
    assert e["third_runs_b_is_2"]["x-third"] == "on"
