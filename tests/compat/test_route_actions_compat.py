"""Routes that need no upstream (redirect, direct_response): real Envoy and real proxyd
on the same YAML.

One bootstrap (:func:`actions_config`) has three listeners with the same route table:
``ingress`` (no HTTP filter but the router), ``edge`` (``use_remote_address: true``, so
x-forwarded-proto is overwritten) and ``filtered`` (the fault filter before the router,
so the local replies go through a filter chain). Every case is played against Envoy and
then proxyd, and what each returns must be equal: status, body, the headers the client
sees (``location`` among them; dates normalized) and whether the connection stayed open.
The access log (flags, status, the path as logged) and the ``rq_direct_response`` and
``downstream_rq_Nxx`` stats are compared last.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available, envoy_stats
from tests.compat.test_errors_vs_envoy import described
from tests.integration.test_proxy_errors import RawConnection, exchange
from tests.support import ProxydProcess, UpstreamServer, free_port, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
LOG_FORMAT = (
    "%REQ(X-LOG-ID)% %RESPONSE_FLAGS% %RESPONSE_CODE% %REQ(:PATH)% "
    "%REQ(X-ENVOY-ORIGINAL-PATH)% %UPSTREAM_CLUSTER%\n"
)
BODY_FILE_TEXT = "from a file\n"


def _redirect(prefix: str, redirect: dict[str, Any], kind: str = "prefix") -> dict[str, Any]:
    match: dict[str, Any] = {kind: prefix}
    if kind == "safe_regex":
        match = {"safe_regex": {"regex": prefix}}
    return {"match": match, "redirect": redirect}


def _direct(prefix: str, status: int, body: dict[str, str] | None = None) -> dict[str, Any]:
    action: dict[str, Any] = {"status": status}
    if body is not None:
        action["body"] = body
    return {"match": {"prefix": prefix}, "direct_response": action}


def routes(body_file: str) -> list[dict[str, Any]]:
    # Prefixes end in "/" so that none of them is a prefix of another.
    return [
        _direct("/dr/204/", 204),
        _direct("/dr/200/", 200, {"inline_string": "hello world\n"}),
        _direct("/dr/404/", 404),
        _direct("/dr/301/", 301),
        _direct("/dr/302body/", 302, {"inline_string": "moved"}),
        _direct("/dr/304/", 304),
        _direct("/dr/bytes/", 200, {"inline_bytes": "aGVsbG8gYnl0ZXMA/w=="}),
        _direct("/dr/file/", 503, {"filename": body_file}),
        _direct("/dr/empty/", 200, {"inline_string": ""}),
        _direct("/dr/nobody/", 200),
        _redirect("/rd/default/", {}),
        _redirect("/rd/https/", {"https_redirect": True}),
        _redirect("/rd/scheme/", {"scheme_redirect": "ftp"}),
        _redirect("/rd/schemehttp/", {"scheme_redirect": "http"}),
        _redirect("/rd/host/", {"host_redirect": "example.com"}),
        _redirect("/rd/port/", {"port_redirect": 8443}),
        _redirect("/rd/hostport/", {"host_redirect": "example.com", "port_redirect": 8443}),
        _redirect("/rd/https443/", {"https_redirect": True, "port_redirect": 443}),
        _redirect("/rd/https8443/", {"https_redirect": True, "port_redirect": 8443}),
        _redirect("/rd/port80/", {"port_redirect": 80}),
        _redirect("/rd/path/", {"path_redirect": "/new/path"}),
        _redirect("/rd/pathq/", {"path_redirect": "/new/path?x=1"}),
        _redirect("/rd/pathnoslash/", {"path_redirect": "new"}),
        _redirect("/rd/pathstrip/", {"path_redirect": "/new/path", "strip_query": True}),
        _redirect("/rd/pathqstrip/", {"path_redirect": "/new/path?x=1", "strip_query": True}),
        _redirect("/rd/prefix/", {"prefix_rewrite": "/newp"}),
        _redirect("/rd/exact", {"prefix_rewrite": "/x"}, "path"),
        _redirect("/r/re.*", {"prefix_rewrite": "/q"}, "safe_regex"),
        _redirect(
            "/rd/regex/",
            {
                "regex_rewrite": {
                    "pattern": {"regex": "^/rd/regex/(\\w+)/(\\w+)"},
                    "substitution": "/\\2/\\1",
                }
            },
        ),
        _redirect(
            "/rd/regexall/",
            {"regex_rewrite": {"pattern": {"regex": "o"}, "substitution": "0"}},
        ),
        _redirect("/rd/302/", {"response_code": "FOUND"}),
        _redirect("/rd/303/", {"response_code": "SEE_OTHER"}),
        _redirect("/rd/307/", {"response_code": "TEMPORARY_REDIRECT"}),
        _redirect("/rd/308/", {"response_code": "PERMANENT_REDIRECT"}),
        _redirect("/rd/strip/", {"strip_query": True}),
        _redirect("/rd/prefixstrip/", {"prefix_rewrite": "/p", "strip_query": True}),
        _redirect("/rd/hostv6/", {"host_redirect": "[::1]"}),
        {"match": {"prefix": "/"}, "route": {"cluster": "svc"}},
    ]


def actions_config(
    ports: dict[str, int], admin: int, upstream: int, log: str, body_file: str
) -> str:
    def listener(name: str, edge: bool, fault: bool) -> dict[str, Any]:
        filters: list[dict[str, Any]] = []
        if fault:
            filters.append(
                {
                    "name": "envoy.filters.http.fault",
                    "typed_config": {
                        "@type": FAULT,
                        "abort": {"header_abort": {}, "percentage": {"numerator": 100}},
                    },
                }
            )
        filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}})
        hcm: dict[str, Any] = {
            "@type": HCM,
            "stat_prefix": f"{name}_http",
            "route_config": {
                "name": "local_route",
                "virtual_hosts": [
                    {
                        "name": "narrow",
                        "domains": ["narrow.example"],
                        "routes": [_direct("/only/", 200, {"inline_string": "only"})],
                    },
                    {"name": "all", "domains": ["*"], "routes": routes(body_file)},
                ],
            },
            "http_filters": filters,
            "access_log": [
                {
                    "name": "envoy.access_loggers.file",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                        "FileAccessLog",
                        "path": log,
                        "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
                    },
                }
            ],
        }
        if edge:
            hcm["use_remote_address"] = True
        return {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[name]}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": hcm,
                        }
                    ]
                }
            ],
        }

    address = {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}
    config = {
        "static_resources": {
            "listeners": [
                listener("ingress", edge=False, fault=False),
                listener("edge", edge=True, fault=False),
                listener("filtered", edge=False, fault=True),
            ],
            "clusters": [
                {
                    "name": "svc",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "svc",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
                    },
                }
            ],
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
    }
    return yaml.safe_dump(config, sort_keys=False)


# -- requests -----------------------------------------------------------------------------


def req(
    path: str,
    *headers: str,
    method: str = "GET",
    host: str = "foo.com:8080",
    body: bytes | None = None,
    chunks: list[bytes] | None = None,
    listener: str = "ingress",
) -> tuple[str, bytes]:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *headers]
    tail = b""
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
        tail = body
    elif chunks is not None:
        lines.append("Transfer-Encoding: chunked")
        tail = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return listener, ("\r\n".join(lines) + "\r\n\r\n").encode() + tail


XFP_HTTPS = "x-forwarded-proto: https"

CASES: dict[str, tuple[str, bytes]] = {
    # -- direct_response --
    "dr_204_no_body": req("/dr/204/a"),
    "dr_200_inline_string": req("/dr/200/a"),
    "dr_404_no_body": req("/dr/404/a"),
    "dr_301_gets_location": req("/dr/301/a"),
    "dr_301_location_keeps_query": req("/dr/301/a?b=1&c=2"),
    "dr_301_location_host_without_port": req("/dr/301/a", host="foo.com"),
    "dr_302_with_body": req("/dr/302body/a"),
    "dr_304_no_body": req("/dr/304/a"),
    "dr_inline_bytes": req("/dr/bytes/a"),
    "dr_filename": req("/dr/file/a"),
    "dr_empty_inline_string": req("/dr/empty/a"),
    "dr_status_only": req("/dr/nobody/a"),
    "dr_head_with_body": req("/dr/200/a", method="HEAD"),
    "dr_head_empty_body": req("/dr/404/a", method="HEAD"),
    "dr_head_204": req("/dr/204/a", method="HEAD"),
    "dr_head_301": req("/dr/301/a", method="HEAD"),
    "dr_post_with_body": req("/dr/200/a", method="POST", body=b"abcdef"),
    "dr_post_empty_body": req("/dr/200/a", method="POST", body=b""),
    "dr_post_chunked": req("/dr/200/a", method="POST", chunks=[b"abc", b"def"]),
    "dr_post_body_not_sent": req("/dr/200/a", "Content-Length: 5", method="POST"),
    "dr_delete": req("/dr/404/a", method="DELETE"),
    # -- redirect: scheme, host, port --
    "rd_default_301": req("/rd/default/a"),
    "rd_default_keeps_query": req("/rd/default/a?q=1"),
    "rd_https_keeps_port": req("/rd/https/a"),
    "rd_scheme_ftp": req("/rd/scheme/a"),
    "rd_scheme_http": req("/rd/schemehttp/a"),
    "rd_host_drops_request_port": req("/rd/host/a"),
    "rd_port": req("/rd/port/a"),
    "rd_host_and_port": req("/rd/hostport/a"),
    "rd_https_and_port_443": req("/rd/https443/a"),
    "rd_https_and_port_8443": req("/rd/https8443/a"),
    "rd_port_80": req("/rd/port80/a"),
    "rd_port_80_host_port_80": req("/rd/port80/a", host="foo.com:80"),
    "rd_default_host_without_port": req("/rd/default/a", host="foo.com"),
    "rd_https_host_without_port": req("/rd/https/a", host="foo.com"),
    "rd_port_host_without_port": req("/rd/port/a", host="foo.com"),
    "rd_https_host_port_80_dropped": req("/rd/https/a", host="foo.com:80"),
    "rd_https_host_port_443_kept": req("/rd/https/a", host="foo.com:443"),
    "rd_default_host_port_443": req("/rd/default/a", host="foo.com:443"),
    "rd_default_host_port_80": req("/rd/default/a", host="foo.com:80"),
    "rd_scheme_ftp_host_port_80": req("/rd/scheme/a", host="foo.com:80"),
    "rd_xfp_https_scheme": req("/rd/default/a", XFP_HTTPS),
    "rd_xfp_https_port_443_kept": req("/rd/default/a", XFP_HTTPS, host="foo.com:443"),
    "rd_xfp_https_port_80_kept": req("/rd/default/a", XFP_HTTPS, host="foo.com:80"),
    "rd_https_xfp_https_port_443": req("/rd/https/a", XFP_HTTPS, host="foo.com:443"),
    "rd_https_xfp_https_port_80": req("/rd/https/a", XFP_HTTPS, host="foo.com:80"),
    "rd_schemehttp_xfp_https_port_443": req("/rd/schemehttp/a", XFP_HTTPS, host="foo.com:443"),
    "rd_xfp_not_a_scheme": req("/rd/default/a", "x-forwarded-proto: foo"),
    "rd_https_xfp_not_a_scheme_port_80": req(
        "/rd/https/a", "x-forwarded-proto: foo", host="foo.com:80"
    ),
    "rd_xfp_upper_case": req("/rd/default/a", "x-forwarded-proto: HTTPS"),
    "rd_xfp_upper_case_port_443": req("/rd/https/a", "x-forwarded-proto: HTTPS", host="a:443"),
    "rd_https_ipv6_port_kept": req("/rd/https/a", host="[::1]:8080"),
    "rd_https_ipv6_port_80_dropped": req("/rd/https/a", host="[::1]:80"),
    "rd_port_ipv6": req("/rd/port/a", host="[::1]:80"),
    "rd_port_ipv6_without_port": req("/rd/port/a", host="[::1]"),
    "rd_port_ipv6_unbracketed": req("/rd/port/a", host="::1"),
    "rd_https_host_trailing_colon": req("/rd/https/a", host="foo.com:"),
    "rd_host_redirect_ipv6": req("/rd/hostv6/a"),
    # -- redirect: path --
    "rd_path_keeps_query": req("/rd/path/a?q=2"),
    "rd_path_without_query": req("/rd/path/a"),
    "rd_path_own_query_wins": req("/rd/pathq/a?q=2"),
    "rd_path_own_query": req("/rd/pathq/a"),
    "rd_path_without_slash": req("/rd/pathnoslash/a?q=1"),
    "rd_path_strip_query": req("/rd/pathstrip/a?q=2"),
    "rd_path_own_query_not_stripped": req("/rd/pathqstrip/a?q=2"),
    "rd_prefix_rewrite": req("/rd/prefix/a/b?q=2"),
    "rd_prefix_rewrite_whole_prefix": req("/rd/prefix/"),
    "rd_prefix_rewrite_path_match": req("/rd/exact"),
    "rd_prefix_rewrite_path_match_query": req("/rd/exact?q=1"),
    "rd_prefix_rewrite_regex_match": req("/r/rexx/1"),
    "rd_prefix_rewrite_regex_match_query": req("/r/rexx/1?z=1"),
    "rd_regex_rewrite_groups": req("/rd/regex/one/two/three?q=1"),
    "rd_regex_rewrite_no_match": req("/rd/regex/one"),
    "rd_regex_rewrite_every_match": req("/rd/regexall/foo/boo?o=o"),
    "rd_strip_query": req("/rd/strip/a?x=1&y=2"),
    "rd_strip_empty_query": req("/rd/strip/a?"),
    "rd_prefix_rewrite_strip_query": req("/rd/prefixstrip/a?x=1"),
    # -- redirect: response codes, methods --
    "rd_302": req("/rd/302/a"),
    "rd_303": req("/rd/303/a"),
    "rd_307": req("/rd/307/a"),
    "rd_308": req("/rd/308/a"),
    "rd_head": req("/rd/default/a", method="HEAD"),
    "rd_post_with_body": req("/rd/307/a", method="POST", body=b"abc"),
    "rd_put_chunked": req("/rd/308/a", method="PUT", chunks=[b"abc"]),
    "rd_options": req("/rd/default/a", method="OPTIONS"),
    # -- the edge overwrites x-forwarded-proto --
    "edge_rd_xfp_https_overwritten": req(
        "/rd/default/a", XFP_HTTPS, host="foo.com:80", listener="edge"
    ),
    "edge_rd_https_xfp_https_port_80": req(
        "/rd/https/a", XFP_HTTPS, host="foo.com:80", listener="edge"
    ),
    "edge_dr_301": req("/dr/301/a", XFP_HTTPS, listener="edge"),
    # -- through a filter chain (the fault filter) --
    "filtered_dr_200": req("/dr/200/a", listener="filtered"),
    "filtered_dr_head_404": req("/dr/404/a", method="HEAD", listener="filtered"),
    "filtered_rd_https": req("/rd/https/a?q=1", listener="filtered"),
    "filtered_rd_prefix_rewrite": req("/rd/prefix/a", listener="filtered"),
    "filtered_dr_fault_abort_first": req(
        "/dr/200/a", "x-envoy-fault-abort-request: 418", listener="filtered"
    ),
    "filtered_rd_fault_abort_first": req(
        "/rd/default/a", "x-envoy-fault-abort-request: 503", listener="filtered"
    ),
    "filtered_dr_post_with_body": req("/dr/200/a", method="POST", body=b"xyz", listener="filtered"),
    # -- no route (the same local reply shapes) --
    "no_route_404": req("/elsewhere", host="narrow.example"),
    "no_route_404_head": req("/elsewhere", method="HEAD", host="narrow.example"),
    "narrow_direct_response": req("/only/a", host="narrow.example"),
    "filtered_no_route_404_head": req(
        "/elsewhere", method="HEAD", host="narrow.example", listener="filtered"
    ),
    # -- a route with a cluster, for contrast --
    "upstream_route": req("/echo"),
}

Ports = dict[str, int]


def play(ports: Ports, name: str) -> Any:
    listener, raw = CASES[name]
    raw = raw.replace(b"\r\n", f"\r\nx-log-id: {name}\r\n".encode(), 1)
    try:
        reply = exchange(ports[listener], raw)
    except (OSError, AssertionError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"  # a timeout or a reset is an answer too
    return described(reply)


# Requests sent one after another on one connection, each once the previous answer
# has arrived (Envoy does not answer pipelined requests reliably: it drops some).
ONE_CONNECTION: list[bytes] = [
    req("/dr/200/a", "x-log-id: one_connection")[1],
    req("/rd/https/a?q=1", "x-log-id: one_connection")[1],
    req("/dr/204/a", "x-log-id: one_connection", method="HEAD")[1],
    req("/dr/404/a", "x-log-id: one_connection", method="POST", body=b"")[1],
    req("/rd/prefix/a", "x-log-id: one_connection", method="POST", body=b"abc")[1],
    req("/dr/404/a", "x-log-id: one_connection")[1],
]


def play_one_connection(ports: Ports) -> Any:
    """Local replies one after another on one connection: each is answered, and the
    connection stays usable (or closes) as Envoy's does."""
    conn = RawConnection(ports["ingress"])
    out: list[Any] = []
    try:
        for raw in ONE_CONNECTION:
            try:
                conn.sock.sendall(raw)
                reply = conn.read_reply(head_request=raw.startswith(b"HEAD "))
            except OSError:  # a clean close or a reset, depending on timing
                out.append("closed")
                break
            out.append(described(reply))
        return out
    finally:
        conn.close()


