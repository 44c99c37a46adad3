"""The stateful session filter: its encodings (Envoy's strict base64, the cookie's
protobuf message), the cookie path rule, the filter on an in-memory stream, the host
selection hook on a real cluster state, and its config (what compiles, what is refused
by path)."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from proxyd.config import compile_bootstrap
from proxyd.epoch import Cluster, Endpoint
from proxyd.filters.api import CONTINUE
from proxyd.filters.stateful_session import override
from proxyd.filters.stateful_session.filter import Factory
from proxyd.filters.stateful_session.session import (
    b64decode,
    cookie_address,
    encode_cookie,
    header_address,
    parse_cookie_message,
    path_matcher,
)
from proxyd.worker.stats import StatsStore
from proxyd.worker.upstream import ClusterState
from tests.unit.filter_stream import Head, MemoryStream
from tests.unit.test_filter_config import base, hcm, reject, route

SESSION = "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession"
PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute"
)
COOKIE = (
    "type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState"
)
HEADER = (
    "type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState"
)
# A cookie Envoy 1.40 wrote: address 127.0.0.1:37107, expires 1796417442.
ENVOY_COOKIE = "Cg8xMjcuMC4wLjE6MzcxMDcQos/M2AY="


# -- encodings -------------------------------------------------------------------------------


def test_envoys_cookie_decodes_and_encodes_the_same() -> None:
    assert parse_cookie_message(base64.b64decode(ENVOY_COOKIE)) == ("127.0.0.1:37107", 1796417442)
    assert encode_cookie("127.0.0.1:37107", 1796417442) == ENVOY_COOKIE
    assert cookie_address(ENVOY_COOKIE, 1796417442) == "127.0.0.1:37107"
    assert cookie_address(ENVOY_COOKIE, 1796417443) is None  # expired


def test_a_cookie_without_expiry_never_expires() -> None:
    value = encode_cookie("[::1]:80", 0)
    assert base64.b64decode(value) == b"\x0a\x08[::1]:80"
    assert cookie_address(value, 2**40) == "[::1]:80"


def test_the_old_format_is_the_address_itself() -> None:
    for address in ("127.0.0.1:8080", "[::1]:8080", "10.0.0.1:1"):
        value = base64.b64encode(address.encode()).decode()
        assert cookie_address(value, 0) == address


def test_protobuf_edge_cases() -> None:
    # Unknown fields are skipped; the last occurrence wins; a known field with another
    # wire type is an unknown one.
    msg = b"\x0a\x01x" + b"\x18\x05" + b"\x25abcd" + b"\x0a\x03a:1" + b"\x12\x01z"
    assert parse_cookie_message(msg) == ("a:1", 0)
    # A group is skipped to its end.
    assert parse_cookie_message(b"\x1b\x08\x01\x1c\x0a\x03a:2") == ("a:2", 0)
    # Malformed: truncated, field 0, a stray end-group, bad UTF-8, wire type 7.
    for bad in (b"\x0a\x05ab", b"\x00\x01", b"\x0c", b"\x0a\x01\xff", b"\x0f", b"\x10\xff"):
        assert parse_cookie_message(bad) is None, bad
    # An empty address is no session, not the bytes as an address.
    assert cookie_address(base64.b64encode(b"\x10\x01").decode(), 0) is None


@pytest.mark.parametrize("text", ["", "YQ", "YQ=", "!!!!", "YR==", "YQ==YQ==", "Y Q=", "YQ=a"])
def test_base64_is_strict(text: str) -> None:
    assert b64decode(text) == b""


def test_header_values() -> None:
    assert header_address(base64.b64encode(b"127.0.0.1:80").decode()) == "127.0.0.1:80"
    assert header_address("!!") is None
    assert header_address("") is None


def test_cookie_path_rule() -> None:
    assert path_matcher("") is None and path_matcher("/") is None
    dir_ = path_matcher("/foo/")
    assert dir_ is not None and dir_("/foo/bar") and not dir_("/foo")
    exact = path_matcher("/foo")
    assert exact is not None
    assert [exact(p) for p in ("/foo", "/foo/x", "/foo?q", "/foo#f", "/foox", "/fo")] == [
        True, True, True, True, False, False
    ]  # fmt: skip


# -- the filter on a stream ------------------------------------------------------------------


@dataclass
class SessionStream(MemoryStream):
    upstream_host: str | None = None
    override_host: tuple[str, bool] | None = None
    added: list[tuple[str, str]] | None = None

    def add_response_header(self, name: str, value: str) -> None:
        if self.added is None:
            self.added = []
        self.added.append((name, value))


class _Stats:
    def inc(self, name: str, by: int = 1) -> None: ...


COOKIE_CONFIG = {"kind": "cookie", "name": "s", "path": "/app", "ttl": 60, "strict": True,
                 "attributes": [["SameSite", "Lax"]]}  # fmt: skip
HEADER_CONFIG = {"kind": "header", "name": "x-s", "strict": False}


def _run(factory: Factory, stream: SessionStream, served_by: str | None) -> None:
    async def main() -> None:
        flt = factory.create()
        assert await flt.on_request_headers(stream, True) is CONTINUE
        stream.upstream_host = served_by
        assert await flt.on_response_headers(stream, None, True) is CONTINUE  # type: ignore[arg-type]

    trio.run(main)


def test_cookie_session_names_the_host_and_the_response_names_a_new_one() -> None:
    f = Factory("ss", COOKIE_CONFIG, None, _Stats())
    assert f.wanted_headers == frozenset({"cookie"}) and f.decodes and f.encodes
    value = encode_cookie("127.0.0.1:1", int(time.time()) + 60)
    s = SessionStream(head=Head(path="/app/x", headers={"cookie": f'a=b; s="{value}"'}))
    _run(f, s, "127.0.0.1:2")
    assert s.override_host == ("127.0.0.1:1", True)
    assert s.added is not None and len(s.added) == 1
    name, line = s.added[0]
    cookie, _, attrs = line.partition("; ")
    assert name == "set-cookie" and attrs == "Max-Age=60; Path=/app; SameSite=Lax; HttpOnly"
    made = cookie_address(cookie.split("=", 1)[1].strip('"'), int(time.time()))
    assert made == "127.0.0.1:2"


def test_repeated_lines() -> None:
    f = Factory("ss", COOKIE_CONFIG, None, _Stats())
    value = encode_cookie("127.0.0.1:1", 0)
    s = SessionStream(head=Head(path="/app", headers={"cookie": f"a=1,b=2; s={value}"}))
    _run(f, s, "127.0.0.1:1")
    assert s.override_host == ("127.0.0.1:1", True)
    h = Factory("ss", HEADER_CONFIG, None, _Stats())
    first, second = (base64.b64encode(a).decode() for a in (b"10.0.0.1:5", b"10.0.0.2:5"))
    s = SessionStream(head=Head(headers={"x-s": f"{first},{second}"}))
    _run(h, s, "10.0.0.1:5")
    assert s.override_host == ("10.0.0.1:5", False) and s.response_headers == {}


def test_the_same_host_sets_nothing_and_no_host_sets_nothing() -> None:
    f = Factory("ss", COOKIE_CONFIG, None, _Stats())
    value = encode_cookie("127.0.0.1:1", 0)
    s = SessionStream(head=Head(path="/app", headers={"cookie": f"s={value}"}))
    _run(f, s, "127.0.0.1:1")
    assert s.added is None
    s = SessionStream(head=Head(path="/app", headers={}))
    _run(f, s, None)
    assert s.added is None and s.override_host is None


def test_a_path_outside_the_cookies_has_no_session() -> None:
    f = Factory("ss", COOKIE_CONFIG, None, _Stats())
    value = encode_cookie("127.0.0.1:1", 0)
    s = SessionStream(head=Head(path="/apps", headers={"cookie": f"s={value}"}))
    _run(f, s, "127.0.0.1:2")
    assert s.override_host is None and s.added is None


def test_header_session_and_per_route() -> None:
    f = Factory("ss", COOKIE_CONFIG, {"disabled": False, "config": HEADER_CONFIG}, _Stats())
    assert f.wanted_headers == frozenset({"x-s"})
    s = SessionStream(head=Head(headers={"x-s": base64.b64encode(b"10.0.0.1:5").decode()}))
    _run(f, s, "10.0.0.2:5")
    assert s.override_host == ("10.0.0.1:5", False)
    assert s.response_headers == {"x-s": base64.b64encode(b"10.0.0.2:5").decode()}
    off = Factory("ss", COOKIE_CONFIG, {"disabled": True}, _Stats())
    assert not off.decodes and not off.encodes and off.wanted_headers == frozenset()
    empty = Factory("ss", {"kind": "", "strict": True}, None, _Stats())
    assert not empty.decodes


# -- host selection --------------------------------------------------------------------------


def _cluster(statuses: tuple[str, ...] | None = None) -> ClusterState:
    endpoints = (
        Endpoint("127.0.0.1", 1),
        Endpoint("127.0.0.1", 2, healthy=False),
        Endpoint("127.0.0.1", 3, ejected=True),
        Endpoint("::1", 4),
    )
    extra: dict[str, Any] = {} if statuses is None else {"override_host_status": statuses}
    cluster = Cluster("c", "STATIC", 1.0, "ROUND_ROBIN", endpoints=endpoints, **extra)
    return ClusterState(cluster, StatsStore())


def test_override_takes_only_allowed_hosts() -> None:
    c = _cluster()
    assert override.pick(c, ("127.0.0.1:1", False))[0].port == 1
    assert override.pick(c, ("[::1]:4", False))[0].port == 4
    for address in ("127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:9", "::1:4"):
        assert override.pick(c, (address, False)) == (None, False)
        assert override.pick(c, (address, True)) == (None, True)
    unhealthy = _cluster(("UNHEALTHY",))
    assert override.pick(unhealthy, ("127.0.0.1:1", False)) == (None, False)
    assert override.pick(unhealthy, ("127.0.0.1:3", False))[0].port == 3
    # HEALTHY alone takes no host: proxyd's (and Envoy's) hosts without an EDS status
    # are UNKNOWN.
    assert override.pick(_cluster(("HEALTHY",)), ("127.0.0.1:1", True)) == (None, True)


# -- config ----------------------------------------------------------------------------------


def _with_filter(typed_config: dict[str, Any]) -> dict[str, Any]:
    d = base()
    hcm(d)["http_filters"] = [
        {"name": "ss", "typed_config": {"@type": SESSION, **typed_config}},
        hcm(d)["http_filters"][-1],
    ]
    return d


def _cookie(**cookie: Any) -> dict[str, Any]:
    return {"session_state": {"name": "c", "typed_config": {"@type": COOKIE, "cookie": cookie}}}


def test_config_compiles() -> None:
    d = _with_filter({**_cookie(name="s", path="/p", ttl="90.5s"), "strict": True})
    route(d, 0)["typed_per_filter_config"] = {"ss": {"@type": PER_ROUTE, "disabled": True}}
    route(d, 1)["typed_per_filter_config"] = {
        "ss": {
            "@type": PER_ROUTE,
            "stateful_session": {
                "session_state": {"name": "h", "typed_config": {"@type": HEADER, "name": "X-S"}}
            },
        }
    }
    d["static_resources"]["clusters"][0]["common_lb_config"] = {
        "override_host_status": {"statuses": ["DRAINING", "HEALTHY"]}
    }
    lc = compile_bootstrap(d, "conf.yaml")
    h = lc.epoch_template.listeners[0].hcm
    assert h is not None
    assert h.http_filters[0].config == {
        "kind": "cookie", "strict": True, "name": "s", "path": "/p", "ttl": 90, "attributes": []
    }  # fmt: skip
    routes = h.route_config.virtual_hosts[0].routes
    assert routes[0].filter_configs[0].config == {"disabled": True}
    assert routes[1].filter_configs[0].config == {
        "disabled": False,
        "config": {"kind": "header", "strict": False, "name": "x-s"},
    }
    assert lc.epoch_template.clusters[0].override_host_status == ("DRAINING", "HEALTHY")


@pytest.mark.parametrize(
    ("typed_config", "where", "says"),
    [
        ({**_cookie(name="s"), "stat_prefix": "x"}, ".stat_prefix", "not supported by proxyd"),
        (_cookie(name=""), "cookie.name", "at least 1 characters"),
        (
            {"session_state": {"name": "c", "typed_config": {"@type": COOKIE}}},
            "typed_config.cookie",
            "value is required",
        ),
        (
            {"session_state": {"name": "h", "typed_config": {"@type": HEADER, "name": ""}}},
            "session_state.typed_config.name",
            "at least 1 characters",
        ),
    ],
)
def test_config_refusals(typed_config: dict[str, Any], where: str, says: str) -> None:
    err = reject(_with_filter(typed_config))
    assert where in err.path and says in str(err)
