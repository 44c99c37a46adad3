"""HCM tracing (Zipkin, OpenTelemetry over HTTP and over gRPC): real Envoy and real
proxyd on the same YAML.

One bootstrap for all three tracers (one Envoy and one proxyd in all; each tracer's
listeners have their own upstream and collector). Three listeners trace to one Zipkin
collector run by the test (an HTTP server keeping the posted JSON), in front of one
upstream that keeps the headers it received:

* ``ingress`` (INBOUND): Envoy's defaults (shared span context, 64-bit ids), custom
  tags (literal, request header with a default, environment with a default), a route
  with a ``decorator``;
* ``egress`` (OUTBOUND): ``trace_id_128bit``, ``shared_span_context: false``: a joined
  trace gets a child span;
* ``unsampled``: ``random_sampling: 0``, loopback clients internal: traced only when
  forced (x-envoy-force-trace on an internal request, x-client-trace-id) or by the
  route's own ``tracing`` sampling.

Every listener also logs ``%TRACE_ID%``, the request id's trace reason, and a line for
requests ``traceable_filter`` keeps.

For each case the test compares, between the two proxies, the B3 headers the upstream
received, the trace reason in its x-request-id (the uuid's version digit), and the span
the collector got (name, kind, shared, parent link, tags), with the ids replaced by
what they are (the incoming ones kept, the new ones numbered in order of appearance),
so that "trace id kept, span id new, parent = incoming span" is what is compared, never
the random values or timestamps. The OpenTelemetry listeners (``o_ingress``,
``o_egress`` over OTLP/HTTP, ``g_ingress``, ``g_egress`` over gRPC) are compared the
same way on the W3C headers and OTLP spans.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.otlp_wire import export_request
from tests.support import ProxydProcess, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ZIPKIN = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"
B3 = ("x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3")
DECORATOR = "x-envoy-decorator-operation"

# (case name, listener, path, request headers, whether a span is expected)
CASES: list[tuple[str, str, str, dict[str, str], bool]] = [
    ("new trace", "ingress", "/new?q=1", {"x-foo": "bar"}, True),
    (
        "joined, decorated route",
        "ingress",
        "/dec/joined",
        {
            "x-b3-traceid": "0000000000000001",
            "x-b3-spanid": "0000000000000002",
            "x-b3-sampled": "1",
        },
        True,
    ),
    (
        "joined with a parent, sampled=0",
        "ingress",
        "/unsampled",
        {
            "x-b3-traceid": "0000000000000003",
            "x-b3-spanid": "0000000000000004",
            "x-b3-parentspanid": "0000000000000005",
            "x-b3-sampled": "0",
        },
        False,
    ),
    (
        "joined without a sampling state",
        "ingress",
        "/nostate",
        {"x-b3-traceid": "000000000000000a", "x-b3-spanid": "000000000000000b"},
        True,
    ),
    (
        "single b3 header",
        "ingress",
        "/single",
        {"b3": "00000000000000060000000000000007-0000000000000008-1-0000000000000009"},
        True,
    ),
    (
        "trace id alone: a new trace",
        "ingress",
        "/partial",
        {"x-b3-traceid": "0000000000000001"},
        True,
    ),
    ("upstream 503: error tag", "ingress", "/status/503", {}, True),
    ("egress new 128-bit trace", "egress", "/e/new", {}, True),
    (
        "egress joined: a child span",
        "egress",
        "/e/joined",
        {
            "x-b3-traceid": "0000000000000021",
            "x-b3-spanid": "0000000000000022",
            "x-b3-sampled": "1",
        },
        True,
    ),
    ("egress decorated route", "egress", "/dec/e", {}, True),
    ("direct response (no upstream)", "ingress", "/local", {}, True),
    ("random_sampling 0", "unsampled", "/u/plain", {}, False),
    ("route tracing samples it", "unsampled", "/u/route", {"x-route": "yes"}, True),
    (
        "x-envoy-force-trace, internal",
        "unsampled",
        "/u/forced-internal",
        {"x-envoy-force-trace": "1"},
        True,
    ),
    ("x-client-trace-id", "unsampled", "/u/client", {"x-client-trace-id": "abc"}, True),
]


class _Recorder(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.spans.clear()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Recorder

    def do_GET(self) -> None:  # the upstream
        with self.server.lock:
            self.server.requests.append(
                (self.path, {k.lower(): v for k, v in self.headers.items()})
            )
        status = 503 if self.path.startswith("/status/503") else 200
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def do_POST(self) -> None:  # the Zipkin collector
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with self.server.lock:
            if self.headers.get("content-type") == "application/x-protobuf":
                self.server.spans.extend(export_request(body))  # OTLP/HTTP
            else:
                self.server.spans.extend(json.loads(body))  # Zipkin v2 JSON
        # Envoy's OTLP exporter takes only 200 as success; Zipkin collectors say 202.
        self.send_response(200 if "v1/traces" in self.path else 202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _cluster(name: str, port: int) -> dict[str, Any]:
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
    }


def _listener(
    name: str,
    direction: str,
    tracing: dict[str, Any],
    log_path: str = "",
    hcm_extra: dict[str, Any] | None = None,
    up: str = "up",
) -> dict[str, Any]:
    routes = [
        {
            "match": {"prefix": "/dec"},
            "route": {"cluster": up},
            "decorator": {"operation": "decorated"},
        },
        {"match": {"prefix": "/local"}, "direct_response": {"status": 204}},
        {
            "match": {"prefix": "/u/route"},
            "route": {"cluster": up},
            "tracing": {
                "random_sampling": {"numerator": 100, "denominator": "HUNDRED"},
                "custom_tags": [
                    {"tag": "route_tag", "literal": {"value": "r1"}},
                    {"tag": "route_hdr", "request_header": {"name": "x-route"}},
                ],
            },
        },
        {"match": {"prefix": "/"}, "route": {"cluster": up}},
    ]
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "traffic_direction": direction,
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": name,
                            "tracing": tracing,
                            "access_log": _access_logs(log_path) if log_path else [],
                            **(hcm_extra or {}),
                            "route_config": {
                                "virtual_hosts": [
                                    {"name": "all", "domains": ["*"], "routes": routes}
                                ]
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


INTERNAL = {
    "use_remote_address": True,
    "internal_address_config": {"cidr_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]},
}
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def _access_logs(path: str) -> list[dict[str, Any]]:
    """%TRACE_ID% and the trace reason for every request, and traceable_filter."""

    def log(fmt: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": "envoy.access_loggers.file",
            "typed_config": {"@type": FILE_LOG, "path": path, "log_format": {"text_format": fmt}},
            **extra,
        }

    return [
        log("LOG %REQ(:PATH)% %TRACE_ID% %REQ(X-REQUEST-ID)%\n"),
        log("TRACEABLE %REQ(:PATH)%\n", filter={"traceable_filter": {}}),
    ]


def zipkin_resources(
    up_port: int, collector_port: int, log_path: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Zipkin listeners (ingress, egress, unsampled) and their clusters."""

    def provider(**extra: Any) -> dict[str, Any]:
        return {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": ZIPKIN,
                "collector_cluster": "zipkin",
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON",
                **extra,
            },
        }

    ingress = {
        "provider": provider(),
        "custom_tags": [
            {"tag": "lit", "literal": {"value": "v1"}},
            {"tag": "hdr", "request_header": {"name": "x-foo", "default_value": "none"}},
            {
                "tag": "env",
                "environment": {"name": "PROXYD_TEST_UNSET_VAR", "default_value": "dflt"},
            },
        ],
    }
    egress = {"provider": provider(trace_id_128bit=True, shared_span_context=False)}
    unsampled = {"provider": provider(), "random_sampling": {"value": 0}}
    listeners = [
        _listener("ingress", "INBOUND", ingress, log_path),
        _listener("egress", "OUTBOUND", egress, log_path),
        # Loopback clients are internal here: x-envoy-force-trace counts.
        _listener("unsampled", "INBOUND", unsampled, log_path, INTERNAL),
    ]
    return listeners, [_cluster("up", up_port), _cluster("zipkin", collector_port)]


