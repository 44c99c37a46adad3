"""``proxyd --mode validate`` and the command line, run as the operator runs them."""

from __future__ import annotations

import json
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
    # Envoy's line first (scripts grep for it), then what the config contains.
    assert res.stdout.splitlines() == [
        f"configuration '{cfg}' OK",
        "1 listener, 1 route config, 1 virtual host, 1 route, 1 cluster, 1 endpoint, "
        "0 http filters before the router",
        "listener 'ingress' 127.0.0.1:15001: router only",
        "  virtual host 'all' (route config 'local_route'), domains *: 1 route",
        "    route 'prefix /' -> cluster 'up'",
        "cluster 'up' STATIC ROUND_ROBIN: 1 endpoint 127.0.0.1:18081",
    ]


def test_validate_json_document(tmp_path: Path) -> None:
    cfg = tmp_path / "good.yaml"
    routes = """
              - match: { prefix: "/api" }
                route: { cluster: b }
              - match: { prefix: "/" }
                route: { cluster: up }"""
    cfg.write_text(http_config(15001, 19901, {"up": [18081, 18082], "b": [18090]}, routes))
    res = _proxyd("-c", str(cfg), "--mode", "validate", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)  # the document only: no OK line
    assert doc["valid"] is True and doc["config"] == str(cfg) and doc["warnings"] == []
    assert doc["dynamic"] == {"lds": None, "cds": None, "ads": None}
    summary = doc["summary"]
    assert summary["counts"] == {
        "listeners": 1, "route_configs": 1, "virtual_hosts": 1, "routes": 2,
        "clusters": 2, "endpoints": 3, "http_filters": 0,
    }  # fmt: skip
    (lst,) = summary["listeners"]
    assert (lst["name"], lst["address"], lst["port"]) == ("ingress", "127.0.0.1", 15001)
    (vh,) = lst["route_config"]["virtual_hosts"]
    assert vh["routes"] == [
        {"name": "prefix /api", "cluster": "b"},
        {"name": "prefix /", "cluster": "up"},
    ]
    assert [(c["name"], c["endpoints"]) for c in summary["clusters"]] == [
        ("up", ["127.0.0.1:18081", "127.0.0.1:18082"]),
        ("b", ["127.0.0.1:18090"]),
    ]


def test_validate_json_names_the_error(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(http_config(15001, 19901, {"up": [18081]}).replace("lb_policy", "lb_polcy"))
    res = _proxyd("-c", str(cfg), "--mode", "validate", "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["valid"] is False and doc["config"] == str(cfg)
    assert str(cfg) in doc["error"] and "static_resources.clusters[0].lb_polcy" in doc["error"]


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
    res = _proxyd("-c", "x.yaml", "--json")  # --json is for validate
    assert res.returncode == 2
    assert "--json goes with --mode validate" in res.stderr


def test_help_documents_defaults() -> None:
    res = _proxyd("--help")
    assert res.returncode == 0
    out = " ".join(res.stdout.split())
    assert "$PROXYD_CONTROL_SOCKET" in out
    assert "/tmp/proxyd-<uid>/control.sock" in out
    assert "--drain-time-s" in out
