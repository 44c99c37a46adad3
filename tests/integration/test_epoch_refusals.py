"""Failures are visible: an epoch a worker would refuse, or does refuse.

* The master checks each epoch the way a worker compiles it before publishing it: a
  config that passes validation but that no worker could compile is refused by
  ``proxyctl reload`` and nothing changes.
* What only a worker can find out (an access-log file that cannot be opened) it says
  with ``EpochRefused``; the reload fails naming the worker and the reason, and the
  workers go back to (stay on) the running config.
* ``/server_info`` and ``proxyctl status`` show the epoch each worker runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from proxyd import epoch as ep
from tests.integration import worker_harness
from tests.integration.master_fixtures import upstream_name
from tests.integration.worker_harness import WorkerHarness, make_epoch
from tests.support import ProxydProcess, http_config, wait_for

start_worker = worker_harness.start_worker  # the fixture

ROUTE_TO_B = """
              - match: { prefix: "/" }
                route: { cluster: b }"""


def access_log(path: Path) -> str:
    """hcm_extra for http_config: one file access log at ``path``."""
    return f"""          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {path}"""


def unopenable(tmp_path: Path) -> Path:
    """A path no one can open for writing, root included: its parent is a file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return blocker / "access.log"


@pytest.fixture
def setup(tmp_path: Path, upstream):
    a, b = upstream("a"), upstream("b")
    clusters = {"a": [a.port], "b": [b.port]}
    # Listener and admin on port 0: the config keeps 0, requests go to the bound port.
    with ProxydProcess(tmp_path, http_config(0, 0, clusters)) as p:
        yield p, p.listener_port(), 0, clusters


# -- the master's check ------------------------------------------------------------------


def test_reload_a_worker_could_not_compile_is_refused_by_the_master(setup) -> None:
    p, port, admin, clusters = setup
    # Valid for Envoy's protos and proxyd's config compiler, but the worker writes the
    # server header in ISO-8859-1 (proxyd.protocol.http1_headers.server_line).
    p.config_path.write_text(
        http_config(0, admin, clusters, ROUTE_TO_B, hcm_extra='          server_name: "sn☃w"')
    )
    res = p.ctl("reload")
    assert res.returncode == 1, res.stdout
    assert f"reload failed: {p.config_path}: listener 'ingress': server_name 'sn☃w'" in res.stderr
    status = p.status()
    assert status["epoch"] == 1 and all(w["epoch"] == 1 for w in status["workers"])
    assert all(w["last_refusal"] is None for w in status["workers"])  # no worker was sent it
    assert {upstream_name(port) for _ in range(10)} == {"a"}
    assert '"reload_failed"' in p.log()


# -- a worker's refusal ------------------------------------------------------------------


def test_reload_a_worker_refuses_fails_naming_the_worker(setup, tmp_path: Path) -> None:
    p, port, admin, clusters = setup
    good = p.config_path.read_text()
    bad_path = unopenable(tmp_path)
    p.config_path.write_text(
        http_config(0, admin, clusters, ROUTE_TO_B, hcm_extra=access_log(bad_path))
    )
    res = p.ctl("reload")
    assert res.returncode == 1, res.stdout
    pids = p.worker_pids()
    assert f"workers 0 (pid {pids[0]}), 1 (pid {pids[1]}) refused epoch 2: " in res.stderr
    assert str(bad_path) in res.stderr and "cannot be opened" in res.stderr
    # Every worker runs the old config again (epoch 3 is epoch 1's content).
    status = p.status()
    assert status["epoch"] == 3 and all(w["epoch"] == 3 for w in status["workers"])
    assert {upstream_name(port) for _ in range(10)} == {"a"}
    refusals = [w["last_refusal"] for w in status["workers"]]
    assert all(r["epoch"] == 2 and str(bad_path) in r["reason"] for r in refusals)
    assert f"refused epoch 2: access log '{bad_path}'" in p.ctl("status").stdout
    assert p.stats()["server.proxyd.worker_epoch_refused"] == 2
    assert p.log().count('"worker_epoch_refused"') == 2  # once per worker
    # Fixed, the next reload goes through.
    p.config_path.write_text(good.replace("cluster: a", "cluster: b"))
    res = p.ctl("reload")
    assert res.returncode == 0, res.stderr
    assert {upstream_name(port) for _ in range(10)} == {"b"}


