"""HTTP/2 abuse with raw frames, proxyd beside real Envoy on the same YAML: each flood
of issue 11 (empty DATA, PRIORITY, WINDOW_UPDATE, PING and SETTINGS while not reading,
a burst of PINGs, queued responses the client does not read, CONTINUATION without end,
an oversized header list, a stream beyond MAX_CONCURRENT_STREAMS), and a case just
under each limit. Compared: whether the connection was closed, the GOAWAY codes (Envoy
sends none for a flood), the streams reset with their codes, the statuses answered, and
the ``http2.*`` flood stats; a bystander connection opened first is served after every
case."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
import yaml
from hyperframe.frame import ContinuationFrame

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.h2_raw import RawH2, request_headers
from tests.support import UpstreamServer, bootstrap, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

STATS = (
    "http2.inbound_empty_frames_flood",
    "http2.inbound_priority_frames_flood",
    "http2.inbound_window_update_frames_flood",
    "http2.outbound_control_flood",
    "http2.outbound_flood",
    "http2.header_overflow",
    "http2.header_list_size_too_large",
    "http2.stream_refused_errors",
    "http2.tx_reset",
)
BIG = "/bytes/30000000"  # more than the socket buffers hold: the client leaves it unread


def config(up: int) -> str:
    routes = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
            }
        ],
    }
    listeners = [
        http_listener("edge", 0, routes, codec_type="AUTO"),
        http_listener(
            "tight",
            0,
            routes,
            codec_type="AUTO",
            http2_protocol_options={
                "max_concurrent_streams": 2,
                "max_outbound_frames": 100,
                "max_consecutive_inbound_frames_with_empty_payload": 3,
                "max_inbound_priority_frames_per_stream": 5,
            },
        ),
    ]
    return yaml.safe_dump(bootstrap(listeners, [static_cluster("up", [up])]), sort_keys=False)


class Bystander:
    """A well-behaved HTTP/2 connection opened before the floods, asked for a response
    after each."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.c = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.c.initiate_connection()
        self.sock.sendall(self.c.data_to_send())

    def get(self) -> int:
        c = self.c
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(k.encode(), v.encode()) for k, v in request_headers("/echo")],
                       end_stream=True)  # fmt: skip
        self.sock.sendall(c.data_to_send())
        status = 0
        while True:
            data = self.sock.recv(65536)
            if not data:
                return -1
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    self.sock.sendall(c.data_to_send())
                    return status
            self.sock.sendall(c.data_to_send())


def _unread_then(port: int, flood: bytes) -> RawH2:
    """A client whose socket buffers are full of a response it does not read, then
    ``flood``."""
    c = RawH2(port, window=1 << 30, rcvbuf=4096)
    c.send(c.headers(1, request_headers(BIG)))
    c.wait_stalled()  # the response fills the socket buffers between the two
    c.send(flood)
    return c


def _padded(size: int) -> list:
    """/echo's headers, padded so that their block (HPACK, a fresh encoder) is ``size``
    bytes long."""
    for n in range(2 * size):
        for k in range(1, 9):
            hdrs = request_headers("/echo", extra=[("x-pad", "v" * n), ("x-" + "q" * k, "1")])
            if len(hpack.Encoder().encode(hdrs)) == size:
                return hdrs
    raise ValueError(size)


