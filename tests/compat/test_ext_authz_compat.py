"""The ext_authz filter: real Envoy and real proxyd on the same YAML, pointed at the
same real authorization servers (:mod:`tests.compat.ext_authz_servers`).

Two scenarios, one Envoy + proxyd pair each, many cases each:

* the HTTP service: listeners with every ``http_service`` option (allowed request
  headers, headers_to_add, path_prefix, upstream / append / client / on-success header
  lists, a buffered body up to 64 bytes, ``stat_prefix``), with none of them
  (``failure_mode_allow`` with its header), with the top-level ``allowed_headers``,
  pointed at a server that is down
  (``status_on_error``), and with ``filter_enabled`` at 0%; a route disables the
  filter;
* the gRPC service: a CheckRequest with a partial body and context extensions from the
  virtual host and the route, one with ``pack_as_bytes`` and ``allowed_headers``, and a
  server that is down with ``failure_mode_allow``.

For every case the client's answer (status, headers, body, or what the upstream echoed
of the request), what the authorization server got (the HTTP check's method, path,
headers and body; the decoded CheckRequest and the call's metadata) and the
``ext_authz`` stats must be the same. What differs by nature is left out: dates, the
request id (and the CheckRequest's ``id``, ``time``, and the ports of the client's
connection and of the listener). Header lists are compared sorted (a replaced header may
move).
"""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.compat.envoy_runner import envoy_available
from tests.compat.ext_authz_servers import AuthGrpcServer, AuthHttpServer
from tests.compat.pair import PortOf, run_pair
from tests.support import (
    UpstreamServer,
    bootstrap,
    dump_yaml,
    free_port,
    http_listener,
    static_cluster,
)

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

NAME = "envoy.filters.http.ext_authz"
EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
H2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}
# Headers whose values differ by nature between two proxies, or by run.
VOLATILE = {"x-request-id"}
# Headers whose presence is compared, not their values.
TIMES = {"date", "x-envoy-upstream-service-time"}


def patterns(*specs: dict[str, Any]) -> dict[str, Any]:
    return {"patterns": list(specs)}


def ext_authz(**fields: Any) -> dict[str, Any]:
    return {"name": NAME, "typed_config": {"@type": EXT_AUTHZ, **fields}}


def per_route(**fields: Any) -> dict[str, Any]:
    return {NAME: {"@type": PER_ROUTE, **fields}}


