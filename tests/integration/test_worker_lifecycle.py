"""The worker's conversation with the master: epochs, sockets, drain, stop, stats, logs."""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import sys
import time

import httpx
import pytest

from proxyd import epoch as ep
from proxyd import ipc
from tests.integration import worker_harness
from tests.integration.worker_harness import (
    WorkerHarness,
    listening_socket,
    make_epoch,
    read_response,
)
from tests.support import wait_for

start_worker = worker_harness.start_worker  # the fixture


def test_epoch_swap_changes_routes_for_new_requests(start_worker, upstream) -> None:
    a, b = upstream("a"), upstream("b")
    w = start_worker(make_epoch(1, 0, {"a": [a.port], "b": [b.port]}))
    port = w.bound_port()
    with httpx.Client() as client:
        assert client.get(f"http://127.0.0.1:{port}/").headers["x-upstream-name"] == "a"
        w.send_epoch(
            make_epoch(
                2,
                0,
                {"a": [a.port], "b": [b.port]},
                [ep.Route("r", ep.RouteMatch("prefix", "/"), "b")],
            )
        )
        # The same keep-alive connection: its next request sees the new epoch.
        assert client.get(f"http://127.0.0.1:{port}/").headers["x-upstream-name"] == "b"
    # Cluster "a" did not change, so its pooled connection survived the swap.
    assert a.connections == 1


def test_request_in_flight_finishes_on_its_epoch(start_worker, upstream) -> None:
    a, b = upstream("a"), upstream("b")
    w = start_worker(make_epoch(1, 0, {"a": [a.port], "b": [b.port]}))
    port = w.bound_port()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/hold/")
    a.wait_requests(1)
    w.send_epoch(make_epoch(2, 0, {"b": [b.port]}))  # cluster "a" is gone
    a.release()
    r = c.getresponse()
    assert r.status == 200 and r.getheader("x-upstream-name") == "a"
    r.read()
    c.close()
    assert httpx.get(f"http://127.0.0.1:{port}/").headers["x-upstream-name"] == "b"


def test_listeners_added_and_removed(start_worker, upstream) -> None:
    a = upstream("a")
    e1 = make_epoch(1, 0, {"a": [a.port]})
    w = start_worker(e1)
    port1 = w.bound_port()
    e2 = make_epoch(2, 0, {"a": [a.port]}, listener_name="second")
    both = ep.Epoch(2, e1.listeners + e2.listeners, e1.clusters)
    second = listening_socket("127.0.0.1", 0)  # port 0: the kernel picks, as for the master
    port2 = second.getsockname()[1]
    w.send_epoch(both, new_sockets={"second": second})
    assert httpx.get(f"http://127.0.0.1:{port2}/").status_code == 200
    assert httpx.get(f"http://127.0.0.1:{port1}/").status_code == 200
    only_second = ep.Epoch(3, e2.listeners, e1.clusters)
    w.send_epoch(only_second)
    # The worker closed its copy; once the master's copy is gone too, nobody listens.
    w.sockets.pop("ingress").close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port1}/")
    assert httpx.get(f"http://127.0.0.1:{port2}/").status_code == 200


def test_drain_finishes_requests_closes_idle_and_exits_0(start_worker, upstream) -> None:
    a = upstream("a")
    w = start_worker(make_epoch(1, 0, {"a": [a.port]}))
    port = w.bound_port()
    with contextlib.ExitStack() as open_connections:
        idle = open_connections.enter_context(socket.create_connection(("127.0.0.1", port)))
        idle.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(idle).startswith(b"HTTP/1.1 200")
        busy = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        open_connections.callback(busy.close)
        open_connections.callback(a.release)
        busy.request("GET", "/hold/")
        a.wait_requests(2)  # the busy request is at the upstream, held there
        quiet = open_connections.enter_context(socket.create_connection(("127.0.0.1", port)))
        quiet.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(quiet).startswith(b"HTTP/1.1 200")
        # A connection to watch the drain begin on (accepted: it had an answer).
        probe = open_connections.enter_context(socket.create_connection(("127.0.0.1", port)))
        probe.settimeout(3)

        def draining() -> bool:
            """The worker has taken the Drain in: it answers "connection: close"."""
            probe.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            return b"connection: close" in read_response(probe).lower()

        assert not draining()
        w.drain(3.0)
        wait_for(draining)
        # An idle keep-alive connection may still bring a request (the client may have
        # sent it as the drain began); it is answered with connection: close.
        idle.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        idle.settimeout(3)
        answer = read_response(idle)
        assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower()
        assert idle.recv(100) == b""
        a.release()  # the busy request ends during the drain
        r = busy.getresponse()
        assert r.status == 200 and r.getheader("connection") == "close"
        r.read()
        # Another idle keep-alive connection is not cut off while the drain window lasts
        # (closing it would race a request the client may be sending)...
        quiet.settimeout(1.0)
        with pytest.raises(TimeoutError):
            quiet.recv(100)
        # ...and is closed, without a word, when the window ends.
        quiet.settimeout(10)
        assert quiet.recv(100) == b""
    assert w.wait_exit(5) == 0


