"""The connection manager's ``http_protocol_options``: real Envoy and real proxyd.

One bootstrap holds one listener per scenario (:data:`SCENARIOS`: ``accept_http_10``,
``default_host_for_http_10``, ``header_key_format`` with ``proper_case_words`` or the
``preserve_case`` stateful formatter, and a cluster's ``header_key_format``: CLUSTERS),
each routing to the same :class:`~tests.compat.hcm_wire.EchoUpstream`. Envoy, then proxyd, run it; every case
(raw request bytes, tagged with ``x-case``) is played on each scenario's listener on a
fresh connection. What the client got (the status line, every header line as written,
letter case included, the body, whether the connection stayed open for a second
request) and what the upstream received (the request line and header lines, letter
case included) must be the same for both. Values that change per run (date, service
time, generated request ids) are replaced by their shape, and header lines are
compared as sorted lists (Envoy and proxyd may place an added line differently).
"""

from __future__ import annotations

import re
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.compat.hcm_wire import EchoUpstream
from tests.compat.test_hcm_transforms_compat import distinct_free_ports
from tests.support import ProxydProcess, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
PROPER = {"header_key_format": {"proper_case_words": {}}}


def preserve(**fields: Any) -> dict[str, Any]:
    return {
        "header_key_format": {
            "stateful_formatter": {
                "name": "preserve_case",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.http.header_formatters."
                    "preserve_case.v3.PreserveCaseFormatterConfig",
                    **fields,
                },
            }
        }
    }


def upstream_http(http1: dict[str, Any]) -> dict[str, Any]:
    """A cluster's typed HttpProtocolOptions with these HTTP/1 options."""
    return {
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": http1},
            }
        }
    }


# Clusters (all to the same upstream) by name: what each adds to a static cluster.
CLUSTERS: dict[str, dict[str, Any]] = {
    "echo": {},
    "echo_proper": upstream_http(PROPER),
    "echo_proper_legacy": {"http_protocol_options": PROPER},  # deprecated field
    "echo_preserve": upstream_http(preserve(forward_reason_phrase=True)),
}
# The cluster a scenario routes to ("echo" when not named here).
CLUSTER_OF = {
    "c_proper": "echo_proper",
    "c_proper_legacy": "echo_proper_legacy",
    "l_preserve_c_proper": "echo_proper",
    "l_proper_c_proper": "echo_proper",
    "c_preserve": "echo_preserve",
    "l_proper_c_preserve": "echo_preserve",
}

H10 = {"accept_http_10": True}
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "h10": {"http_protocol_options": H10},
    "h10_host": {"http_protocol_options": {**H10, "default_host_for_http_10": "example.com"}},
    "proper": {"http_protocol_options": PROPER},
    "h10_proper": {"http_protocol_options": {**H10, **PROPER}},
    "preserve": {"http_protocol_options": preserve()},
    "preserve_proper": {
        "http_protocol_options": preserve(
            formatter_type_on_envoy_headers="PROPER_CASE", forward_reason_phrase=True
        )
    },
    "preserve_edge": {"use_remote_address": True, "http_protocol_options": preserve()},
    "h10_host_preserve": {
        "http_protocol_options": {
            **H10,
            "default_host_for_http_10": "example.com",
            **preserve(formatter_type_on_envoy_headers="PROPER_CASE"),
        }
    },
    # The cluster's header_key_format (CLUSTER_OF): how request names go upstream.
    "c_proper": {},
    "c_proper_legacy": {"http_protocol_options": H10},
    "l_preserve_c_proper": {"http_protocol_options": preserve()},
    "l_proper_c_proper": {"http_protocol_options": PROPER},
    "c_preserve": {},
    "l_proper_c_preserve": {"http_protocol_options": PROPER},
}