def routes(*extra: dict[str, Any], **vhost: Any) -> dict[str, Any]:
    return {
        "virtual_hosts": [
            {
                "name": "v",
                "domains": ["*"],
                "routes": [*extra, {"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
                **vhost,
            }
        ]
    }


def http_service(**fields: Any) -> dict[str, Any]:
    return {"server_uri": {"uri": "http://authz", "cluster": "authz", "timeout": "0.5s"}, **fields}


# -- what each side saw -------------------------------------------------------------------


def client_view(r: httpx.Response) -> dict[str, Any]:
    headers = sorted(
        [k, "*" if k in TIMES else v] for k, v in r.headers.multi_items() if k not in VOLATILE
    )
    out: dict[str, Any] = {"status": r.status_code, "headers": headers}
    if r.headers.get("content-type") == "application/json":
        echo = r.json()
        out["upstream"] = {
            "method": echo["method"],
            "path": echo["path"],
            "headers": sorted(
                [k, v] for k, v in echo["headers"] if k not in VOLATILE and k != "host"
            ),
            "body_bytes": echo["body_bytes"],
        }
    else:
        out["body"] = r.text
    return out


def http_checks(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in checks:
        c = dict(c)
        c["headers"] = [h for h in c["headers"] if h[0] != "host"]
        out.append(c)
    return out


def grpc_checks(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in checks:
        c = copy.deepcopy(c)
        attrs = c["request"]["attributes"]
        http = attrs["request"]["http"]
        assert http.pop("id")  # a stream id on both sides, different by nature
        assert attrs["request"].pop("time")
        http["headers"].pop("x-request-id", None)  # proxyd makes it after the filters
        for peer in ("source", "destination"):
            sa = attrs[peer]["address"]["socketAddress"]
            sa["portValue"] = bool(sa.get("portValue"))
        for key in (":authority",):
            http["headers"].pop(key, None)
        http.pop("host")
        out.append(c)
    return out


def send(port: int, method: str, path: str, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> httpx.Response:  # fmt: skip
    with httpx.Client(timeout=5) as client:
        return client.request(
            method, f"http://127.0.0.1:{port}{path}", headers=headers or {}, content=body
        )


# The authorization clusters' own stats that proxyd keeps: the checks go through their
# pools like any request.
CLUSTER_STATS = ("upstream_rq_", "upstream_cx_total", "upstream_cx_connect_fail")


def ext_authz_stats(stats: dict[str, int]) -> dict[str, int]:
    """The filter's stats (a gRPC call is not counted in its cluster's stats by proxyd)."""
    return {k: v for k, v in stats.items() if ".ext_authz." in k and v}


def stats_of(stats: dict[str, int]) -> dict[str, int]:
    return {
        k: v
        for k, v in stats.items()
        if v
        and (
            ".ext_authz." in k
            or (
                k.startswith(("cluster.authz.", "cluster.down."))
                and k.split(".", 2)[2].startswith(CLUSTER_STATS)
                and not k.endswith(("_completed", "_pending_failure_eject"))
            )
        )
    }


Case = tuple[str, str, str, dict[str, str], bytes | None]


def play_cases(
    cases: list[Case], take: Callable[[], list[dict[str, Any]]],
    view: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
) -> Callable[[PortOf], dict[str, Any]]:  # fmt: skip
    def play(port_of: PortOf) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for listener, method, path, headers, body in cases:
            r = send(port_of(listener), method, path, headers, body)
            out[f"{listener} {method} {path} {sorted(headers)}"] = {
                "client": client_view(r),
                "authz": view(take()),
            }
        return out

    return play


def assert_same(pair: Any) -> None:
    for key, envoy in pair.envoy.replies.items():
        mine = pair.proxyd.replies[key]
        assert mine == envoy, (
            key,
            json.dumps(mine, sort_keys=True),
            json.dumps(envoy, sort_keys=True),
        )
    assert pair.proxyd.stats == pair.envoy.stats, (
        sorted(pair.proxyd.stats.items()),
        sorted(pair.envoy.stats.items()),
    )


# -- the HTTP service -----------------------------------------------------------------------


def http_config(up: int, auth: int) -> str:
    full = ext_authz(
        http_service=http_service(
            path_prefix="/check",
            authorization_request={
                "allowed_headers": patterns({"exact": "x-pass"}, {"prefix": "x-also"}),
                "headers_to_add": [{"key": "x-added", "value": "v1"}],
            },
            authorization_response={
                "allowed_upstream_headers": patterns({"exact": "x-auth-user"}),
                "allowed_upstream_headers_to_append": patterns({"exact": "x-auth-append"}),
                "allowed_client_headers": patterns({"exact": "x-deny-reason"}),
                "allowed_client_headers_on_success": patterns({"exact": "x-client-ok"}),
            },
        ),
        with_request_body={"max_request_bytes": 64},
        stat_prefix="front",
    )
    bare = ext_authz(
        http_service=http_service(), failure_mode_allow=True, failure_mode_allow_header_add=True
    )
    down = ext_authz(
        http_service={"server_uri": {"uri": "http://d", "cluster": "down", "timeout": "0.5s"}},
        status_on_error={"code": 503},
    )
    top = ext_authz(http_service=http_service(), allowed_headers=patterns({"exact": "x-pass"}))
    sampled = ext_authz(
        http_service=http_service(),
        filter_enabled={"default_value": {"numerator": 0, "denominator": "HUNDRED"}},
    )
    off = {"match": {"prefix": "/off"}, "route": {"cluster": "up"},
           "typed_per_filter_config": per_route(disabled=True)}  # fmt: skip
    doc = bootstrap(
        [
            http_listener("full", 0, routes(off), [full]),
            http_listener("bare", 0, routes(), [bare]),
            http_listener("down", 0, routes(), [down]),
            http_listener("sampled", 0, routes(), [sampled]),
            http_listener("top", 0, routes(), [top]),
            http_listener(
                "noroute",
                0,
                {"virtual_hosts": [{"name": "v", "domains": ["elsewhere.example"], "routes": []}]},
                [bare],
            ),
        ],
        [
            static_cluster("up", [up]),
            static_cluster("authz", [auth]),
            static_cluster("down", [free_port()]),
        ],  # fmt: skip
    )
    return dump_yaml(doc)


ASKING = {"x-pass": "1", "x-also-this": "2", "x-not": "3", "authorization": "Bearer t",
          "x-auth-append": "client", "x-auth-user": "mallory"}  # fmt: skip
HTTP_CASES: list[Case] = [
    ("full", "GET", "/echo/a?q=1", ASKING, None),
    ("full", "GET", "/echo/deny", {}, None),
    ("full", "GET", "/echo/deny401", {"x-pass": "p"}, None),
    ("full", "POST", "/echo/body", {"content-type": "text/plain"}, b"hello"),
    ("full", "POST", "/echo/deny-body", {}, b"0123456789"),
    ("full", "POST", "/echo/toolarge", {}, b"x" * 100),
    ("full", "GET", "/echo/slow", {}, None),
    ("full", "GET", "/echo/authz500", {}, None),
    ("full", "DELETE", "/echo/method", {}, None),
    ("full", "GET", "/off/echo", ASKING, None),
    ("full", "POST", "/echo/deny-grpc", {"content-type": "application/grpc"}, b"\0" * 5),
    ("bare", "POST", "/echo/slow-grpc", {"content-type": "application/grpc"}, b"\0" * 5),
    # (no body: a local reply before the request body was read closes the connection
    # in proxyd whatever the filter, where Envoy has read a body that came with the head)
    ("down", "GET", "/echo/grpc", {"content-type": "application/grpc"}, None),
    ("bare", "GET", "/echo/a", ASKING, None),
    ("bare", "GET", "/echo/deny", {}, None),
    ("bare", "POST", "/echo/nobody", {}, b"hello"),
    ("bare", "GET", "/echo/slow", {}, None),
    ("bare", "GET", "/echo/authz500", {}, None),
    ("down", "GET", "/echo/x", {}, None),
    ("sampled", "GET", "/echo/deny", {}, None),
    ("top", "GET", "/echo/top", ASKING, None),
    ("noroute", "GET", "/echo/deny", {}, None),
    ("noroute", "GET", "/echo/allowed", {}, None),
]


def expect_continue(port: int) -> dict[str, Any]:
    """A client that sends its body only after ``100 Continue``: the filter buffering
    the body must not leave it waiting (Envoy answers Expect before its filters)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(
            b"POST /echo/expect HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\n"
            b"expect: 100-continue\r\n\r\n"
        )
        interim = sock.recv(4096)  # times out (an error) if nobody says to go on
        sock.sendall(b"abcdef")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
    return {"interim": interim.split(b"\r\n")[0].decode(), "final": data.split(b"\r\n")[0].decode()}


def test_http_service_vs_envoy(tmp_path: Path) -> None:
    with UpstreamServer("up") as up, AuthHttpServer() as auth:
        cases = play_cases(HTTP_CASES, auth.take, http_checks)

        def play(port_of: PortOf) -> dict[str, Any]:
            out = cases(port_of)
            out["expect"] = {"client": expect_continue(port_of("full")), "authz": auth.take()}
            return out

        pair = run_pair(http_config(up.port, auth.port), tmp_path, play, stats_of)
    # The cases did what they are about (on Envoy; proxyd must then say the same).
    seen = pair.envoy.replies
    assert seen["full GET /echo/a?q=1 " + str(sorted(ASKING))]["client"]["status"] == 200
    assert seen["full POST /echo/toolarge []"]["client"]["status"] == 413
    assert seen["down GET /echo/x []"]["client"]["status"] == 503
    assert seen["full GET /off/echo " + str(sorted(ASKING))]["authz"] == []
    assert pair.envoy.stats["http.sampled.ext_authz.disabled"] == 1
    assert seen["expect"]["client"] == {
        "interim": "HTTP/1.1 100 Continue",
        "final": "HTTP/1.1 200 OK",
    }
    assert_same(pair)


# -- the gRPC service -----------------------------------------------------------------------


def grpc_config(up: int, auth: int) -> str:
    service = {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "0.5s"}
    grpc = ext_authz(
        grpc_service=service,
        transport_api_version="V3",
        with_request_body={"max_request_bytes": 100, "allow_partial_message": True},
    )
    raw = ext_authz(
        grpc_service=service,
        with_request_body={"max_request_bytes": 100, "pack_as_bytes": True},
        allowed_headers=patterns({"exact": "x-pass"}, {"prefix": ":"}),
        status_on_error={"code": 502},
    )
    down = ext_authz(
        grpc_service={"envoy_grpc": {"cluster_name": "down"}, "timeout": "0.5s"},
        failure_mode_allow=True,
    )
    ctx = {"match": {"prefix": "/ctx"}, "route": {"cluster": "up"},
           "typed_per_filter_config": per_route(
               check_settings={"context_extensions": {"a": "route"}})}  # fmt: skip
    off = {"match": {"prefix": "/off"}, "route": {"cluster": "up"},
           "typed_per_filter_config": per_route(disabled=True)}  # fmt: skip
    vhost = {"typed_per_filter_config": per_route(
        check_settings={"context_extensions": {"a": "vh", "b": "vh"}})}  # fmt: skip
    authz = static_cluster("authz", [auth])
    authz["typed_extension_protocol_options"] = H2_OPTIONS
    dead = static_cluster("down", [free_port()])
    dead["typed_extension_protocol_options"] = H2_OPTIONS
    doc = bootstrap(
        [
            http_listener("grpc", 0, routes(ctx, off, **vhost), [grpc]),
            http_listener("raw", 0, routes(), [raw]),
            http_listener("gdown", 0, routes(), [down]),
        ],
        [static_cluster("up", [up]), authz, dead],
    )
    return dump_yaml(doc)


GRPC_ASKING = {"x-pass": "1", "authorization": "Bearer t", "x-auth-append": "client",
               "x-auth-replace": "client", "x-remove-me": "x", "x-other": "o"}  # fmt: skip
GRPC_CASES: list[Case] = [
    ("grpc", "GET", "/echo/a?q=1", GRPC_ASKING, None),
    ("grpc", "GET", "/echo/deny", {}, None),
    ("grpc", "POST", "/echo/deny401", {}, b"x" * 300),
    ("grpc", "POST", "/ctx/echo", {"content-type": "text/plain"}, b"hello"),
    ("grpc", "GET", "/echo/slow", {}, None),
    ("grpc", "GET", "/echo/grpcerror", {}, None),
    ("grpc", "GET", "/off/echo", GRPC_ASKING, None),
    ("raw", "POST", "/echo/raw", GRPC_ASKING, b"\x00\x01binary\xff"),
    ("raw", "POST", "/echo/toolarge", {}, b"x" * 101),
    ("raw", "GET", "/echo/grpcerror", {}, None),
    ("gdown", "GET", "/echo/x", {}, None),
]


def test_grpc_service_vs_envoy(tmp_path: Path) -> None:
    with UpstreamServer("up") as up, AuthGrpcServer() as auth:
        play = play_cases(GRPC_CASES, auth.take, grpc_checks)
        pair = run_pair(grpc_config(up.port, auth.port), tmp_path, play, ext_authz_stats)
    seen = pair.envoy.replies
    first = seen["grpc GET /echo/a?q=1 " + str(sorted(GRPC_ASKING))]
    assert first["client"]["status"] == 200
    assert first["authz"][0]["request"]["attributes"]["contextExtensions"] == {"a": "vh", "b": "vh"}
    assert seen["gdown GET /echo/x []"]["client"]["status"] == 200
    assert seen["grpc GET /off/echo " + str(sorted(GRPC_ASKING))]["authz"] == []
    assert_same(pair)
