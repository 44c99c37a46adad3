"""Reload: a new config becomes a new epoch; an invalid one changes nothing."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.integration.master_fixtures import get, upstream_name
from tests.support import ProxydProcess, http_config, wait_for

ROUTE_TO_B = """
              - match: { prefix: "/" }
                route: { cluster: b }"""


@pytest.fixture
def setup(tmp_path: Path, upstream):
    a, b = upstream("a"), upstream("b")
    clusters = {"a": [a.port], "b": [b.port]}
    # Listener and admin on port 0: the config keeps 0, requests go to the bound port.
    with ProxydProcess(tmp_path, http_config(0, 0, clusters)) as p:
        yield p, p.listener_port(), 0, clusters


def test_reload_changing_a_route_takes_effect(setup) -> None:
    p, port, admin, clusters = setup
    assert {upstream_name(port) for _ in range(10)} == {"a"}
    p.config_path.write_text(http_config(0, admin, clusters, routes=ROUTE_TO_B))
    res = p.ctl("reload")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "reloaded: epoch 2"
    # Workers acknowledged before proxyctl returned: every new connection sees b.
    assert {upstream_name(port) for _ in range(20)} == {"b"}
    status = p.status()
    assert status["epoch"] == 2
    assert all(w["epoch"] == 2 for w in status["workers"])
    assert '"reload_succeeded"' in p.log()


def test_sighup_reloads(setup) -> None:
    p, port, admin, clusters = setup
    p.config_path.write_text(http_config(0, admin, clusters, routes=ROUTE_TO_B))
    p.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: p.status()["epoch"] == 2 and all(w["epoch"] == 2 for w in p.status()["workers"]))  # fmt: skip
    assert {upstream_name(port) for _ in range(20)} == {"b"}


def test_invalid_reload_keeps_the_running_epoch(setup) -> None:
    p, port, admin, clusters = setup
    good = p.config_path.read_text()
    p.config_path.write_text(
        http_config(0, admin, clusters, routes=ROUTE_TO_B).replace("lb_policy", "lb_polcy")
    )
    res = p.ctl("reload")
    assert res.returncode == 1
    assert str(p.config_path) in res.stderr
    assert "static_resources.clusters[0].lb_polcy" in res.stderr
    assert p.status()["epoch"] == 1
    assert {upstream_name(port) for _ in range(10)} == {"a"}
    assert '"reload_failed"' in p.log()
    # The file fixed, the next reload goes through.
    p.config_path.write_text(good)
    assert p.ctl("reload").returncode == 0
    assert p.status()["epoch"] == 2


def test_reload_adds_and_removes_a_listener(setup) -> None:
    p, port, admin, clusters = setup
    text = http_config(0, admin, clusters)
    extra = text.split("  clusters:")[0].split("  listeners:\n", 1)[1]
    extra = extra.replace("name: ingress", "name: second")  # port 0 too: a port of its own
    with_second = text.replace("  clusters:", extra + "  clusters:", 1)
    p.config_path.write_text(with_second)
    res = p.ctl("reload")
    assert res.returncode == 0, res.stderr
    second = p.listener_port("second")
    assert second != port
    assert {upstream_name(second) for _ in range(10)} == {"a"}
    assert f"second::127.0.0.1:{second}" in p.admin("/listeners")[1]
    # Remove it again: the port stops accepting once the workers moved on.
    p.config_path.write_text(text)
    assert p.ctl("reload").returncode == 0

    def refused() -> bool:
        try:
            get(second, timeout=1)
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        return False

    wait_for(refused, timeout=5)
    assert upstream_name(port) == "a"


def test_reload_cannot_move_a_listener_to_another_port(setup) -> None:
    p, port, admin, clusters = setup
    p.config_path.write_text(http_config(port, admin, clusters))  # 0 → a fixed port
    res = p.ctl("reload")
    assert res.returncode == 1
    assert "listener 'ingress'" in res.stderr and "different address" in res.stderr
    assert upstream_name(port) == "a"
