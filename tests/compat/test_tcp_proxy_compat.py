"""The TCP proxy network filter: real Envoy and real proxyd on the same YAML.

One bootstrap, several listeners whose one network filter is ``tcp_proxy``, each with
an access log (one file per side; the format is the same) and its own stat_prefix:

* ``echo`` -> cluster ``echo``: a TCP echo server (``tests.support.TcpEchoServer``),
  which after the client's end of stream sends ``<eof>`` and closes; this listener has
  its own access log too (one line per connection, the bytes the TCP proxy moved) (so the client sees a half-close
  passed on both ways);
* ``dead`` (max_connect_attempts 2) and ``dead1`` (the default, 1) -> a port nothing
  listens on: the connection is closed (flags UF,URX);
* ``idle`` -> ``echo`` with idle_timeout 0.5 s; ``dur`` -> ``echo`` with
  max_downstream_connection_duration 0.5 s;
* ``nocl`` -> a cluster that does not exist (flag NC, downstream_cx_no_route);
* ``cb`` -> ``echo_cb`` (the echo server, circuit breaker max_connections 1): a second
  connection while the first is open is closed (flag UO);
* ``http`` -> the demo HTTP upstream ``a``, with a ``TcpUpstreamConnected`` line too
  (``flush_access_log_on_connected``); ``split`` -> weighted_clusters a:1, b:3;
* ``greet`` -> an upstream that says ``hi`` and half-closes at once, then records what
  the client still sends; ``rst`` -> an upstream that answers ``bye``, waits for the
  client's ``ack`` and resets the connection (Envoy resets the client's connection
  too, flag UR); a client that resets its own connection after a round trip.

Every case runs through Envoy and then proxyd (concurrency 1 each) and what the client
saw must be equal; then the stats of both admin endpoints and the access log lines
(on the operators that matter for TCP) are compared. Nothing here measures speed.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import struct
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.support import ProxydProcess, TcpEchoServer, UpstreamServer, free_port, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
LOG_FORMAT = (
    "%ACCESS_LOG_TYPE% %UPSTREAM_CLUSTER% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% "
    "%PROTOCOL% %RESPONSE_CODE% %UPSTREAM_HOST% %UPSTREAM_REMOTE_ADDRESS% "
    "%UPSTREAM_TRANSPORT_FAILURE_REASON% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\n"
)
LISTENER_LOG_FORMAT = "listener %ACCESS_LOG_TYPE% %BYTES_RECEIVED% %BYTES_SENT% %PROTOCOL%\n"
BIG = 3 * 1024 * 1024
SPREAD_CONNECTIONS = 200
SPREAD_TOLERANCE = 0.1
HASHED = 6  # connections through the source_ip hash listener
TIMEOUT_S = 10.0


def _listener(name: str, log_path: str, **tcp: Any) -> dict[str, Any]:
    config = {
        "@type": TCP_PROXY,
        "stat_prefix": name,
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": FILE_LOG,
                    "path": log_path,
                    "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
                },
            }
        ],
        **tcp,
    }
    out = {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": config}]}
        ],
    }
    if name == "echo":  # the listener's own access log too (one line per connection)
        out["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": FILE_LOG,
                    "path": log_path,
                    "log_format": {"text_format_source": {"inline_string": LISTENER_LOG_FORMAT}},
                },
            }
        ]
    return out


def _cluster(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        **extra,
    }


LISTENERS = (
    "echo", "dead", "dead1", "idle", "dur", "nocl", "cb", "http", "split", "greet", "rst",
    "hash",
)  # fmt: skip


class ScriptedServer:
    """A TCP upstream that plays one script per connection: ``greet`` sends ``hi``,
    half-closes, then keeps what arrives until the end of stream in ``received``;
    ``reset`` reads the first bytes, answers ``bye``, reads ``ack`` and resets."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.received: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # wakes the accepting thread where it can
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed: the test is over
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT_S)
        try:
            if self.script == "greet":
                conn.sendall(b"hi")
                conn.shutdown(socket.SHUT_WR)
                got = b""
                while data := conn.recv(65536):
                    got += data
                self.received.append(got)
                conn.close()
            else:
                conn.recv(100)
                conn.sendall(b"bye")
                conn.recv(100)  # the client's ack: it has the bye
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # with SO_LINGER 0: a reset
        except OSError:
            conn.close()


