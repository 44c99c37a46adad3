"""The health-check state machine and probes, with values only (no sockets).

Expected behaviour is Envoy's (health_checker_base_impl.cc, tcp/http checkers).
"""

from __future__ import annotations

import random

import pytest

from proxyd.epoch import HeaderToAdd, HealthCheck, StatusRange
from proxyd.master.health.probes import HttpResponseReader, http_request, tcp_match
from proxyd.master.health.state import (
    HostHealth,
    Result,
    Transition,
    base_interval,
    initial_delay,
    next_interval,
    with_jitter,
)

S, A, R, N, T = (
    Result.SUCCESS,
    Result.ACTIVE_FAILURE,
    Result.RETRIABLE_FAILURE,
    Result.NETWORK_FAILURE,
    Result.TIMEOUT,
)


def hc(**kw: object) -> HealthCheck:
    base: dict[str, object] = {
        "kind": "http",
        "timeout_s": 1.0,
        "interval_s": 10.0,
        "unhealthy_threshold": 3,
        "healthy_threshold": 2,
        "unhealthy_interval_s": 20.0,
        "unhealthy_edge_interval_s": 4.0,
        "healthy_edge_interval_s": 2.0,
        "no_traffic_interval_s": 60.0,
        "no_traffic_healthy_interval_s": 90.0,
        "http_path": "/health",
    }
    base.update(kw)
    return HealthCheck(**base)  # type: ignore[arg-type]


def run(results: list[Result], config: HealthCheck | None = None) -> list[tuple[bool, Transition]]:
    h = HostHealth()
    out = []
    for r in results:
        t = h.record(r, config or hc())
        out.append((h.healthy, t))
    return out


def test_host_starts_unhealthy_and_first_success_is_enough() -> None:
    assert HostHealth().healthy is False
    assert HostHealth().flags() == ("failed_active_hc",)
    assert run([S]) == [(True, Transition.CHANGED)]


def test_first_failure_leaves_host_unhealthy_then_healthy_threshold_applies() -> None:
    assert run([N, S, S, S]) == [
        (False, Transition.UNCHANGED),
        (False, Transition.CHANGE_PENDING),
        (True, Transition.CHANGED),
        (True, Transition.UNCHANGED),
    ]


@pytest.mark.parametrize("failure", [N, T, R])
def test_network_and_retriable_failures_count_to_unhealthy_threshold(failure: Result) -> None:
    assert run([S, failure, failure, failure]) == [
        (True, Transition.CHANGED),
        (True, Transition.CHANGE_PENDING),
        (True, Transition.CHANGE_PENDING),
        (False, Transition.CHANGED),
    ]


def test_a_success_resets_the_failure_count() -> None:
    states = run([S, N, N, S, N, N])
    assert [healthy for healthy, _t in states] == [True] * 6


def test_an_active_failure_is_unhealthy_at_once() -> None:
    assert run([S, A]) == [(True, Transition.CHANGED), (False, Transition.CHANGED)]


def test_a_failure_resets_the_success_count() -> None:
    states = run([N, S, N, S, S])
    assert [healthy for healthy, _t in states] == [False, False, False, False, True]


def test_timeout_flag_while_unhealthy() -> None:
    h = HostHealth()
    h.record(T, hc())
    assert h.flags() == ("failed_active_hc", "active_hc_timeout")
    h.record(N, hc())
    assert h.flags() == ("failed_active_hc",)
    h.record(T, hc())
    h.record(S, hc())  # pending: the flag stays until the host is healthy again
    assert h.flags() == ("failed_active_hc", "active_hc_timeout")
    h.record(S, hc())
    assert h.flags() == ()
    h.record(T, hc())  # healthy, one timeout: no flag (not failed yet)
    assert h.flags() == ()


