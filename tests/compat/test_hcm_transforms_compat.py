"""Connection-manager request and response transforms: real Envoy and real proxyd.

One bootstrap holds one listener per scenario (:data:`SCENARIOS`: connection-manager
fields such as ``normalize_path``, ``merge_slashes``, ``path_with_escaped_slashes_action``,
``via``, ``server_header_transformation``, ``strip_any_host_port``, ...), each routing
to the same :class:`~tests.compat.hcm_wire.EchoUpstream`. Envoy, then proxyd, run it;
every case (raw request bytes, tagged with ``x-case``) is played on its scenario's
listener on a fresh connection. What the client got (status, ``location``,
``server``, ``via``, ``x-request-id``, the body of a local reply) and what the
upstream received (request line and headers, values that change per run replaced by
their shape) must be the same for both.

The path cases come from ``tests/unit/path_corpus/paths.txt``; the unit test
``tests/unit/test_path_normalize.py`` checks the normaliser against the expected
results in ``expected.tsv``, and :func:`test_expected_tsv_is_envoys` checks that file
against Envoy itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.compat.hcm_wire import Answer, EchoUpstream, send
from tests.support import ProxydProcess, free_port, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

CORPUS = Path(__file__).parents[1] / "unit" / "path_corpus"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def origin_form(target: str) -> str:
    """The path a proxy routes on: an absolute-form target without scheme and host."""
    m = re.match(r"https?://[^/?]*", target)
    return target[m.end() :] or "/" if m else target


def corpus_paths() -> list[str]:
    lines = (CORPUS / "paths.txt").read_text().splitlines()
    return [line for line in lines if line and not line.startswith("# ")]


# Scenario name -> connection-manager fields. The path scenarios' names are the
# columns of expected.tsv.
PATH_SCENARIOS: dict[str, dict[str, Any]] = {
    "normalize": {"normalize_path": True},
    "merge": {"merge_slashes": True},
    "normalize_merge": {"normalize_path": True, "merge_slashes": True},
    "reject_escaped": {"path_with_escaped_slashes_action": "REJECT_REQUEST"},
    "redirect_escaped": {
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "normalize_path": True,
    },
    "forward_escaped": {"path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD"},
    "forward_escaped_all": {
        "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD",
        "normalize_path": True,
        "merge_slashes": True,
    },
}

EDGE = {"use_remote_address": True}
UNDERSCORES = "headers_with_underscores_action"
# Header scenarios: their virtual host takes only these domains, so a Host that is not
# one of them (or one with a port nobody stripped) gets a 404 local reply.
DOMAINS = ["example.com", "[::1]", "localhost"]
LOOPBACK_INTERNAL = {"cidr_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]}
TEN_INTERNAL = {"cidr_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]}
HEADER_SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "server_name": {"server_name": "my-proxy"},
    "server_append": {"server_header_transformation": "APPEND_IF_ABSENT", "server_name": "edge"},
    "server_pass": {"server_header_transformation": "PASS_THROUGH"},
    "via": {"via": "1.1 test-proxy"},
    "edge": EDGE,
    "edge_skip_xff": {**EDGE, "skip_xff_append": True},
    "skip_xff_not_edge": {"skip_xff_append": True},
    "edge_preserve_rid": {**EDGE, "preserve_external_request_id": True},
    "rid_in_response": {"always_set_request_id_in_response": True},
    "rid_in_response_edge": {**EDGE, "always_set_request_id_in_response": True},
    "rid_in_response_no_generate": {
        "always_set_request_id_in_response": True,
        "generate_request_id": False,
    },
    "strip_any": {"strip_any_host_port": True},
    "strip_matching": {"strip_matching_host_port": True},
    "underscores_reject": {"common_http_protocol_options": {UNDERSCORES: "REJECT_REQUEST"}},
    "underscores_drop": {"common_http_protocol_options": {UNDERSCORES: "DROP_HEADER"}},
    "user_agent": {"add_user_agent": True},
    "user_agent_edge": {**EDGE, "add_user_agent": True},
    "scheme_https": {"scheme_header_transformation": {"scheme_to_overwrite": "https"}},
    "scheme_https_edge": {**EDGE, "scheme_header_transformation": {"scheme_to_overwrite": "https"}},
    "scheme_match_upstream": {"scheme_header_transformation": {"match_upstream": True}},
    "internal_edge": {**EDGE, "internal_address_config": LOOPBACK_INTERNAL},
    "internal_edge_elsewhere": {**EDGE, "internal_address_config": TEN_INTERNAL},
    "internal_not_edge": {"internal_address_config": LOOPBACK_INTERNAL},
    "internal_edge_hops": {
        **EDGE,
        "xff_num_trusted_hops": 1,
        "internal_address_config": LOOPBACK_INTERNAL,
    },
    "internal_defaults": {**EDGE, "internal_address_config": {"unix_sockets": True}},
    "max_headers_5": {"common_http_protocol_options": {"max_headers_count": 5}},
    "max_headers_150": {"common_http_protocol_options": {"max_headers_count": 150}},
    "everything": {
        **EDGE,
        "via": "proxyd",
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "strip_any_host_port": True,
        "always_set_request_id_in_response": True,
        "server_header_transformation": "APPEND_IF_ABSENT",
        "common_http_protocol_options": {"idle_timeout": "60s", UNDERSCORES: "DROP_HEADER"},
        "add_user_agent": True,
        "scheme_header_transformation": {"scheme_to_overwrite": "http"},
    },
}

# (name, request template): {case} is the case id, {port} the scenario's listener port.
HEADER_CASES: list[tuple[str, str]] = [
    ("plain", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n\r\n"),
    ("xff", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n"
     "x-forwarded-for: 10.1.2.3\r\n\r\n"),
    ("xff_two", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n"
     "x-forwarded-for: 10.1.2.3, 10.4.5.6\r\n\r\n"),
    ("request_id", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n"
     "x-request-id: client-id-1\r\n\r\n"),
    ("via_in", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n"
     "via: 1.0 client\r\n\r\n"),
    ("up_server", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n"
     "x-up-reply: server=upstream-srv\r\n\r\n"),
    ("up_via", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n"
     "x-up-reply: via=1.1 up\r\n\r\n"),
    ("up_request_id", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n"
     "x-request-id: client-id-2\r\nx-up-reply: x-request-id=up-id\r\n\r\n"),
    ("up_all", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n"
     "via: 1.0 client\r\nx-up-reply: server=s;via=1.1 up;x-request-id=u\r\n\r\n"),
    ("host_port_listener", "GET / HTTP/1.1\r\nhost: example.com:{port}\r\nx-case: {case}\r\n\r\n"),
    ("host_port_other", "GET / HTTP/1.1\r\nhost: example.com:8080\r\nx-case: {case}\r\n\r\n"),
    ("host_port_empty", "GET / HTTP/1.1\r\nhost: example.com:\r\nx-case: {case}\r\n\r\n"),
    ("host_v6_port", "GET / HTTP/1.1\r\nhost: [::1]:{port}\r\nx-case: {case}\r\n\r\n"),
    ("host_v6", "GET / HTTP/1.1\r\nhost: [::1]\r\nx-case: {case}\r\n\r\n"),
    ("absolute_port", "GET http://localhost:{port}/x HTTP/1.1\r\nhost: a\r\nx-case: {case}\r\n\r\n"),
    ("no_route", "GET / HTTP/1.1\r\nhost: other.org\r\nx-case: {case}\r\n"
     "x-request-id: client-id-3\r\nvia: 1.0 client\r\n\r\n"),
    ("underscore", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n"
     "x_custom: 1\r\nx-fine: 2\r\n\r\n"),
    ("underscore_no_route", "GET / HTTP/1.1\r\nhost: other.org\r\nx-case: {case}\r\n"
     "x_custom: 1\r\n\r\n"),
    ("dot_path", "GET /a/./b/../c//d HTTP/1.1\r\nhost: example.com:99\r\nx-case: {case}\r\n\r\n"),
    ("escaped_slash", "GET /a%2Fb HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n"
     "x-request-id: client-id-4\r\n\r\n"),
    ("bad_path", "GET /a%00 HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n\r\n"),
    ("client_ids", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\nuser-agent: curl\r\n"
     "x-forwarded-proto: https\r\nx-envoy-downstream-service-cluster: c1\r\n"
     "x-envoy-downstream-service-node: n1\r\n\r\n"),
    ("empty_user_agent", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\nuser-agent: \r\n\r\n"),
    ("internal_headers", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n"
     "x-envoy-internal: true\r\nx-envoy-retry-on: 5xx\r\nx-envoy-decorator-operation: op\r\n"
     "x-envoy-external-address: 9.9.9.9\r\n\r\n"),
    ("xff_internal", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n"
     "x-forwarded-for: 127.0.0.5\r\nx-envoy-decorator-operation: op\r\n\r\n"),
    ("five_headers", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\na: 1\r\nb: 2\r\n"
     "c: 3\r\n\r\n"),
    ("six_headers", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\na: 1\r\nb: 2\r\n"
     "c: 3\r\nd: 4\r\n\r\n"),
    ("120_headers", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n"
     + "".join(f"h{i}: {i}\r\n" for i in range(118)) + "\r\n"),
    ("malformed", "GET / HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\nbad header\r\n\r\n"),
    ("http10", "GET / HTTP/1.0\r\nhost: example.com\r\nx-case: {case}\r\n\r\n"),
    ("post", "POST /p HTTP/1.1\r\nhost: example.com\r\nx-case: {case}\r\n"
     "content-length: 3\r\n\r\nabc"),
]  # fmt: skip

SCENARIOS: dict[str, dict[str, Any]] = {**PATH_SCENARIOS, **HEADER_SCENARIOS}


def request(path: str, case: str, extra: str = "", host: str = "example.com") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nhost: {host}\r\nx-case: {case}\r\n{extra}\r\n").encode(
        "latin-1"
    )


def cases() -> list[tuple[str, str, str]]:
    """(scenario, case id, request template)."""
    out = []
    for scenario in PATH_SCENARIOS:
        for i, path in enumerate(corpus_paths()):
            case = f"{scenario}:{i}"
            out.append((scenario, case, request(path, case).decode("latin-1")))
    for scenario in HEADER_SCENARIOS:
        for name, template in HEADER_CASES:
            case = f"{scenario}:{name}"
            out.append((scenario, case, template.replace("{case}", case)))
    return out


def bootstrap(admin: int, ports: dict[str, int], upstream: int) -> str:
    listeners = []
    for name, fields in SCENARIOS.items():
        route_config = {
            "name": name,
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}],
                }
            ],
        }
        if name in HEADER_SCENARIOS:
            route_config["virtual_hosts"][0]["domains"] = DOMAINS
        listeners.append(http_listener(name, ports[name], route_config, **fields))
    boot = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        # add_user_agent sends the node's cluster and id upstream.
        "node": {"id": "node-1", "cluster": "svc-a"},
        "static_resources": {
            "listeners": listeners,
            "clusters": [static_cluster("echo", [upstream])],
        },
    }
    return yaml.safe_dump(boot, sort_keys=False)


def shaped(name: str, value: str) -> str:
    if name == "date":
        return "<date>"
    if name == "x-envoy-upstream-service-time":
        return "<ms>"
    if name == "x-request-id" and UUID4.match(value):
        return "<uuid4>"
    return value


def client_view(a: Answer) -> dict[str, Any]:
    view: dict[str, Any] = {"status": a.status, "end": a.end}
    for name in ("location", "server", "via", "x-request-id", "connection"):
        value = a.header(name)
        if value is not None:
            view[name] = shaped(name, value)
    if a.header("connection") is not None or a.status != 200:
        view["body"] = a.body.decode("latin-1")
    return view


def upstream_view(head: bytes | None) -> Any:
    if head is None:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            name = name.lower()
            headers.append((name, shaped(name, value.strip())))
    return {"request_line": lines[0], "headers": sorted(headers)}


def distinct_free_ports(count: int) -> list[int]:
    out: list[int] = []
    while len(out) < count:
        port = free_port()
        if port not in out:
            out.append(port)
    return out


def play(start: Callable[[str, int], Any]) -> dict[str, Any]:
    """Run every case through the proxy ``start(text, admin)`` starts."""
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
    def one(item: tuple[str, str, str]) -> tuple[str, Any]:
        scenario, case, template = item
        raw = template.replace("{port}", str(ports[scenario])).encode("latin-1")
        answer = send(ports[scenario], raw)
        return case, {"client": client_view(answer), "upstream": upstream_view(None)}

    all_cases = cases()
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = dict(pool.map(one, all_cases))
    for _, case, _ in all_cases:
        results[case]["upstream"] = upstream_view(upstream.head_of(case))
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


@pytest.mark.parametrize("case", [c for _, c, _ in cases()])
def test_proxyd_transforms_like_envoy(
    envoy_results: dict[str, Any], proxyd_results: dict[str, Any], case: str
) -> None:
    assert proxyd_results[case] == envoy_results[case]


def expected_rows() -> Iterator[list[str]]:
    for line in (CORPUS / "expected.tsv").read_text().splitlines()[1:]:
        yield line.split("\t")


def envoy_outcome(result: dict[str, Any]) -> str:
    """One cell of expected.tsv: the path the upstream got, or "400", or "307 <path>"."""
    client = result["client"]
    if client["status"] == 307:
        return f"307 {client['location']}"
    if result["upstream"] is None:
        return str(client["status"])
    return result["upstream"]["request_line"].split(" ")[1]


def test_expected_tsv_is_envoys(envoy_results: dict[str, Any]) -> None:
    paths = corpus_paths()
    rows = list(expected_rows())
    assert [r[0] for r in rows] == paths
    for i, row in enumerate(rows):
        for scenario, cell in zip(PATH_SCENARIOS, row[1:], strict=True):
            assert envoy_outcome(envoy_results[f"{scenario}:{i}"]) == cell, (paths[i], scenario)
