"""proxyd.worker.tracing.ZipkinExporter: batches posted by a task to a collector on
loopback, a bounded queue (overflow dropped and counted), and a collector that is down
costing only the report (counted), never an exception."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import trio
import trio.testing

from proxyd.worker.stats import NamedStats
from proxyd.worker.trace_export import MAX_QUEUED, MIN_FLUSH_SPANS, ZipkinExporter


class _Host:
    def __init__(self, port: int) -> None:
        self.address = "127.0.0.1"
        self.port = port


class _Balancer:
    def __init__(self, host: _Host | None) -> None:
        self.host = host

    def pick(self) -> _Host | None:
        return self.host


class _Cluster:
    def __init__(self, host: _Host | None) -> None:
        self.balancer = _Balancer(host)


class _Worker:
    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery

    def spawn(self, task: Any) -> None:
        self.nursery.start_soon(task)


def _record(n: int) -> tuple[Any, ...]:
    return (f"{n:016x}", f"{n:016x}", "", "op", "SERVER", True, 10, 5, [("k", "v")])


def _exporter(port: int | None) -> ZipkinExporter:
    e = ZipkinExporter("/api/v2/spans", "zipkin", NamedStats("tracing.zipkin."))
    e.cluster = _Cluster(_Host(port) if port is not None else None)  # type: ignore[assignment]
    e.service_name = "svc"
    e.local_ip = "10.0.0.1"
    return e


def test_a_batch_is_posted_when_enough_spans_wait() -> None:
    got: list[tuple[bytes, list[Any]]] = []

    answered = trio.Event()
    e_stats: dict[str, int] = {}

    async def main() -> None:
        async def collector(stream: trio.SocketStream) -> None:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += await stream.receive_some(65536)
            got.append((head, json.loads(body)))
            await stream.send_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            answered.set()

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, collector, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            e = _exporter(port)
            worker = _Worker(nursery)
            for n in range(MIN_FLUSH_SPANS):
                e.add(_record(n + 1), worker)
            with trio.fail_after(10):
                await answered.wait()
                await trio.testing.wait_all_tasks_blocked()
            e_stats.update((k, v) for k, v in e.stats.counters.items() if v)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert len(got) == 1
    assert e_stats == {"spans_sent": MIN_FLUSH_SPANS, "reports_sent": 1}
    head, spans = got[0]
    assert head.startswith(b"POST /api/v2/spans HTTP/1.1\r\nhost: zipkin\r\n")
    assert b"content-type: application/json" in head
    assert [s["id"] for s in spans] == [f"{n + 1:016x}" for n in range(MIN_FLUSH_SPANS)]
    assert spans[0]["localEndpoint"] == {"serviceName": "svc", "port": 0, "ipv4": "10.0.0.1"}


def test_a_full_queue_drops_and_counts() -> None:
    e = _exporter(None)
    for n in range(MAX_QUEUED + 3):
        e.add(_record(n + 1), None)  # no worker: nothing posts
    assert len(e.queue) == MAX_QUEUED
    assert e.stats.counters["spans_dropped"] == 3


def test_a_collector_that_is_down_costs_the_report_only() -> None:
    async def main() -> ZipkinExporter:
        # A port nobody listens on: bind, learn it, close.
        sock = trio.socket.socket()
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        e = _exporter(port)
        await e.post([_record(1)])
        none = _exporter(None)
        await none.post([_record(2)])
        skipped = {k: v for k, v in none.stats.counters.items() if v}
        return e if skipped == {"reports_skipped_no_cluster": 1} else none

    e = trio.run(main)
    assert {k: v for k, v in e.stats.counters.items() if v} == {
        "spans_sent": 1,
        "reports_failed": 1,
    }