@pytest.mark.parametrize(
    ("after_success", "transition", "traffic", "expected"),
    [
        (True, Transition.UNCHANGED, True, 10.0),  # interval
        (True, Transition.CHANGED, True, 10.0),
        (True, Transition.CHANGE_PENDING, True, 2.0),  # healthy_edge_interval
        (False, Transition.UNCHANGED, True, 20.0),  # unhealthy_interval
        (False, Transition.CHANGED, True, 20.0),
        (False, Transition.CHANGE_PENDING, True, 4.0),  # unhealthy_edge_interval
        (True, Transition.UNCHANGED, False, 90.0),  # no_traffic_healthy_interval
        (True, Transition.CHANGE_PENDING, False, 60.0),  # no_traffic_interval
        (False, Transition.UNCHANGED, False, 60.0),
    ],
)
def test_intervals(
    after_success: bool, transition: Transition, traffic: bool, expected: float
) -> None:
    assert base_interval(hc(), after_success, transition, traffic) == expected


def test_jitter_is_added_in_milliseconds_within_bounds() -> None:
    rng = random.Random(7)
    config = hc(interval_jitter_s=0.5, interval_jitter_percent=10)
    values = [next_interval(config, S, Transition.UNCHANGED, True, rng) for _ in range(200)]
    assert all(10.0 <= v < 10.0 + 1.0 + 0.5 for v in values)
    assert len(set(values)) > 50
    assert with_jitter(hc(), 0.0, rng, 0.0) == 0.001  # never 0: no live lock
    assert initial_delay(hc(), rng) == 0.0
    assert all(0 < initial_delay(hc(initial_jitter_s=1.0), rng) < 1.0 for _ in range(50))


# -- probes -----------------------------------------------------------------------------


def test_http_request_bytes() -> None:
    config = hc(
        http_host="app.internal",
        http_headers=(
            HeaderToAdd("x-a", "1"),
            HeaderToAdd("user-agent", "mine", "OVERWRITE_IF_EXISTS_OR_ADD"),
            HeaderToAdd("x-b", "2", "OVERWRITE_IF_EXISTS"),
            HeaderToAdd("x-a", "3", "ADD_IF_ABSENT"),
        ),
    )
    assert http_request(config, "svc") == (
        b"GET /health HTTP/1.1\r\nhost: app.internal\r\nuser-agent: mine\r\nx-a: 1\r\n\r\n"
    )
    assert b"host: svc\r\nuser-agent: Envoy/HC\r\n" in http_request(hc(), "svc")


RESPONSE = b"HTTP/1.1 %d OK\r\ncontent-length: 5\r\n\r\nhello"


@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, S), (404, A), (503, A), (429, R)],
)
def test_http_response_judged_by_status(one_byte: bool, status: int, expected: Result) -> None:
    config = hc(retriable_statuses=(StatusRange(429, 430),))
    reader = HttpResponseReader(config)
    data = RESPONSE % status
    chunks = [data[i : i + 1] for i in range(len(data))] if one_byte else [data]
    results = [reader.feed(c) for c in chunks]
    assert results[-1] is expected
    assert all(r is None for r in results[:-1])
    assert reader.keep_alive


def test_http_expected_ranges() -> None:
    config = hc(expected_statuses=(StatusRange(200, 300), StatusRange(404, 405)))
    for status, expected in ((200, S), (299, S), (300, A), (404, S), (405, A)):
        assert HttpResponseReader(config).feed(RESPONSE % status) is expected


def test_http_eof_and_garbage() -> None:
    reader = HttpResponseReader(hc())
    assert reader.feed(b"HTTP/1.1 200 OK\r\ncontent-le") is None
    assert reader.feed(b"") is N
    assert HttpResponseReader(hc()).feed(b"not http at all\r\n\r\n") is N
    # A body delimited by the close is complete at EOF.
    reader = HttpResponseReader(hc())
    assert reader.feed(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart") is None
    assert reader.feed(b"") is S and not reader.keep_alive


@pytest.mark.parametrize(
    ("expected", "buffer", "match"),
    [
        ([b"pong"], b"pong", True),
        ([b"pong"], b"xxpongxx", True),
        ([b"po", b"ng"], b"po..ng", True),
        ([b"ng", b"po"], b"pong", False),
        ([b"pong"], b"pon", False),
        ([], b"", True),
    ],
)
def test_tcp_match(expected: list[bytes], buffer: bytes, match: bool) -> None:
    assert tcp_match(expected, buffer) is match
