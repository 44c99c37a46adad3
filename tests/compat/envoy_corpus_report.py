"""The public Envoy corpus: what Envoy and proxyd make of each file, and the figures.

``tests/compat/envoy_corpus/`` holds Envoy v3 bootstraps taken unchanged from public
repositories (``manifest.json`` names each one's origin; ``ORIGINS.md`` says how they
were chosen). ``expectations.json`` records, per file, what proxyd does with it:
``"accepted"``, or ``"unsupported PATH"`` (refused by name at PATH, a feature proxyd
does not implement). ``tests/compat/test_envoy_corpus.py`` holds proxyd to it.

Run from the repository root::

    .venv/bin/python -m tests.compat.envoy_corpus_report            # the figures
    .venv/bin/python -m tests.compat.envoy_corpus_report --envoy    # and run real Envoy too
    .venv/bin/python -m tests.compat.envoy_corpus_report --write    # rewrite expectations.json

``make config-regen`` runs it with ``--envoy --write`` (and regenerates
docs/config-coverage.md): the one command to run after a change makes proxyd accept
more, or refuse elsewhere. ``--write`` refuses to write while any file is refused for
a parsing difference, since those are bugs to fix, not expectations to record.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.compat.envoy_runner import ENVOY_PATH

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "envoy_corpus"
MANIFEST = CORPUS / "manifest.json"
EXPECTATIONS = CORPUS / "expectations.json"
# Real files Envoy 1.40 refuses (v2-era, broken): proxyd must refuse them too.
ENVOY_REFUSES = CORPUS / "envoy_refuses"
ENVOY = ENVOY_PATH
_NOT_CORPUS = {MANIFEST.name, EXPECTATIONS.name}
ACCEPTED = "accepted"
UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Outcome:
    rc: int
    output: str


@dataclass(frozen=True)
class Verdict:
    """What proxyd made of one file.

    ``kind`` is ``accepted``, ``unsupported`` (a refusal by name of a feature proxyd
    does not implement: "... not supported by proxyd") or ``parse`` (any other
    refusal of a file Envoy accepts: a parsing difference, a bug).
    """

    kind: str
    path: str = ""
    reason: str = ""

    def expectation(self) -> str:
        return ACCEPTED if self.kind == ACCEPTED else f"{self.kind} {self.path}".rstrip()


def corpus_files(folder: Path = CORPUS) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix in (".yaml", ".yml", ".json") and p.name not in _NOT_CORPUS
    )


def manifest(folder: Path = CORPUS) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = json.loads((folder / MANIFEST.name).read_text())
    return entries


def expectations() -> dict[str, str]:
    loaded: dict[str, str] = json.loads(EXPECTATIONS.read_text())
    return loaded


def envoy_validate(path: Path) -> Outcome:
    """``envoy --mode validate`` run in the corpus folder (certs/ is relative to it)."""
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=CORPUS,
    )
    return Outcome(result.returncode, result.stdout + result.stderr)


def envoy_outcomes(paths: list[Path]) -> dict[str, Outcome]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return {p.name: o for p, o in zip(paths, pool.map(envoy_validate, paths), strict=True)}


def proxyd_outcomes(paths: list[Path]) -> dict[str, Outcome]:
    """``proxyd --mode validate`` on every file, in one process (tests.compat.validate_batch),
    reading relative files from the corpus folder as Envoy does (certs/)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.compat.validate_batch",
            "--cwd",
            str(CORPUS),
            *(str(p) for p in paths),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    if result.returncode != 0:
        raise RuntimeError(f"validate_batch failed:\n{result.stderr}")
    out = {}
    for line in result.stdout.splitlines():
        item = json.loads(line)
        out[Path(item["file"]).name] = Outcome(item["rc"], item["stdout"] + item["stderr"])
    return out


def verdict(path: Path, outcome: Outcome) -> Verdict:
    if outcome.rc == 0:
        return Verdict(ACCEPTED)
    prefix = f"proxyd: {path}: "
    error = next((line for line in outcome.output.splitlines() if line.startswith(prefix)), None)
    if error is None:
        return Verdict("parse", "", outcome.output.strip()[-500:])
    where, _, reason = error[len(prefix) :].partition(": ")
    if not reason:  # an error about the whole file: no path
        where, reason = "", where
    kind = UNSUPPORTED if "not supported by proxyd" in reason else "parse"
    return Verdict(kind, where, reason)


_INDEX = re.compile(r"\[(\d+|'[^']*')\]")
_SHORT = (
    ("static_resources.listeners[].filter_chains[].filters[].typed_config.route_config.virtual_hosts[].routes[].", "route: "),
    ("static_resources.listeners[].filter_chains[].filters[].typed_config.route_config.virtual_hosts[].", "virtual host: "),
    ("static_resources.listeners[].filter_chains[].filters[].typed_config.route_config.", "route config: "),
    ("static_resources.listeners[].filter_chains[].filters[].typed_config.", "connection manager: "),
    ("static_resources.listeners[].filter_chains[].", "filter chain: "),
    ("static_resources.listeners[].", "listener: "),
    ("static_resources.clusters[].", "cluster: "),
)  # fmt: skip
_EXTENSION = re.compile(r"^(.*?) (?:'[^']*' )?\(([^)]+)\) not supported by proxyd")


