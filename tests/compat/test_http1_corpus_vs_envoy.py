"""The raw HTTP/1 request corpus (tests/compat/http1_corpus) through real Envoy and proxyd.

One Envoy, then one proxyd, run the same bootstrap: one listener per corpus file, each
routing everything to its own cluster, whose one endpoint is that case's port of an
:class:`~tests.compat.http1_wire.UpstreamRecorder`. So what an upstream received
belongs to exactly one case, and the cases run side by side. Each file's bytes go to
its listener on a fresh connection; what the client got (statuses, bodies, the
``connection`` header, whether the connection closed or the proxy hung) and what the
upstream received (request lines and headers as they came, without the headers a proxy
adds itself; bodies decoded) must be the same for both proxies, except for the cases in
:data:`EXPECTED_DIFFERENCES` (proxyd stricter on purpose).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.compat.http1_wire import UpstreamRecorder, described, play, upstream_view
from tests.support import ProxydProcess, dump_yaml, http_listener, static_cluster, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

CORPUS = Path(__file__).parent / "http1_corpus"
CASES = sorted(p.name for p in CORPUS.glob("*.http"))

# Where proxyd is stricter than Envoy on purpose (docs/configuration.md, "Known
# differences from Envoy"), keyed by case name without its number. Envoy lets bytes
# through that RFC 9112 makes an error (or waits for ever); proxyd answers 400 and
# closes, and forwards nothing it has not checked.
EXPECTED_DIFFERENCES: dict[str, str] = {
    "chunk-data-longer-than-size": "Envoy skips what follows chunk data up to the next "
    "line end and forwards the body",
    "chunk-data-bare-lf-after": "Envoy takes a bare LF for the CRLF after chunk data",
    "chunk-size-16-hex-digits": "Envoy takes the size (2**64 - 1) and waits for that many "
    "bytes, so its client hangs; proxyd refuses 16 or more hex digits",
}
PROXYD_400_CLOSE: dict[str, Any] = {
    "status": 400,
    "body": "Bad Request",
    "connection": "close",
    "from_upstream": False,
}


def corpus_config(admin: int, listen_ports: list[int], upstream_ports: list[int]) -> str:
    listeners = []
    clusters = []
    for i, (lp, up) in enumerate(zip(listen_ports, upstream_ports, strict=True)):
        route_config = {
            "name": f"r{i}",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": f"u{i}"}}],
                }
            ],
        }
        listeners.append(http_listener(f"c{i}", lp, route_config))
        clusters.append(static_cluster(f"u{i}", [up]))
    boot = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    return dump_yaml(boot)


def bound_ports(admin_port: int) -> dict[str, int]:
    """Every listener's port by name, from the admin ``/listeners`` (Envoy's and
    proxyd's answer the same)."""
    url = f"http://127.0.0.1:{admin_port}/listeners?format=json"
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.loads(r.read())
    return {
        e["name"]: int(e["local_address"]["socket_address"]["port_value"])
        for e in doc["listener_statuses"]
    }


def half_closes(name: str) -> bool:
    """A case whose name has ``-eof`` shuts its sending side after the bytes."""
    return "-eof" in name


def play_corpus(ports: list[int], recorder: UpstreamRecorder) -> dict[str, Any]:
    def one(i: int) -> Any:
        name = CASES[i]
        outcome = play(ports[i], (CORPUS / name).read_bytes(), half_closes(name))
        return {
            "client": described(outcome),
            "upstream": upstream_view(recorder.received(recorder.ports[i])),
        }

    # All cases at once: a case's time is mostly waiting (for a close, or for quiet
    # after an answer, up to 3 s), so the corpus takes about as long as its slowest case.
    with ThreadPoolExecutor(max_workers=len(CASES)) as pool:
        results = list(pool.map(one, range(len(CASES))))
    recorder.clear()
    return dict(zip(CASES, results, strict=True))


@dataclass
class Results:
    envoy: dict[str, Any]
    proxyd: dict[str, Any]


def serve_corpus(start: Any, recorder: UpstreamRecorder) -> dict[str, Any]:
    """Play the corpus through the proxy ``start(text)`` starts. Its ~250 listeners and
    its admin are on port 0: the proxy binds them, and ``/listeners`` says which ports it
    got (nothing is picked first and bound a moment later, when another process may have
    taken it)."""
    text = corpus_config(0, [0] * len(CASES), recorder.ports)
    names = [f"c{i}" for i in range(len(CASES))]

    def all_bound() -> dict[str, int]:
        by_name = bound_ports(proxy.admin_port)
        return by_name if all(n in by_name for n in names) else {}

    with start(text) as proxy:
        # Envoy can say it is ready a moment before /listeners lists all ~250 listeners.
        by_name = wait_for(all_bound)
        return play_corpus([by_name[n] for n in names], recorder)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    with UpstreamRecorder(len(CASES)) as recorder:
        envoy = serve_corpus(lambda text: EnvoyRunner(text), recorder)
        proxyd = serve_corpus(
            lambda text: ProxydProcess(tmp_path_factory.mktemp("proxyd"), text, concurrency=1),
            recorder,
        )
        yield Results(envoy, proxyd)


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 150


def short(name: str) -> str:
    """The case's name without its number: ``042-foo.http`` → ``foo``."""
    return name.split("-", 1)[1].removesuffix(".http")


def completed(upstream: list[Any]) -> list[Any]:
    """The requests an upstream received whole. One a proxy gave up on half way (the
    client went away) is left out: the upstream never acts on it, and whether Envoy had
    sent any of it by then depends on timing."""
    out = []
    for conn in upstream:
        whole = [r for r in conn if not r.get("incomplete")]
        if whole:
            out.append(whole)
    return out


def compared(result: dict[str, Any]) -> dict[str, Any]:
    return {"client": result["client"], "upstream": completed(result["upstream"])}


@pytest.mark.parametrize("name", CASES)
def test_proxyd_handles_it_like_envoy(results: Results, name: str) -> None:
    got = compared(results.proxyd[name])
    envoy = compared(results.envoy[name])
    key = short(name)
    assert got["client"]["end"] != "hang", "proxyd neither answered nor closed"
    if key in EXPECTED_DIFFERENCES:
        assert got["client"]["responses"][-1:] == [PROXYD_400_CLOSE], EXPECTED_DIFFERENCES[key]
        assert got["client"]["end"] == "closed"
        assert got["upstream"] == []
        assert envoy != got, "Envoy agrees now: drop the expected difference"
        return
    assert got == envoy


def test_the_lists_name_corpus_cases() -> None:
    names = {short(n) for n in CASES}
    assert set(EXPECTED_DIFFERENCES) <= names
