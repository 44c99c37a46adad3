"""proxyd parses a bootstrap as Envoy 1.40 does: one small file per parsing rule.

Each file in tests/compat/config_parse/ (see its README) goes through real
``envoy --mode validate`` and ``proxyd --mode validate``, and both must give the
verdict its header states:

* ``proxyd: accepts``: both accept;
* ``proxyd: rejects PATH``: both refuse, and proxyd's error names PATH;
* ``proxyd: unsupported PATH`` (or a TEXT with spaces): Envoy accepts; proxyd refuses
  because it does not implement the feature, and its error is a refusal by name
  ("PATH: ... not supported by proxyd", or containing TEXT), never a parse error;
* ``warns: OPTION``: both log a deprecation warning naming the deprecated OPTION.

The files run in two batches (Envoy two at a time, proxyd all in one process), so the
whole module takes a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.compat.envoy_runner import ENVOY_PATH

pytestmark = pytest.mark.compat

ENVOY = ENVOY_PATH
ROOT = Path(__file__).resolve().parents[2]
CASES_DIR = Path(__file__).parent / "config_parse"

needs_envoy = pytest.mark.skipif(not os.access(ENVOY, os.X_OK), reason="envoy binary not installed")


@dataclass(frozen=True)
class Case:
    path: Path
    rule: str
    envoy_accepts: bool
    proxyd: str  # "accepts", "rejects", "unsupported"
    detail: str  # the path (rejects) or text (unsupported) proxyd's error must name
    warns: str  # a deprecated option both must warn about, or ""


@dataclass(frozen=True)
class Outcome:
    rc: int
    output: str


def _case(path: Path) -> Case:
    header: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line.lstrip("# ").partition(":")
        header[key.strip()] = value.strip()
    verdict, _, detail = header["proxyd"].partition(" ")
    assert verdict in ("accepts", "rejects", "unsupported"), path.name
    assert header["envoy"] in ("accepts", "rejects"), path.name
    return Case(
        path=path,
        rule=header["rule"],
        envoy_accepts=header["envoy"] == "accepts",
        proxyd=verdict,
        detail=detail,
        warns=header.get("warns", ""),
    )


CASES = [_case(p) for p in sorted(CASES_DIR.glob("*.yaml"))]


def test_the_rules_are_covered() -> None:
    names = " ".join(c.path.stem for c in CASES)
    for rule in (
        "enum", "single-value", "duration-object", "yaml-anchors", "yaml-ignore",
        "yaml-merge-key", "typed-struct-udpa", "typed-struct-xds", "unknown-field",
        "wrong-type", "v2-type-url", "deprecated", "yaml-one-letter-booleans", "yaml-boolean-looking-keys",
    ):  # fmt: skip
        assert rule in names, rule
    assert 30 <= len(CASES) <= 80
    # A case that Envoy accepts and proxyd refuses must say it is a missing feature.
    for c in CASES:
        assert c.envoy_accepts == (c.proxyd != "rejects"), c.path.name
        assert c.proxyd == "accepts" or c.detail, c.path.name


def _envoy_validate(path: Path) -> Outcome:
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--log-level", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Outcome(result.returncode, result.stdout + result.stderr)


@pytest.fixture(scope="module")
def envoy_outcomes() -> dict[Path, Outcome]:
    paths = [c.path for c in CASES]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(paths, pool.map(_envoy_validate, paths), strict=True))


@pytest.fixture(scope="module")
def proxyd_outcomes() -> dict[Path, Outcome]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.compat.validate_batch", *(str(c.path) for c in CASES)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    out = {}
    for line in result.stdout.splitlines():
        item = json.loads(line)
        out[Path(item["file"])] = Outcome(item["rc"], item["stdout"] + item["stderr"])
    return out


@needs_envoy
@pytest.mark.parametrize("case", CASES, ids=[c.path.stem for c in CASES])
def test_envoy_and_proxyd_agree(
    case: Case, envoy_outcomes: dict[Path, Outcome], proxyd_outcomes: dict[Path, Outcome]
) -> None:
    envoy = envoy_outcomes[case.path]
    proxyd = proxyd_outcomes[case.path]
    assert (envoy.rc == 0) == case.envoy_accepts, envoy.output
    if case.proxyd == "accepts":
        assert proxyd.rc == 0, proxyd.output
        assert f"configuration '{case.path}' OK" in proxyd.output
    elif case.proxyd == "rejects":
        assert proxyd.rc == 1, proxyd.output
        assert f"proxyd: {case.path}: {case.detail}: " in proxyd.output
    else:
        assert proxyd.rc == 1, proxyd.output
        error = next(line for line in proxyd.output.splitlines() if line.startswith("proxyd: "))
        if " " in case.detail:  # the refusal's text
            assert case.detail in error
        else:  # the path of the field refused
            assert f"proxyd: {case.path}: {case.detail}: " in error
        assert error.endswith("not supported by proxyd"), error
    if case.warns:
        assert f"Using deprecated option '{case.warns}'" in envoy.output
        warnings = [json.loads(line) for line in proxyd.output.splitlines() if line.startswith("{")]
        assert any(
            w["event"] == "deprecated field" and w["option"] == case.warns for w in warnings
        ), proxyd.output
