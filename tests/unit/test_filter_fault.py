"""The fault filter driven directly through an in-memory FilterStream, on trio's
virtual clock where it delays."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from proxyd.config.runtime import from_string
from proxyd.epoch import HeaderMatch, StringMatch, to_wire
from proxyd.filters.api import CONTINUE, LocalReply
from proxyd.filters.fault import filter as fault
from proxyd.filters.fault.filter import STAT_PREFIX, Factory, header_uint
from proxyd.protocol.runtime import Snapshot
from proxyd.worker.stats import StatsStore
from tests.unit.filter_stream import Head, MemoryStream

SCOPE = "http.ingress."  # the scope the chain gives the factory
PREFIX = f"{SCOPE}{STAT_PREFIX}"
DENOMINATORS = (100, 10_000, 1_000_000)


def settings(
    abort: dict[str, Any] | None = None, delay: dict[str, Any] | None = None, **more: Any
) -> dict[str, Any]:
    """The plain config proxyd.filters.fault.config compiles (see its docstring)."""
    return {
        "abort": abort,
        "delay": delay,
        "upstream_cluster": "",
        "downstream_nodes": [],
        "headers": [],
        "max_active_faults": None,
        "disable_downstream_cluster_stats": False,
        **more,
    }


def abort(
    http: int | None = 503,
    grpc: int | None = None,
    header: bool = False,
    numerator: int = 100,
    denominator: int = 100,
) -> dict[str, Any]:
    return {
        "http_status": None if grpc is not None or header else http,
        "grpc_status": grpc,
        "header": header,
        "numerator": numerator,
        "denominator": denominator,
    }


def delay(ms: int | None = 2000, numerator: int = 100, denominator: int = 100) -> dict[str, Any]:
    return {"fixed_ms": ms, "numerator": numerator, "denominator": denominator}


class Scenario:
    """One factory (per-route config optional) with its stats store."""

    def __init__(
        self,
        config: dict[str, Any],
        per_route: dict[str, Any] | None = None,
        runtime: dict[str, str] | None = None,
    ) -> None:
        self.store = StatsStore()
        self.stats = self.store.named(SCOPE)
        snapshot = Snapshot(from_string(k, v) for k, v in (runtime or {}).items())
        self.factory = Factory("fault", config, per_route, self.stats, snapshot)

    def run(self, headers: dict[str, str] | None = None, **stream: Any) -> tuple[Any, MemoryStream]:
        """Headers of one request (ended by them); the stream completes afterwards."""
        s = MemoryStream(Head(headers=dict(headers or {})), **stream)

        async def main() -> Any:
            flt = self.factory.create()
            result = await flt.on_request_headers(s, True)
            flt.on_stream_complete(s)
            return result

        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)), s

    def counters(self) -> dict[str, int]:
        return {k.removeprefix(STAT_PREFIX): v for k, v in self.stats.counters.items() if v}


def aborted(result: Any) -> bool:
    return isinstance(result, LocalReply)


# -- aborts -------------------------------------------------------------------------------


def test_http_abort() -> None:
    sc = Scenario(settings(abort=abort(503)))
    result, stream = sc.run()
    assert result == LocalReply(503, "fault filter abort", details="fault_filter_abort")
    assert stream.flags == ["FI"]
    assert sc.counters() == {"aborts_injected": 1}
    assert sc.stats.value("fault.active_faults") == 0  # released when the stream completed


def test_grpc_abort_is_http_200_with_grpc_status() -> None:
    result, _ = Scenario(settings(abort=abort(grpc=14))).run()
    assert result == LocalReply(
        200, "fault filter abort", details="fault_filter_abort", grpc_status=14
    )


@pytest.mark.parametrize("denominator", DENOMINATORS)
def test_percentage_0_never_and_full_always_without_a_draw(denominator: int) -> None:
    never = Scenario(settings(abort=abort(numerator=0, denominator=denominator)))
    always = Scenario(settings(abort=abort(numerator=denominator, denominator=denominator)))
    above = Scenario(settings(abort=abort(numerator=denominator + 1, denominator=denominator)))
    state = fault.RANDOM.getstate()
    for _ in range(50):
        assert not aborted(never.run()[0])
        assert aborted(always.run()[0])
        assert aborted(above.run()[0])
    assert fault.RANDOM.getstate() == state


@pytest.mark.parametrize("denominator", DENOMINATORS)
def test_percentage_draws_per_request(denominator: int) -> None:
    # A quarter of the requests, whichever denominator says it; the seed fixes the draws.
    fault.RANDOM.seed(8)
    sc = Scenario(settings(abort=abort(numerator=denominator // 4, denominator=denominator)))
    hits = sum(aborted(sc.run()[0]) for _ in range(800))
    assert 150 <= hits <= 250
    assert sc.counters() == {"aborts_injected": hits}


def test_one_in_a_million() -> None:
    fault.RANDOM.seed(3)
    sc = Scenario(settings(abort=abort(numerator=1, denominator=1_000_000)))
    assert sum(aborted(sc.run()[0]) for _ in range(500)) <= 1


# -- header-controlled faults ---------------------------------------------------------------

HEADER_ABORT = settings(abort=abort(header=True))


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("503", 503),
        ("200", 200),
        ("599", 599),
        (" 404 ", 404),
        ("+429", 429),
        ("0503", 503),
        ("503,404", 503),  # the first value of a repeated header
        ("199", None),
        ("600", None),
        ("5x", None),
        ("-503", None),
        ("", None),
    ],
)
def test_abort_request_header(value: str, status: int | None) -> None:
    result, _ = Scenario(HEADER_ABORT).run({"x-envoy-fault-abort-request": value})
    assert (result.status if aborted(result) else None) == status


def test_header_abort_without_headers_does_nothing() -> None:
    sc = Scenario(HEADER_ABORT)
    assert sc.run()[0] is CONTINUE
    assert sc.counters() == {}


def test_grpc_header_and_http_header_wins() -> None:
    sc = Scenario(HEADER_ABORT)
    result, _ = sc.run({"x-envoy-fault-abort-grpc-request": "14"})
    assert (result.status, result.grpc_status) == (200, 14)
    result, _ = sc.run(
        {"x-envoy-fault-abort-grpc-request": "99", "x-envoy-fault-abort-request": "404"}
    )
    assert (result.status, result.grpc_status) == (404, None)
    result, _ = sc.run({"x-envoy-fault-abort-grpc-request": "-1"})
    assert result is CONTINUE


def test_percentage_header_lowers_but_never_raises() -> None:
    lowered = Scenario(HEADER_ABORT)
    result, _ = lowered.run(
        {"x-envoy-fault-abort-request": "503", "x-envoy-fault-abort-request-percentage": "0"}
    )
    assert result is CONTINUE
    # Configured at 0 (Envoy's default when no percentage is set): a header of 100 does
    # not raise it.
    zero = Scenario(settings(abort=abort(header=True, numerator=0)))
    result, _ = zero.run(
        {"x-envoy-fault-abort-request": "503", "x-envoy-fault-abort-request-percentage": "100"}
    )
    assert result is CONTINUE
    # A percentage that is not a number leaves the configured one.
    result, _ = lowered.run(
        {"x-envoy-fault-abort-request": "503", "x-envoy-fault-abort-request-percentage": "x"}
    )
    assert result.status == 503


def test_fault_headers_are_ignored_without_header_config() -> None:
    sc = Scenario(settings(abort=abort(500), delay=delay(1000)))
    start_headers = {
        "x-envoy-fault-abort-request": "503",
        "x-envoy-fault-abort-request-percentage": "0",
        "x-envoy-fault-delay-request": "5000",
        "x-envoy-fault-delay-request-percentage": "0",
    }
    assert sc.factory.wanted_headers == {"x-envoy-downstream-service-cluster"}

    async def main() -> tuple[Any, float]:
        s = MemoryStream(Head(headers=start_headers))
        result = await sc.factory.create().on_request_headers(s, True)
        return result, trio.current_time()

    result, now = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert result.status == 500
    assert now == pytest.approx(1.0)


# -- delays ---------------------------------------------------------------------------------


def run_timed(sc: Scenario, headers: dict[str, str] | None = None) -> tuple[Any, float, list[str]]:
    s = MemoryStream(Head(headers=dict(headers or {})))

    async def main() -> tuple[Any, float]:
        flt = sc.factory.create()
        start = trio.current_time()
        result = await flt.on_request_headers(s, True)
        elapsed = trio.current_time() - start
        flt.on_stream_complete(s)
        return result, elapsed

    result, elapsed = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result, elapsed, s.flags


def test_fixed_delay_is_awaited() -> None:
    sc = Scenario(settings(delay=delay(2000)))
    result, elapsed, flags = run_timed(sc)
    assert result is CONTINUE
    assert elapsed == pytest.approx(2.0)
    assert flags == ["DI"]
    assert sc.counters() == {"delays_injected": 1}


def test_delay_then_abort() -> None:
    sc = Scenario(settings(abort=abort(502), delay=delay(250)))
    result, elapsed, flags = run_timed(sc)
    assert result.status == 502
    assert elapsed == pytest.approx(0.25)
    assert flags == ["DI", "FI"]
    assert sc.counters() == {"delays_injected": 1, "aborts_injected": 1}


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"x-envoy-fault-delay-request": "300"}, 0.3),
        ({"x-envoy-fault-delay-request": "0"}, 0.0),
        ({"x-envoy-fault-delay-request": "abc"}, 0.0),
        ({}, 0.0),
        (
            {
                "x-envoy-fault-delay-request": "300",
                "x-envoy-fault-delay-request-percentage": "0",
            },
            0.0,
        ),
    ],
)
def test_header_delay(headers: dict[str, str], seconds: float) -> None:
    sc = Scenario(settings(delay=delay(None)))
    result, elapsed, flags = run_timed(sc, headers)
    assert result is CONTINUE
    assert elapsed == pytest.approx(seconds)
    assert flags == (["DI"] if seconds else [])


def test_fixed_delay_below_a_millisecond_is_none() -> None:
    # config.py compiles 0.5 ms to fixed_ms 0, as Envoy reads whole milliseconds.
    result, elapsed, flags = run_timed(Scenario(settings(delay=delay(0))))
    assert (result, elapsed, flags) == (CONTINUE, 0.0, [])


def test_active_faults_while_delaying_and_after() -> None:
    sc = Scenario(settings(delay=delay(1000)))
    seen: list[int] = []

    async def main() -> None:
        s = MemoryStream()
        flt = sc.factory.create()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flt.on_request_headers, s, True)
            await trio.sleep(0.5)
            seen.append(sc.stats.value("fault.active_faults"))
        # A delay not followed by an abort stops counting when it ends.
        seen.append(sc.stats.value("fault.active_faults"))
        flt.on_stream_complete(s)
        seen.append(sc.stats.value("fault.active_faults"))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert seen == [1, 0, 0]


def test_cancelled_delay_releases_the_active_fault() -> None:
    sc = Scenario(settings(delay=delay(10_000)))

    async def main() -> None:
        s = MemoryStream()
        flt = sc.factory.create()
        with trio.move_on_after(1):  # the stream's deadline ends it mid-delay
            await flt.on_request_headers(s, True)
        assert sc.stats.value("fault.active_faults") == 1
        flt.on_stream_complete(s)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sc.stats.value("fault.active_faults") == 0


# -- max_active_faults ------------------------------------------------------------------------


def test_max_active_faults_overflow() -> None:
    sc = Scenario(settings(delay=delay(1000), max_active_faults=1))
    finished: dict[str, tuple[Any, float]] = {}

    async def request(name: str) -> None:
        s = MemoryStream()
        flt = sc.factory.create()
        result = await flt.on_request_headers(s, True)
        finished[name] = (result, trio.current_time())
        flt.on_stream_complete(s)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, "first")
            await trio.sleep(0.1)
            nursery.start_soon(request, "second")  # one fault active already
        await request("third")  # none active any more

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert finished["first"] == (CONTINUE, pytest.approx(1.0))
    assert finished["second"] == (CONTINUE, pytest.approx(0.1))
    assert finished["third"] == (CONTINUE, pytest.approx(2.0))
    assert sc.counters() == {"delays_injected": 2, "faults_overflow": 1}


def test_max_active_faults_0_injects_nothing() -> None:
    sc = Scenario(settings(abort=abort(503), max_active_faults=0))
    assert sc.run()[0] is CONTINUE
    assert sc.counters() == {"faults_overflow": 1}


def test_max_active_faults_is_shared_by_the_routes_of_a_worker() -> None:
    # Two routes' factories in one HCM scope: the gauge they read is the same.
    config = settings(delay=delay(1000), max_active_faults=1)
    store = StatsStore()
    one = Factory("fault", config, None, store.named(SCOPE))
    two = Factory(
        "fault", config, settings(abort=abort(503), max_active_faults=1), store.named(SCOPE)
    )

    async def main() -> Any:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one.create().on_request_headers, MemoryStream(), True)
            await trio.sleep(0.1)
            return await two.create().on_request_headers(MemoryStream(), True)

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) is CONTINUE
    assert store.named(SCOPE).value("fault.faults_overflow") == 1


# -- which requests ----------------------------------------------------------------------------


def test_upstream_cluster() -> None:
    sc = Scenario(settings(abort=abort(503), upstream_cluster="svc"))
    assert aborted(sc.run(upstream_cluster="svc")[0])
    assert sc.run(upstream_cluster="other")[0] is CONTINUE


def test_header_matchers() -> None:
    headers = [
        to_wire(HeaderMatch("x-canary", StringMatch("exact", "yes"))),
        to_wire(HeaderMatch("x-user", None)),
    ]
    sc = Scenario(settings(abort=abort(503), headers=headers))
    assert sc.factory.wanted_headers >= {"x-canary", "x-user"}
    assert aborted(sc.run({"x-canary": "yes", "x-user": "a"})[0])
    assert sc.run({"x-canary": "no", "x-user": "a"})[0] is CONTINUE
    assert sc.run({"x-canary": "yes"})[0] is CONTINUE


def test_downstream_nodes() -> None:
    sc = Scenario(settings(abort=abort(503), downstream_nodes=["n1", "n2"]))
    assert aborted(sc.run({"x-envoy-downstream-service-node": "n2"})[0])
    assert sc.run({"x-envoy-downstream-service-node": "n3"})[0] is CONTINUE
    assert sc.run()[0] is CONTINUE


def test_downstream_cluster_stats() -> None:
    sc = Scenario(settings(abort=abort(503), delay=delay(10)))
    sc.run({"x-envoy-downstream-service-cluster": "web"})
    sc.run({"x-envoy-downstream-service-cluster": ""})
    assert sc.counters() == {
        "aborts_injected": 2,
        "delays_injected": 2,
        "web.aborts_injected": 1,
        "web.delays_injected": 1,
    }
    off = Scenario(settings(abort=abort(503), disable_downstream_cluster_stats=True))
    off.run({"x-envoy-downstream-service-cluster": "web"})
    assert off.counters() == {"aborts_injected": 1}


def test_per_route_config_replaces_the_filters() -> None:
    sc = Scenario(settings(abort=abort(503)), per_route=settings(delay=delay(100)))
    result, elapsed, flags = run_timed(sc)
    assert (result, elapsed, flags) == (CONTINUE, pytest.approx(0.1), ["DI"])


def test_stats_visible_at_zero_with_envoys_names() -> None:
    sc = Scenario(settings(abort=abort(503)))
    assert sc.store.report() == (
        {
            f"{PREFIX}aborts_injected": 0,
            f"{PREFIX}delays_injected": 0,
            f"{PREFIX}faults_overflow": 0,
            f"{PREFIX}response_rl_injected": 0,
        },
        {f"{PREFIX}active_faults": 0},
    )


@pytest.mark.parametrize(
    ("text", "limit", "value"),
    [
        ("42", 2**32 - 1, 42),
        (" 42\t", 2**32 - 1, 42),
        ("4294967295", 2**32 - 1, 4294967295),
        ("4294967296", 2**32 - 1, None),
        ("-1", 2**64 - 1, None),
        ("1.5", 2**64 - 1, None),
        ("٣", 2**64 - 1, None),  # a digit, but not an ASCII one
        (None, 2**64 - 1, None),
    ],
)
def test_header_uint(text: str | None, limit: int, value: int | None) -> None:
    assert header_uint(text, limit) == value


# -- runtime keys ---------------------------------------------------------------------------

CLUSTER = {"x-envoy-downstream-service-cluster": "svc"}


def test_runtime_percentage_and_status_replace_the_configured_ones() -> None:
    rt = {"fault.http.abort.abort_percent": "100", "fault.http.abort.http_status": "418"}
    sc = Scenario(settings(abort=abort(503, numerator=0)), runtime=rt)
    assert sc.run()[0].status == 418
    rt = {"fault.http.abort.abort_percent": "0"}
    assert not aborted(Scenario(settings(abort=abort(503)), runtime=rt).run()[0])


def test_downstream_cluster_keys_replace_the_global_ones() -> None:
    rt = {
        "fault.http.abort.abort_percent": "100",
        "fault.http.abort.http_status": "418",
        "fault.http.svc.abort.http_status": "419",
    }
    sc = Scenario(settings(abort=abort(503, numerator=0)), runtime=rt)
    assert sc.run()[0].status == 418
    # With the header only svc's percentage key counts (absent: the configured 0 %).
    assert not aborted(sc.run(CLUSTER)[0])
    rt["fault.http.svc.abort.abort_percent"] = "100"
    sc = Scenario(settings(abort=abort(503, numerator=0)), runtime=rt)
    assert sc.run(CLUSTER)[0].status == 419
    assert sc.run({"x-envoy-downstream-service-cluster": "other"})[0] == CONTINUE


def test_runtime_grpc_status_delay_and_max_active_faults() -> None:
    sc = Scenario(settings(abort=abort(grpc=14)), runtime={"fault.http.abort.grpc_status": "4"})
    assert sc.run()[0].grpc_status == 4
    rt = {"fault.http.delay.fixed_duration_ms": "0"}  # a delay of 0 ms is none
    result, stream = Scenario(settings(delay=delay(2000)), runtime=rt).run()
    assert result == CONTINUE and stream.flags == []
    rt = {"fault.http.max_active_faults": "0"}
    sc = Scenario(settings(abort=abort(503)), runtime=rt)
    assert sc.run()[0] == CONTINUE
    assert sc.counters() == {"faults_overflow": 1}


def test_renamed_runtime_keys() -> None:
    keys = {
        "abort_percent": "canary.abort",
        "abort_http_status": "canary.status",
        "abort_grpc_status": "g",
        "delay_percent": "d",
        "delay_duration": "dd",
        "max_active_faults": "m",
    }
    rt = {"canary.abort": "100", "canary.status": "429", "fault.http.abort.http_status": "418"}
    sc = Scenario(settings(abort=abort(503, numerator=0), runtime_keys=keys), runtime=rt)
    assert sc.run()[0].status == 429


def test_without_fault_keys_the_runtime_is_not_read() -> None:
    sc = Scenario(settings(abort=abort(503)), runtime={"routing.to_b": "100"})
    assert sc.factory.runtime is None
    assert "x-envoy-downstream-service-cluster" in sc.factory.wanted_headers  # its stats


def test_a_runtime_status_outside_200_599_is_not_sent() -> None:
    rt = {"fault.http.abort.http_status": "1000"}
    assert Scenario(settings(abort=abort(503)), runtime=rt).run()[0].status == 503
