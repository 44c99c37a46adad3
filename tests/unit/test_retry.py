"""Retry decisions, Envoy's jittered back-off and the retry_policy config, without
sockets (tests/integration/test_retries.py and tests/compat/test_retries_compat.py play
them through real upstreams and real Envoy)."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from proxyd.config import compile_bootstrap
from proxyd.epoch import RetryPolicy, Route, from_wire, to_wire
from proxyd.errors import ConfigError
from proxyd.protocol.retry import (
    RETRY_5XX,
    RETRY_CONNECT_FAILURE,
    RETRY_GATEWAY_ERROR,
    RETRY_REFUSED_STREAM,
    RETRY_RESET,
    RETRY_RETRIABLE_4XX,
    RETRY_RETRIABLE_STATUS_CODES,
    Decision,
    JitteredBackOff,
    Reset,
    RetryState,
    parse_retry_on,
)
from proxyd.worker.retrying import RetryPlan, header_int, internal_retry_headers, wait_back_off

# -- back-off -------------------------------------------------------------------------------


def test_backoff_bounds_double_up_to_the_max() -> None:
    # 999 is one below a multiple of every bound: each draw is its bound - 1.
    top = JitteredBackOff(25, 250, lambda: 999)
    assert [top.next_backoff_ms() for _ in range(7)] == [24, 49, 99, 199, 249, 249, 249]
    zero = JitteredBackOff(25, 250, lambda: 0)
    assert [zero.next_backoff_ms() for _ in range(3)] == [0, 0, 0]


def test_backoff_never_exceeds_max_and_reset_starts_over() -> None:
    b = JitteredBackOff(10, 15, lambda: 29)
    assert [b.next_backoff_ms() for _ in range(3)] == [9, 14, 14]
    b.reset()
    assert b.next_backoff_ms() == 9


def test_backoff_is_spread_over_its_range() -> None:
    rng = random.Random(7)
    b = JitteredBackOff(100, 1000, lambda: rng.getrandbits(64))
    draws = []
    for _ in range(2000):
        b.reset()
        draws.append(b.next_backoff_ms())
    assert min(draws) >= 0 and max(draws) <= 99
    # Uniform on [0, 100): both halves get a fair share.
    low = sum(1 for d in draws if d < 50)
    assert 800 < low < 1200


def test_back_off_waits_on_trios_clock() -> None:
    """The waits between attempts, on a virtual clock: 24 ms, 49 ms, 99 ms with the
    largest draws (base 25 ms), then again from the base for a new request."""

    async def main() -> list[float]:
        s = RetryState(RETRY_5XX, 3, frozenset(), JitteredBackOff(25, 250, lambda: 999))
        marks = []
        t0 = trio.current_time()
        for _ in range(3):
            await wait_back_off(s)
            marks.append(round((trio.current_time() - t0) * 1000, 6))
        return marks

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == [
        24.0,
        73.0,
        172.0,
    ]


# -- decisions ------------------------------------------------------------------------------


def state(retry_on: int, retries: int = 1, codes: frozenset[int] = frozenset()) -> RetryState:
    return RetryState(retry_on, retries, codes, JitteredBackOff(25, 250))


@pytest.mark.parametrize(
    ("retry_on", "retried", "not_retried"),
    [
        (RETRY_5XX, [500, 502, 503, 504, 599], [200, 404, 409, 429]),
        (RETRY_GATEWAY_ERROR, [502, 503, 504], [500, 501, 409]),
        (RETRY_RETRIABLE_4XX, [409], [400, 404, 429, 503]),
        (RETRY_RETRIABLE_STATUS_CODES, [418, 429], [409, 500, 503]),
        (RETRY_RESET, [], [500, 503, 409]),
        (RETRY_CONNECT_FAILURE, [], [503]),
        (RETRY_REFUSED_STREAM, [], [503]),
        (0, [], [500, 503]),
    ],
)
def test_status_conditions(retry_on: int, retried: list[int], not_retried: list[int]) -> None:
    s = state(retry_on, codes=frozenset({418, 429}))
    assert [c for c in retried + not_retried if s.would_retry_status(c)] == retried


def test_overloaded_response_is_never_retried() -> None:
    assert not state(RETRY_5XX).would_retry_status(503, overloaded=True)


@pytest.mark.parametrize(
    ("retry_on", "retried"),
    [
        (RETRY_5XX, set(Reset)),
        (RETRY_GATEWAY_ERROR, set(Reset)),
        (RETRY_RESET, set(Reset)),
        (RETRY_CONNECT_FAILURE, {Reset.CONNECT_FAILURE}),
        (RETRY_RETRIABLE_4XX, set()),
        (RETRY_RETRIABLE_STATUS_CODES, set()),
        (RETRY_REFUSED_STREAM, {Reset.REFUSED_STREAM}),
    ],
)
def test_reset_conditions(retry_on: int, retried: set[Reset]) -> None:
    s = state(retry_on)
    assert {r for r in Reset if s.would_retry_reset(r)} == retried


def test_decide_uses_the_retries_then_says_limit() -> None:
    s = state(RETRY_5XX, retries=2)
    assert s.decide(False) is Decision.NO_RETRY
    assert s.decide(True) is Decision.RETRY
    assert s.decide(True) is Decision.RETRY
    assert s.decide(True) is Decision.LIMIT_EXCEEDED
    assert s.decide(False) is Decision.NO_RETRY
    assert state(RETRY_5XX, retries=0).decide(True) is Decision.LIMIT_EXCEEDED


def test_parse_retry_on() -> None:
    assert parse_retry_on("5xx,reset") == (RETRY_5XX | RETRY_RESET, [])
    assert parse_retry_on(" gateway-error , , bogus") == (RETRY_GATEWAY_ERROR, ["bogus"])
    assert parse_retry_on("") == (0, [])


# -- config ---------------------------------------------------------------------------------

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
VH_PATH = (
    "static_resources.listeners[0].filter_chains[0].filters[0].typed_config."
    "route_config.virtual_hosts[0]"
)


def bootstrap(routes: list[dict[str, Any]], **vh: Any) -> dict[str, Any]:
    hcm = {
        "@type": HCM,
        "stat_prefix": "in",
        "route_config": {
            "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes, **vh}]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    cluster = {
        "name": "svc",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "svc",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": 1}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    return {"static_resources": {"listeners": [listener], "clusters": [cluster]}}


def routes_of(routes: list[dict[str, Any]], **vh: Any) -> tuple[Route, ...]:
    epoch = compile_bootstrap(bootstrap(routes, **vh), "conf.yaml").epoch_template
    return epoch.listeners[0].hcm.route_config.virtual_hosts[0].routes


def reject(routes: list[dict[str, Any]], **vh: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(bootstrap(routes, **vh), "conf.yaml")
    return info.value


def route(**action: Any) -> dict[str, Any]:
    return {"match": {"prefix": "/"}, "route": {"cluster": "svc", **action}}


def test_defaults() -> None:
    (r,) = routes_of([route(retry_policy={"retry_on": "5xx"})])
    assert r.retry == RetryPolicy(
        retry_on="5xx", num_retries=1, base_interval_ms=25, max_interval_ms=250
    )
    (r,) = routes_of([route()])
    assert r.retry is None


def test_all_fields() -> None:
    policy = {
        "retry_on": "retriable-status-codes,connect-failure",
        "num_retries": 4,
        "per_try_timeout": "0.25s",
        "retry_back_off": {"base_interval": "0.1s", "max_interval": "2s"},
        "retriable_status_codes": [418, 503],
    }
    (r,) = routes_of([route(retry_policy=policy)])
    assert r.retry == RetryPolicy(
        retry_on="retriable-status-codes,connect-failure",
        num_retries=4,
        per_try_timeout_s=0.25,
        base_interval_ms=100,
        max_interval_ms=2000,
        retriable_status_codes=(418, 503),
    )
    assert r.retry is not None
    wire = msgpack.unpackb(msgpack.packb(to_wire(r)))
    assert from_wire(Route, wire) == r


def test_route_policy_replaces_the_virtual_hosts() -> None:
    own = route(retry_policy={"retry_on": "retriable-4xx", "num_retries": 3})
    plain = route()
    redirect = {"match": {"prefix": "/r"}, "redirect": {"host_redirect": "x"}}
    r_own, r_plain, r_redirect = routes_of(
        [own, plain, redirect],
        retry_policy={"retry_on": "5xx", "num_retries": 2},
        include_request_attempt_count=True,
    )
    assert r_own.retry == RetryPolicy(
        retry_on="retriable-4xx", num_retries=3, include_attempt_count=True
    )
    assert r_plain.retry == RetryPolicy(retry_on="5xx", num_retries=2, include_attempt_count=True)
    assert r_redirect.retry is None


def test_attempt_count_without_a_policy() -> None:
    (r,) = routes_of([route()], include_request_attempt_count=True)
    assert r.retry == RetryPolicy(retry_on="", include_attempt_count=True)


def test_unknown_names_are_ignored_as_envoy_does() -> None:
    (r,) = routes_of([route(retry_policy={"retry_on": "5xx,not-a-condition"})])
    assert r.retry is not None and parse_retry_on(r.retry.retry_on)[0] == RETRY_5XX


@pytest.mark.parametrize("name", ["reset-before-request", "unavailable"])
def test_unimplemented_conditions_are_refused_by_name(name: str) -> None:
    err = reject([route(retry_policy={"retry_on": f"5xx,{name}"})])
    assert err.path == f"{VH_PATH}.routes[0].route.retry_policy.retry_on"
    assert name in err.reason
    err = reject([route()], retry_policy={"retry_on": name})
    assert err.path == f"{VH_PATH}.retry_policy.retry_on"


def test_max_interval_below_base_is_refused() -> None:
    policy = {"retry_on": "5xx", "retry_back_off": {"base_interval": "1s", "max_interval": "0.5s"}}
    err = reject([route(retry_policy=policy)])
    assert err.path.endswith("route.retry_policy.retry_back_off.max_interval")
    assert "greater than or equal to the base_interval" in err.reason


OMIT_HOST_METADATA = (
    "type.googleapis.com/envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig"
)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("retry_host_predicate", [{"name": "x", "typed_config": {"@type": OMIT_HOST_METADATA}}]),
    ],
)
def test_unsupported_fields_are_refused_by_name(field: str, value: Any) -> None:
    err = reject([route(retry_policy={"retry_on": "5xx", field: value})])
    assert field in err.path or field in err.reason


def test_a_host_predicate_needs_its_typed_config() -> None:
    policy = {
        "retry_on": "5xx",
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
    }
    err = reject([route(retry_policy=policy)])
    assert err.path.endswith("retry_policy.retry_host_predicate[0]")
    assert "Didn't find a registered implementation" in err.reason


# -- an internal request's retry headers -------------------------------------------------

RAW = (
    b"GET / HTTP/1.1\r\nhost: x\r\nx-envoy-retry-on: retriable-4xx,reset\r\n"
    b"x-envoy-max-retries: 4\r\nx-envoy-upstream-rq-per-try-timeout-ms: 250\r\n\r\n"
)


def test_retry_headers_count_only_on_internal_requests() -> None:
    internal_head = b"GET / HTTP/1.1\r\nhost: x\r\nx-envoy-internal: true\r\n\r\n"
    assert internal_retry_headers(RAW, internal_head) == {
        "x-envoy-retry-on": "retriable-4xx,reset",
        "x-envoy-max-retries": "4",
        "x-envoy-upstream-rq-per-try-timeout-ms": "250",
    }
    assert internal_retry_headers(RAW, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n") is None


def test_retry_headers_change_the_policy() -> None:
    plan = RetryPlan(RetryPolicy(retry_on="5xx", num_retries=1, per_try_timeout_s=1.0), 15.0)
    s, per_try = plan.state(
        {
            "x-envoy-retry-on": "retriable-4xx,bogus",
            "x-envoy-max-retries": "4",
            "x-envoy-upstream-rq-per-try-timeout-ms": "250",
        }
    )
    assert s.retry_on == RETRY_5XX | RETRY_RETRIABLE_4XX
    assert (s.retries_left, per_try) == (4, 0.25)
    # Not numbers: ignored; a per-try timeout not below the route timeout: none.
    s, per_try = plan.state(
        {"x-envoy-max-retries": "x", "x-envoy-upstream-rq-per-try-timeout-ms": "20000"}
    )
    assert (s.retries_left, per_try) == (1, 0.0)
    s, per_try = plan.state(None)
    assert (s.retry_on, s.retries_left, per_try) == (RETRY_5XX, 1, 1.0)


@pytest.mark.parametrize(
    ("text", "value"), [("3", 3), ("+3", 3), ("0", 0), ("-1", None), ("3x", None), ("", None)]
)
def test_header_int(text: str, value: int | None) -> None:
    assert header_int(text) == value


PREVIOUS_PRIORITIES = (
    "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3."
    "PreviousPrioritiesConfig"
)


def test_previous_priorities_compile_and_refusals() -> None:
    prio = {
        "name": "envoy.retry_priorities.previous_priorities",
        "typed_config": {"@type": PREVIOUS_PRIORITIES, "update_frequency": 2},
    }
    (r,) = routes_of([route(retry_policy={"retry_on": "5xx", "retry_priority": prio})])
    assert r.retry is not None and r.retry.priority_update_frequency == 2
    zero = {**prio, "typed_config": {"@type": PREVIOUS_PRIORITIES}}
    err = reject([route(retry_policy={"retry_on": "5xx", "retry_priority": zero})])
    assert err.path.endswith("retry_priority.typed_config.update_frequency")
    assert "greater than 0" in err.reason
    bare = {"name": "envoy.retry_priorities.previous_priorities"}
    err = reject([route(retry_policy={"retry_on": "5xx", "retry_priority": bare})])
    assert "Didn't find a registered implementation" in err.reason


def test_load_without_the_attempted_levels() -> None:
    from proxyd.protocol.priority import load_without

    counts = [(2, 2), (1, 1), (0, 3)]
    assert load_without(counts, frozenset({0})) == (0, 100, 0)
    # Levels take load in order, up to their health (the total capped at 100).
    assert load_without([(2, 2), (1, 1), (1, 1)], frozenset({0})) == (0, 100, 0)
    # Nothing usable left: None (Envoy forgets the excluded levels).
    assert load_without(counts, frozenset({0, 1})) is None
    # Partial health: P1 at 70 % (140 * 1 // 2), the rest to P2.
    assert load_without([(2, 2), (1, 2), (1, 1)], frozenset({0})) == (0, 70, 30)
    assert load_without([(1, 4), (1, 4), (1, 3)], frozenset({0})) == (0, 44, 56)


def test_header_conditions_and_rate_limited_back_off_compile() -> None:
    policy = {
        "retry_on": "retriable-headers,envoy-ratelimited",
        "retriable_headers": [{"name": "X-Retry", "string_match": {"exact": "yes"}}],
        "retriable_request_headers": [{"name": "x-allow", "present_match": True}],
        "rate_limited_retry_back_off": {
            "reset_headers": [
                {"name": "Retry-After"},
                {"name": "x-reset", "format": "UNIX_TIMESTAMP"},
            ],
            "max_interval": "3s",
        },
    }
    (r,) = routes_of([route(retry_policy=policy)])
    assert r.retry is not None
    assert [h.name for h in r.retry.retriable_headers] == ["x-retry"]
    assert [h.name for h in r.retry.retriable_request_headers] == ["x-allow"]
    assert r.retry.reset_headers == (("retry-after", "SECONDS"), ("x-reset", "UNIX_TIMESTAMP"))
    assert r.retry.reset_max_interval_ms == 3000


def test_reset_interval_takes_the_first_usable_header() -> None:
    import time

    from proxyd.epoch import RetryPolicy
    from proxyd.worker.retrying import RetryPlan

    plan = RetryPlan(
        RetryPolicy(
            retry_on="5xx",
            reset_headers=(("retry-after", "SECONDS"), ("x-reset", "UNIX_TIMESTAMP")),
            reset_max_interval_ms=10_000,
        ),
        15.0,
    )
    assert plan.reset_interval_ms({"retry-after": "2"}) == 2000
    # Over max_interval, or not a number: passed over for the next header.
    soon = str(int(time.time()) + 5)
    assert 3000 <= plan.reset_interval_ms({"retry-after": "60", "x-reset": soon}) <= 5000
    assert plan.reset_interval_ms({"retry-after": "soon"}) == 0
    assert plan.reset_interval_ms({"x-reset": str(int(time.time()) - 5)}) == 0
    assert plan.reset_interval_ms({}) == 0
