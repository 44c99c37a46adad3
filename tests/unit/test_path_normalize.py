"""The path normaliser (proxyd.protocol.path_normalize) against the corpus in
tests/unit/path_corpus: every path in paths.txt under every connection-manager setting,
with the results real Envoy 1.40 gave (expected.tsv; the compat test
test_hcm_transforms_compat checks that file against Envoy)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxyd.protocol.path_normalize import (
    EscapedSlashes,
    PathAction,
    PathNormalizer,
    canonical_path,
    merge_slashes,
    unescape_slashes,
)

CORPUS = Path(__file__).parent / "path_corpus"

# expected.tsv's columns: (path_with_escaped_slashes_action, normalize_path, merge_slashes)
SETTINGS = {
    "normalize": (EscapedSlashes.KEEP_UNCHANGED, True, False),
    "merge": (EscapedSlashes.KEEP_UNCHANGED, False, True),
    "normalize_merge": (EscapedSlashes.KEEP_UNCHANGED, True, True),
    "reject_escaped": (EscapedSlashes.REJECT_REQUEST, False, False),
    "redirect_escaped": (EscapedSlashes.UNESCAPE_AND_REDIRECT, True, False),
    "forward_escaped": (EscapedSlashes.UNESCAPE_AND_FORWARD, False, False),
    "forward_escaped_all": (EscapedSlashes.UNESCAPE_AND_FORWARD, True, True),
}


def origin_form(target: str) -> str:
    m = re.match(r"https?://[^/?]*", target)
    return target[m.end() :] or "/" if m else target


def rows() -> list[tuple[str, str, str]]:
    lines = (CORPUS / "expected.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[1:] == list(SETTINGS)
    out = []
    for line in lines[1:]:
        path, *cells = line.split("\t")
        out.extend((path, column, cell) for column, cell in zip(header[1:], cells, strict=True))
    return out


def test_corpus_covers_every_path() -> None:
    paths = [x for x in (CORPUS / "paths.txt").read_text().splitlines() if x and x[:2] != "# "]
    assert [
        line.split("\t")[0] for line in (CORPUS / "expected.tsv").read_text().splitlines()[1:]
    ] == paths
    assert len(paths) >= 80


@pytest.mark.parametrize(("path", "column", "expected"), rows())
def test_like_envoy(path: str, column: str, expected: str) -> None:
    normalizer = PathNormalizer(*SETTINGS[column])
    new, action = normalizer.apply(origin_form(path))
    if action is PathAction.REJECT:
        got = "400"
    elif action is PathAction.REDIRECT:
        got = f"307 {new}"
    else:
        got = new
    assert got == expected


def test_steps() -> None:
    assert unescape_slashes("/a%2Fb?x=%2F") == ("/a/b?x=%2F", True)
    assert unescape_slashes("/a%252Fb") == ("/a%252Fb", False)
    assert canonical_path("/a/%7e/../%41?q=/../") == "/a/A?q=/../"
    assert canonical_path("/x%00") is None
    assert merge_slashes("//a//b//?c//d") == "/a/b/?c//d"
    assert not PathNormalizer(EscapedSlashes.KEEP_UNCHANGED, False, False)
    assert PathNormalizer(EscapedSlashes.KEEP_UNCHANGED, False, True)
