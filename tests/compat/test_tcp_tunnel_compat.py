"""TcpProxy ``tunneling_config`` over HTTP/1.1: real Envoy and real proxyd on the same YAML.

One bootstrap; each listener is a TCP proxy that tunnels to the same upstream, a small
HTTP/1.1 tunnel server (:class:`TunnelServer`) that records each request head it gets
and answers by the first label of the tunnel's hostname:

* ``ok``: 200, then echoes what comes as ``echo:<bytes>``; ``early``: a 200 whose head
  is followed by ``early`` in the same write; ``created``: 201; ``deny``: 407;
  ``mute``: closes without a response; ``post``: a chunked 200 that answers each chunk
  it reads with a chunk ``echo:<data>`` and ends the body when the request body ends.

The listeners: ``connect`` (CONNECT with headers_to_add: an append, an overwrite of the
same name, an empty value dropped and one kept, a value with %DOWNSTREAM_LOCAL_PORT%),
``early``, ``created``, ``deny`` (max_connect_attempts 2: two requests, then the client
is closed), ``mute``, ``post`` (use_post with a post_path) and ``fmt`` (the hostname
itself formatted from the downstream local address).

What the client saw, the request heads the upstream got (the listener port replaced by
``PORT``), the access-log lines (flags, failure reason, bytes) and the stats must be the
same for both proxies. Nothing here measures speed.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import PortOf, run_pair
from tests.h2_tunnel_server import H2TunnelServer
from tests.support import ThreadedTcpServer, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
LOG_FORMAT = (
    "%ACCESS_LOG_TYPE% %RESPONSE_FLAGS% %UPSTREAM_TRANSPORT_FAILURE_REASON% "
    "%BYTES_RECEIVED% %BYTES_SENT%\n"
)
TIMEOUT_S = 5.0


class TunnelServer(ThreadedTcpServer):
    """An HTTP/1.1 upstream that opens (or refuses) tunnels, see the module docstring."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT_S)
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, rest = buf.partition(b"\r\n\r\n")
            self.heads.append(head)
            host = head.split(b"\r\n")[0].split(b" ")[1]
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"host:"):
                    host = line[5:].strip()
            mode = host.split(b".")[0].split(b":")[0]
            if mode == b"deny":
                conn.sendall(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n"
                )
            elif mode == b"mute":
                pass
            elif mode == b"post":
                conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                self._chunks(conn, rest)
            else:
                status = b"201 Created" if mode == b"created" else b"200 OK"
                extra = b"early" if mode == b"early" else b""
                conn.sendall(b"HTTP/1.1 " + status + b"\r\n\r\n" + extra)
                if rest:
                    conn.sendall(b"echo:" + rest)
                while data := conn.recv(65536):
                    conn.sendall(b"echo:" + data)
        except OSError:
            pass
        finally:
            conn.close()

    def _chunks(self, conn: socket.socket, buf: bytes) -> None:
        """Answer each request chunk with one of its own; end with the request body."""
        while True:
            while b"\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            line, _, buf = buf.partition(b"\r\n")
            size = int(line, 16)
            while len(buf) < size + 2:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            chunk, buf = buf[:size], buf[size + 2 :]
            if size == 0:
                conn.sendall(b"0\r\n\r\n")
                return
            out = b"echo:" + chunk
            conn.sendall(b"%x\r\n%s\r\n" % (len(out), out))


def _listener(name: str, log_path: str, tunnel: dict[str, Any], **tcp: Any) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": TCP_PROXY,
                            "stat_prefix": name,
                            "cluster": "tunnel",
                            "tunneling_config": tunnel,
                            "access_log": [
                                {
                                    "name": "envoy.access_loggers.file",
                                    "typed_config": {
                                        "@type": FILE_LOG,
                                        "path": log_path,
                                        "log_format": {
                                            "text_format_source": {
                                                "inline_string": name + " " + LOG_FORMAT
                                            }
                                        },
                                    },
                                }
                            ],
                            **tcp,
                        },
                    }
                ]
            }
        ],
    }


