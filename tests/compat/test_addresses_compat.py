"""Pipe listeners and upstreams, port 0 and --admin-address-path: real Envoy and proxyd
on the same bootstrap, compared on what a client and an operator see.

Each finds a stale file where the pipe listener goes (a regular file, then the socket
file Envoy left) and replaces it,
bind a TCP listener and the admin on port 0, and write the admin address file.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.integration.master_fixtures import get
from tests.integration.test_addresses import pipe_cluster, pipe_get, route_all
from tests.support import PipeUpstreamServer, ProxydProcess, http_listener, wait_for

pytestmark = [
    pytest.mark.skipif(not envoy_available(), reason="envoy binary not installed"),
    pytest.mark.timeout(120),
]

LOG_FORMAT = (
    "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% "
    "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_HOST% %RESPONSE_CODE%\n"
)


def bootstrap(sock_dir: Path, tag: str, log_path: Path) -> dict[str, Any]:
    access_log = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(log_path),
                "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
            },
        }
    ]
    unix = http_listener("unix_in", 0, route_all("web"), access_log=access_log)
    unix["address"] = {"pipe": {"path": str(sock_dir / "in.sock"), "mode": 0o600}}
    abstract = http_listener("abs_in", 0, route_all("web"))
    abstract["address"] = {"pipe": {"path": f"@{tag}-in"}}
    tcp = http_listener("tcp_in", 0, route_all("web"))
    return {
        "static_resources": {
            "listeners": [unix, abstract, tcp],
            "clusters": [pipe_cluster("web", [str(sock_dir / "up.sock")])],
        }
    }


def admin_text(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return str(r.read().decode())


def observe(admin_port: int, address_file: str, sock_dir: Path, tag: str, log_path: Path) -> dict[str, Any]:  # fmt: skip
    """What a client and an operator see of the running proxy."""
    listen_path = str(sock_dir / "in.sock")
    st = os.stat(listen_path)
    out: dict[str, Any] = {
        "socket": stat.S_ISSOCK(st.st_mode),
        "mode": oct(stat.S_IMODE(st.st_mode)),
        "address_file": re.sub(r":\d+$", ":PORT", address_file),
    }
    out["pipe"] = [pipe_get(listen_path, "/a")[0] for _ in range(2)]
    out["abstract"] = pipe_get(f"@{tag}-in")[1]["x-upstream-name"]
    listeners = json.loads(admin_text(admin_port, "/listeners?format=json"))["listener_statuses"]
    port = 0
    for entry in listeners:
        if entry["name"] == "tcp_in":
            port = entry["local_address"]["socket_address"]["port_value"]
            entry["local_address"]["socket_address"]["port_value"] = "PORT"
    out["listeners_json"] = listeners
    out["listeners"] = admin_text(admin_port, "/listeners").replace(f":{port}\n", ":PORT\n")
    out["tcp"] = get(port)[1]["x-upstream-name"]
    wait_for(lambda: log_path.exists() and log_path.read_text().count("\n") >= 2)
    out["log"] = log_path.read_text().splitlines()
    stats = admin_text(admin_port, "/stats")
    out["stats"] = sorted(
        line
        for line in stats.splitlines()
        if line.startswith(
            (f"listener.{listen_path}.downstream_cx_total", f"listener.@{tag}-in.downstream_cx_total")
        )
    )  # fmt: skip
    clusters = json.loads(admin_text(admin_port, "/clusters?format=json"))
    out["hosts"] = [
        h["address"] for c in clusters["cluster_statuses"] if c["name"] == "web" for h in c["host_statuses"]
    ]  # fmt: skip
    return out


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pxc-") as d:
        yield Path(d)


def test_pipes_port_zero_and_admin_address_file_as_envoy(tmp_path: Path, sock_dir: Path) -> None:
    tag = f"proxyd-compat-{os.getpid()}"
    seen = {}
    with PipeUpstreamServer("piped", str(sock_dir / "up.sock")):
        for name in ("envoy", "proxyd"):
            # Envoy finds a stale regular file there; proxyd finds Envoy's socket file.
            if not (sock_dir / "in.sock").exists():
                (sock_dir / "in.sock").write_text("stale\n")
            log_path = tmp_path / f"{name}-access.log"
            config = bootstrap(sock_dir, f"{tag}-{name}", log_path)
            if name == "envoy":
                # (EnvoyRunner has Envoy write its access log out every 100 ms.)
                with EnvoyRunner(yaml.safe_dump(config)) as envoy:
                    address = envoy.admin_address_path.read_text()
                    seen[name] = observe(envoy.admin_port, address, sock_dir, f"{tag}-{name}", log_path)  # fmt: skip
            else:
                config["admin"] = {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
                }
                workdir = tmp_path / "proxyd"
                workdir.mkdir()
                with ProxydProcess(workdir, yaml.safe_dump(config), concurrency=1) as p:
                    address = p.admin_address_path.read_text()
                    seen[name] = observe(p.admin_port, address, sock_dir, f"{tag}-{name}", log_path)  # fmt: skip
    envoy, proxyd = seen["envoy"], seen["proxyd"]
    # The names of the abstract listener differ by the tag: compare the rest as is.
    for key in ("listeners", "listeners_json", "stats"):
        proxyd[key] = json.loads(json.dumps(proxyd[key]).replace(f"{tag}-proxyd", f"{tag}-envoy"))
    assert envoy["address_file"] == "127.0.0.1:PORT"
    assert proxyd == envoy
