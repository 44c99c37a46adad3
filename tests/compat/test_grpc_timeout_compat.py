"""A ``grpc-timeout`` header and the routes that read it, real Envoy vs proxyd (HTTP/1.1).

One bootstrap, one Envoy then one proxyd (``tests.compat.pair``): a route per configuration (below), each
rewriting its prefix away so the demo upstream's ``/echo`` tells the headers it got and
``/delay/600/echo`` answers after 0.6 s. Every case (route, content type, grpc-timeout
value, path) is sent to each, all at once, and compared: what the upstream received
(``grpc-timeout``, ``x-envoy-expected-rq-timeout-ms``), or the local reply.

* ``max_stream_duration.grpc_timeout_header_max`` / ``_offset``: a valid header's timeout
  (any content type) replaces the stream limit, capped and reduced; a gRPC request's
  header is rewritten in milliseconds; 0 left passes at once;
* the deprecated ``max_grpc_timeout`` / ``grpc_timeout_offset``: a gRPC request's router
  timeout, said upstream in both headers.

Known difference: Envoy answers a gRPC request's timeout the gRPC way (HTTP 200,
``grpc-status`` 4 or 14, the text in ``grpc-message``), proxyd with the HTTP reply (504
and the text in the body); the comparison reads both as (504, text).
"""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import PortOf, run_pair
from tests.support import UpstreamServer, http_config

pytestmark = [
    pytest.mark.compat,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

# Route prefix -> the RouteAction fields it adds.
ROUTES = {
    "new": "max_stream_duration: {grpc_timeout_header_max: 0.3s}",
    "newoff": "max_stream_duration: {grpc_timeout_header_max: 0.3s, grpc_timeout_header_offset: 0.1s}",  # noqa: E501
    "new0": "max_stream_duration: {grpc_timeout_header_max: 0s}",
    "new0off": "max_stream_duration: {grpc_timeout_header_max: 0s, grpc_timeout_header_offset: 0.05s}",  # noqa: E501
    "newmsd": "max_stream_duration: {max_stream_duration: 2s, grpc_timeout_header_max: 0.3s}",
    "offonly": "max_stream_duration: {grpc_timeout_header_offset: 0.1s}",
    "both": "max_stream_duration: {grpc_timeout_header_max: 0s}, max_grpc_timeout: 0.2s",
    "old": "max_grpc_timeout: 0.3s",
    "oldoff": "max_grpc_timeout: 0.3s, grpc_timeout_offset: 0.1s",
    "old0": "max_grpc_timeout: 0s, timeout: 0.3s",
    "oldt": "max_grpc_timeout: 0.3s, timeout: 5s",
}
GRPC = "application/grpc"
# (Values of a few milliseconds would race the upstream's answer: none here.)
VALUES = [
    "200m", "1S", None, "bad", "1000001u", "99999999n", "+150m", " 150m", "150 m",
    "-1m", "5", "1.5S", "5mm", "99999999m", "100000000m", "2H", "1M", "99999999S", "0m",
    "0n",
]  # fmt: skip
SLOW_VALUES = ["200m", "1S", "50m", None, "bad", "0m"]


def routes_yaml() -> str:
    out = ""
    for name, extra in ROUTES.items():
        out += f"""
              - match: {{ prefix: "/{name}/" }}
                route: {{ cluster: up, prefix_rewrite: "/", {extra} }}"""
    return out


def cases() -> list[tuple[str, str, str | None, str]]:
    out = []
    for route in ROUTES:
        for value in VALUES:
            out.append((route, GRPC, value, "/echo"))
        for value in SLOW_VALUES:
            out.append((route, GRPC, value, "/delay/600/echo"))
        for value in ("200m", "0m", None):
            out.append((route, "application/json", value, "/echo"))
        out.append((route, "application/grpc+proto", "1S", "/echo"))
        out.append((route, "application/grpc-web", "1S", "/echo"))
    return out


def send(port: int, case: tuple[str, str, str | None, str]) -> tuple[Any, ...]:
    """What the client saw, read the same for both proxies: the upstream's view of the
    timeout headers, or (status, local reply text)."""
    route, content_type, value, path = case
    headers = {"content-type": content_type}
    if value is not None:
        headers["grpc-timeout"] = value
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        # No body: a limit that has passed when the head arrives meets a complete request
        # (see the known differences: proxyd says 408 while a body is still unread).
        conn.request("POST", f"/{route}{path}", body=b"", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return ("error", type(exc).__name__)
    finally:
        conn.close()
    grpc_status = resp.getheader("grpc-status")
    if grpc_status is not None:  # Envoy's gRPC local reply: HTTP 504's text
        return ("local", 504, resp.getheader("grpc-message"))
    if resp.status != 200 or not body.startswith(b"{"):
        return ("local", resp.status, body.decode(errors="replace").strip())
    seen = dict(json.loads(body)["headers"])
    return (
        "upstream",
        seen.get("grpc-timeout"),
        seen.get("x-envoy-expected-rq-timeout-ms"),
    )


def test_grpc_timeout_header_routes_match_envoy(tmp_path: Path) -> None:
    all_cases = cases()

    def play(port_of: PortOf) -> dict[Any, Any]:
        port = port_of("ingress")
        with ThreadPoolExecutor(max_workers=16) as pool:
            return dict(zip(all_cases, pool.map(lambda c: send(port, c), all_cases), strict=True))

    upstream = UpstreamServer("up").start()
    try:
        text = http_config(0, 0, {"up": [upstream.port]}, routes_yaml())
        pair = run_pair(text, tmp_path, play)
    finally:
        upstream.stop()
    envoy, proxyd = pair.envoy.replies, pair.proxyd.replies
    differ = {c: (envoy[c], proxyd[c]) for c in all_cases if envoy[c] != proxyd[c]}
    assert not differ, "\n".join(f"{c}: envoy {e} proxyd {p}" for c, (e, p) in differ.items())
    # The scenario shows what it means to: rewrites, the deprecated headers, timeouts.
    assert envoy[("new", GRPC, "1S", "/echo")] == ("upstream", "300m", None)
    assert envoy[("newoff", GRPC, "200m", "/echo")] == ("upstream", "100m", None)
    assert envoy[("old", GRPC, None, "/echo")] == ("upstream", "300m", "300")
    assert envoy[("newoff", "application/json", "0m", "/echo")][:2] == ("local", 504)
    assert envoy[("new", GRPC, "200m", "/delay/600/echo")] == (
        "local", 504, "downstream duration timeout",
    )  # fmt: skip
    assert envoy[("old", GRPC, "200m", "/delay/600/echo")] == (
        "local", 504, "upstream request timeout",
    )  # fmt: skip
