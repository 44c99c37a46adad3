"""SDS through a hot restart: the new master reads the SDS files itself, serves the
secret, and rotates it when the file changes afterwards."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.integration.test_hot_restart import MasterLine
from tests.integration.test_sds_files import (
    cert_secret,
    client,
    sds_config,
    sds_file,
    seen_serial,
    serial_of,
    tls_listener,
    write_atomically,
)
from tests.support import ProxydProcess, UpstreamServer, bootstrap, static_cluster, wait_for


def test_hot_restart_keeps_serving_the_sds_certificate(tmp_path: Path, certs) -> None:
    files = tmp_path / "files"
    files.mkdir()
    shutil.copy(certs.server, files / "cert.pem")
    shutil.copy(certs.server_key, files / "key.pem")
    sds_file(files / "server.yaml", cert_secret("server", files / "cert.pem", files / "key.pem"))
    lst = tls_listener(
        "tls", {"tls_certificate_sds_secret_configs": [sds_config("server", files / "server.yaml")]}
    )
    up = UpstreamServer("up")
    up.start()
    doc = bootstrap(
        [lst], [static_cluster("up", [up.port])], node={"id": "node-1", "cluster": "test"}
    )
    p = ProxydProcess(
        tmp_path, yaml.safe_dump(doc), concurrency=1, extra_args=("--parent-shutdown-time-s", "5")
    )
    p.start()
    line = MasterLine(p)
    try:
        ctx = client(certs)
        assert seen_serial(p, "tls", ctx) == serial_of(certs.server)
        res = line.hot_restart()
        assert res.returncode == 0, res.stderr
        wait_for(lambda: p.status()["pid"] == line.master_pid)
        assert seen_serial(p, "tls", ctx) == serial_of(certs.server)
        write_atomically(files / "key.pem", Path(certs.other_key).read_bytes())
        write_atomically(files / "cert.pem", Path(certs.other).read_bytes())
        wait_for(lambda: seen_serial(p, "tls", ctx) == serial_of(certs.other))
    finally:
        line.stop()
        up.stop()
