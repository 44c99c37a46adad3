"""bench/idle_memory.py end to end on a tiny N: both proxies measured, all answered.

The memory figures themselves are the benchmark's business (docs/performance.md); this
test only checks that the script runs real Envoy and proxyd, that every connection was
answered twice, and that its JSON carries positive RSS readings under the expected keys.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compat.envoy_runner import envoy_available

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "idle_memory.py"
CONNECTIONS = 20

RUN_KEYS = {
    "proxy", "round", "connections", "process", "pid", "nofile_soft", "rss_before_bytes",
    "rss_idle_bytes", "rss_after_second_bytes", "opened", "answered_first",
    "answered_second", "seconds_first", "seconds_second", "per_connection_bytes",
}  # fmt: skip


def test_idle_memory_bench_answers_every_connection_and_reports_json(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(BENCH), "--connections", str(CONNECTIONS), "--window", "8",
         "--settle", "0.2", "--samples", "2", "--timeout", "30", "--json",
         "--results-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert {"date", "host", "cpus", "python", "envoy_version", "connections", "args",
            "rounds", "median", "ratio"} <= set(result)  # fmt: skip
    assert result["connections"] == CONNECTIONS
    assert [r["proxy"] for r in result["rounds"]] == ["envoy", "proxyd"]
    # What is measured is the process that holds the connections: proxyd's worker.
    assert [r["process"] for r in result["rounds"]] == ["envoy", "proxyd-worker"]
    for run in result["rounds"]:
        assert set(run) == RUN_KEYS
        assert run["opened"] == CONNECTIONS
        assert run["answered_first"] == CONNECTIONS
        assert run["answered_second"] == CONNECTIONS
        assert run["rss_before_bytes"] > 0
        assert run["rss_idle_bytes"] > 0
        assert run["rss_after_second_bytes"] > 0
        assert run["nofile_soft"] >= CONNECTIONS
        assert isinstance(run["per_connection_bytes"], float)
    assert set(result["median"]) == {"envoy", "proxyd"}
    for m in result["median"].values():
        assert m["answered_second"] == CONNECTIONS
    # The JSON on stdout is also the file written to --results-dir.
    (written,) = tmp_path.glob("idle-memory-*.json")
    assert json.loads(written.read_text()) == result