class _Symbols:
    """Ids → what they are: an id the client sent stays as it is, a new one is named
    by its order of appearance and its length."""

    def __init__(self, sent: set[str]) -> None:
        self.sent = sent
        self.names: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        if not value or value in self.sent:
            return value
        if value not in self.names:
            self.names[value] = f"new{len(self.names) + 1}/{len(value)}"
        return self.names[value]


def _incoming_ids(headers: dict[str, str]) -> set[str]:
    ids = {v for k, v in headers.items() if k.startswith("x-b3-") and k != "x-b3-sampled"}
    if "b3" in headers:
        ids |= set(headers["b3"].split("-"))
    return ids


def _normalize(
    headers: dict[str, str], upstream: dict[str, str], span: dict[str, Any] | None
) -> dict[str, Any]:
    sym = _Symbols(_incoming_ids(headers))
    seen: dict[str, str] = {}
    for name in B3:
        if name in upstream:
            if name == "b3":
                parts = upstream["b3"].split("-")
                seen["b3"] = "-".join(sym(p) if len(p) >= 16 else p for p in parts)
            elif name in ("x-b3-sampled", "x-b3-flags"):
                seen[name] = upstream[name]
            else:
                seen[name] = sym(upstream[name])
    if DECORATOR in upstream:
        seen[DECORATOR] = upstream[DECORATOR]
    rid = upstream.get("x-request-id", "")
    out: dict[str, Any] = {"upstream": seen, "trace_reason": rid[14:15]}
    if span is not None:
        tags = dict(span.get("tags", {}))
        tags["guid:x-request-id"] = tags.get("guid:x-request-id", "")[14:15]
        out["span"] = {
            "traceId": sym(span["traceId"]),
            "id": sym(span["id"]),
            "parentId": sym(span.get("parentId", "")),
            "name": span["name"],
            "kind": span.get("kind"),
            "shared": span.get("shared", False),
            "localEndpoint.serviceName": span["localEndpoint"]["serviceName"],
            "annotations": [a["value"] for a in span.get("annotations", [])],
            "tags": tags,
        }
    return out


