"""The runtime in a running proxyd: reloads, admin overrides, open connections.

A route with ``runtime_fraction`` on key ``routing.to_b`` sends to "b", a catch-all to
"a"; the demo upstreams name themselves in ``x-upstream-name``.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
import yaml

from tests.integration.master_fixtures import upstream_name
from tests.support import ProxydProcess, UpstreamServer, free_port, http_config

pytestmark = pytest.mark.timeout(60)

KEY = "routing.to_b"
ROUTES = f"""
              - match:
                  prefix: "/"
                  runtime_fraction: {{ default_value: {{ numerator: 0 }}, runtime_key: {KEY} }}
                route: {{ cluster: b }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: a }}"""


def config(listen: int, admin: int, a: UpstreamServer, b: UpstreamServer, static: object) -> str:
    data = yaml.safe_load(http_config(listen, admin, {"a": [a.port], "b": [b.port]}, ROUTES))
    data["layered_runtime"] = {
        "layers": [{"name": "base", "static_layer": static}, {"name": "admin", "admin_layer": {}}]
    }
    return yaml.safe_dump(data, sort_keys=False)


def test_reload_replaces_the_static_layer_and_keeps_admin_overrides(
    tmp_path: Path, upstream
) -> None:
    a, b = upstream("a"), upstream("b")
    listen, admin = free_port(), free_port()
    with ProxydProcess(tmp_path, config(listen, admin, a, b, {KEY: 0}), admin) as p:
        assert upstream_name(listen) == "a"
        assert p.admin("/runtime_modify?kept=yes", "POST") == (200, "OK\n")

        p.config_path.write_text(config(listen, admin, a, b, {KEY: 100}))
        assert p.ctl("reload").returncode == 0
        assert upstream_name(listen) == "b"
        entries = json.loads(p.admin("/runtime")[1])["entries"]
        assert entries["kept"] == {"final_value": "yes", "layer_values": ["", "yes"]}

        # A static layer Envoy would refuse: the reload fails, the runtime stays.
        p.config_path.write_text(config(listen, admin, a, b, {KEY: [1]}))
        res = p.ctl("reload")
        assert res.returncode != 0
        assert "layered_runtime.layers[0].static_layer" in res.stdout + res.stderr
        assert "Invalid runtime entry value for routing.to_b" in res.stdout + res.stderr
        assert upstream_name(listen) == "b"
        assert json.loads(p.admin("/runtime")[1])["entries"]["kept"]["final_value"] == "yes"


def test_a_runtime_change_keeps_open_connections(tmp_path: Path, upstream) -> None:
    """The epoch a runtime change publishes changes no listener: a keep-alive
    connection stays open and its next request is routed with the new value."""
    a, b = upstream("a"), upstream("b")
    listen, admin = free_port(), free_port()
    with ProxydProcess(tmp_path, config(listen, admin, a, b, {KEY: 0}), admin, concurrency=1) as p:
        conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
        try:
            conn.request("GET", "/")
            first = conn.getresponse()
            first.read()
            assert first.getheader("x-upstream-name") == "a"
            epoch = p.status()["epoch"]
            assert p.admin(f"/runtime_modify?{KEY}=100", "POST") == (200, "OK\n")
            assert p.status()["epoch"] == epoch + 1
            conn.request("GET", "/")
            second = conn.getresponse()
            second.read()
            assert second.getheader("x-upstream-name") == "b"
            assert second.getheader("connection") != "close"
        finally:
            conn.close()
        assert "reason=runtime" in p.log() or '"reason": "runtime"' in p.log()
