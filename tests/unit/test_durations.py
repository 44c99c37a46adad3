"""proxyd.worker.durations on trio's virtual clock: when max_connection_duration,
drain_timeout and max_stream_duration end what, and the grpc-timeout they write."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from proxyd.worker.deadlines import INF, Deadline, DeadlineKind, Timers
from proxyd.worker.durations import (
    ConnectionDurations,
    GrpcRouteTimeout,
    RouteDuration,
    grpc_timeout_ms,
    grpc_timeout_value,
    is_grpc,
)
from proxyd.worker.stream import Stream


def run(fn) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


class FakeConnection:
    """What ConnectionDurations uses of a DownstreamConnection; records what ended it."""

    def __init__(self, timers: Timers) -> None:
        self.timers = timers
        self.stream: Any = None
        self.idle = True
        self.listener_updated = False
        self.ended: list[tuple[float, DeadlineKind]] = []
        self.durations: ConnectionDurations | None = None

    def deadline_passed(self, d: Deadline) -> None:
        self.ended.append((trio.current_time(), d.kind))


def plan(
    connection: float = INF, stream: float = INF, drain: float = 5.0, route_limits: bool = False
) -> Any:
    return SimpleNamespace(
        max_connection_duration=connection,
        max_stream_duration=stream,
        drain_timeout=drain,
        stream_limits=stream != INF or route_limits,
        http_stats=SimpleNamespace(cx_max_duration_reached=0, rq_max_duration_reached=0),
    )


def scenario(body) -> None:
    """Run ``body(timers, t0)`` with the worker's timer task running."""

    async def main() -> None:
        timers = Timers()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timers.run)
            await trio.lowlevel.checkpoint()
            await body(timers, trio.current_time())
            nursery.cancel_scope.cancel()

    run(main)


def test_a_connection_that_never_spoke_closes_when_its_duration_passes() -> None:
    async def body(timers: Timers, t0: float) -> None:
        conn = FakeConnection(timers)
        p = plan(connection=1.0, drain=2.0)
        ConnectionDurations(conn, p)  # type: ignore[arg-type]
        await trio.sleep(10)
        assert conn.ended == [(t0 + 1.0, DeadlineKind.CONNECTION_DURATION)]
        assert p.http_stats.cx_max_duration_reached == 1
        assert timers.statistics()["armed"] == 0

    scenario(body)


def test_an_idle_connection_drains_then_closes_after_drain_timeout() -> None:
    async def body(timers: Timers, t0: float) -> None:
        conn = FakeConnection(timers)
        p = plan(connection=1.0, drain=2.0)
        d = ConnectionDurations(conn, p)  # type: ignore[arg-type]
        d.stream_started()  # a request came and went
        d.stream_ended()
        await trio.sleep(1.5)
        assert conn.listener_updated  # the next response says connection: close
        assert conn.ended == []
        await trio.sleep(10)
        assert conn.ended == [(t0 + 3.0, DeadlineKind.DRAIN)]
        assert p.http_stats.cx_max_duration_reached == 1

    scenario(body)


def test_a_busy_connection_is_left_to_finish_its_request() -> None:
    async def body(timers: Timers, t0: float) -> None:
        conn = FakeConnection(timers)
        d = ConnectionDurations(conn, plan(connection=1.0, drain=0.5))  # type: ignore[arg-type]
        d.head_started()  # a head is arriving: not idle
        conn.idle = False
        await trio.sleep(10)
        assert conn.listener_updated
        assert conn.ended == []  # its response will close it
        assert timers.statistics()["armed"] == 0

    scenario(body)


def test_stream_limit_from_the_first_byte_of_the_head() -> None:
    async def body(timers: Timers, t0: float) -> None:
        conn = FakeConnection(timers)
        p = plan(stream=0.5)
        d = ConnectionDurations(conn, p)  # type: ignore[arg-type]
        conn.idle = False
        d.head_started()
        await trio.sleep(0.2)
        d.stream_started()  # the head completes: the limit still counts from its start
        conn.stream = object()
        await trio.sleep(1)
        assert conn.ended == [(t0 + 0.5, DeadlineKind.STREAM_DURATION)]
        assert p.http_stats.rq_max_duration_reached == 1

    scenario(body)


def test_an_ended_stream_leaves_nothing_armed() -> None:
    async def body(timers: Timers, t0: float) -> None:
        conn = FakeConnection(timers)
        d = ConnectionDurations(conn, plan(stream=0.5))  # type: ignore[arg-type]
        for _ in range(3):
            d.stream_started()
            await trio.sleep(0.3)
            d.stream_ended()
        assert timers.statistics()["armed"] == 0
        await trio.sleep(5)
        assert conn.ended == []

    scenario(body)