def test_drain_deadline_cuts_slow_requests(start_worker, upstream) -> None:
    a = upstream("a")
    w = start_worker(make_epoch(1, 0, {"a": [a.port]}))
    port = w.bound_port()
    busy = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    busy.request("GET", "/hold/")  # held by the upstream until the test ends
    a.wait_requests(1)
    t0 = time.monotonic()
    w.drain(0.5)
    assert w.wait_exit(5) == 0
    assert time.monotonic() - t0 < 4.5  # the drain deadline ended it; the hold never ends
    busy.close()


def test_stop_exits_now(start_worker, upstream) -> None:
    a = upstream("a")
    w = start_worker(make_epoch(1, 0, {"a": [a.port]}))
    assert w.stop() == 0


def test_bad_hello_exits_3(tmp_path, upstream) -> None:
    a = upstream("a")
    w = WorkerHarness(make_epoch(1, 0, {"a": [a.port]}), tmp_path)
    try:
        w.start(hello=ipc.Hello(0, ipc.WIRE_VERSION + 100, ("ingress",), 1))
        assert w.wait_exit(10) == 3
    finally:
        w.close()


def test_worker_exits_when_the_master_goes_away(start_worker, upstream) -> None:
    a = upstream("a")
    w = start_worker(make_epoch(1, 0, {"a": [a.port]}))
    w._chan.close()
    w._chan = None
    assert w.wait_exit(5) == 0


def test_no_channel_is_cannot_start() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "proxyd.worker", "--ipc-fd", "987", "--worker-id", "0"],
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 3


def test_stats_reports_are_deltas_with_gauges(start_worker, upstream) -> None:
    a = upstream("a")
    w = start_worker(make_epoch(1, 0, {"a": [a.port]}))
    port = w.bound_port()
    with httpx.Client() as client:
        for _ in range(3):
            client.get(f"http://127.0.0.1:{port}/")
        client.get(f"http://127.0.0.1:{port}/status/503")
        assert w.wait_stat("http.ingress_http.downstream_rq_total", 4) == 4
        assert w.stat("http.ingress_http.downstream_rq_2xx") == 3
        assert w.stat("http.ingress_http.downstream_rq_5xx") == 1
        assert w.stat("cluster.a.upstream_rq_total") == 4
        assert w.stat("cluster.a.upstream_rq_200") == 3
        assert w.stat("cluster.a.upstream_rq_503") == 1
        assert w.stat("cluster.a.upstream_cx_total") == 1
        assert w.stat("cluster.a.upstream_cx_active") == 1
        assert w.stat("http.ingress_http.downstream_cx_active") == 1
        # Envoy's listener stat scope is the configured address: port 0 here.
        assert w.stat("listener.127.0.0.1_0.downstream_cx_total") == 1
    assert w.wait_stat("http.ingress_http.downstream_cx_active", 0) == 0
    reports = w.reports
    wait_for(lambda: w.reports > reports)  # the heartbeat keeps coming
    assert w.stat("http.ingress_http.downstream_rq_total") == 4  # deltas, not totals


def test_access_log(start_worker, upstream, tmp_path) -> None:
    a = upstream("a")
    path = tmp_path / "access.log"
    fmt = "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %REQ(X-CUSTOM)% %RESP(X-UPSTREAM-NAME)%\n"
    w = start_worker(
        make_epoch(1, 0, {"a": [a.port]}, hcm={"access_logs": (ep.AccessLog(str(path), fmt),)})
    )
    port = w.bound_port()
    with httpx.Client() as client:
        client.get(f"http://127.0.0.1:{port}/x", headers={"x-custom": "c"})
    w.send_epoch(
        make_epoch(
            2,
            0,
            {"a": [a.port]},
            [ep.Route("r", ep.RouteMatch("prefix", "/only"), "a")],
            hcm={"access_logs": (ep.AccessLog(str(path), ""),)},
        )
    )
    httpx.get(f"http://127.0.0.1:{port}/nothing")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= 2:
            break
        time.sleep(0.1)
    assert lines[0] == f"GET /x 200 - 127.0.0.1:{a.port} c a"
    assert '"GET /nothing HTTP/1.1" 404 NR 0 0' in lines[1]