def play_all(ports: Ports) -> dict[str, Any]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {name: pool.submit(play, ports, name) for name in CASES}
        replies = {name: f.result() for name, f in futures.items()}
    replies["one_connection"] = play_one_connection(ports)
    return replies


PREFIXES = ("ingress_http", "edge_http", "filtered_http")


def action_stats(stats: dict[str, int]) -> dict[str, int]:
    """rq_direct_response and downstream_rq_Nxx by HCM stat prefix (0 when absent)."""
    names = ["rq_direct_response"] + [f"downstream_rq_{i}xx" for i in range(2, 6)]
    return {f"http.{p}.{n}": stats.get(f"http.{p}.{n}", 0) for p in PREFIXES for n in names}


def read_log(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(" ")
        out.setdefault(name, []).append(rest)
    path.unlink()
    return {name: sorted(lines) for name, lines in out.items()}


@dataclass
class Side:
    replies: dict[str, Any]
    stats: dict[str, int]
    log: dict[str, list[str]]


@dataclass
class Results:
    envoy: Side
    proxyd: Side


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    upstream = UpstreamServer("svc").start()
    try:
        ports = {name: free_port() for name in ("ingress", "edge", "filtered")}
        admin = free_port()
        work = tmp_path_factory.mktemp("actions")
        body_file = work / "body.txt"
        body_file.write_text(BODY_FILE_TEXT)
        log = work / "access.log"
        text = actions_config(ports, admin, upstream.port, str(log), str(body_file))
        with EnvoyRunner(text) as envoy:
            envoy_replies = play_all(ports)
            envoy_counts = action_stats(envoy_stats(envoy.admin_port))
        envoy_side = Side(envoy_replies, envoy_counts, read_log(log))
        with ProxydProcess(tmp_path_factory.mktemp("proxyd"), text, admin, concurrency=1) as p:
            replies = play_all(ports)
            try:  # workers report stats in batches: wait until they say what Envoy said
                wait_for(lambda: action_stats(p.stats()) == envoy_counts, timeout=5)
            except TimeoutError:
                pass  # compared (and shown) by the test
            counts = action_stats(p.stats())
        proxyd_side = Side(replies, counts, read_log(log))
        yield Results(envoy_side, proxyd_side)
    finally:
        upstream.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_proxyd_answers_like_envoy(results: Results, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_one_connection_like_envoy(results: Results) -> None:
    assert results.proxyd.replies["one_connection"] == results.envoy.replies["one_connection"]


def test_stats_like_envoy(results: Results) -> None:
    assert results.proxyd.stats == results.envoy.stats


def test_access_log_like_envoy(results: Results) -> None:
    """Flags, status, the path as logged (rewritten, with x-envoy-original-path) and
    the upstream cluster ("-": none) of every case."""
    assert results.proxyd.log == results.envoy.log


def test_envoy_behaves_as_the_cases_say(results: Results) -> None:
    """Some of the facts the cases were written from, checked on Envoy itself."""
    e = results.envoy.replies

    def location(name: str) -> str:
        return dict(e[name]["headers"])["location"]

    assert e["dr_204_no_body"]["headers"] == [("date", "<date>"), ("server", "envoy")]
    assert e["dr_200_inline_string"]["body"] == "hello world\n"
    assert location("dr_301_gets_location") == "http://foo.com:8080/dr/301/a"
    assert location("rd_https_keeps_port") == "https://foo.com:8080/rd/https/a"
    assert location("rd_host_and_port") == "http://example.com:8443/rd/hostport/a"
    assert location("rd_https_and_port_443") == "https://foo.com:443/rd/https443/a"
    assert location("rd_https_host_port_80_dropped") == "https://foo.com/rd/https/a"
    assert location("rd_path_own_query_wins") == "http://foo.com:8080/new/path?x=1"
    assert location("rd_prefix_rewrite_regex_match") == "http://foo.com:8080/q"
    assert location("edge_rd_xfp_https_overwritten") == "http://foo.com:80/rd/default/a"
    assert dict(e["rd_head"]["headers"]).get("transfer-encoding") == "chunked"
    assert e["dr_post_with_body"]["closed"] is True
    assert e["dr_post_empty_body"]["closed"] is False
    assert e["filtered_dr_fault_abort_first"]["status"] == 418
    assert dict(e["no_route_404_head"]["headers"]).get("transfer-encoding") == "chunked"
    # Five answers, then the connection closed after the request with an unread body.
    assert [r if isinstance(r, str) else r["status"] for r in e["one_connection"]] == [
        200, 301, 204, 404, 301, "closed",
    ]  # fmt: skip
