"""HTTP/2 from clients: one real Envoy and one proxyd on the same YAML.

Listeners:

* ``auto`` (codec_type AUTO): h2c with prior knowledge, and HTTP/1.1 beside it;
* ``h2only`` (codec_type HTTP2) with http2_protocol_options (max_concurrent_streams 7,
  a 64 KiB stream window, a 1 MiB connection window) and an RBAC filter that refuses
  /denied (a filter's local reply);
* ``tls``: TLS with ALPN h2 and http/1.1.

Routes: /echo, /bytes, /chunked, /delay, /status to the demo upstream; /missing to a
cluster named by a header that does not exist (503), /dead to a host nobody listens on (503 UF),
/direct a direct_response; any other path has no route (404).

Clients: httpx with HTTP/2 (h2c prior knowledge, and over TLS by ALPN) for what a
client sees and what the upstream is sent; the ``h2`` library for exact frames
(SETTINGS, many streams on one connection, a reset stream beside others). Stats
``http.<prefix>.downstream_cx_http2_total`` / ``downstream_rq_http2_total`` and the
access log's %PROTOCOL% are compared too.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import PortOf, run_pair
from tests.support import UpstreamServer, free_port, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
LOG_FORMAT = "%PROTOCOL% %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n"
# On the h2only listener: /denied is refused by a filter (its local reply).
RBAC_DENY = {
    "name": "envoy.filters.http.rbac",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {
            "action": "DENY",
            "policies": {
                "denied": {
                    "permissions": [{"url_path": {"path": {"prefix": "/denied"}}}],
                    "principals": [{"any": True}],
                }
            },
        },
    },
}
# What differs between two runs, not between the proxies.
VOLATILE = {"date", "x-request-id", "x-envoy-upstream-service-time"}


def routes() -> dict[str, Any]:
    to_up = [
        {"match": {"prefix": p}, "route": {"cluster": "up"}}
        for p in ("/echo", "/bytes/", "/chunked/", "/delay/", "/status/")
    ]
    return {
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    *to_up,
                    {
                        "match": {"prefix": "/missing"},
                        "route": {"cluster_header": "x-cluster"},
                    },
                    {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
                    {"match": {"prefix": "/cut"}, "route": {"cluster": "cut"}},
                    {
                        "match": {"prefix": "/timeout/"},
                        "route": {"cluster": "up", "timeout": "0.2s", "prefix_rewrite": "/delay/"},
                    },
                    {
                        "match": {"prefix": "/direct"},
                        "direct_response": {"status": 200, "body": {"inline_string": "made"}},
                    },
                ],
            }
        ]
    }


def listener(name: str, log_path: str, **hcm_fields: Any) -> dict[str, Any]:
    tls = hcm_fields.pop("tls", None)
    hcm = {
        "@type": HCM,
        "stat_prefix": name,
        **hcm_fields,
        "route_config": routes(),
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
        "http_filters": [
            *([RBAC_DENY] if name == "h2only" else []),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if tls is not None:
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": TLS, **tls},
        }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [chain],
    }


def cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
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
    }


def config(certs: Any, up: int, dead: int, cut: int, log_path: str) -> str:
    server = {
        "certificate_chain": {"filename": certs.server},
        "private_key": {"filename": certs.server_key},
    }
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                listener("auto", log_path),
                listener(
                    "h2only",
                    log_path,
                    codec_type="HTTP2",
                    http2_protocol_options={
                        "max_concurrent_streams": 7,
                        "initial_stream_window_size": 65535,
                        "initial_connection_window_size": 1048576,
                    },
                ),
                listener(
                    "tls",
                    log_path,
                    tls={
                        "common_tls_context": {
                            "tls_certificates": [server],
                            "alpn_protocols": ["h2", "http/1.1"],
                        }
                    },
                ),
            ],
            "clusters": [cluster("up", up), cluster("dead", dead), cluster("cut", cut)],
        },
    }
    return yaml.safe_dump(doc)


class CuttingUpstream:
    """Answers every request with a head announcing 1000 bytes, sends 10, and closes:
    the upstream resets the response after it started."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.server.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"c" * 10)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.server.close()


# -- what a client sees ---------------------------------------------------------------------


