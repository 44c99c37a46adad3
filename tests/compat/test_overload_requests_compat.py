"""The overload actions on requests and memory: real Envoy and proxyd on the same YAML.

A ``fixed_heap`` monitor far below either proxy's size (so always saturated) triggers
``envoy.overload_actions.shrink_heap`` and ``envoy.overload_actions.stop_accepting_requests``
(the pair Envoy's edge-proxy best practices configure). Every request is then answered
503 ``envoy overloaded`` without reaching the upstream, counted in
``http.<prefix>.downstream_rq_overload_close``, and logged with flag ``OM``; both actions
show as active. What the client saw, the counter and the log line must match.
"""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.compat.test_overload_compat import _stats
from tests.integration.test_overload import heap_actions
from tests.support import ProxydProcess, UpstreamServer, free_port, http_config, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

ACTIVE = "overload.envoy.overload_actions.{}.active"


def _ask(port: int) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/")
    r = c.getresponse()
    out = (r.status, r.read())
    c.close()
    return out


def _scenario(port: int, admin_port: int) -> dict[str, object]:
    for action in ("shrink_heap", "stop_accepting_requests"):
        wait_for(lambda a=action: _stats(admin_port).get(ACTIVE.format(a)) == 1, timeout=10)
    replies = [_ask(port) for _ in range(3)]
    stat = "http.ingress_http.downstream_rq_overload_close"
    wait_for(lambda: _stats(admin_port).get(stat) == 3, timeout=5)
    return {"replies": replies, "closed": _stats(admin_port).get(stat)}


def test_stop_accepting_requests_and_shrink_heap_match_envoy(tmp_path: Path) -> None:
    actions = heap_actions(["shrink_heap", "stop_accepting_requests"])
    upstream = UpstreamServer("up").start()
    try:
        port = free_port()
        with EnvoyRunner(http_config(port, free_port(), {"up": [upstream.port]}) + actions) as e:
            envoy = _scenario(port, e.admin_port)
        port, admin = free_port(), free_port()
        text = http_config(port, admin, {"up": [upstream.port]}) + actions
        with ProxydProcess(tmp_path, text, admin, concurrency=2):
            proxyd = _scenario(port, admin)
        assert upstream.requests == 0  # neither let a request through
    finally:
        upstream.stop()
    assert envoy["replies"] == [(503, b"envoy overloaded")] * 3
    assert proxyd == envoy