def cases(edge: int, tight: int) -> dict[str, Any]:
    r = RawH2  # frame builders
    post = request_headers("/echo", "POST")
    small = [(f"x-{i}", "v" * 10) for i in range(90)]
    # The cases run at once, each on its own connection (most wait a second or more to
    # see whether the proxy closes): the flood stats are summed per listener anyway.
    jobs: dict[str, Callable[[], Any]] = {}

    def run(name: str, port: int, data: Any, wait_s: float = 2.0) -> None:
        def job() -> Any:
            c = RawH2(port)
            c.send(data(c) if callable(data) else data)
            return c.outcome(wait_s)

        jobs[name] = job

    run("one empty DATA", edge, lambda c: c.headers(1, post, False) + r.data(1), 1.0)
    run("two empty DATA", edge, lambda c: c.headers(1, post, False) + r.data(1) * 2)
    run("three empty DATA, limit 3", tight, lambda c: c.headers(1, post, False) + r.data(1) * 3, 1.0)  # fmt: skip
    run("four empty DATA, limit 3", tight, lambda c: c.headers(1, post, False) + r.data(1) * 4)
    run("100 PRIORITY", edge, r.priority(3) * 100, 1.0)
    run("101 PRIORITY", edge, r.priority(3) * 101)
    run("11 PRIORITY after a stream, limit 5", tight, lambda c: c.headers(1, request_headers("/echo")) + r.priority(3) * 11)  # fmt: skip
    run("5 WINDOW_UPDATE", edge, r.window_update(0) * 5, 1.0)
    run("6 WINDOW_UPDATE", edge, r.window_update(0) * 6)
    run("900 PINGs at once", edge, b"".join(r.ping(i) for i in range(900)), 1.0)
    run("5000 PINGs at once", edge, b"".join(r.ping(i) for i in range(5000)))
    jobs["PINGs not read"] = lambda: _unread_then(
        edge, b"".join(r.ping(i) for i in range(3000))
    ).outcome(4.0)
    jobs["SETTINGS not read"] = lambda: _unread_then(edge, r.settings() * 3000).outcome(4.0)

    def unread_responses() -> Any:
        c = RawH2(tight, window=1 << 30, rcvbuf=4096)
        c.send(c.headers(1, request_headers(BIG)))
        c.wait_stalled()
        # (max_concurrent_streams 2: one at a time besides the big one; each answer queued)
        # Each request is answered (queued behind the big one) before its reset frees
        # the stream slot: sent together, the reset could come first and leave no
        # answer to queue, which made the case depend on timing.
        for i in range(150):
            sid = 3 + 2 * i
            if not c.send(c.headers(sid, request_headers("/bytes/10"))):
                break
            time.sleep(0.01)
            if not c.send(r.rst(sid)):
                break
        return c.outcome(4.0)

    # Alone, before the others: whether the queue overflows in time depends on how
    # fast the worker writes, which a busy worker would change.
    out = {"responses not read, max_outbound_frames 100": unread_responses()}
    run("CONTINUATION without end", edge,
        lambda c: c.headers_split(1, c.block(_padded(1000)), 1, 1, end=False))  # fmt: skip
    run("300 fields, more than max_headers_count", edge,
        lambda c: c.headers_split(1, c.block(request_headers("/echo", extra=small * 3 + small[:30])), 16384, 16384))  # fmt: skip
    run("empty CONTINUATION frames", edge,
        lambda c: c.headers_split(1, c.block(request_headers("/echo")), 10, 0, end=False)
        + b"".join(ContinuationFrame(1, b"").serialize() for _ in range(3)))  # fmt: skip
    run("a block in 1-byte CONTINUATION frames", edge,
        lambda c: c.headers_split(1, c.block(request_headers("/echo", extra=small)), 1, 1), 2.0)  # fmt: skip
    for n in (512, 513):  # CONTINUATION frames of one byte after a 1-byte HEADERS
        hdrs = _padded(n + 1)
        run(f"{n} CONTINUATION frames", edge, lambda c, h=hdrs: c.headers_split(1, c.block(h), 1, 1), 1.5)  # fmt: skip
    run("150 small CONTINUATION frames", edge,
        lambda c: c.headers_split(1, c.block(request_headers("/echo", extra=small)), 10, 10), 1.0)  # fmt: skip
    # 70 KiB of header list from a 4 KiB block: HPACK's dynamic table repeats a field.
    big_field = [("x-big", "v" * 4000)] * 18
    run("oversized header list", edge, lambda c: c.headers(1, request_headers("/echo", extra=big_field)))  # fmt: skip
    run("a stream beyond the limit", tight, lambda c: b"".join(c.headers(s, request_headers("/bytes/10")) for s in (1, 3, 5)), 1.0)  # fmt: skip
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
    out.update((name, f.result()) for name, f in futures.items())
    return out


def play(port_of: PortOf) -> dict[str, Any]:
    edge, tight = port_of("edge"), port_of("tight")
    bystander = Bystander(edge)
    results = cases(edge, tight)
    results["bystander"] = [bystander.get() for _ in range(3)]
    bystander.sock.close()
    return results


def pick(stats: dict[str, int]) -> dict[str, int]:
    return {k: stats.get(k, 0) for k in STATS}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    up = UpstreamServer("up").start()
    try:
        yield run_pair(config(up.port), Path(tmp_path_factory.mktemp("flood")), play, pick)
    finally:
        up.stop()


CASE_NAMES = [
    "one empty DATA", "two empty DATA", "three empty DATA, limit 3", "four empty DATA, limit 3",
    "100 PRIORITY", "101 PRIORITY", "11 PRIORITY after a stream, limit 5", "5 WINDOW_UPDATE",
    "6 WINDOW_UPDATE", "900 PINGs at once", "5000 PINGs at once", "PINGs not read",
    "SETTINGS not read", "responses not read, max_outbound_frames 100",
    "CONTINUATION without end", "300 fields, more than max_headers_count",
    "empty CONTINUATION frames", "a block in 1-byte CONTINUATION frames",
    "512 CONTINUATION frames", "513 CONTINUATION frames",
    "150 small CONTINUATION frames", "oversized header list",
    "a stream beyond the limit", "bystander",
]  # fmt: skip


@pytest.mark.parametrize("name", CASE_NAMES)
def test_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_counted_like_envoy(results: Pair) -> None:
    assert results.proxyd.stats == results.envoy.stats


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    e = results.envoy.replies
    for name in ("two empty DATA", "four empty DATA, limit 3", "101 PRIORITY",
                 "6 WINDOW_UPDATE", "5000 PINGs at once", "PINGs not read",
                 "SETTINGS not read", "CONTINUATION without end",
                 "empty CONTINUATION frames", "a block in 1-byte CONTINUATION frames",
                 "513 CONTINUATION frames"):  # fmt: skip
        assert e[name]["closed"] and e[name]["goaway"] == [], name
    for name in ("one empty DATA", "three empty DATA, limit 3", "100 PRIORITY",
                 "5 WINDOW_UPDATE", "900 PINGs at once", "150 small CONTINUATION frames",
                 "512 CONTINUATION frames"):  # fmt: skip
        assert not e[name]["closed"], name
    assert e["a stream beyond the limit"]["reset"] == [(5, 7)]
    assert e["bystander"] == [200, 200, 200]
    s = results.envoy.stats
    assert s["http2.outbound_control_flood"] == 3 and s["http2.inbound_empty_frames_flood"] == 3
