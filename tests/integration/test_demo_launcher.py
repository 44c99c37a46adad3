"""The launcher behind ``make run`` (``python -m proxyd.demo``) takes proxyd down with it.

A real launcher on conf/front-proxy.yaml moved to free loopback ports: wait until it
prints the curl line (proxyd ready), check a request goes through, then stop the
launcher with SIGTERM or SIGINT and check that it exits and that proxyd's master and
workers are gone within a bounded time.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path) -> tuple[Path, int]:
    """conf/front-proxy.yaml on free ports, with the access log off stdout."""
    config = yaml.safe_load((ROOT / "conf" / "front-proxy.yaml").read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = free_port()
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": free_port()}
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"][0]["typed_config"]["path"] = str(tmp_path / "access.log")
    for cluster in config["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"]["port_value"] = free_port()
    path = tmp_path / "front-proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, listener["address"]["socket_address"]["port_value"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_launcher_stops_proxyd_when_stopped(tmp_path: Path, sig: signal.Signals) -> None:
    config, port = _config(tmp_path)
    out = tmp_path / "launcher.out"
    with out.open("wb") as sink:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "proxyd.demo", "--config", str(config), "--concurrency", "2"],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "proxyd is up" in out.read_text() or launcher.poll() is not None, 150)
        assert launcher.poll() is None, out.read_text()
        assert f"localhost:{port}/" in out.read_text()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/", headers={"Host": "service1.example.com"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert b"Hello from service1" in response.read()
        # The master, and its two workers once they have started.
        proxyd = wait_for(lambda: _proxyd_processes(launcher.pid, 3), 30)

        launcher.send_signal(sig)

        # proxyd stopped on the signal passed on (exit 0), not killed after the grace time.
        assert launcher.wait(timeout=30) == 0, out.read_text()
        gone, alive = psutil.wait_procs(proxyd, timeout=30)
        assert alive == [], [p.cmdline() for p in alive]
        assert len(gone) == len(proxyd)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def _proxyd_processes(launcher_pid: int, at_least: int) -> list[psutil.Process]:
    """The launcher's descendants (proxyd's master and workers), once there are enough."""
    try:
        found = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return found if len(found) >= at_least else []