# (name, request template, play it twice on one connection): {case} is the case id.
CASES: list[tuple[str, str, bool]] = [
    ("h11", "GET / HTTP/1.1\r\nHost: example.com\r\nX-Case: {case}\r\nX-Mixed-CASE: a\r\n"
     "x-lower: b\r\nUser-Agent: z\r\nx_under: q\r\nX-9abc_d-E: 1\r\n\r\n", False),
    ("h11_twice", "GET / HTTP/1.1\r\nHost: example.com\r\nX-Case: {case}\r\n\r\n", True),
    ("dup_names", "GET / HTTP/1.1\r\nHost: example.com\r\nX-Case: {case}\r\nX-A: 1\r\n"
     "x-a: 2\r\n\r\n", False),
    ("client_ids", "GET / HTTP/1.1\r\nHost: example.com\r\nX-Case: {case}\r\n"
     "X-Forwarded-Proto: https\r\nX-Request-ID: abc\r\nX-Forwarded-For: 1.2.3.4\r\n"
     "Connection: X-Hop\r\nX-Hop: 1\r\nX-Envoy-Decorator-Operation: o\r\n\r\n", False),
    ("post_chunked", "POST / HTTP/1.1\r\nHost: example.com\r\nX-Case: {case}\r\n"
     "Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", False),
    ("post_empty", "POST / HTTP/1.1\r\nHost: example.com\r\nX-Case: {case}\r\n\r\n", False),
    ("post_length", "POST / HTTP/1.1\r\nHost: example.com\r\nX-Case: {case}\r\n"
     "Content-Length: 3\r\n\r\nabc", False),
    ("up_names", "GET / HTTP/1.1\r\nHost: example.com\r\nX-Case: {case}\r\n"
     "x-up-reply: x-up-one=1;x-up_two=2;server=s\r\n\r\n", False),
    ("up_chunked", "GET / HTTP/1.1\r\nHost: example.com\r\nX-Case: {case}\r\n"
     "x-up-chunked: 1\r\n\r\n", False),
    ("no_route", "GET / HTTP/1.1\r\nHost: other.org\r\nX-Case: {case}\r\n\r\n", False),
    ("no_host", "GET / HTTP/1.1\r\nX-Case: {case}\r\n\r\n", False),
    ("h10", "GET / HTTP/1.0\r\nHost: example.com\r\nX-Case: {case}\r\nX-Mixed-CASE: a\r\n\r\n",
     False),
    ("h10_no_host", "GET /p?q=1 HTTP/1.0\r\nX-Case: {case}\r\n\r\n", False),
    ("h10_keep_alive", "GET / HTTP/1.0\r\nHost: example.com\r\nConnection: Keep-Alive\r\n"
     "X-Case: {case}\r\n\r\n", True),
    ("h10_keep_alive_no_route", "GET / HTTP/1.0\r\nHost: other.org\r\n"
     "Connection: keep-alive\r\nX-Case: {case}\r\n\r\n", True),
    ("h10_post", "POST /p HTTP/1.0\r\nHost: example.com\r\nX-Case: {case}\r\n"
     "Content-Length: 3\r\n\r\nabc", False),
    ("h10_post_empty", "POST /p HTTP/1.0\r\nHost: example.com\r\nX-Case: {case}\r\n\r\n", False),
    ("h10_absolute", "GET http://example.com/x HTTP/1.0\r\nX-Case: {case}\r\n\r\n", False),
    ("h10_chunked_response", "GET / HTTP/1.0\r\nHost: example.com\r\nX-Case: {case}\r\n"
     "x-up-chunked: 1\r\n\r\n", False),
    ("h10_keep_alive_chunked_response", "GET / HTTP/1.0\r\nHost: example.com\r\n"
     "Connection: keep-alive\r\nX-Case: {case}\r\nx-up-chunked: 1\r\n\r\n", False),
    ("h10_no_route", "GET / HTTP/1.0\r\nHost: other.org\r\nX-Case: {case}\r\n\r\n", False),
    ("h10_head", "HEAD / HTTP/1.0\r\nHost: example.com\r\nX-Case: {case}\r\n\r\n", False),
    ("h09", "GET /nine\r\n\r\n", False),
    ("h12", "GET / HTTP/1.2\r\nHost: example.com\r\nX-Case: {case}\r\n\r\n", False),
    ("h20", "GET / HTTP/2.0\r\nHost: example.com\r\nX-Case: {case}\r\n\r\n", False),
    ("bad_version", "GET / HTTP/1.x\r\nHost: example.com\r\nX-Case: {case}\r\n\r\n", False),
    ("h09_version", "GET / HTTP/0.9\r\nHost: example.com\r\nX-Case: {case}\r\n\r\n", False),
]  # fmt: skip


# Cases only some scenarios play: an upstream's mixed-case response names go downstream
# as written with the cluster's preserve_case (Envoy lower-cases them otherwise, proxyd
# does not: docs, Known differences).
UP_MIXED = [
    ("up_mixed", "GET / HTTP/1.1\r\nHost: example.com\r\nX-Case: {case}\r\n"
     "x-up-reply: X-Up-One=1;x-Up_TWO=2\r\n\r\n", False),
]  # fmt: skip
EXTRA_CASES: dict[str, list[tuple[str, str, bool]]] = {
    "c_preserve": UP_MIXED,
    "l_proper_c_preserve": UP_MIXED,
}


def cases() -> list[tuple[str, str, str, bool]]:
    """(scenario, case id, request, twice)."""
    return [
        (scenario, f"{scenario}:{name}", template.replace("{case}", f"{scenario}:{name}"), twice)
        for scenario in SCENARIOS
        for name, template, twice in CASES + EXTRA_CASES.get(scenario, [])
    ]


def bootstrap(admin: int, ports: dict[str, int], upstream: int) -> str:
    listeners = []
    for name, fields in SCENARIOS.items():
        route_config = {
            "name": name,
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["example.com"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": CLUSTER_OF.get(name, "echo")},
                        }
                    ],
                }
            ],
        }
        listeners.append(http_listener(name, ports[name], route_config, **fields))
    boot = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": listeners,
            "clusters": [
                {**static_cluster(name, [upstream]), **extra} for name, extra in CLUSTERS.items()
            ],
        },
    }
    return yaml.safe_dump(boot, sort_keys=False)