def config(
    log_path: str, echo: int, dead: int, a: int, b: int, greet: int, rst: int, c: int
) -> str:
    listeners = [
        _listener("echo", log_path, cluster="echo"),
        _listener("dead", log_path, cluster="dead", max_connect_attempts=2),
        _listener("dead1", log_path, cluster="dead"),
        _listener("idle", log_path, cluster="echo", idle_timeout="0.5s"),
        _listener("dur", log_path, cluster="echo", max_downstream_connection_duration="0.5s"),
        _listener("nocl", log_path, cluster="nope"),
        _listener("cb", log_path, cluster="echo_cb"),
        _listener(
            "http",
            log_path,
            cluster="a",
            access_log_options={"flush_access_log_on_connected": True},
        ),
        _listener("greet", log_path, cluster="greet"),
        _listener("rst", log_path, cluster="rst"),
        _listener("hash", log_path, cluster="ring", hash_policy=[{"source_ip": {}}]),
        {
            **_listener(
                "split",
                log_path,
                weighted_clusters={
                    "clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]
                },
            ),
        },
    ]
    # The split listener logs nothing: its lines would differ by the random pick.
    del listeners[-1]["filter_chains"][0]["filters"][0]["typed_config"]["access_log"]
    doc = {
        "static_resources": {
            "listeners": listeners,
            "clusters": [
                _cluster("echo", echo),
                _cluster("dead", dead),
                _cluster(
                    "echo_cb",
                    echo,
                    circuit_breakers={"thresholds": [{"max_connections": 1}]},
                ),
                _cluster("a", a),
                _cluster("greet", greet),
                _cluster("rst", rst),
                {
                    **_cluster("ring", a),
                    "lb_policy": "RING_HASH",
                    "load_assignment": {
                        "cluster_name": "ring",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": port,
                                                }
                                            }
                                        }
                                    }
                                    for port in (a, b, c)
                                ]
                            }
                        ],
                    },
                },
                _cluster("b", b),
            ],
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


# -- the cases ------------------------------------------------------------------------


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    return s


def _read_to_end(s: socket.socket) -> tuple[bytes, str]:
    """Everything until the end of stream; how it ended ("eof" or "reset")."""
    out = bytearray()
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            return bytes(out), "reset"
        if not data:
            return bytes(out), "eof"
        out += data


def small(port: int) -> dict[str, Any]:
    with _connect(port) as s:
        s.sendall(b"hello")
        first = s.recv(5)
        s.sendall(b" world")
        s.shutdown(socket.SHUT_WR)  # the echo server answers <eof> after it
        rest, end = _read_to_end(s)
    return {"first": first, "rest": rest, "end": end}


def big(port: int) -> dict[str, Any]:
    payload = os.urandom(BIG)
    with _connect(port) as s:

        def send() -> None:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        got, end = _read_to_end(s)
        sender.join()
    return {
        "size": len(got),
        "same": got == payload + b"<eof>",
        "end": end,
        "sha": hashlib.sha256(got).hexdigest() == hashlib.sha256(payload + b"<eof>").hexdigest(),
    }


def closed_at_once(port: int) -> dict[str, Any]:
    """A connection the proxy closes without an upstream: what the client sees."""
    with _connect(port) as s:
        got, end = _read_to_end(s)
    return {"got": got, "end": end}


def timed_out(port: int) -> dict[str, Any]:
    """One byte through, then silence: the proxy closes it (idle or duration)."""
    with _connect(port) as s:
        s.sendall(b"x")
        first = s.recv(1)
        t0 = time.monotonic()
        rest, end = _read_to_end(s)
        waited = time.monotonic() - t0
    # The timeout is 0.5 s: closed not before (less a little for the clock), and
    # before the socket's own timeout would have ended the read.
    return {"first": first, "rest": rest, "end": end, "waited_enough": waited >= 0.4}


def overflow(echo_port: int, cb_port: int) -> dict[str, Any]:
    """Two connections to ``echo_cb`` (max_connections 1): the first holds the slot."""
    with _connect(cb_port) as first:
        first.sendall(b"a")
        held = first.recv(1)  # its upstream connection is open now
        with _connect(cb_port) as second:
            got, end = _read_to_end(second)
        first.shutdown(socket.SHUT_WR)
        rest, _ = _read_to_end(first)
    return {"held": held, "second": (got, end), "first_rest": rest}


