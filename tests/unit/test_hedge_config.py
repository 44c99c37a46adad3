"""hedge_policy (route and virtual host) into the epoch's RetryPolicy, without sockets
(tests/compat/test_hedging_compat.py plays it against real Envoy)."""

from __future__ import annotations

from tests.unit.test_retry import reject, route, routes_of

HEDGE = {"hedge_on_per_try_timeout": True}


def test_route_hedge_policy() -> None:
    (r,) = routes_of([route(retry_policy={"retry_on": "5xx"}, hedge_policy=HEDGE)])
    assert r.retry is not None and r.retry.hedge_on_per_try_timeout


def test_virtual_host_hedge_policy_and_a_routes_over_it() -> None:
    on, off, none = routes_of(
        [
            route(),
            route(hedge_policy={"hedge_on_per_try_timeout": False}),
            route(retry_policy={"retry_on": "reset"}),
        ],
        retry_policy={"retry_on": "5xx"},
        hedge_policy=HEDGE,
    )
    assert on.retry is not None and on.retry.hedge_on_per_try_timeout
    assert off.retry is not None and not off.retry.hedge_on_per_try_timeout
    # The route's own retry policy is still hedged by its virtual host's hedge_policy.
    assert none.retry is not None and none.retry.hedge_on_per_try_timeout


def test_hedge_without_a_retry_policy_changes_nothing() -> None:
    (r,) = routes_of([route(hedge_policy=HEDGE)])
    assert r.retry is None


def test_envoys_unimplemented_fields_are_accepted() -> None:
    # Envoy 1.40 accepts initial_requests and additional_request_chance and does not
    # act on them; initial_requests below 1 is refused by its proto rule.
    extra = {"initial_requests": 3, "additional_request_chance": {"numerator": 50}}
    (r,) = routes_of([route(retry_policy={"retry_on": "5xx"}, hedge_policy={**HEDGE, **extra})])
    assert r.retry is not None and r.retry.hedge_on_per_try_timeout
    err = reject([route(hedge_policy={"initial_requests": 0})])
    assert "initial_requests" in str(err)


def test_hedging_with_a_per_try_idle_timeout_is_refused() -> None:
    policy = {"retry_on": "5xx", "per_try_idle_timeout": "1s"}
    err = reject([route(retry_policy=policy, hedge_policy=HEDGE)])
    assert "hedge_policy" in str(err) and "not supported by proxyd" in str(err)