def seen(r: httpx.Response, port: int) -> dict[str, Any]:
    """A response as compared: version, status, headers (volatile ones left out), and
    the body (the upstream's view of the request when it is /echo's JSON)."""
    headers = sorted((k, v) for k, v in r.headers.items() if k not in VOLATILE)
    out: dict[str, Any] = {"version": r.http_version, "status": r.status_code, "headers": headers}
    body = r.content
    if body.startswith(b"{"):
        info = json.loads(body)
        info["headers"] = [
            [k, v.replace(str(port), "PORT")] for k, v in info["headers"] if k not in VOLATILE
        ]
        out["upstream"] = info
    else:
        out["body_len"] = len(body)
        out["body_sha"] = hashlib.sha256(body).hexdigest()[:16]
    return out


def httpx_cases(port: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    with httpx.Client(http1=False, http2=True, timeout=10) as c:
        out["GET echo"] = seen(
            c.get(
                f"{base}/echo?q=1",
                headers=[("cookie", "a=1"), ("cookie", "b=2"), ("te", "trailers"), ("x-k", "v")],
            ),
            port,
        )
        out["POST echo"] = seen(c.post(f"{base}/echo", content=b"p" * 100_000), port)

        def gen():
            for _ in range(20):
                yield b"z" * 10_000

        out["POST streamed body"] = seen(c.post(f"{base}/echo", content=gen()), port)
        out["POST empty"] = seen(c.post(f"{base}/echo", content=b""), port)
        out["HEAD bytes"] = seen(c.head(f"{base}/bytes/500"), port)
        out["GET large"] = seen(c.get(f"{base}/bytes/3000000"), port)
        out["GET chunked"] = seen(c.get(f"{base}/chunked/300000"), port)
        out["POST large"] = seen(c.post(f"{base}/echo", content=b"L" * 3_000_000), port)
        out["GET status 503"] = seen(c.get(f"{base}/status/503"), port)
        out["no route 404"] = seen(c.get(f"{base}/nowhere"), port)
        out["no cluster 503"] = seen(
            c.get(f"{base}/missing", headers={"x-cluster": "nowhere"}), port
        )
        out["dead host 503"] = seen(c.get(f"{base}/dead"), port)
        out["direct response"] = seen(c.get(f"{base}/direct"), port)
    # HTTP/1.1 beside it on the same AUTO listener.
    with httpx.Client(timeout=10) as c:
        out["HTTP/1.1 on auto"] = seen(c.get(f"{base}/echo"), port)
    # And a response the upstream cuts short, over HTTP/1.1 (its access log line).
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /cut HTTP/1.1\r\nhost: x\r\n\r\n")
        while s.recv(65536):
            pass
    return out


# -- raw frames ----------------------------------------------------------------------------------


class RawH2:
    """A client connection driven by hand with ``h2``."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.c = h2.connection.H2Connection(config)
        self.c.initiate_connection()
        self.sock.sendall(self.c.data_to_send())
        self.settings: dict[int, int] | None = None
        self.window_updates: list[tuple[int, int]] = []
        self.streams: dict[int, dict[str, Any]] = {}
        self.goaway: int | None = None

    def request(
        self, path: str, port: int, end: bool = True, extra: list[tuple[bytes, bytes]] = ()
    ) -> int:
        sid = self.c.get_next_available_stream_id()
        self.c.send_headers(
            sid,
            [
                (b":method", b"GET"),
                (b":path", path.encode()),
                (b":scheme", b"http"),
                (b":authority", f"127.0.0.1:{port}".encode()),
                *extra,
            ],
            end_stream=end,
        )
        self.sock.sendall(self.c.data_to_send())
        self.streams[sid] = {"status": None, "body": b"", "ended": False, "reset": None}
        return sid

    def reset(self, sid: int) -> None:
        self.c.reset_stream(sid, 0x8)  # CANCEL
        self.sock.sendall(self.c.data_to_send())

    def run_until(self, done: Any) -> None:
        while not done():
            data = self.sock.recv(65536)
            if not data:
                return
            for ev in self.c.receive_data(data):
                s = self.streams.get(getattr(ev, "stream_id", 0) or 0)
                if isinstance(ev, h2.events.RemoteSettingsChanged) and self.settings is None:
                    self.settings = {int(k): v.new_value for k, v in ev.changed_settings.items()}
                elif isinstance(ev, h2.events.WindowUpdated):
                    self.window_updates.append((ev.stream_id, ev.delta))
                elif isinstance(ev, h2.events.ResponseReceived) and s is not None:
                    s["status"] = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived) and s is not None:
                    s["body"] += ev.data
                    self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded) and s is not None:
                    s["ended"] = True
                elif isinstance(ev, h2.events.StreamReset) and s is not None:
                    s["reset"] = ev.error_code
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.goaway = ev.error_code
            out = self.c.data_to_send()
            if out:
                self.sock.sendall(out)

    def close(self) -> None:
        self.sock.close()


def raw_cases(port_of: PortOf) -> dict[str, Any]:
    out: dict[str, Any] = {}
    auto = port_of("auto")
    h2only = port_of("h2only")
    # The server's first SETTINGS and its connection window (WINDOW_UPDATE on stream 0).
    for name, port in (("auto", auto), ("h2only", h2only)):
        raw = RawH2(port)
        raw.run_until(lambda raw=raw: raw.settings is not None)
        sid = raw.request("/echo", port)
        raw.run_until(lambda raw=raw, sid=sid: raw.streams[sid]["ended"])
        out[f"settings {name}"] = raw.settings
        out[f"connection window {name}"] = [d for s, d in raw.window_updates if s == 0][:1]
        raw.close()
    # Many concurrent streams on one connection, all answered.
    raw = RawH2(auto)
    sids = [raw.request(f"/bytes/{1000 + i}", auto) for i in range(40)]
    raw.run_until(lambda: all(raw.streams[s]["ended"] for s in sids))
    out["40 streams"] = sorted(
        (raw.streams[s]["status"], len(raw.streams[s]["body"])) for s in sids
    )
    # A stream reset by the client leaves the others going.
    slow = raw.request("/delay/300/echo", auto)
    other = raw.request("/bytes/10", auto)
    raw.reset(slow)
    after = raw.request("/bytes/20", auto)
    raw.run_until(lambda: raw.streams[other]["ended"] and raw.streams[after]["ended"])
    out["after a reset"] = [
        (raw.streams[s]["status"], len(raw.streams[s]["body"])) for s in (other, after)
    ]
    # The upstream resets a response that started, and a route timeout passes: each
    # ends its own stream; the connection goes on.
    cut = raw.request("/cut", auto)
    late = raw.request("/timeout/1000/echo", auto)
    raw.run_until(
        lambda: all(
            raw.streams[s]["ended"] or raw.streams[s]["reset"] is not None for s in (cut, late)
        )
    )
    # A request body that ends with trailers (without a content-length).
    sid = raw.c.get_next_available_stream_id()
    raw.c.send_headers(
        sid,
        [
            (b":method", b"POST"),
            (b":path", b"/echo"),
            (b":scheme", b"http"),
            (b":authority", f"127.0.0.1:{auto}".encode()),
        ],
    )
    raw.c.send_data(sid, b"t" * 1000)
    raw.c.send_headers(sid, [(b"x-trailer", b"1")], end_stream=True)
    raw.sock.sendall(raw.c.data_to_send())
    raw.streams[sid] = {"status": None, "body": b"", "ended": False, "reset": None}
    raw.run_until(lambda: raw.streams[sid]["ended"])
    echoed = json.loads(raw.streams[sid]["body"])
    out["request trailers"] = {
        "status": raw.streams[sid]["status"],
        "body_bytes": echoed["body_bytes"],
        "headers": [h for h in echoed["headers"] if h[0] not in VOLATILE and h[0] != "host"],
    }
    # More header fields than max_headers_count (100).
    crowded = raw.request("/bytes/5", auto, extra=[(b"x-h%d" % i, b"v") for i in range(120)])
    raw.run_until(
        lambda: raw.streams[crowded]["ended"] or raw.streams[crowded]["reset"] is not None
    )
    more = raw.request("/bytes/30", auto)
    raw.run_until(lambda: raw.streams[more]["ended"])
    out["upstream reset, timeout, then"] = [
        (raw.streams[s]["status"], len(raw.streams[s]["body"]), raw.streams[s]["reset"])
        for s in (cut, late, crowded, more)
    ]
    raw.close()
    # max_concurrent_streams 7 is what the client is told; 7 at once go through.
    raw = RawH2(h2only)
    raw.run_until(lambda: raw.settings is not None)
    sids = [raw.request("/delay/100/bytes/5", h2only) for _ in range(7)]
    raw.run_until(lambda: all(raw.streams[s]["ended"] for s in sids))
    out["7 streams on h2only"] = [raw.streams[s]["status"] for s in sids]
    raw.close()
    return out


def tls_case(certs: Any, port: int) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=certs.ca)
    with httpx.Client(http2=True, verify=ctx, timeout=10) as c:
        r = c.get(f"https://127.0.0.1:{port}/echo", extensions={"sni_hostname": "example.com"})
        return seen(r, port)


def test_h2_downstream_matches_envoy(tmp_path, certs):
    up = UpstreamServer("up")
    up.start()
    cutting = CuttingUpstream()
    dead = free_port()
    log_path = str(tmp_path / "access.log")

    def play(port_of: PortOf) -> dict[str, Any]:
        out = httpx_cases(port_of("auto"))
        h2only = port_of("h2only")
        with httpx.Client(http1=False, http2=True, timeout=10) as c:
            out["h2only GET"] = seen(c.get(f"http://127.0.0.1:{h2only}/echo"), h2only)
            out["h2only filter's reply"] = seen(
                c.post(f"http://127.0.0.1:{h2only}/denied", content=b"d" * 1000), h2only
            )
        out.update(raw_cases(port_of))
        out["tls alpn h2"] = tls_case(certs, port_of("tls"))
        lines = wait_for(lambda: _log_lines(log_path, 75), timeout=10)
        out["access log"] = sorted(set(lines))
        Path(log_path).write_text("")  # the next proxy starts from an empty log
        return out

    def pick(stats: dict[str, int]) -> dict[str, int]:
        names = ("downstream_cx_http2_total", "downstream_rq_http2_total", "downstream_rq_2xx")
        return {
            k: v
            for k, v in stats.items()
            if (
                k.startswith("http.")
                and not k.startswith("http.admin.")
                and k.rsplit(".", 1)[1] in names
                # (http2.nghttp2_*: nghttp2's own, not kept by proxyd; tx_reset
                # depends on timing: whether a reply beats the end of its request)
                or k.startswith("http2.")
                and not k.startswith("http2.nghttp2_")
                and k != "http2.tx_reset"
            )
            and v
        }

    pair_tx_reset: list[int] = []

    def pick_and_resets(stats: dict[str, int]) -> dict[str, int]:
        pair_tx_reset[:] = [stats.get("http2.tx_reset", 0)]
        return pick(stats)

    try:
        pair = run_pair(
            config(certs, up.port, dead, cutting.port, log_path), tmp_path, play, pick_and_resets
        )
    finally:
        up.stop()
        cutting.close()
    e, p = pair.envoy.replies, pair.proxyd.replies
    # Known difference, the router's and not the codec's (HTTP/1.1 shows it too): an
    # upstream that closes before its content-length is complete is Envoy's UPE and
    # proxyd's UC.
    for proto in ("HTTP/1.1", "HTTP/2"):
        line = f"{proto} GET /cut 200 "
        e["access log"].remove(line + "UPE")
        p["access log"].remove(line + "UC")
    # Both sides' replies, for a look when they differ.
    (tmp_path / "replies.json").write_text(json.dumps({"envoy": e, "proxyd": p}, indent=1))
    assert p == e
    assert pair.proxyd.stats == pair.envoy.stats
    # What the cases are about, so a change on both sides is noticed too.
    assert p["GET echo"]["version"] == "HTTP/2"
    assert p["tls alpn h2"]["version"] == "HTTP/2"
    assert p["no route 404"]["status"] == 404
    assert p["dead host 503"]["status"] == 503
    assert p["h2only filter's reply"]["status"] == 403
    assert p["POST large"]["upstream"]["body_bytes"] == 3_000_000
    assert p["40 streams"] == sorted((200, 1000 + i) for i in range(40))
    assert p["settings h2only"][3] == 7
    assert p["settings auto"] == {1: 4096, 8: 0, 3: 1024, 4: 16777216}
    assert "HTTP/2 GET /delay/300/echo 0 DR" in p["access log"]
    stats = pair.proxyd.stats
    assert stats["http.auto.downstream_cx_http2_total"] == 3
    assert stats["http.tls.downstream_rq_http2_total"] == 1
    assert (stats["http2.rx_reset"], stats["http2.header_overflow"]) == (1, 1)
    # The upstream's reset and the crowded head: two resets at least.
    assert pair_tx_reset[0] >= 2


def _log_lines(path: str, n: int) -> list[str] | None:
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return None
    return lines if len(lines) >= n else None
