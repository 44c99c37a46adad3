"""Route retry policies against a real failing upstream (tests/integration/retry_cases.py
has the config and the cases; tests/compat/test_retries_compat.py plays the same cases
through real Envoy)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.retry_cases import CASES, Case, play, retries_config, retry_stats
from tests.integration.scripted_upstream import scripted_upstream
from tests.support import ProxydProcess, free_port, wait_for


@dataclass
class Setup:
    proxy: ProxydProcess
    ports: dict[str, int]
    upstream: Any


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with scripted_upstream() as upstream:
        ports = {name: free_port() for name in ("ingress", "edge", "small", "internal")}
        admin = free_port()
        text = retries_config(
            ports["ingress"],
            ports["edge"],
            ports["small"],
            ports["internal"],
            admin,
            upstream.server_address[1],
            free_port(),
        )
        with ProxydProcess(tmp_path_factory.mktemp("proxyd"), text, admin, concurrency=1) as p:
            yield Setup(p, ports, upstream)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_retry_case(setup: Setup, case: Case) -> None:
    out = play(case, setup.ports, setup.upstream, "proxyd")
    assert (out.status, out.attempts) == (case.expect_status, case.expect_attempts)
    assert out.bodies_ok, "a retried request's body differs from the client's"
    if case.expect_status < 500 or out.attempt:
        assert out.attempt == str(case.expect_attempts)  # the last attempt answered


def test_attempt_count_header(setup: Setup) -> None:
    (case,) = [c for c in CASES if c.name == "vh-policy-attempt-count"]
    out = play(case, setup.ports, setup.upstream, "count")
    assert out.attempt_counts == ["1", "2"]


def test_per_try_timeout_is_the_expected_timeout(setup: Setup) -> None:
    (case,) = [c for c in CASES if c.name == "pertry-then-ok"]
    out = play(case, setup.ports, setup.upstream, "expected")
    assert out.expected_timeouts == ["500", "500"]
    (case,) = [c for c in CASES if c.name == "header-per-try-ignored"]
    out = play(case, setup.ports, setup.upstream, "expected")
    assert out.expected_timeouts == ["500"]
    (case,) = [c for c in CASES if c.name == "internal-per-try"]
    out = play(case, setup.ports, setup.upstream, "expected")
    assert out.expected_timeouts == ["300", "300"]
    (case,) = [c for c in CASES if c.name == "5xx-then-ok"]
    out = play(case, setup.ports, setup.upstream, "expected")
    first, *retries = [int(v or 0) for v in out.expected_timeouts]
    # A retry is told what is left of the route timeout (15 s).
    assert first == 15000 and all(14000 < v <= 15000 for v in retries)


def test_retry_stats_count(setup: Setup) -> None:
    def settled() -> bool:
        # Every request the upstream saw is in the worker's reported stats.
        with setup.upstream.lock:
            seen = sum(setup.upstream.requests.values())
        stats = retry_stats(setup.proxy.stats())
        return stats["svc.upstream_rq_total"] + stats["tight.upstream_rq_total"] == seen

    wait_for(settled, timeout=5)
    before = retry_stats(setup.proxy.stats())
    (case,) = [c for c in CASES if c.name == "5xx-limit"]
    play(case, setup.ports, setup.upstream, "stats")
    (case,) = [c for c in CASES if c.name == "5xx-then-ok"]
    play(case, setup.ports, setup.upstream, "stats")

    def delta() -> dict[str, int]:
        after = retry_stats(setup.proxy.stats())
        return {k: after[k] - before[k] for k in after if after[k] != before[k]}

    want = {
        "svc.upstream_rq_retry": 4,
        "svc.upstream_rq_retry_success": 1,
        "svc.upstream_rq_retry_limit_exceeded": 1,
        "svc.upstream_rq_total": 6,
        "svc.upstream_rq_retry_backoff_exponential": 4,
    }
    try:
        wait_for(lambda: delta() == want, timeout=5)
    except TimeoutError:
        pass
    assert delta() == want