def reason_key(v: Verdict) -> str:
    """A refusal reduced to what it is about, so that refusals can be counted."""
    if v.reason == "field not supported by proxyd":
        path = _INDEX.sub("[]", v.path)
        for long, short in _SHORT:
            if path.startswith(long):
                return short + path[len(long) :]
        return path
    m = _EXTENSION.match(v.reason)
    if m:
        return f"{m.group(1)} {m.group(2)}"
    return v.reason.replace(" not supported by proxyd", "")


def report(
    paths: list[Path],
    proxyd: dict[str, Outcome],
    envoy: dict[str, Outcome] | None,
    refused: dict[str, tuple[Outcome, Outcome | None]] | None = None,
) -> str:
    """The figures; ``refused`` holds proxyd's and Envoy's outcomes for envoy_refuses/."""
    verdicts = {p.name: verdict(p, proxyd[p.name]) for p in paths}
    lines = [f"corpus: {len(paths)} public Envoy v3 bootstraps ({MANIFEST.relative_to(ROOT)})"]
    if envoy is not None:
        accepted = sum(1 for p in paths if envoy[p.name].rc == 0)
        lines.append(f"accepted by Envoy ({ENVOY.name} --mode validate): {accepted}")
    ok = [n for n, v in verdicts.items() if v.kind == ACCEPTED]
    lines.append(f"accepted by proxyd: {len(ok)}")
    parse = {n: v for n, v in verdicts.items() if v.kind == "parse"}
    lines.append(f"refused by proxyd, naming a feature it does not implement: "
                 f"{len(verdicts) - len(ok) - len(parse)}")  # fmt: skip
    lines.append(f"refused by proxyd for a parsing difference: {len(parse)}")
    for name, v in parse.items():
        lines.append(f"    {name}: {v.path}: {v.reason}")
    counts = Counter(reason_key(v) for v in verdicts.values() if v.kind == UNSUPPORTED)
    lines.append("refusal reasons by count (the first refusal of each file):")
    lines.extend(f"  {n:4d}  {key}" for key, n in counts.most_common())
    lines.append("accepted by proxyd: " + ", ".join(ok))
    lines.extend(_features_lacking(paths, verdicts))
    if refused:
        by_proxyd = sum(1 for p, _e in refused.values() if p.rc != 0)
        text = f"files Envoy refuses ({ENVOY_REFUSES.name}/): {len(refused)}"
        if all(e is not None for _p, e in refused.values()):
            text += f", refused by Envoy here: {sum(1 for _p, e in refused.values() if e and e.rc)}"
        lines.append(f"{text}, refused by proxyd too: {by_proxyd}")
    return "\n".join(lines)


def _features_lacking(paths: list[Path], verdicts: dict[str, Verdict]) -> list[str]:
    """Every field and extension outside the coverage tree, by the files that use it,
    and which single one would be all a refused file lacks."""
    from envoy.config.bootstrap.v3 import bootstrap_pb2

    from proxyd.config.feature_check import refusals
    from proxyd.config.source import read_config_file
    from proxyd.config.supported import BOOTSTRAP

    used: Counter[str] = Counter()
    alone: Counter[str] = Counter()
    for p in paths:
        if verdicts[p.name].kind == ACCEPTED:
            continue
        found = refusals(read_config_file(str(p)), bootstrap_pb2.Bootstrap.DESCRIPTOR, BOOTSTRAP)
        keys = {reason_key(Verdict(UNSUPPORTED, where, why)) for where, why in found}
        used.update(keys)
        if len(keys) == 1:
            alone.update(keys)
    lines = ["fields and extensions outside the coverage tree, by the files that use them:"]
    lines.extend(f"  {n:4d}  {key}" for key, n in used.most_common())
    lines.append("the only one a file lacks (of those above), by files:")
    lines.extend(f"  {n:4d}  {key}" for key, n in alone.most_common())
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.compat.envoy_corpus_report")
    parser.add_argument("--envoy", action="store_true", help="also run real Envoy on each file")
    parser.add_argument("--write", action="store_true", help="rewrite expectations.json")
    args = parser.parse_args(argv)
    paths = corpus_files()
    proxyd = proxyd_outcomes(paths)
    envoy = envoy_outcomes(paths) if args.envoy else None
    bad = corpus_files(ENVOY_REFUSES)
    bad_proxyd = proxyd_outcomes(bad)
    bad_envoy = envoy_outcomes(bad) if args.envoy else {}
    refused = {p.name: (bad_proxyd[p.name], bad_envoy.get(p.name)) for p in bad}
    print(report(paths, proxyd, envoy, refused))
    if args.write:
        verdicts = {p.name: verdict(p, proxyd[p.name]) for p in paths}
        if any(v.kind == "parse" for v in verdicts.values()):
            print("not written: fix the parsing differences first", file=sys.stderr)
            return 1
        data = {name: v.expectation() for name, v in verdicts.items()}
        EXPECTATIONS.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"wrote {EXPECTATIONS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