def client_resets(port: int) -> dict[str, Any]:
    """The client resets its connection after a round trip (the access log tells the
    rest)."""
    s = _connect(port)
    s.sendall(b"x")
    got = s.recv(1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    return {"got": got}


def greeted(port: int) -> dict[str, Any]:
    """The upstream half-closes first; the client then still sends, and half-closes."""
    with _connect(port) as s:
        got, end = _read_to_end(s)
        s.sendall(b"more after your end")
        s.shutdown(socket.SHUT_WR)
        after, _ = _read_to_end(s)
    return {"got": got, "end": end, "after": after}


def reset_by_upstream(port: int) -> dict[str, Any]:
    with _connect(port) as s:
        s.sendall(b"x")
        bye = b""
        while len(bye) < 3:
            bye += s.recv(3 - len(bye))
        s.sendall(b"ack")
        rest, end = _read_to_end(s)
    return {"bye": bye, "rest": rest, "end": end}


def http_through(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", "/hello", headers={"host": "tcp.example"})
        r = conn.getresponse()
        return {"status": r.status, "upstream": r.getheader("x-upstream-name"), "body": r.read()}
    finally:
        conn.close()


def spread(port: int) -> dict[str, float]:
    got: Counter[str] = Counter()
    for _ in range(SPREAD_CONNECTIONS):
        got[str(http_through(port)["upstream"])] += 1
    return {k: v / SPREAD_CONNECTIONS for k, v in got.items()}


CASES: dict[str, Callable[[dict[str, int]], dict[str, Any]]] = {
    "small": lambda p: small(p["echo"]),
    "big": lambda p: big(p["echo"]),
    "refused_two_attempts": lambda p: closed_at_once(p["dead"]),
    "refused_one_attempt": lambda p: closed_at_once(p["dead1"]),
    "no_cluster": lambda p: closed_at_once(p["nocl"]),
    "idle_timeout": lambda p: timed_out(p["idle"]),
    "max_duration": lambda p: timed_out(p["dur"]),
    "circuit_breaker": lambda p: overflow(p["echo"], p["cb"]),
    "http_through": lambda p: http_through(p["http"]),
    "upstream_half_closes_first": lambda p: greeted(p["greet"]),
    "upstream_resets": lambda p: reset_by_upstream(p["rst"]),
    "client_resets": lambda p: client_resets(p["echo"]),
    "hash_source_ip": lambda p: {
        "upstreams": [http_through(p["hash"])["upstream"] for _ in range(HASHED)]
    },
}

# Counters compared from both admin endpoints (the split listener's clusters a and b
# are compared as sums: the picks are random).
STATS = tuple(
    f"tcp.{name}.{stat}"
    for name in LISTENERS
    for stat in (
        "downstream_cx_total", "downstream_cx_no_route", "downstream_cx_rx_bytes_total",
        "downstream_cx_tx_bytes_total", "idle_timeout", "max_downstream_connection_duration",
    )
    if name != "split" or stat == "downstream_cx_total"
) + tuple(
    f"cluster.{c}.{stat}"
    for c in ("echo", "dead", "echo_cb", "ring")
    for stat in (
        "upstream_cx_total", "upstream_cx_connect_fail", "upstream_cx_connect_attempts_exceeded",
        "upstream_cx_overflow", "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total",
    )
)  # fmt: skip


@dataclass
class Side:
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    prometheus: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


@dataclass
class Results:
    envoy: Side
    proxyd: Side
    # What the greet upstream received after its half-close, per side.
    greet_received: dict[str, list[bytes]] = field(default_factory=dict)


def play(ports: dict[str, int]) -> Side:
    side = Side()
    for name, case in CASES.items():
        side.replies[name] = case(ports)
    side.shares = spread(ports["split"])
    return side


def _stats_text(admin_port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            out[name] = int(value)
    return out


# The tcp counters in /stats/prometheus: Envoy's tag extraction names them
# envoy_tcp_<stat>{envoy_tcp_prefix="<stat_prefix>"}.
PROMETHEUS_TCP = re.compile(
    r"^envoy_tcp_(downstream_cx_total|downstream_cx_no_route|downstream_cx_rx_bytes_total|"
    r"downstream_cx_tx_bytes_total|idle_timeout|max_downstream_connection_duration)"
    r'\{envoy_tcp_prefix="(?!split")[^"]*"\} \d+$'
)


def _prometheus(admin_port: int) -> list[str]:
    url = f"http://127.0.0.1:{admin_port}/stats/prometheus"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return sorted(line for line in text.splitlines() if PROMETHEUS_TCP.match(line))


def _picked(stats: dict[str, int]) -> dict[str, int]:
    out = {name: stats.get(name, 0) for name in STATS}
    out["split_upstream_cx_total"] = sum(
        stats.get(f"cluster.{c}.upstream_cx_total", 0) for c in ("a", "b")
    )
    return out


# Lines each side logs: every case's connection, and one per HTTP exchange.
EXPECTED_LINES = 14 + HASHED + 3  # and the echo listener's own lines


def _log_lines(path: Path) -> list[str]:
    try:
        return sorted(path.read_text().splitlines())
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    work = tmp_path_factory.mktemp("tcp_proxy")
    dead = free_port()
    greet, rst = ScriptedServer("greet"), ScriptedServer("reset")
    received: dict[str, list[bytes]] = {}
    with (
        TcpEchoServer() as echo,
        UpstreamServer("a") as a,
        UpstreamServer("b") as b,
        UpstreamServer("c") as c,
    ):
        ports = (echo.port, dead, a.port, b.port, greet.port, rst.port, c.port)
        envoy_log = work / "envoy_access.log"
        with EnvoyRunner(config(str(envoy_log), *ports)) as envoy:
            envoy_side = play({n: envoy.listener_port(n) for n in LISTENERS})
            envoy_side.log = wait_for(
                lambda: (lines := _log_lines(envoy_log)) and len(lines) >= EXPECTED_LINES and lines
            )
            envoy_side.stats = _picked(_stats_text(envoy.admin_port))
            envoy_side.prometheus = _prometheus(envoy.admin_port)
            received["envoy"] = wait_for(lambda: greet.received and list(greet.received))
            greet.received.clear()
        proxyd_log = work / "proxyd_access.log"
        with ProxydProcess(work, config(str(proxyd_log), *ports), concurrency=1) as p:
            proxyd_side = play({n: p.listener_port(n) for n in LISTENERS})
            # Workers report stats each second and flush logs as often: wait for both.
            proxyd_side.stats = wait_for(
                # (cluster a also served the http_through case)
                lambda: (
                    (s := _picked(p.stats()))["split_upstream_cx_total"] == SPREAD_CONNECTIONS + 1
                    and s
                )
            )
            proxyd_side.prometheus = _prometheus(p.admin_port)
            proxyd_side.log = wait_for(
                lambda: (
                    (lines := _log_lines(proxyd_log))
                    and len(lines) >= len(envoy_side.log)
                    and lines
                )
            )
            received["proxyd"] = wait_for(lambda: greet.received and list(greet.received))
    greet.close()
    rst.close()
    yield Results(envoy_side, proxyd_side, received)


@pytest.mark.parametrize("name", list(CASES))
def test_proxyd_answers_like_envoy(results: Results, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_envoy_behaves_as_the_cases_say(results: Results) -> None:
    """The facts the cases were written from, checked on Envoy itself."""
    e = results.envoy.replies
    assert e["small"] == {"first": b"hello", "rest": b" world<eof>", "end": "eof"}
    assert e["big"]["same"] and e["big"]["size"] == BIG + 5
    for name in ("refused_two_attempts", "refused_one_attempt", "no_cluster"):
        assert e[name]["got"] == b"", name
    for name in ("idle_timeout", "max_duration"):
        assert e[name]["first"] == b"x" and e[name]["rest"] == b"" and e[name]["waited_enough"]
    assert e["circuit_breaker"]["second"] == (b"", "eof")
    assert e["circuit_breaker"]["first_rest"] == b"<eof>"
    assert e["http_through"]["status"] == 200 and e["http_through"]["upstream"] == "a"
    assert e["upstream_half_closes_first"] == {"got": b"hi", "end": "eof", "after": b""}
    assert e["upstream_resets"] == {"bye": b"bye", "rest": b"", "end": "reset"}
    assert any(" UR " in line for line in results.envoy.log)
    assert any(line.startswith("TcpUpstreamConnected a - 0 0 ") for line in results.envoy.log)
    # Every connection comes from 127.0.0.1: one host of the ring takes them all.
    assert len(set(e["hash_source_ip"]["upstreams"])) == 1


def test_upstream_gets_what_follows_its_half_close(results: Results) -> None:
    assert results.greet_received["envoy"] == [b"more after your end"]
    assert results.greet_received["proxyd"] == results.greet_received["envoy"]


def test_weighted_clusters_spread(results: Results) -> None:
    expected = {"a": 0.25, "b": 0.75}
    for side in (results.envoy, results.proxyd):
        assert set(side.shares) == set(expected), side.shares
        for name, share in expected.items():
            assert abs(side.shares[name] - share) <= SPREAD_TOLERANCE, side.shares


def test_prometheus_tcp_stats_agree(results: Results) -> None:
    assert len(results.envoy.prometheus) == 6 * (len(LISTENERS) - 1)
    assert results.proxyd.prometheus == results.envoy.prometheus


def test_stats_agree(results: Results) -> None:
    assert results.proxyd.stats == results.envoy.stats
    e = results.envoy.stats
    assert e["tcp.nocl.downstream_cx_no_route"] == 1
    assert e["cluster.dead.upstream_cx_connect_fail"] == 3  # 2 + 1 attempts
    assert e["tcp.idle.idle_timeout"] == 1
    assert e["tcp.dur.max_downstream_connection_duration"] == 1
    assert e["cluster.echo_cb.upstream_cx_overflow"] == 1


def test_access_log_lines_agree(results: Results) -> None:
    assert len(results.envoy.log) == EXPECTED_LINES
    assert results.proxyd.log == results.envoy.log
