"""proxyd and real Envoy agree on which bootstraps are invalid (``--mode validate``).

Every corpus case marked ``# envoy: rejects`` (misspelt fields, wrong types, unknown
cluster, bad regex, duplicate names, broken proto constraints, bad YAML/JSON) must be
rejected by ``envoy --mode validate`` as well as by proxyd; the full good config and
the example configs in conf/ must be accepted by both. Cases without the mark are
ones only proxyd rejects (features it does not implement).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from proxyd.config import load
from proxyd.errors import ConfigError
from tests.compat.envoy_runner import ENVOY_PATH
from tests.unit.test_config_corpus import CASES, CORPUS, Case

pytestmark = pytest.mark.compat

ENVOY = ENVOY_PATH
ROOT = Path(__file__).resolve().parents[2]
GOOD = [CORPUS / "good-full.yaml", *sorted((ROOT / "conf").glob("*.yaml"))]
ENVOY_REJECTS = [c for c in CASES if c.envoy_rejects]

needs_envoy = pytest.mark.skipif(not os.access(ENVOY, os.X_OK), reason="envoy binary not installed")


def envoy_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--log-level", "critical"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compat_cases_cover_the_kinds_envoy_rejects() -> None:
    names = " ".join(c.path.stem for c in ENVOY_REJECTS)
    for kind in ("misspelt", "wrong-type", "unknown-cluster", "bad-regex", "duplicate"):
        assert kind in names


@needs_envoy
@pytest.mark.parametrize("case", ENVOY_REJECTS, ids=[c.path.stem for c in ENVOY_REJECTS])
def test_envoy_rejects_too(case: Case) -> None:
    with pytest.raises(ConfigError):
        load(str(case.path))
    result = envoy_validate(case.path)
    assert result.returncode != 0, result.stdout + result.stderr


@needs_envoy
@pytest.mark.parametrize("path", GOOD, ids=[p.name for p in GOOD])
def test_good_config_accepted_by_both(path: Path) -> None:
    load(str(path))
    result = envoy_validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
