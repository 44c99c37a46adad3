"""slow_start_config on a running proxyd: a host added by a reload gets a small share of
the requests while in its window, and its full share once the window is over.

Two clusters (ROUND_ROBIN and LEAST_REQUEST, each a 5 s window) start with one host; a
reload adds a second to each once the first is out of its own window (hosts that came
with the config are in slow start too, as in Envoy). Counts only: the batch right after
the reload must give the new host well under its final half, the batch after the window
about half.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ProxydProcess, UpstreamServer, dump_yaml, http_config, load_yaml

WINDOW_S = 5.0
ROUTES = """
              - match: { prefix: "/rr" }
                route: { cluster: rr }
              - match: { prefix: "/lr" }
                route: { cluster: lr }"""


def config(ports: dict[str, list[int]]) -> str:
    data = load_yaml(http_config(0, 0, ports, routes=ROUTES))
    slow = {"slow_start_config": {"slow_start_window": f"{WINDOW_S}s"}}
    for c in data["static_resources"]["clusters"]:
        if c["name"] == "rr":
            c["round_robin_lb_config"] = slow
        else:
            c["lb_policy"] = "LEAST_REQUEST"
            c["least_request_lb_config"] = slow
    return dump_yaml(data)


@pytest.fixture
def upstreams() -> Iterator[dict[str, Any]]:
    with ExitStack() as stack:
        names = ("rr_old", "rr_new", "lr_old", "lr_new")
        yield {n: stack.enter_context(UpstreamServer(n)) for n in names}


def counts(client: httpx.Client, port: int, ups: dict[str, Any], n: int) -> dict[str, int]:
    before = {name: u.requests for name, u in ups.items()}
    for _ in range(n):
        for path in ("/rr", "/lr"):
            assert client.get(f"http://127.0.0.1:{port}{path}").status_code == 200
    return {name: u.requests - before[name] for name, u in ups.items()}


def test_an_added_host_ramps_up(tmp_path: Path, upstreams: dict[str, Any]) -> None:
    ups = upstreams
    first = {"rr": [ups["rr_old"].port], "lr": [ups["lr_old"].port]}
    with ProxydProcess(tmp_path, config(first), concurrency=1) as p, httpx.Client() as client:
        ready = time.monotonic()  # the first hosts' window began before this
        port = p.listener_port()
        assert counts(client, port, ups, 5)["rr_old"] == 5
        time.sleep(max(0.0, ready + WINDOW_S + 0.3 - time.monotonic()))
        both = {n: [ups[f"{n}_old"].port, ups[f"{n}_new"].port] for n in ("rr", "lr")}
        p.config_path.write_text(config(both))
        res = p.ctl("reload")
        assert res.returncode == 0, res.stderr
        added = time.monotonic()
        # In the window: weight max(10%, elapsed / window) against 1 (a tenth of the
        # picks while the floor holds).
        early = counts(client, port, ups, 30)
        assert early["rr_old"] + early["rr_new"] == 30
        assert early["rr_new"] < 10 and early["lr_new"] < 10, early
        time.sleep(max(0.0, added + WINDOW_S + 0.5 - time.monotonic()))
        # The window is over: an even split.
        late = counts(client, port, ups, 30)
        assert late["rr_new"] >= 10 and late["lr_new"] >= 10, late