def _stream(content_type: str | None, grpc_timeout: str | None = None) -> Stream:
    headers = {"content-type": content_type} if content_type is not None else {}
    if grpc_timeout is not None:
        headers["grpc-timeout"] = grpc_timeout
    head = SimpleNamespace(headers=headers, remove=[], has_body=False)
    return Stream(head, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("route_s", "hcm_s", "fires_at", "grpc"),
    [
        (0.3, INF, 0.3, "set"),  # the route's own
        (0.3, 2.0, 0.3, "set"),  # replaces the connection manager's
        (None, 2.0, 2.0, "set"),  # the message without a value: the HCM's
        (None, INF, None, "kept"),  # neither: no limit, grpc-timeout untouched
        (0.0, 2.0, None, "removed"),  # 0s switches the HCM's off (Envoy drops the header)
        (0.0, INF, None, "kept"),
    ],
)
def test_route_limit(route_s: float | None, hcm_s: float, fires_at: float | None, grpc: str):
    async def body(timers: Timers, t0: float) -> None:
        conn = FakeConnection(timers)
        d = conn.durations = ConnectionDurations(conn, plan(stream=hcm_s, route_limits=True))  # type: ignore[arg-type]
        stream = _stream("application/grpc")
        conn.stream = stream
        conn.idle = False
        d.stream_started()
        RouteDuration(route_s, hcm_s).matched(conn, stream, None)  # type: ignore[arg-type]
        await trio.sleep(10)
        if fires_at is None:
            assert conn.ended == []
        else:
            assert conn.ended == [(t0 + fires_at, DeadlineKind.STREAM_DURATION)]
        added = stream.request_added or []
        removed = b"grpc-timeout" in stream.head.remove  # type: ignore[union-attr]
        if grpc == "set":
            ms = int(round((route_s or hcm_s) * 1000))
            assert added == [b"grpc-timeout: %dm\r\n" % ms]
        elif grpc == "removed":
            assert removed and not added
        else:
            assert not removed and not added

    scenario(body)


def test_grpc_timeout_only_for_grpc_requests() -> None:
    async def body(timers: Timers, t0: float) -> None:
        conn = FakeConnection(timers)
        d = conn.durations = ConnectionDurations(conn, plan(route_limits=True))  # type: ignore[arg-type]
        for ct, edited in [
            ("application/grpc", True),
            ("application/grpc+proto", True),
            ("application/grpc-web", False),
            ("text/plain", False),
            (None, False),
        ]:
            stream = _stream(ct)
            d.stream_started()
            RouteDuration(1.0, INF).matched(conn, stream, None)  # type: ignore[arg-type]
            assert bool(stream.request_added) is edited, ct
            d.stream_ended()

    scenario(body)


def test_grpc_timeout_value_units() -> None:
    assert grpc_timeout_value(500) == "500m"
    assert grpc_timeout_value(99_999_999) == "99999999m"
    assert grpc_timeout_value(100_000_000) == "100000S"
    assert grpc_timeout_value(10**12) == "16666666M"
    assert grpc_timeout_value(10**14) == "27777777H"
    assert grpc_timeout_value(10**19) == "99999999H"
    assert is_grpc("application/grpc") and is_grpc("application/grpc+json")
    assert not is_grpc("application/grpc-web") and not is_grpc("Application/grpc")


def test_a_connection_without_durations_still_gets_the_grpc_timeout() -> None:
    """Accepted under an epoch whose routes had no limit: no deadline, same header."""

    async def body(timers: Timers, t0: float) -> None:
        conn = FakeConnection(timers)
        stream = _stream("application/grpc")
        RouteDuration(0.25, INF).matched(conn, stream, None)  # type: ignore[arg-type]  # type: ignore[arg-type]
        assert stream.request_added == [b"grpc-timeout: 250m\r\n"]
        assert timers.statistics()["armed"] == 0

    scenario(body)


# -- grpc-timeout headers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("200m", 200), ("1S", 1000), ("2M", 120_000), ("1H", 3_600_000), ("0m", 0),
        ("1500u", 2), ("1n", 1), ("0n", 0), ("99999999n", 100), ("+5m", 5), (" 5m", 5),
        ("5 m", 5), ("\t5m", 5), ("05m", 5), ("99999999m", 99_999_999),
        ("100000000m", None), ("-1m", None), ("-0m", 0), ("5", None), ("m", None),
        ("", None), ("1.5S", None), ("5mm", None), ("1x", None), ("1 5m", None),
        ("\u0665m", None),
    ],
)  # fmt: skip
def test_grpc_timeout_header_is_read_as_envoy_reads_it(value: str, ms: int | None) -> None:
    assert grpc_timeout_ms(value) == ms


