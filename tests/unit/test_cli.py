"""``proxyd --mode validate`` and the command line, run as the operator runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import http_config


def _proxyd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxyd", *args], capture_output=True, text=True, timeout=60
    )


def test_validate_good_config(tmp_path: Path) -> None:
    cfg = tmp_path / "good.yaml"
    cfg.write_text(http_config(15001, 19901, {"up": [18081]}))
    res = _proxyd("-c", str(cfg), "--mode", "validate")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"configuration '{cfg}' OK\n"


def test_validate_misspelt_field_names_file_path_and_reason(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        http_config(15001, 19901, {"up": [18081]}).replace("connect_timeout", "conect_timeout")
    )
    res = _proxyd("-c", str(cfg), "--mode", "validate")
    assert res.returncode == 1
    assert res.stdout == ""
    err = res.stderr
    assert str(cfg) in err
    assert "static_resources.clusters[0].conect_timeout" in err
    assert "connect_timeout" in err.replace("conect_timeout", "")  # the suggestion
    assert "Traceback" not in err


def test_validate_refuses_what_a_worker_could_not_compile(tmp_path: Path) -> None:
    # Envoy 1.40 validates this; proxyd's workers cannot send it, so serving would
    # refuse it, and validate says so first.
    cfg = tmp_path / "snow.yaml"
    cfg.write_text(
        http_config(15001, 19901, {"up": [18081]}, hcm_extra='          server_name: "sn☃w"')
    )
    res = _proxyd("-c", str(cfg), "--mode", "validate")
    assert res.returncode == 1
    assert res.stderr == (
        f"proxyd: {cfg}: listener 'ingress': server_name 'sn☃w' cannot be sent as a header "
        "value (character '☃' is not ISO-8859-1)\n"
    )


def test_validate_missing_file(tmp_path: Path) -> None:
    res = _proxyd("-c", str(tmp_path / "nope.yaml"), "--mode", "validate")
    assert res.returncode == 1
    assert "nope.yaml" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_command_lines_exit_2() -> None:
    assert _proxyd().returncode == 2  # -c is required
    res = _proxyd("-c", "x.yaml", "--concurrency", "0")
    assert res.returncode == 2
    assert "at least 1" in res.stderr
    assert _proxyd("-c", "x.yaml", "--mode", "check").returncode == 2


def test_help_documents_defaults() -> None:
    res = _proxyd("--help")
    assert res.returncode == 0
    out = " ".join(res.stdout.split())
    assert "$PROXYD_CONTROL_SOCKET" in out
    assert "/tmp/proxyd-<uid>/control.sock" in out
    assert "--drain-time-s" in out