def config(log_path: str, port: int) -> str:
    header = [
        {"header": {"key": "x-a", "value": "1"}},
        {"header": {"key": "x-a", "value": "2"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "x-empty", "value": ""}},
        {"header": {"key": "x-kept", "value": "%REQ(x-none)%"}, "keep_empty_value": True},
        {"header": {"key": "X-Port", "value": "%DOWNSTREAM_LOCAL_PORT%"}},
    ]
    listeners = [
        _listener("connect", log_path, {"hostname": "ok.example:443", "headers_to_add": header}),
        _listener("early", log_path, {"hostname": "early:1"}),
        _listener("created", log_path, {"hostname": "created:1"}),
        _listener("deny", log_path, {"hostname": "deny:1"}, max_connect_attempts=2),
        _listener("mute", log_path, {"hostname": "mute:1"}),
        _listener("post", log_path, {"hostname": "post:1", "use_post": True, "post_path": "/up"}),
        _listener("fmt", log_path, {"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%"}),
    ]
    cluster = {
        "name": "tunnel",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS,
                "explicit_http_config": {"http_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": "tunnel",
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
    }
    doc = {
        "static_resources": {"listeners": listeners, "clusters": [cluster]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _read_to_end(s: socket.socket) -> tuple[bytes, str]:
    out = bytearray()
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            return bytes(out), "reset"
        except TimeoutError:
            return bytes(out), "timeout"
        if not data:
            return bytes(out), "eof"
        out += data


def _exchange(port: int, sends: list[bytes], want: int) -> dict[str, Any]:
    """Send each piece after the answer to the one before it has come; then half-close
    and read to the end. ``want``: the bytes of echo expected per piece."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
        got = b""
        for piece in sends:
            s.sendall(piece)
            target = len(got) + want + len(piece)
            while len(got) < target:
                data = s.recv(65536)
                if not data:
                    break
                got += data
        s.shutdown(socket.SHUT_WR)
        rest, end = _read_to_end(s)
    # The upstream prefixes what each of its reads got; how a large piece is split
    # between reads is the kernel's, so only the first prefix is kept.
    got += rest
    return {"first": got[:5], "got": got.replace(b"echo:", b""), "end": end}


def _refused(port: int) -> dict[str, Any]:
    """A tunnel the upstream refuses: the client sends nothing and sees the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
        got, end = _read_to_end(s)
    return {"got": got, "end": end}


def _early(port: int) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as s:
        first = b""
        while len(first) < 5:
            data = s.recv(65536)
            if not data:
                break
            first += data
        out = _exchange_on(s, [b"abc"], 5)
    return {"first": first, **out}


def _exchange_on(s: socket.socket, sends: list[bytes], want: int) -> dict[str, Any]:
    got = b""
    for piece in sends:
        s.sendall(piece)
        target = len(got) + want + len(piece)
        while len(got) < target:
            data = s.recv(65536)
            if not data:
                break
            got += data
    s.shutdown(socket.SHUT_WR)
    rest, end = _read_to_end(s)
    return {"got": got + rest, "end": end}


def test_tcp_tunnel_over_http1_matches_envoy(tmp_path: Path) -> None:
    server = TunnelServer()
    log = tmp_path / "access.log"
    sides: dict[str, dict[str, Any]] = {}
    try:

        def play(port_of: PortOf) -> dict[str, Any]:
            server.heads.clear()
            # Both proxies append to the one file: this side's lines come after these.
            before = len(log.read_text().splitlines()) if log.exists() else 0
            ports = {name: port_of(name) for name in ("connect", "early", "created", "deny",
                                                       "mute", "post", "fmt")}  # fmt: skip
            out: dict[str, Any] = {
                "connect": _exchange(ports["connect"], [b"hello", b"big" * 20000], 5),
                "early": _early(ports["early"]),
                "created": _exchange(ports["created"], [b"x"], 5),
                "deny": _refused(ports["deny"]),
                "mute": _refused(ports["mute"]),
                "post": _exchange(ports["post"], [b"one", b"two"], 5),
                "fmt": _exchange(ports["fmt"], [b"f"], 5),
            }
            wait_for(
                lambda: log.exists() and len(log.read_text().splitlines()) >= before + 7,
                timeout=5,
            )
            heads = []
            for h in server.heads:
                for name, p in ports.items():
                    h = h.replace(str(p).encode(), b"PORT:" + name.encode())
                heads.append(h)
            out["heads"] = sorted(heads)
            out["log"] = sorted(log.read_text().splitlines()[before:])
            return out

        def pick(stats: dict[str, int]) -> dict[str, int]:
            keep = ("cluster.tunnel.upstream_rq_total", "cluster.tunnel.upstream_cx_total",
                    "cluster.tunnel.upstream_cx_connect_attempts_exceeded")  # fmt: skip
            out = {k: v for k, v in stats.items() if k in keep}
            for name in ("connect", "post", "deny"):
                for stat in ("downstream_cx_total", "downstream_cx_rx_bytes_total",
                             "downstream_cx_tx_bytes_total"):  # fmt: skip
                    key = f"tcp.{name}.{stat}"
                    out[key] = stats.get(key, 0)
            return out

        pair = run_pair(config(str(log), server.port), tmp_path, play, pick)
        sides = {"envoy": pair.envoy.replies, "proxyd": pair.proxyd.replies}
    finally:
        server.close()
    envoy, proxyd = sides["envoy"], sides["proxyd"]
    # The cases did what they are for (on Envoy), so a match below means something.
    assert envoy["connect"]["first"] == b"echo:"
    assert envoy["connect"]["got"] == b"hello" + b"big" * 20000
    assert envoy["deny"] == {"got": b"", "end": "eof"}
    assert any(h.startswith(b"POST /up HTTP/1.1") for h in envoy["heads"])
    for case in ("connect", "early", "created", "deny", "mute", "post", "fmt", "heads", "log"):
        assert proxyd[case] == envoy[case], case
    assert pair.proxyd.stats == pair.envoy.stats


# -- over HTTP/2 --------------------------------------------------------------------------


def h2_config(log_path: str, port: int) -> str:
    doc = yaml.safe_load(config(log_path, port))
    names = ("connect", "deny", "post")
    doc["static_resources"]["listeners"] = [
        lst for lst in doc["static_resources"]["listeners"] if lst["name"] in names
    ]
    for lst in doc["static_resources"]["listeners"]:
        tcp = lst["filter_chains"][0]["filters"][0]["typed_config"]
        if lst["name"] == "connect":
            tcp["tunneling_config"]["hostname"] = "ok.example:443"
        if lst["name"] == "post":
            tcp["tunneling_config"]["hostname"] = "ok:1"
    options = doc["static_resources"]["clusters"][0]["typed_extension_protocol_options"]
    options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"] = {
        "http2_protocol_options": {}
    }
    return yaml.safe_dump(doc, sort_keys=False)


def test_tcp_tunnel_over_http2_matches_envoy(tmp_path: Path) -> None:
    server = H2TunnelServer()
    log = tmp_path / "access.log"
    try:

        def play(port_of: PortOf) -> dict[str, Any]:
            server.heads.clear()
            before = len(log.read_text().splitlines()) if log.exists() else 0
            ports = {name: port_of(name) for name in ("connect", "deny", "post")}
            out: dict[str, Any] = {
                "connect": _exchange(ports["connect"], [b"hello", b"big" * 20000], 5),
                "deny": _refused(ports["deny"]),
                "post": _exchange(ports["post"], [b"one", b"two"], 5),
            }
            wait_for(
                lambda: log.exists() and len(log.read_text().splitlines()) >= before + 3,
                timeout=5,
            )
            out["heads"] = sorted(
                [(n, v.replace(str(ports["connect"]), "PORT")) for n, v in h] for h in server.heads
            )
            out["log"] = sorted(log.read_text().splitlines()[before:])
            return out

        def pick(stats: dict[str, int]) -> dict[str, int]:
            keep = ("cluster.tunnel.upstream_cx_http2_total",
                    "cluster.tunnel.upstream_cx_connect_attempts_exceeded")  # fmt: skip
            out = {k: v for k, v in stats.items() if k in keep}
            for name in ("connect", "post"):
                for stat in ("downstream_cx_rx_bytes_total", "downstream_cx_tx_bytes_total"):
                    out[f"tcp.{name}.{stat}"] = stats.get(f"tcp.{name}.{stat}", 0)
            return out

        pair = run_pair(h2_config(str(log), server.port), tmp_path, play, pick)
    finally:
        server.close()
    envoy, proxyd = pair.envoy.replies, pair.proxyd.replies
    assert envoy["connect"]["got"] == b"hello" + b"big" * 20000
    assert envoy["deny"] == {"got": b"", "end": "eof"}
    assert any((":method", "POST") in h for h in envoy["heads"])
    for case in ("connect", "deny", "post", "heads", "log"):
        assert proxyd[case] == envoy[case], case
    assert pair.proxyd.stats == pair.envoy.stats
