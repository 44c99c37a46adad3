"""Every bad bootstrap in tests/unit/config_corpus is rejected with the expected message.

A case is a file ``NNN-short-name.yaml`` whose first line is ``# expect: <substring of
the error>``; a ``# envoy: rejects`` line marks the cases real Envoy rejects too (see
tests/compat/test_config_validate_compat.py). JSON has no comments, so a ``.json`` case
keeps those lines in ``<file>.expect`` beside it. Add a case by adding a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from proxyd.config import load
from proxyd.errors import ConfigError

CORPUS = Path(__file__).parent / "config_corpus"


@dataclass(frozen=True)
class Case:
    path: Path
    expect: str
    envoy_rejects: bool


def _header_lines(path: Path) -> list[str]:
    if path.suffix == ".json":
        return (path.parent / f"{path.name}.expect").read_text().splitlines()
    lines = path.read_text().splitlines()
    return [line.lstrip("# ") for line in lines if line.startswith("#")]


def corpus_cases() -> list[Case]:
    cases = []
    for path in sorted(CORPUS.iterdir()):
        if not path.name[:3].isdigit() or path.suffix not in (".yaml", ".json"):
            continue
        expect = ""
        envoy_rejects = False
        for line in _header_lines(path):
            if line.startswith("expect:"):
                expect = line.split(":", 1)[1].strip()
            elif line.strip() == "envoy: rejects":
                envoy_rejects = True
        cases.append(Case(path, expect, envoy_rejects))
    return cases


CASES = corpus_cases()


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 15
    assert all(c.expect for c in CASES), [c.path.name for c in CASES if not c.expect]


@pytest.mark.parametrize("case", CASES, ids=[c.path.stem for c in CASES])
def test_bad_config_is_rejected(case: Case) -> None:
    with pytest.raises(ConfigError) as info:
        load(str(case.path))
    err = info.value
    assert case.expect in str(err)
    assert str(err).startswith(str(case.path))
    assert err.file == str(case.path)