@pytest.mark.parametrize(
    ("header", "route_s", "cap_s", "offset_s", "fires_at", "written"),
    [
        ("200m", None, 0.3, 0.0, 0.2, "200m"),  # under the cap
        ("1S", None, 0.3, 0.0, 0.3, "300m"),  # capped
        ("1S", None, 0.0, 0.0, 1.0, "1000m"),  # 0: no cap
        ("1S", None, 0.3, 0.1, 0.2, "200m"),  # capped, then the offset
        ("1S", 2.0, 0.3, 0.0, 0.3, "300m"),  # replaces the route's own limit
        (None, 2.0, 0.3, 0.0, 2.0, "2000m"),  # no header: the route's limit
        ("bad", None, 0.3, 0.0, None, None),  # not a timeout: as without one
        ("50m", None, 0.3, 0.1, 0.0, None),  # the offset leaves nothing: over at once
        ("0m", None, 0.3, 0.0, 0.0, None),
    ],
)
def test_grpc_timeout_header_max(
    header: str | None,
    route_s: float | None,
    cap_s: float,
    offset_s: float,
    fires_at: float | None,
    written: str | None,
) -> None:
    async def body(timers: Timers, t0: float) -> None:
        conn = FakeConnection(timers)
        d = conn.durations = ConnectionDurations(conn, plan(route_limits=True))  # type: ignore[arg-type]
        stream = _stream("application/grpc", header)
        conn.stream = stream
        conn.idle = False
        d.stream_started()
        rd = RouteDuration(route_s, INF, cap_s, offset_s)
        assert rd.matched(conn, stream, "plan") == "plan"  # type: ignore[arg-type]
        await trio.sleep(10)
        if fires_at == 0.0:  # marked for the manager to answer, nothing armed
            assert stream.timed_out is DeadlineKind.STREAM_DURATION and conn.ended == []
            assert d.plan.http_stats.rq_max_duration_reached == 1
        elif fires_at is None:
            assert conn.ended == []
        else:
            assert conn.ended == [(t0 + fires_at, DeadlineKind.STREAM_DURATION)]
        added = stream.request_added or []
        if written is not None:
            assert added == [b"grpc-timeout: %s\r\n" % written.encode()]
        elif fires_at is None:
            assert added == []

    scenario(body)


class _Plan:
    """What GrpcRouteTimeout asks of a RoutePlan."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def with_timeout(self, timeout_s: float) -> _Plan:
        return _Plan(timeout_s)


@pytest.mark.parametrize(
    ("content_type", "header", "max_s", "offset_s", "timeout_s", "written"),
    [
        ("application/grpc", "200m", 0.3, 0.0, 0.2, "200m"),
        ("application/grpc", "1S", 0.3, 0.0, 0.3, "300m"),  # capped
        ("application/grpc", None, 0.3, 0.0, 0.3, "300m"),  # none: the max
        ("application/grpc", "bad", 0.3, 0.0, 0.3, "300m"),
        ("application/grpc", "200m", 0.3, 0.1, 0.1, "100m"),  # the offset
        ("application/grpc", "50m", 0.3, 0.1, 0.05, "50m"),  # an offset not below: unused
        ("application/grpc", "1S", 0.0, 0.0, 1.0, "1000m"),  # 0: no cap
        ("application/grpc", None, 0.0, 0.0, 0.0, None),  # no timeout at all
        ("application/grpc", "0m", 0.0, 0.0, 0.0, None),
        ("application/json", "200m", 0.3, 0.0, 15.0, None),  # not gRPC: the route's
    ],
)
def test_deprecated_max_grpc_timeout_sets_the_router_timeout(
    content_type: str,
    header: str | None,
    max_s: float,
    offset_s: float,
    timeout_s: float,
    written: str | None,
) -> None:
    stream = _stream(content_type, header)
    route = _Plan(15.0)
    rp = GrpcRouteTimeout(max_s, offset_s).matched(None, stream, route)  # type: ignore[arg-type]
    assert rp.timeout_s == timeout_s
    added = stream.request_added or []
    assert added == ([b"grpc-timeout: %s\r\n" % written.encode()] if written else [])
