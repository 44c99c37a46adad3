"""The bad-format corpus (tests/unit/access_log_formats) and Envoy's operator list.

Each ``NNN-name.format`` (a text format) or ``NNN-name.json`` (a json_format object)
must be refused with the message in ``NNN-name.expect``. Every line of
``envoy-1.40-operators.txt`` (each command operator Envoy 1.40 accepts for HTTP) must
either compile or be refused with "not supported by proxyd": never "unknown".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxyd.protocol.access_log import JsonLogFormat, LogFormat, LogRecord
from proxyd.protocol.access_log_operators import REFUSED, implemented

CORPUS = Path(__file__).parent / "access_log_formats"
CASES = sorted(p for p in CORPUS.iterdir() if p.suffix in (".format", ".json"))
OPERATORS = [
    line
    for line in (CORPUS / "envoy-1.40-operators.txt").read_text().splitlines()
    if line and not line.startswith("#")
]


def test_the_corpus_has_its_cases() -> None:
    assert len(CASES) >= 25
    for case in CASES:
        assert case.with_suffix(".expect").exists(), case


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_bad_format_is_refused_with_its_message(case: Path) -> None:
    expect = case.with_suffix(".expect").read_text().strip()
    text = case.read_text()
    with pytest.raises(ValueError) as info:
        if case.suffix == ".json":
            JsonLogFormat(text)
        else:
            LogFormat(text)
    assert expect in str(info.value)


@pytest.mark.parametrize("op", OPERATORS)
def test_every_envoy_operator_is_implemented_or_refused_by_name(op: str) -> None:
    try:
        fmt = LogFormat(op)
    except ValueError as exc:
        assert "is not supported by proxyd: " in str(exc)
        return
    line = fmt.format(LogRecord())  # and it renders without an error
    assert isinstance(line, str)


def test_the_operator_tables_cover_envoys_list_exactly() -> None:
    names = {op[1:].split("(")[0].rstrip("%") for op in OPERATORS}
    ours = set(implemented()) | set(REFUSED)
    assert names <= ours
    # No name proxyd knows is missing from Envoy's list (a typo would show here).
    assert ours - names == set()