def shaped_line(line: str) -> str:
    name, _, value = line.partition(":")
    low = name.lower()
    value = value.strip()
    if low == "date":
        value = "<date>"
    elif low == "x-envoy-upstream-service-time":
        value = "<ms>"
    elif low == "x-request-id" and UUID4.match(value):
        value = "<uuid4>"
    return f"{name}: {value}"


def head_view(head: bytes) -> dict[str, Any]:
    lines = head.decode("latin-1").split("\r\n")
    return {"first": lines[0], "headers": sorted(shaped_line(x) for x in lines[1:] if x)}


def _recv(sock: socket.socket, buf: bytes) -> tuple[bytes, bool]:
    try:
        chunk = sock.recv(65536)
    except (TimeoutError, OSError):
        return buf, False
    return buf + chunk, bool(chunk)


def read_response(sock: socket.socket, buf: bytes, head_request: bool) -> tuple[Any, bytes]:
    """One response from ``sock`` (``buf`` holds what was read already): its view and
    the bytes after it."""
    while b"\r\n\r\n" not in buf:
        buf, more = _recv(sock, buf)
        if not more:
            return {"end": "closed", "partial": buf.decode("latin-1")}, b""
    i = buf.index(b"\r\n\r\n") + 4
    view = head_view(buf[:i])
    low = buf[:i].lower()
    rest = buf[i:]
    m = re.search(rb"\r\ncontent-length: *(\d+)", low)
    if head_request:
        length = 0
    elif m is not None:
        length = int(m[1])
    elif b"\r\ntransfer-encoding: chunked" in low:
        while b"0\r\n\r\n" not in rest:
            rest, more = _recv(sock, rest)
            if not more:
                break
        length = rest.find(b"0\r\n\r\n") + 5
    else:  # until the connection ends
        more = True
        while more:
            rest, more = _recv(sock, rest)
        length = len(rest)
    while len(rest) < length:
        rest, more = _recv(sock, rest)
        if not more:
            break
    view["body"] = rest[:length].decode("latin-1")
    return view, rest[length:]


def play_case(port: int, request: bytes, twice: bool) -> list[Any]:
    """The responses to ``request`` (sent again on the same connection when ``twice``),
    and how the connection ended."""
    out: list[Any] = []
    head_request = request.startswith(b"HEAD ")
    with socket.create_connection(("127.0.0.1", port), timeout=3.0) as sock:
        buf = b""
        for _ in range(2 if twice else 1):
            try:
                sock.sendall(request)
            except OSError:
                out.append("send failed")
                return out
            view, buf = read_response(sock, buf, head_request)
            out.append(view)
            if view.get("end") == "closed":
                return out
        if any(x.lower() == "connection: close" for x in out[-1]["headers"]):
            return out  # (Envoy closes it after its delayed_close_timeout, 1 s)
        # Does the connection stay open? (A closed one reads b"" at once.)
        sock.settimeout(0.3)
        try:
            out.append("closed" if not sock.recv(1) else "more bytes")
        except (TimeoutError, OSError):
            out.append("open")
    return out


def play(start: Any) -> dict[str, Any]:
    with EchoUpstream() as upstream:
        for attempt in range(3):
            admin, *picked = distinct_free_ports(len(SCENARIOS) + 1)
            ports = dict(zip(SCENARIOS, picked, strict=True))
            text = bootstrap(admin, ports, upstream.port)
            try:
                with start(text, admin):
                    return _play_all(ports, upstream)
            except Exception as exc:
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
    raise AssertionError("unreachable")


def _play_all(ports: dict[str, int], upstream: EchoUpstream) -> dict[str, Any]:
    def one(item: tuple[str, str, str, bool]) -> tuple[str, Any]:
        scenario, case, request, twice = item
        return case, play_case(ports[scenario], request.encode("latin-1"), twice)

    all_cases = cases()
    with ThreadPoolExecutor(max_workers=16) as pool:
        clients = dict(pool.map(one, all_cases))
    results = {}
    for _, case, _, _ in all_cases:
        head = upstream.head_of(case)
        results[case] = {
            "client": clients[case],
            "upstream": None if head is None else head_view(head),
        }
    return results


@pytest.fixture(scope="module")
def envoy_results() -> dict[str, Any]:
    return play(lambda text, admin: EnvoyRunner(text))


@pytest.fixture(scope="module")
def proxyd_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return play(
        lambda text, admin: ProxydProcess(
            tmp_path_factory.mktemp("proxyd"), text, admin, concurrency=1
        )
    )


@pytest.mark.parametrize("case", [c for _, c, _, _ in cases()])
def test_proxyd_http1_options_like_envoy(
    envoy_results: dict[str, Any], proxyd_results: dict[str, Any], case: str
) -> None:
    assert proxyd_results[case] == envoy_results[case]
