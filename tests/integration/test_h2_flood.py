"""HTTP/2 floods against proxyd alone, with raw frames: each closes only its own
connection, without a frame, counted in its ``http2.*`` stat (names and limits compared
with Envoy in tests/compat/test_h2_flood_compat.py); a client connected before the
floods is served after them, a client under the limits is not cut off, and the worker
counts no exception."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.compat.test_h2_flood_compat import Bystander, _padded
from tests.h2_raw import RawH2, request_headers
from tests.support import (
    ProxydProcess,
    UpstreamServer,
    bootstrap,
    dump_yaml,
    http_listener,
    static_cluster,
    wait_for,
)

ROUTES = {
    "virtual_hosts": [
        {
            "name": "all",
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
        }
    ]
}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxydProcess]:
    up = UpstreamServer("up").start()
    lst = http_listener(
        "ingress",
        0,
        ROUTES,
        codec_type="AUTO",
        http2_protocol_options={"max_outbound_control_frames": 50},
    )
    config = dump_yaml(bootstrap([lst], [static_cluster("up", [up.port])]))
    try:
        with ProxydProcess(tmp_path_factory.mktemp("flood"), config, concurrency=1) as p:
            yield p
    finally:
        up.stop()


def test_floods_close_their_connection_and_spare_the_others(proxy: ProxydProcess):
    port = proxy.listener_port()
    bystander = Bystander(port)
    floods = {
        "inbound_empty_frames_flood": RawH2.data(1) * 3,
        "inbound_priority_frames_flood": RawH2.priority(3) * 101,
        "inbound_window_update_frames_flood": RawH2.window_update(0) * 6,
        "outbound_control_flood": b"".join(RawH2.ping(i) for i in range(60)),
    }
    for stat, frames in floods.items():
        c = RawH2(port)
        opener = b""
        if stat == "inbound_empty_frames_flood":
            opener = c.headers(1, request_headers("/echo", "POST"), end_stream=False)
        c.send(opener + frames)
        out = c.outcome(5.0)
        assert out["closed"] and out["goaway"] == [], stat
        assert bystander.get() == 200, stat
        wait_for(lambda s=stat: proxy.stats().get(f"http2.{s}", 0) == 1, timeout=5)
    # Under the limits: 40 PINGs (max_outbound_control_frames 50) are all answered.
    c = RawH2(port)
    c.send(b"".join(RawH2.ping(i) for i in range(40)))
    time.sleep(0.3)
    out = c.outcome(0.5)
    assert not out["closed"] and c.frames.count(("PING_ACK", 0, "")) == 40
    assert bystander.get() == 200
    # A header block in 500 one-byte CONTINUATION frames (one read) is taken; 600 are
    # a CONTINUATION flood: the connection closes without a frame.
    for frames, closed in ((500, False), (600, True)):
        c = RawH2(port)
        c.send(c.headers_split(1, c.block(_padded(frames + 1)), 1, 1))
        out = c.outcome(1.0)
        assert out["closed"] is closed and out["goaway"] == [], frames
        assert out["statuses"] == ([] if closed else [(1, "200")]), frames
    assert bystander.get() == 200
    assert proxy.stats().get("server.proxyd.worker_exceptions", 0) == 0
    bystander.sock.close()
