"""Every example bootstrap in conf/ loads in real Envoy and in proxyd alike (both
``--mode validate``, from the repository root, where their relative paths resolve)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.compat.envoy_runner import ENVOY_PATH, envoy_available

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.relative_to(ROOT) for p in (ROOT / "conf").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=str)
def test_example_loads_in_envoy_and_proxyd(path: Path) -> None:
    envoy = subprocess.run(
        [ENVOY_PATH, "--mode", "validate", "-c", str(path), "--log-level", "error"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    proxyd = subprocess.run(
        [sys.executable, "-m", "proxyd", "--mode", "validate", "--config", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert envoy.returncode == 0, envoy.stdout + envoy.stderr
    assert proxyd.returncode == 0, proxyd.stdout + proxyd.stderr