def test_server_info_shows_each_workers_epoch(setup) -> None:
    p, port, admin, clusters = setup
    p.config_path.write_text(http_config(0, admin, clusters, ROUTE_TO_B))
    assert p.ctl("reload").returncode == 0
    status, body = p.admin("/server_info")
    assert status == 200
    info = json.loads(body)
    assert info["epoch"] == 2
    assert "command_line_options" in info and "hot_restart_version" in info  # Envoy's keys
    workers = sorted(info["workers"], key=lambda w: w["id"])
    assert [(w["id"], w["epoch"], w["last_refusal"]) for w in workers] == [
        (0, 2, None),
        (1, 2, None),
    ]
    assert sorted(w["pid"] for w in workers) == sorted(p.worker_pids())
    # The log says it too, once every worker runs the epoch.
    events = [json.loads(line) for line in p.log().splitlines() if '"epoch_applied"' in line]
    assert [e["epoch"] for e in events] == [1, 2]
    assert events[-1]["workers"] == {str(w["id"]): w["pid"] for w in workers}


def test_worker_refuses_an_epoch_and_keeps_its_own(start_worker, upstream, tmp_path) -> None:
    a, b = upstream("a"), upstream("b")
    running_log = tmp_path / "running.log"
    logs = {"access_logs": (ep.AccessLog(str(running_log), "%REQ(:PATH)%\n"),)}
    w = start_worker(make_epoch(1, 0, {"a": [a.port], "b": [b.port]}, hcm=logs))
    port = w.bound_port()
    bad = ep.AccessLog(str(unopenable(tmp_path)), "")
    w.send_epoch(make_epoch(2, 0, {"b": [b.port]}, hcm={"access_logs": (bad,)}), wait=False)
    msg = w.wait_refused(2)
    assert (msg.worker_id, msg.pid) == (0, w.pid)
    assert msg.reason == f"access log '{bad.path}' cannot be opened: Not a directory"
    # Epoch 1 goes on, its access log too.
    assert httpx.get(f"http://127.0.0.1:{port}/one").headers["x-upstream-name"] == "a"
    wait_for(lambda: running_log.exists() and running_log.read_text() == "/one\n")
    w.send_epoch(make_epoch(3, 0, {"b": [b.port]}))
    assert httpx.get(f"http://127.0.0.1:{port}/").headers["x-upstream-name"] == "b"


def test_an_epoch_that_does_not_compile_opens_no_access_log(
    start_worker, upstream, tmp_path
) -> None:
    a = upstream("a")
    w = start_worker(make_epoch(1, 0, {"a": [a.port]}))
    port = w.bound_port()
    new_log = tmp_path / "new.log"
    # The master's config compiler refuses this regex; a worker must not trust that.
    broken = ep.Route("broken", ep.RouteMatch("safe_regex", "(unclosed"), "a")
    logs = {"access_logs": (ep.AccessLog(str(new_log), ""),)}
    w.send_epoch(make_epoch(2, 0, {"a": [a.port]}, [broken], hcm=logs), wait=False)
    msg = w.wait_refused(2)
    assert msg.reason.startswith("listener 'ingress': route config 'local_route': ")
    assert "missing ), unterminated subpattern" in msg.reason
    assert not new_log.exists()
    assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 200


def test_a_first_epoch_refused_is_said_before_cannot_start(upstream, tmp_path) -> None:
    a = upstream("a")
    bad = ep.AccessLog(str(unopenable(tmp_path)), "")
    epoch = make_epoch(1, 0, {"a": [a.port]}, hcm={"access_logs": (bad,)})
    w = WorkerHarness(epoch, tmp_path)
    try:
        with pytest.raises(RuntimeError, match="worker exited with 3"):
            w.start()
        assert "cannot be opened" in w.wait_refused(1).reason
    finally:
        w.stop()


def test_master_with_a_worker_that_cannot_start_names_the_reason(tmp_path: Path, upstream) -> None:
    a = upstream("a")
    bad_path = unopenable(tmp_path)
    p = ProxydProcess(tmp_path, http_config(0, 0, {"a": [a.port]}, hcm_extra=access_log(bad_path)))
    with pytest.raises(RuntimeError, match="exited with 1"):
        p.start()
    p.stop()
    assert f"refused epoch 1: access log '{bad_path}' cannot be opened" in p.log()


def test_master_does_not_start_with_a_config_no_worker_could_compile(
    tmp_path: Path, upstream
) -> None:
    a = upstream("a")
    snow = '          server_name: "sn☃w"'
    p = ProxydProcess(tmp_path, http_config(0, 0, {"a": [a.port]}, hcm_extra=snow))
    with pytest.raises(RuntimeError, match="exited with 1"):
        p.start()
    p.stop()
    (failed,) = [json.loads(x) for x in p.log().splitlines() if '"master_start_failed"' in x]
    assert failed["error"].startswith(f"{p.config_path}: listener 'ingress': server_name 'sn☃w'")
    assert '"worker_started"' not in p.log()