def _send(
    cases: list[tuple[str, str, str, dict[str, str], bool]],
    port_of: Callable[[str], int],
    prefix: str = "",
) -> dict[str, str | None]:
    """Each case's request, to listener ``prefix + its listener``; the decorator header
    of each response, by path."""
    ports = {listener: port_of(prefix + listener) for listener in {c[1] for c in cases}}
    decorated: dict[str, str | None] = {}
    for _, listener, path, headers, _ in cases:
        conn = http.client.HTTPConnection("127.0.0.1", ports[listener], timeout=10)
        conn.request(
            "GET", path, headers={"host": "traced.example", "user-agent": "compat", **headers}
        )
        resp = conn.getresponse()
        resp.read()
        decorated[path] = resp.getheader(DECORATOR)
        conn.close()
    return decorated


def _collect(
    recorder: _Recorder, decorated: dict[str, str | None], stats: Callable[[], dict[str, int]]
) -> dict[str, Any]:
    expected = sum(1 for case in CASES if case[4])
    # Envoy posts every 5 spans or every 5 s: wait for all of them (and a little for
    # any that should not be there).
    try:
        wait_for(lambda: len(recorder.spans) >= expected, timeout=12)
    except TimeoutError:
        pass  # compared (and shown) by the tests
    with recorder.lock:
        requests = dict(recorder.requests)
        spans = list(recorder.spans)
    by_path = {s["tags"]["http.url"].split("traced.example", 1)[1]: s for s in spans}
    out = {}
    for name, _, path, headers, _ in CASES:
        out[name] = _normalize(headers, requests.get(path, {}), by_path.get(path))
        out[name]["response " + DECORATOR] = decorated[path]
    out["span count"] = len(spans)
    # The trace ids each request's upstream got or its span has (for %TRACE_ID%).
    traces: dict[str, set[str]] = {}
    for _, _, path, _, _ in CASES:
        got = requests.get(path, {})
        ids = {got.get("x-b3-traceid", ""), got.get("b3", "").split("-")[0]}
        if path in by_path:
            ids.add(by_path[path]["traceId"])
        traces[path] = ids - {""}
    out["traces"] = traces
    # proxyd's workers report stats in batches: wait for them to show the spans sent.
    try:
        wait_for(lambda: stats().get("tracing.zipkin.spans_sent", 0) >= len(spans), timeout=5)
    except TimeoutError:
        pass  # compared (and shown) by the test
    out["stats"] = {
        k: v
        for k, v in stats().items()
        if k in ("tracing.zipkin.spans_sent", "tracing.zipkin.reports_failed")
    }
    return out


