"""The buffer filter driven directly through an in-memory FilterStream."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from proxyd.filters.api import CONTINUE, STOP, STOP_AND_BUFFER, LocalReply
from proxyd.filters.buffer.filter import Factory
from proxyd.worker.stats import StatsStore
from tests.unit.filter_stream import Head, MemoryStream, Outcome, run_request

CONFIG = {"max_request_bytes": 10}


def factory(per_route: Any = None, store: StatsStore | None = None) -> Factory:
    store = store or StatsStore()
    return Factory("buffer", CONFIG, per_route, store.named("http.ingress."))


def send(
    f: Factory, pieces: list[bytes], *, chunked: bool = False, trailers: bool = False
) -> tuple[Outcome, MemoryStream]:
    length = 0 if chunked else sum(map(len, pieces))
    stream = MemoryStream(Head(method="POST", content_length=length, chunked=chunked))
    outcome = trio.run(run_request, f.create(), stream, pieces, trailers)
    return outcome, stream


@pytest.mark.parametrize(
    "pieces", [[b"0123456789"], [b"01234", b"56789"], [b"0", b"1", b"2", b"3456789"]]
)
def test_body_up_to_the_limit_goes_on_whole_with_its_length(pieces: list[bytes]) -> None:
    outcome, stream = send(factory(), pieces)
    assert outcome.reply is None
    assert outcome.statuses == [STOP] + [STOP_AND_BUFFER] * (len(pieces) - 1) + [CONTINUE]
    assert outcome.forwarded == [b"0123456789"]
    assert stream.request_length == 10


@pytest.mark.parametrize(
    "pieces", [[b"0123456789a"], [b"0123456789", b"a"], [b"01234567", b"89abc"]]
)
def test_one_byte_over_the_limit_is_413(pieces: list[bytes]) -> None:
    store = StatsStore()
    outcome, stream = send(factory(store=store), pieces)
    assert outcome.reply == LocalReply(
        413, "Payload Too Large", details="request_payload_too_large"
    )
    assert outcome.forwarded == []
    assert stream.request_length is None
    # The chain's 413 (it holds the body up to the limit the filter set); counted in
    # the connection manager's stats (tests/unit/test_filter_chain.py).
    assert stream.buffer_limit == 10


def test_chunked_request_goes_upstream_with_a_length() -> None:
    outcome, stream = send(factory(), [b"01234", b"567"], chunked=True)
    assert outcome.forwarded == [b"01234567"]
    assert stream.request_length == 8


def test_empty_chunked_body_gets_content_length_0() -> None:
    # Envoy: "0\r\n\r\n" alone reaches the upstream as content-length: 0.
    outcome, stream = send(factory(), [b""], chunked=True)
    assert outcome.statuses == [STOP, CONTINUE]
    assert stream.request_length == 0


def test_trailers_end_the_buffering() -> None:
    outcome, stream = send(factory(), [b"01234"], chunked=True, trailers=True)
    assert outcome.statuses == [STOP, STOP_AND_BUFFER, CONTINUE]
    assert outcome.forwarded == [b"01234"]
    assert stream.request_length == 5


@pytest.mark.parametrize("head", [Head(), Head(method="POST", content_length=0)])
def test_request_without_body_passes_untouched(head: Head) -> None:
    stream = MemoryStream(head)
    outcome = trio.run(run_request, factory().create(), stream, [])
    assert outcome.statuses == [CONTINUE]
    assert stream.request_length is None


def test_per_route_disabled() -> None:
    f = factory({"disabled": True})
    assert not f.decodes
    outcome, stream = send(f, [b"x" * 100])
    assert outcome.reply is None
    assert outcome.statuses == [CONTINUE, CONTINUE]
    assert stream.request_length is None


@pytest.mark.parametrize(
    ("limit", "size", "answered"), [(100, 100, False), (100, 101, True), (3, 4, True)]
)
def test_per_route_limit_replaces_the_filters(limit: int, size: int, answered: bool) -> None:
    outcome, stream = send(factory({"max_request_bytes": limit}), [b"x" * size])
    assert (outcome.reply is not None) is answered
    assert stream.request_length == (None if answered else size)


def test_stat_is_visible_at_zero_from_the_start() -> None:
    store = StatsStore()
    factory(store=store)
    assert store.report() == ({"http.ingress.downstream_rq_too_large": 0}, {})
    assert store.report() == ({}, {})
