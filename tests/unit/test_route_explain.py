"""``proxyctl explain`` without processes: the reasons recorded by
:func:`proxyd.protocol.route_explain.explain_match`, that it always agrees with
:meth:`RouteTable.match`, and the master's document (:mod:`proxyd.master.explain`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxyd.config.loader import compile_bootstrap
from proxyd.ctl.explain import format_explain
from proxyd.epoch import Epoch
from proxyd.master.explain import ExplainError, explain, parse_request
from proxyd.protocol.route_explain import explain_match
from proxyd.protocol.routing import RouteTable
from tests.compat.routing_cases import CASES, epoch_route_config
from tests.explain_scenario import config

PORTS = {"web": [9001, 9002], "api": [9003], "blue": [9004], "green": [9005], "ring": [9006, 9007, 9008]}  # fmt: skip


@pytest.fixture(scope="module")
def epoch() -> Epoch:
    return compile_bootstrap(config(PORTS), "f.yaml").epoch_template


@pytest.fixture(scope="module")
def compat_table() -> RouteTable:
    return RouteTable(epoch_route_config())


def routes_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in doc["match"]["routes"]}


# -- explain_match: the same answer as match, with reasons ---------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_explain_takes_the_route_match_takes(compat_table: RouteTable, case: Any) -> None:
    headers = case.joined_headers()
    route = compat_table.match(case.host, case.path, headers)
    doc = explain_match(compat_table, case.host, case.path, headers)
    assert doc["route"] == (route.name if route else None)
    assert doc["_route"] is route
    # Every route before the one taken was tried and said why not.
    assert all(r["verdict"] == "no" and r["reason"] for r in doc["routes"][:-1])


@settings(max_examples=200, deadline=None)
@given(
    host=st.sampled_from(["exact.example.com", "a.sub.example.com", "api.x", "other", "hm.x"]),
    path=st.text(alphabet="/abcxhdrusAPI0123?=&", max_size=16).map(lambda s: "/" + s),
    env=st.sampled_from([None, "prod", "staging", "dev"]),
    flag=st.booleans(),
)
def test_explain_agrees_with_match_on_any_request(
    host: str, path: str, env: str | None, flag: bool
) -> None:
    table = RouteTable(epoch_route_config())
    headers = {"x-flag": "1"} if flag else {}
    if env is not None:
        headers["x-env"] = env
    route = table.match(host, path, headers)
    assert explain_match(table, host, path, headers)["_route"] is route


def test_domain_lookups_follow_envoys_precedence(compat_table: RouteTable) -> None:
    doc = explain_match(compat_table, "api.example.com", "/", {})
    kinds = [(s["kind"], s["domain"], s["virtual_host"]) for s in doc["domain_lookups"]]
    # Exact first, then suffix wildcards longest first; found before any prefix one.
    assert kinds[0] == ("exact", "api.example.com", None)
    assert kinds[-1] == ("suffix", "*.example.com", "suffix_short")
    assert all(k == "suffix" for k, _, _ in kinds[1:])
    doc = explain_match(compat_table, "nothing.test", "/", {})
    assert doc["domain_lookups"][-1] == {"kind": "default", "domain": "*", "virtual_host": "default"}  # fmt: skip


def test_path_reason_names_the_matcher_and_the_path(compat_table: RouteTable) -> None:
    doc = explain_match(compat_table, "other", "/users/abc?x=1", {})
    r = {e["name"]: e for e in doc["routes"]}["regex"]
    assert r["verdict"] == "no"
    assert r["reason"] == "safe_regex '/users/[0-9]+' does not match path '/users/abc'"
    ci = {e["name"]: e for e in doc["routes"]}["path_ci"]
    assert "(case-insensitive)" in ci["reason"]


def test_header_reason_names_the_header_and_its_value(compat_table: RouteTable) -> None:
    doc = explain_match(compat_table, "other", "/hdr", {"x-env": "dev"})
    r = {e["name"]: e for e in doc["routes"]}
    assert r["hdr_exact"]["reason"] == (
        "prefix '/hdr' matches, but header 'x-env': exact 'prod' fails on 'dev'"
    )
    # A missing header is said to be missing.
    multi = r["hdr_multi"]
    assert multi["checks"] == [
        {
            "kind": "header",
            "name": "x-ver",
            "matcher": "regex 'v[0-9]+'",
            "value": None,
            "matched": False,
        }  # fmt: skip
    ]
    assert multi["reason"].endswith("fails on missing")
    assert doc["route"] == "hdr_invert"


def test_query_grpc_and_runtime_reasons(epoch: Epoch) -> None:
    doc = explain(epoch, "GET", "http://api.example.com/search?x=1", [])
    assert routes_of(doc)["search"]["reason"] == (
        "prefix '/search' matches, but query parameter 'q': present fails on missing"
    )
    doc = explain(epoch, "POST", "http://api.example.com/rpc/x", ["Content-Type: application/grpc-web"])  # fmt: skip
    rpc = routes_of(doc)["rpc"]
    assert rpc["verdict"] == "no" and "grpc 'content-type'" in rpc["reason"]
    assert "'application/grpc-web'" in rpc["reason"]
    doc = explain(epoch, "GET", "http://x/canary", [])
    canary = routes_of(doc)["canary"]
    assert canary["verdict"] == "no"
    assert canary["runtime_fraction"]["runtime_key"] == "routing.canary"
    assert "runtime_fraction 'routing.canary' is 0" in canary["reason"]


def test_a_fractional_route_is_maybe_and_the_walk_goes_on(epoch: Epoch) -> None:
    from proxyd.epoch import RuntimeValue

    half = dataclasses.replace(epoch, runtime=(RuntimeValue("routing.canary", "50", 50, 50, 100),))
    doc = explain(half, "GET", "http://x/canary", [])
    canary = routes_of(doc)["canary"]
    assert canary["verdict"] == "maybe"
    assert canary["runtime_fraction"]["probability"] == 0.5
    assert doc["result"]["route"] == "web_rest" and doc["result"]["maybe_routes"] == ["canary"]


# -- the master's document -------------------------------------------------------------------


def test_route_plan_rewrites_timeouts_retry_and_edits(epoch: Epoch) -> None:
    doc = explain(epoch, "GET", "http://api.example.com/users/42", ["X-Env: prod"])
    assert doc["listener"]["name"] == "edge" and doc["match"]["virtual_host"] == "api_host"
    route = doc["route"]
    assert route["name"] == "users" and route["action"] == "cluster"
    assert route["rewrites"]["upstream_path"] == "/v2/user/42"
    assert route["timeouts"]["route_timeout_s"] == 3.0
    assert route["timeouts"]["idle_timeout_s"] == 20.0
    assert route["retry_policy"]["retry_on"] == "5xx,reset"
    assert route["retry_policy"]["num_retries"] == 2
    added = [a["name"] for level in doc["header_mutations"] for a in level.get("request_add", ())]
    assert added == ["x-route", "x-vh"]  # the route's level first, then the virtual host's
    fault = doc["filters"][0]
    assert fault["name"] == "fault" and fault["state"] == "runs"
    assert fault["per_route_config"]["abort"]["http_status"] == 418
    assert doc["result"] == {"route": "users", "cluster": "api", "reason": "forwarded upstream"}


def test_filter_disabled_on_route(epoch: Epoch) -> None:
    doc = explain(epoch, "POST", "http://api.example.com/rpc/a", ["content-type: application/grpc"])
    assert doc["filters"][0]["state"] == "disabled on this route"
    assert doc["result"]["cluster"] == "api"


def test_weighted_clusters_odds_and_header_pick(epoch: Epoch) -> None:
    doc = explain(epoch, "GET", "http://x/split", [])
    odds = {c["name"]: (c["weight"], c["odds"], c["chosen"]) for c in doc["clusters"]}
    assert odds == {"blue": (3, 0.75, None), "green": (1, 0.25, None)}
    assert doc["result"]["cluster"] is None and doc["result"]["cluster_odds"] == {"blue": 0.75, "green": 0.25}  # fmt: skip
    # header_name: the value modulo the total picks, as the worker does (3 % 4 = 3: green).
    doc = explain(epoch, "GET", "http://x/split", ["x-split: 3"])
    assert [c["name"] for c in doc["clusters"] if c["chosen"]] == ["green"]
    assert doc["result"]["cluster"] == "green"


def test_cluster_header(epoch: Epoch) -> None:
    doc = explain(epoch, "GET", "http://x/pick", ["x-cluster: blue"])
    assert doc["result"]["cluster"] == "blue"
    doc = explain(epoch, "GET", "http://x/pick", ["x-cluster: nope"])
    assert doc["result"]["status"] == 503 and doc["result"]["reason"] == "the cluster does not exist"  # fmt: skip
    doc = explain(epoch, "GET", "http://x/pick", [])
    assert doc["result"]["status"] == 503


def test_direct_response_and_no_route(epoch: Epoch) -> None:
    doc = explain(epoch, "GET", "http://x/hello", [])
    assert doc["result"] == {"route": "hello", "status": 200, "reason": "direct_response"}
    assert doc["clusters"] == []


def test_hosts_health_and_next_pick(epoch: Epoch) -> None:
    web = next(c for c in epoch.clusters if c.name == "web")
    first, second = web.endpoints
    sick = dataclasses.replace(web, endpoints=(dataclasses.replace(first, healthy=False), second))
    changed = dataclasses.replace(
        epoch, clusters=tuple(sick if c.name == "web" else c for c in epoch.clusters)
    )
    doc = explain(changed, "GET", "http://x/anything", [])
    (cluster,) = doc["clusters"]
    assert [(h["address"], h["usable"]) for h in cluster["hosts"]] == [
        ("127.0.0.1:9001", False),
        ("127.0.0.1:9002", True),
    ]
    assert cluster["hosts"][0]["health"] == "unhealthy (active health check)"
    assert cluster["next_pick"] == "127.0.0.1:9002"
    assert "own balancer state" in cluster["next_pick_note"]


def test_text_output_tells_the_story(epoch: Epoch) -> None:
    doc = explain(epoch, "GET", "http://x.api.example.com/users/7", ["x-env: dev"])
    text = format_explain(doc)
    assert "suffix   '*.api.example.com': -> virtual host 'api_host'" in text
    assert "[0] users: no - safe_regex '/users/[0-9]+' matches, but header 'x-env'" in text
    assert "[3] api_rest: MATCH" in text
    assert "request add x-vh: api (APPEND_IF_EXISTS_OR_ADD)" in text
    assert "result: route 'api_rest', cluster 'api' (forwarded upstream)" in text


def test_requests_and_listeners_that_cannot_be_explained(epoch: Epoch) -> None:
    with pytest.raises(ExplainError, match="not 'Name: value'"):
        explain(epoch, "GET", "http://x/", ["nocolon"])
    with pytest.raises(ExplainError, match="no listener 'other'; the listeners are: edge"):
        explain(epoch, "GET", "http://x/", [], selector="other")
    assert explain(epoch, "GET", "/", ["Host: h"], selector="edge")["request"]["host"] == "h"
    assert parse_request("http://h:8080/a?b=1#f", ["A: 1", "a: 2"]) == (
        "h:8080",
        "/a?b=1",
        {"a": "1,2"},
    )


def test_hash_policy_pick_is_the_workers(epoch: Epoch) -> None:
    from proxyd.master.explain import compile_epoch
    from proxyd.worker.plan import CompiledEpoch  # noqa: F401 - the worker's compile

    # The worker's own pick for the same request: its plan's hash, its ring.
    compiled = compile_epoch(epoch)
    plan = compiled.plans["edge"]
    route = plan.routes.match("x", "/sticky", {"x-user": "alice"})
    assert route is not None
    rp = plan.route_plans[id(route)]
    assert rp.hash is not None and rp.cluster is not None and rp.cluster.hashing is not None
    value = rp.hash.hash({"x-user": "alice"}, "/sticky", "", lambda p: "")
    assert value is not None
    expected = rp.cluster.hashing.pick_hash(value)
    assert expected is not None
    doc = explain(epoch, "GET", "http://x/sticky", ["x-user: alice"])
    (cluster,) = doc["clusters"]
    assert cluster["request_hash"] == value
    assert cluster["next_pick"] == expected.label
    assert "every worker picks the same host" in cluster["next_pick_note"]
    doc = explain(epoch, "GET", "http://x/sticky", [])
    assert doc["clusters"][0]["next_pick"] is None
    assert "no hash policy gives this request a hash" in doc["clusters"][0]["next_pick_note"]


def test_strip_matching_host_port(epoch: Epoch) -> None:
    from proxyd.epoch import HcmTransforms

    (lst,) = epoch.listeners
    hcm = dataclasses.replace(lst.hcm, transforms=HcmTransforms(strip_host_port="matching"))
    stripped = dataclasses.replace(epoch, listeners=(dataclasses.replace(lst, hcm=hcm),))
    doc = explain(stripped, "GET", "http://api.example.com:8080/", [], ports={"edge": 8080})
    assert doc["host_port_stripped"] == {"host": "api.example.com", "mode": "matching"}
    assert doc["match"]["virtual_host"] == "api_host"
    # Another port than the listener's stays, and the domain does not match.
    doc = explain(stripped, "GET", "http://api.example.com:9/", [], ports={"edge": 8080})
    assert "host_port_stripped" not in doc and doc["match"]["virtual_host"] == "default"


def test_worker_answers_fill_in_the_next_pick(epoch: Epoch) -> None:
    from proxyd import ipc
    from proxyd.master.explain import add_worker_picks, clusters_to_peek

    doc = explain(epoch, "GET", "http://x/anything", [])
    assert clusters_to_peek(doc) == ("web",)
    # Hash-picked clusters are exact already: the workers are not asked.
    assert clusters_to_peek(explain(epoch, "GET", "http://x/sticky", ["x-user: a"])) == ()
    add_worker_picks(
        doc,
        {
            0: ipc.PicksPeeked(0, 1, 0, {"web": "127.0.0.1:9001"}),
            1: ipc.PicksPeeked(1, 1, 0, {"web": "127.0.0.1:9002"}),
        },
    )
    (web,) = doc["clusters"]
    assert web["worker_picks"] == {"0": "127.0.0.1:9001", "1": "127.0.0.1:9002"}
    assert web["next_pick"] is None and "each worker's balancer" in web["next_pick_note"]
    doc = explain(epoch, "GET", "http://x/anything", [])
    add_worker_picks(doc, {3: ipc.PicksPeeked(3, 1, 5, {"web": "127.0.0.1:9002"})})
    (web,) = doc["clusters"]
    assert web["next_pick"] == "127.0.0.1:9002"
    assert web["next_pick_note"].endswith("worker(s) 3 still run another epoch")
    text = format_explain(doc)
    assert "next pick: 127.0.0.1:9002 (what every worker's balancer would pick next" in text
    assert "worker 3: 127.0.0.1:9002" in text


def test_listener_by_name_port_or_the_urls_port(epoch: Epoch) -> None:
    (edge,) = epoch.listeners
    two = dataclasses.replace(epoch, listeners=(edge, dataclasses.replace(edge, name="side")))
    ports = {"edge": 8080, "side": 8081}
    with pytest.raises(ExplainError, match=r"several listeners: choose one with --listener"):
        explain(two, "GET", "http://x/", [], ports=ports)
    assert explain(two, "GET", "http://x:8081/", [], ports=ports)["listener"]["name"] == "side"
    doc = explain(two, "GET", "http://x/", [], selector="8080", ports=ports)
    assert doc["listener"] == {
        "name": "edge",
        "address": "127.0.0.1",
        "port": 8080,
        "chosen": "by port 8080 (--listener)",
    }
    assert explain(two, "GET", "/", ["Host: x"], selector="side", ports=ports)["listener"]["name"] == "side"  # fmt: skip