def _read_log(side: dict[str, Any], path: Path) -> None:
    """Each case's %TRACE_ID% (as what it is: "-", the trace its upstream or span has,
    or another), its logged trace reason, and whether traceable_filter logged it;
    then the log is emptied for the other proxy."""
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    traces = side.pop("traces")
    logged: dict[str, dict[str, Any]] = {}
    traceable = {line.split()[1] for line in lines if line.startswith("TRACEABLE ")}
    for line in lines:
        if line.startswith("LOG "):
            _, req_path, trace_id, rid = line.split()
            what = (
                "-"
                if trace_id == "-"
                else ("its trace" if trace_id in traces[req_path] else "other")
            )
            logged[req_path] = {
                "TRACE_ID": what,
                "reason": rid[14:15],
                "traceable": req_path in traceable,
            }
    for name, _, req_path, _, _ in CASES:
        side[name]["access log"] = logged.get(req_path)


def _bootstrap(*resources: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> str:
    doc = {
        "node": {"id": "node-a", "cluster": "svc-a"},
        "static_resources": {
            "listeners": [lst for listeners, _ in resources for lst in listeners],
            "clusters": [c for _, clusters in resources for c in clusters],
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


Sides = dict[str, dict[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sides]:
    """One Envoy, then one proxyd, on one bootstrap with the Zipkin listeners, the
    OTLP/HTTP ones (prefix ``o_``) and the OTLP/gRPC ones (prefix ``g_``), each family
    with its own upstream and collector. All the requests go out first, then the spans
    are collected: the exporters' 5 s flush timers run at the same time."""
    zipkin, otel, grpc_up = _Recorder(), _Recorder(), _Recorder()
    collector = _GrpcCollector()
    try:
        workdir: Path = tmp_path_factory.mktemp("tracing")
        log_path = workdir / "access.log"
        text = _bootstrap(
            zipkin_resources(zipkin.server_address[1], zipkin.server_address[1], str(log_path)),
            otel_resources("o_", otel.server_address[1], otel.server_address[1]),
            otel_resources("g_", grpc_up.server_address[1], collector.port, grpc=True),
        )

        def play(port_of: Callable[[str], int], stats: Callable[[], dict[str, int]]) -> Sides:
            for sink in (zipkin, otel, grpc_up, collector):
                sink.clear()
            decorated = _send(CASES, port_of)
            _send(OTEL_CASES, port_of, "o_")
            _send(OTEL_CASES, port_of, "g_")
            return {
                "zipkin": _collect(zipkin, decorated, stats),
                "otel": _otel_collect(otel),
                "otel_grpc": _otel_collect(grpc_up, collector),
            }

        with EnvoyRunner(text) as envoy:
            envoy_side = play(envoy.listener_port, envoy.stats)
        _read_log(envoy_side["zipkin"], log_path)  # written whole once Envoy has stopped
        with ProxydProcess(workdir, text, concurrency=1) as p:
            proxyd_side = play(p.listener_port, p.stats)
        _read_log(proxyd_side["zipkin"], log_path)
        yield {"envoy": envoy_side, "proxyd": proxyd_side}
    finally:
        collector.close()
        for recorder in (zipkin, otel, grpc_up):
            recorder.close()


def _family(sides: Sides, name: str) -> dict[str, dict[str, Any]]:
    return {side: sides[side][name] for side in ("envoy", "proxyd")}


@pytest.fixture(scope="module")
def replies(sides: Sides) -> dict[str, dict[str, Any]]:
    return _family(sides, "zipkin")


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_case_matches_envoy(replies: dict[str, dict[str, Any]], case: str) -> None:
    assert replies["proxyd"][case] == replies["envoy"][case]


def test_stats_match_envoy(replies: dict[str, dict[str, Any]]) -> None:
    assert replies["proxyd"]["stats"] == replies["envoy"]["stats"]
    assert replies["envoy"]["stats"]["tracing.zipkin.spans_sent"] == replies["envoy"]["span count"]


def test_the_access_logs_were_read(replies: dict[str, dict[str, Any]]) -> None:
    for side in ("envoy", "proxyd"):
        assert all(replies[side][c[0]]["access log"] is not None for c in CASES), side
    assert replies["envoy"]["x-envoy-force-trace, internal"]["access log"]["traceable"]


def test_span_count_matches_envoy(replies: dict[str, dict[str, Any]]) -> None:
    assert replies["proxyd"]["span count"] == replies["envoy"]["span count"]
    assert replies["envoy"]["span count"] == sum(1 for c in CASES if c[4])


# -- OpenTelemetry (OTLP/HTTP) --------------------------------------------------------------

OTEL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
TP = "0af7651916cd43dd8448eb211c80319c"

OTEL_CASES: list[tuple[str, str, str, dict[str, str], bool]] = [
    ("new trace", "ingress", "/o/new", {"x-foo": "bar"}, True),
    (
        "joined traceparent with tracestate",
        "ingress",
        "/o/joined",
        {"traceparent": f"00-{TP}-b7ad6b7169203331-01", "tracestate": "k=v"},
        True,
    ),
    (
        "joined, unsampled",
        "ingress",
        "/o/unsampled",
        {"traceparent": f"00-{TP}-b7ad6b7169203332-00"},
        False,
    ),
    # Envoy 1.40 leaves a request with a traceparent it cannot read untraced.
    (
        "invalid traceparent",
        "ingress",
        "/o/bad",
        {"traceparent": "00-xyz-b7ad6b7169203331-01"},
        False,
    ),
    (
        "B3 headers pass untouched",
        "ingress",
        "/o/b3",
        {"x-b3-traceid": "0000000000000001", "x-b3-spanid": "0000000000000002"},
        True,
    ),
    ("decorated route", "ingress", "/dec/o", {}, True),
    ("direct response", "ingress", "/local/o", {}, True),
    ("egress joined", "egress", "/o/e", {"traceparent": f"00-{TP}-b7ad6b7169203333-01"}, True),
]
W3C = ("traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid", DECORATOR)


def otel_resources(
    prefix: str, up_port: int, collector_port: int, grpc: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The OpenTelemetry listeners ``<prefix>ingress`` and ``<prefix>egress``, with their
    own upstream and collector clusters (``<prefix>up``, ``<prefix>otel``)."""
    collector = f"{prefix}otel"

    def tracing(**extra: Any) -> dict[str, Any]:
        service: dict[str, Any] = {
            "http_service": {
                "http_uri": {
                    "uri": f"http://127.0.0.1:{collector_port}/v1/traces",
                    "cluster": collector,
                    "timeout": "1s",
                }
            }
        }
        if grpc:
            service = {"grpc_service": {"envoy_grpc": {"cluster_name": collector}, "timeout": "1s"}}
        return {
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {"@type": OTEL, "service_name": "svc-otel", **service},
            },
            **extra,
        }

    ingress = tracing(
        custom_tags=[{"tag": "hdr", "request_header": {"name": "x-foo", "default_value": "none"}}]
    )
    up = f"{prefix}up"
    listeners = [
        _listener(f"{prefix}ingress", "INBOUND", ingress, up=up),
        _listener(f"{prefix}egress", "OUTBOUND", tracing(), up=up),
    ]
    clusters = [_cluster(up, up_port), _cluster(collector, collector_port)]
    if grpc:
        clusters[1]["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return listeners, clusters


def _otel_normalize(
    headers: dict[str, str], upstream: dict[str, str], span: dict[str, Any] | None
) -> dict[str, Any]:
    sent = set()
    if "traceparent" in headers:
        sent |= set(headers["traceparent"].split("-"))
    sym = _Symbols(sent)
    seen: dict[str, str] = {}
    for name in W3C:
        if name == "traceparent" and name in upstream:
            version, trace, span_id, flags = upstream[name].split("-")
            seen[name] = "-".join((version, sym(trace), sym(span_id), flags))
        elif name in upstream:
            seen[name] = upstream[name]
    out: dict[str, Any] = {
        "upstream": seen,
        "trace_reason": upstream.get("x-request-id", "")[14:15],
    }
    if span is not None:
        attrs = dict(span["attributes"])
        attrs["guid:x-request-id"] = attrs.get("guid:x-request-id", "")[14:15]
        out["span"] = {
            "trace_id": sym(span["trace_id"]),
            "span_id": sym(span["span_id"]),
            "parent_span_id": sym(span.get("parent_span_id", "")),
            "trace_state": span.get("trace_state", ""),
            "name": span["name"],
            "kind": span["kind"],
            "flags": span.get("flags"),
            "service.name": span["resource"].get("service.name"),
            "attributes": attrs,
        }
    return out


def _otel_collect(recorder: _Recorder, collector: Any = None) -> dict[str, Any]:
    """``collector``: where the spans arrive when not at ``recorder`` (the gRPC one)."""
    sink = collector or recorder
    expected = sum(1 for case in OTEL_CASES if case[4])
    try:
        wait_for(lambda: len(sink.spans) >= expected, timeout=12)
    except TimeoutError:
        pass  # compared (and shown) by the tests
    with recorder.lock:
        requests = dict(recorder.requests)
    with sink.lock:
        spans = list(sink.spans)
    by_path = {s["attributes"]["http.url"].split("traced.example", 1)[1]: s for s in spans}
    out: dict[str, Any] = {
        name: _otel_normalize(headers, requests.get(path, {}), by_path.get(path))
        for name, _, path, headers, _ in OTEL_CASES
    }
    out["span count"] = len(spans)
    return out


@pytest.fixture(scope="module")
def otel_replies(sides: Sides) -> dict[str, dict[str, Any]]:
    return _family(sides, "otel")


@pytest.mark.parametrize("case", [c[0] for c in OTEL_CASES])
def test_otel_case_matches_envoy(otel_replies: dict[str, dict[str, Any]], case: str) -> None:
    assert otel_replies["proxyd"][case] == otel_replies["envoy"][case]


def test_otel_span_count_matches_envoy(otel_replies: dict[str, dict[str, Any]]) -> None:
    assert otel_replies["proxyd"]["span count"] == otel_replies["envoy"]["span count"]
    assert otel_replies["envoy"]["span count"] == sum(1 for c in OTEL_CASES if c[4])


# -- OpenTelemetry over gRPC (grpc_service.envoy_grpc) ---------------------------------------


class _GrpcCollector:
    """An OTLP gRPC receiver (grpcio, messages kept as bytes and read by field number)."""

    METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

    def __init__(self) -> None:
        from concurrent import futures

        import grpc  # grpcio comes with xds-protos

        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()

        def export(request: bytes, context: Any) -> bytes:
            with self.lock:
                self.spans.extend(export_request(request))
            return b""  # an empty ExportTraceServiceResponse

        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(export)},
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def clear(self) -> None:
        with self.lock:
            self.spans.clear()

    def close(self) -> None:
        self.server.stop(None)


@pytest.fixture(scope="module")
def otel_grpc_replies(sides: Sides) -> dict[str, dict[str, Any]]:
    return _family(sides, "otel_grpc")


@pytest.mark.parametrize("case", [c[0] for c in OTEL_CASES if c[4]])
def test_otel_grpc_case_matches_envoy(
    otel_grpc_replies: dict[str, dict[str, Any]], case: str
) -> None:
    assert otel_grpc_replies["proxyd"][case] == otel_grpc_replies["envoy"][case]


def test_otel_grpc_span_count_matches_envoy(otel_grpc_replies: dict[str, dict[str, Any]]) -> None:
    assert otel_grpc_replies["proxyd"]["span count"] == otel_grpc_replies["envoy"]["span count"]
    assert otel_grpc_replies["envoy"]["span count"] == sum(1 for c in OTEL_CASES if c[4])
