"""The ext_authz filter: its config through proxyd.config.compile_bootstrap (what it
compiles to, what it refuses by name), the hand-encoded CheckRequest read back with
xds-protos' own message classes, CheckResponses made with them read by the hand
decoder, and the filter's decisions driven through an in-memory stream with an
in-memory authorization service (the real servers are in the compat tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.json_format import MessageToDict

from proxyd.filters.api import (
    CONTINUE,
    STOP,
    STOP_AND_BUFFER,
    CallFailed,
    EpochFacts,
    HttpAnswer,
    LocalReply,
)
from proxyd.filters.ext_authz.filter import Factory
from proxyd.protocol import ext_authz_grpc as pb
from proxyd.protocol.runtime import Snapshot
from proxyd.worker.stats import StatsStore
from tests.unit.filter_stream import Head, MemoryStream
from tests.unit.test_filter_config import base, compiled, hcm, overrides, reject, route

EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]"
HTTP_SERVICE = {"server_uri": {"uri": "http://authz", "cluster": "c", "timeout": "0.25s"}}
GRPC_SERVICE = {"envoy_grpc": {"cluster_name": "c"}}


def with_filter(**fields: Any) -> dict[str, Any]:
    d = base()
    hcm(d)["http_filters"][0] = {"name": "authz", "typed_config": {"@type": EXT_AUTHZ, **fields}}
    return d


# -- config ---------------------------------------------------------------------------------


def test_an_http_service_compiles_to_plain_data() -> None:
    d = with_filter(
        http_service={
            **HTTP_SERVICE,
            "path_prefix": "/check",
            "authorization_request": {
                "allowed_headers": {"patterns": [{"exact": "x-a"}]},
                "headers_to_add": [{"key": "X-Added", "value": "v"}],
            },
            "authorization_response": {
                "allowed_upstream_headers": {"patterns": [{"prefix": "x-u"}]},
                "allowed_client_headers": {"patterns": [{"exact": "x-c"}]},
            },
        },
        failure_mode_allow=True,
        status_on_error={"code": "ServiceUnavailable"},
        with_request_body={"max_request_bytes": 10, "allow_partial_message": True},
        filter_enabled={"runtime_key": "authz.on", "default_value": {"numerator": 5}},
        stat_prefix="front",
    )
    config = compiled(d).http_filters[0].config
    assert config["service"] == "http"
    assert (config["cluster"], config["timeout_ms"], config["path_prefix"]) == ("c", 250, "/check")
    assert config["allowed_headers"] == [["exact", "x-a", False]]
    assert config["headers_to_add"] == [["x-added", "v"]]
    assert config["upstream"] == [["prefix", "x-u", False]]
    assert config["client"] == [["exact", "x-c", False]]
    assert config["upstream_append"] == [] and config["client_on_success"] == []
    assert config["failure_mode_allow"] and not config["failure_mode_allow_header_add"]
    assert config["status_on_error"] == 503
    assert config["body"] == [10, True, False]
    assert config["enabled"] == ["authz.on", 5, 100]
    assert config["stat_prefix"] == "front"
    assert config["charge_cluster"] is True


def test_a_grpc_service_compiles_with_envoys_defaults() -> None:
    config = compiled(with_filter(grpc_service=GRPC_SERVICE)).http_filters[0].config
    assert config["service"] == "grpc"
    assert config["authority"] == "c"
    assert config["timeout_ms"] == 200  # Envoy's default for the gRPC check
    assert config["status_on_error"] == 403
    assert config["allowed_headers"] is None and config["client"] is None


def test_per_route_settings_keep_every_level() -> None:
    d = with_filter(grpc_service=GRPC_SERVICE)
    route(d, 0)["typed_per_filter_config"] = {
        "authz": {"@type": PER_ROUTE, "check_settings": {"context_extensions": {"k": "v"}}}
    }
    route(d, 1)["typed_per_filter_config"] = {"authz": {"@type": PER_ROUTE, "disabled": True}}
    assert overrides(d, 0)["authz"].config == {
        "levels": [{"disabled": False, "context_extensions": {"k": "v"}}]
    }
    assert overrides(d, 1)["authz"].config == {
        "levels": [{"disabled": True, "context_extensions": {}}]
    }


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"grpc_service": GRPC_SERVICE, "clear_route_cache": True}, "clear_route_cache"),
        ({"grpc_service": GRPC_SERVICE, "encode_raw_headers": True}, "encode_raw_headers"),
        ({"grpc_service": GRPC_SERVICE, "metadata_context_namespaces": ["a"]}, "metadata_context_namespaces"),
        ({"grpc_service": GRPC_SERVICE, "disallowed_headers": {"patterns": [{"exact": "a"}]}}, "disallowed_headers"),
        ({"grpc_service": {"google_grpc": {"target_uri": "x", "stat_prefix": "s"}}}, "google_grpc"),
        ({"http_service": {**HTTP_SERVICE, "retry_policy": {"num_retries": 1}}}, "retry_policy"),
        ({"http_service": {**HTTP_SERVICE, "authorization_response": {
            "dynamic_metadata_from_headers": {"patterns": [{"exact": "a"}]}}}},
         "dynamic_metadata_from_headers"),
    ],
)  # fmt: skip
def test_what_proxyd_does_not_implement_is_refused_by_name(
    fields: dict[str, Any], where: str
) -> None:
    err = reject(with_filter(**fields))
    assert "not supported by proxyd" in str(err)
    assert where in str(err)


def test_transport_api_version_v2_is_refused() -> None:
    err = reject(with_filter(grpc_service=GRPC_SERVICE, transport_api_version="V2"))
    assert err.path.endswith("transport_api_version")
    assert "not supported by proxyd" in str(err)


def test_allowed_headers_in_two_places_are_refused_as_envoy_does() -> None:
    err = reject(
        with_filter(
            http_service={
                **HTTP_SERVICE,
                "authorization_request": {"allowed_headers": {"patterns": [{"exact": "a"}]}},
            },
            allowed_headers={"patterns": [{"exact": "b"}]},
        )
    )
    assert "duplicate configuration for allowed_headers" in str(err)


def test_the_top_level_allowed_headers_serve_an_http_service() -> None:
    d = with_filter(http_service=HTTP_SERVICE, allowed_headers={"patterns": [{"exact": "b"}]})
    assert compiled(d).http_filters[0].config["allowed_headers"] == [["exact", "b", False]]


def test_an_http_service_needs_a_timeout() -> None:
    err = reject(with_filter(http_service={"server_uri": {"uri": "http://a", "cluster": "c"}}))
    assert err.path.endswith("server_uri.timeout")


def test_a_per_route_service_override_is_refused() -> None:
    d = with_filter(grpc_service=GRPC_SERVICE)
    route(d, 0)["typed_per_filter_config"] = {
        "authz": {
            "@type": PER_ROUTE,
            "check_settings": {"with_request_body": {"max_request_bytes": 1}},
        }
    }
    err = reject(d)
    assert "not supported by proxyd" in str(err) and "with_request_body" in str(err)


# -- the gRPC messages ----------------------------------------------------------------------


def test_the_check_request_reads_back_with_xds_protos() -> None:
    http = pb.HttpAttributes(
        id="42", method="POST", headers=[(":path", "/a?b"), ("x-r", "1"), ("x-r", "2")],
        path="/a?b", host="h.example", scheme="http", protocol="HTTP/1.1", size=3,
        body=b"abc",
    )  # fmt: skip
    data = pb.check_request(
        ("10.0.0.1", 5555), ("127.0.0.1", 80), http, 1_700_000_000_123_456_000, {"k": "v"}
    )
    msg = external_auth_pb2.CheckRequest.FromString(data)
    a = msg.attributes
    assert a.source.address.socket_address.address == "10.0.0.1"
    assert a.source.address.socket_address.port_value == 5555
    assert a.destination.address.socket_address.port_value == 80
    assert a.request.time.seconds == 1_700_000_000 and a.request.time.nanos == 123_456_000
    h = a.request.http
    assert (h.id, h.method, h.path, h.host, h.scheme, h.protocol, h.size, h.body) == (
        "42", "POST", "/a?b", "h.example", "http", "HTTP/1.1", 3, "abc"
    )  # fmt: skip
    assert dict(h.headers) == {":path": "/a?b", "x-r": "1,2"}
    assert dict(a.context_extensions) == {"k": "v"}
    assert a.HasField("metadata_context") and a.HasField("route_metadata_context")
    # Nothing unknown or repeated: xds-protos writes it again in as many bytes.
    assert msg.ByteSize() == len(data)


def test_raw_body_and_a_negative_size_encode_as_protobuf_does() -> None:
    http = pb.HttpAttributes(method="GET", size=-1, body=b"\x00\xff", raw_body=True)
    msg = external_auth_pb2.CheckRequest.FromString(pb.check_request(None, None, http, 0))
    assert msg.attributes.request.http.size == -1
    assert msg.attributes.request.http.raw_body == b"\x00\xff"
    assert not msg.attributes.HasField("source")


def test_an_ok_response_decodes() -> None:
    r = external_auth_pb2.CheckResponse()
    r.ok_response.headers.add(header={"key": "x-set", "value": "1"})
    r.ok_response.headers.add(header={"key": "x-app", "value": "2"}, append={"value": True})
    r.ok_response.headers_to_remove.append("x-gone")
    r.ok_response.response_headers_to_add.add(header={"key": "x-client", "value": "3"})
    got = pb.check_response(r.SerializeToString())
    assert got.code == 0 and not got.denied
    assert [(h.key, h.value, h.append) for h in got.headers] == [
        ("x-set", "1", None), ("x-app", "2", True)
    ]  # fmt: skip
    assert got.headers_to_remove == ["x-gone"]
    assert [(h.key, h.value) for h in got.response_headers_to_add] == [("x-client", "3")]


def test_a_denied_response_decodes() -> None:
    r = external_auth_pb2.CheckResponse()
    r.status.code = 7
    r.denied_response.status.code = 401
    r.denied_response.headers.add(header={"key": "www-authenticate", "value": "Bearer"})
    r.denied_response.body = "no"
    got = pb.check_response(r.SerializeToString())
    assert (got.code, got.status, got.body, got.denied) == (7, 401, "no", True)
    assert [(h.key, h.value) for h in got.denied_headers] == [("www-authenticate", "Bearer")]


@pytest.mark.parametrize("data", [b"\x0a\x05\x08", b"\x0b", b"\x08\xff", b"\x00\x01"])
def test_malformed_responses_raise_decode_error(data: bytes) -> None:
    with pytest.raises(pb.DecodeError):
        pb.check_response(data)


# -- the filter -----------------------------------------------------------------------------


@dataclass
class Stream(MemoryStream):
    lines: list[tuple[str, str]] = field(default_factory=list)

    def request_header_lines(self) -> list[tuple[str, str]]:
        return list(self.lines)

    def downstream_peer_port(self) -> int:
        return 40000


@dataclass
class Service:
    """An in-memory authorization service: answers what the test gave it."""

    answer: HttpAnswer | None = None
    grpc_answer: bytes = b""
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)

    async def http_call(
        self, cluster: str, head: bytes, body: bytes, timeout_s: float
    ) -> HttpAnswer:
        self.heads.append(head)
        self.bodies.append(body)
        if self.answer is None:
            raise CallFailed("down")
        return self.answer

    async def grpc_call(self, cluster: str, authority: str, method: str, message: bytes,
                        timeout_s: float, metadata: tuple[tuple[str, str], ...] = ()) -> tuple[int, bytes]:  # fmt: skip
        self.messages.append(message)
        if not self.grpc_answer:
            raise CallFailed("down")
        return 0, self.grpc_answer


def factory(service: Service, per_route: Any = None, **fields: Any) -> tuple[Factory, StatsStore]:
    if "grpc_service" not in fields:
        fields = {"http_service": HTTP_SERVICE} | fields
    d = with_filter(**fields)
    config = compiled(d).http_filters[0].config
    store = StatsStore()
    f = Factory("authz", config, per_route, store.named("http.s."), Snapshot(),
                facts=EpochFacts(client=service))  # fmt: skip
    return f, store


def counters(store: StatsStore) -> dict[str, int]:
    """Every counter the filter touched (the worker's report: deltas since the last)."""
    return store.report()[0]


def test_an_allowed_request_goes_on_with_the_services_headers() -> None:
    service = Service(HttpAnswer(200, (("x-u", "1"), ("x-app", "2"), ("x-c", "3")), b""))
    f, store = factory(
        service,
        http_service={**HTTP_SERVICE, "path_prefix": "/check", "authorization_response": {
            "allowed_upstream_headers": {"patterns": [{"exact": "x-u"}]},
            "allowed_upstream_headers_to_append": {"patterns": [{"exact": "x-app"}]},
            "allowed_client_headers_on_success": {"patterns": [{"exact": "x-c"}]}}},
    )  # fmt: skip
    stream = Stream(Head("GET", "/p?q", "h.example"), lines=[("authorization", "t"), ("x-no", "1")])
    filt = f.create()
    assert trio.run(filt.on_request_headers, stream, True) is CONTINUE
    head = service.heads[0].decode()
    assert head.startswith("GET /check/p?q HTTP/1.1\r\nhost: h.example\r\nauthorization: t\r\n")
    assert "x-no" not in head and "content-length: 0\r\n" in head
    assert stream.request_headers == {"x-u": "1"}
    assert stream.added_request_headers == [("x-app", "2")]
    trio.run(filt.on_response_headers, stream, None, True)
    assert stream.response_headers == {"x-c": "3"}
    c = counters(store)
    assert c["http.s.ext_authz.ok"] == 1 and c["cluster.svc.ext_authz.ok"] == 1
    assert c["http.s.ext_authz.denied"] == 0  # shown from the start, as Envoy does


def test_a_denied_request_gets_the_services_answer() -> None:
    service = Service(HttpAnswer(401, (("www-authenticate", "B"), ("x-other", "o")), b"no"))
    f, store = factory(service)
    reply = trio.run(f.create().on_request_headers, Stream(), True)
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.body, reply.flag) == (401, "no", "UAEX")
    assert reply.headers == (("www-authenticate", "B"), ("x-other", "o"))
    assert counters(store)["http.s.ext_authz.denied"] == 1


def test_an_error_answers_status_on_error_or_passes_with_failure_mode_allow() -> None:
    f, _ = factory(Service(), status_on_error={"code": "BadGateway"})
    reply = trio.run(f.create().on_request_headers, Stream(), True)
    assert isinstance(reply, LocalReply) and reply.status == 502
    f, store = factory(Service(), failure_mode_allow=True, failure_mode_allow_header_add=True)
    stream = Stream()
    assert trio.run(f.create().on_request_headers, stream, True) is CONTINUE
    assert stream.request_headers == {"x-envoy-auth-failure-mode-allowed": "true"}
    c = counters(store)
    assert c["http.s.ext_authz.error"] == 1 and c["http.s.ext_authz.failure_mode_allowed"] == 1


def test_a_5xx_from_the_http_service_is_an_error() -> None:
    f, store = factory(Service(HttpAnswer(503, (), b"down")))
    reply = trio.run(f.create().on_request_headers, Stream(), True)
    assert isinstance(reply, LocalReply) and (reply.status, reply.body) == (403, "")
    assert counters(store)["http.s.ext_authz.error"] == 1


def test_the_body_is_buffered_for_the_check() -> None:
    service = Service(HttpAnswer(200, (), b""))
    f, _ = factory(service, with_request_body={"max_request_bytes": 8})
    stream = Stream(Head("POST", "/", content_length=6))
    filt = f.create()

    async def run() -> list[Any]:
        return [
            await filt.on_request_headers(stream, False),
            await filt.on_request_data(stream, bytearray(b"abc"), False),
            await filt.on_request_data(stream, bytearray(b"def"), True),
        ]

    assert trio.run(run) == [STOP, STOP_AND_BUFFER, CONTINUE]
    assert stream.buffer_limit == 8  # beyond it the chain answers 413, as Envoy does
    assert service.bodies == [b"abcdef"]
    assert b"content-length: 6\r\nx-envoy-auth-partial-body: false\r\n" in service.heads[0]


def test_a_partial_body_is_checked_once_max_request_bytes_arrived() -> None:
    service = Service(HttpAnswer(200, (), b""))
    f, _ = factory(
        service, with_request_body={"max_request_bytes": 4, "allow_partial_message": True}
    )
    stream = Stream(Head("POST", "/", content_length=10))
    filt = f.create()

    async def run() -> list[Any]:
        return [
            await filt.on_request_headers(stream, False),
            await filt.on_request_data(stream, bytearray(b"abcdef"), False),
            await filt.on_request_data(stream, bytearray(b"ghij"), True),
        ]

    assert trio.run(run) == [STOP, CONTINUE, CONTINUE]
    assert stream.buffer_limit == 0
    assert service.bodies == [b"abcd"]
    assert b"x-envoy-auth-partial-body: true\r\n" in service.heads[0]


def test_filter_enabled_at_zero_checks_nothing() -> None:
    service = Service(HttpAnswer(403, (), b""))
    f, store = factory(service, filter_enabled={"default_value": {"numerator": 0}})
    assert trio.run(f.create().on_request_headers, Stream(), True) is CONTINUE
    assert service.heads == [] and counters(store)["http.s.ext_authz.disabled"] == 1


def test_a_route_that_disables_the_filter_has_none() -> None:
    per_route = {"levels": [{"disabled": False, "context_extensions": {}},
                            {"disabled": True, "context_extensions": {}}]}  # fmt: skip
    f, _ = factory(Service(), per_route)
    assert not f.decodes and not f.encodes


def test_the_grpc_check_carries_the_request_and_the_merged_extensions() -> None:
    ok = external_auth_pb2.CheckResponse()
    ok.ok_response.headers.add(header={"key": "x-app", "value": "b"}, append={"value": True})
    ok.ok_response.headers_to_remove.append("x-gone")
    service = Service(grpc_answer=ok.SerializeToString())
    per_route = {"levels": [{"disabled": False, "context_extensions": {"a": "vh", "b": "vh"}},
                            {"disabled": False, "context_extensions": {"a": "route"}}]}  # fmt: skip
    f, _ = factory(service, per_route, grpc_service=GRPC_SERVICE)
    stream = Stream(Head("GET", "/x?y", "h"), lines=[("x-app", "a"), ("x-gone", "1")])
    assert trio.run(f.create().on_request_headers, stream, True) is CONTINUE
    msg = MessageToDict(external_auth_pb2.CheckRequest.FromString(service.messages[0]))
    attrs = msg["attributes"]
    assert attrs["contextExtensions"] == {"a": "route", "b": "vh"}
    http = attrs["request"]["http"]
    assert (http["method"], http["path"], http["host"], http["scheme"]) == (
        "GET",
        "/x?y",
        "h",
        "http",
    )
    assert http["headers"] == {":authority": "h", ":path": "/x?y", ":method": "GET",
                               ":scheme": "http", "x-app": "a", "x-gone": "1",
                               "x-forwarded-proto": "http"}  # fmt: skip
    assert attrs["source"]["address"]["socketAddress"] == {
        "address": "127.0.0.1",
        "portValue": 40000,
    }
    assert stream.request_headers == {"x-app": "a,b"}  # appended in the same line, as Envoy
    assert stream.removed_headers == ["x-gone"]


def test_headers_that_cannot_go_on_the_wire_are_dropped() -> None:
    ok = external_auth_pb2.CheckResponse()
    ok.ok_response.headers.add(header={"key": "x-evil", "value": "a\r\nx-injected: 1"})
    ok.ok_response.headers.add(header={"key": "bad name", "value": "v"})
    ok.ok_response.headers.add(header={"key": "x-wide", "value": "\u2603"})
    ok.ok_response.headers.add(header={"key": "X-Good", "value": "v"})
    service = Service(grpc_answer=ok.SerializeToString())
    f, _ = factory(service, grpc_service=GRPC_SERVICE)
    stream = Stream()
    assert trio.run(f.create().on_request_headers, stream, True) is CONTINUE
    assert stream.request_headers == {"x-good": "v"}


def test_a_denial_with_a_status_out_of_range_answers_403() -> None:
    denied = external_auth_pb2.CheckResponse()
    denied.status.code = 7
    denied.denied_response.status.code = 99
    service = Service(grpc_answer=denied.SerializeToString())
    f, store = factory(service, grpc_service=GRPC_SERVICE)
    reply = trio.run(f.create().on_request_headers, Stream(), True)
    assert isinstance(reply, LocalReply) and reply.status == 403 and reply.flag == "UAEX"
    assert counters(store)["http.s.ext_authz.denied"] == 1


def test_a_malformed_check_response_is_an_error() -> None:
    f, store = factory(Service(grpc_answer=b"\x0a\x7f"), grpc_service=GRPC_SERVICE)
    reply = trio.run(f.create().on_request_headers, Stream(), True)
    assert isinstance(reply, LocalReply) and reply.status == 403
    assert counters(store)["http.s.ext_authz.error"] == 1


def test_a_request_no_route_matched_is_not_checked() -> None:
    service = Service(HttpAnswer(403, (), b""))
    f, store = factory(service)
    assert trio.run(f.create().on_request_headers, Stream(route_name=None), True) is CONTINUE
    assert service.heads == [] and counters(store)["http.s.ext_authz.denied"] == 0


def test_charge_cluster_response_stats_false_keeps_the_cluster_out() -> None:
    f, store = factory(Service(HttpAnswer(200, (), b"")), charge_cluster_response_stats=False)
    trio.run(f.create().on_request_headers, Stream(), True)
    c = counters(store)
    assert c["http.s.ext_authz.ok"] == 1 and "cluster.svc.ext_authz.ok" not in c


@pytest.mark.parametrize(
    ("header", "where"),
    [
        ({"key": "x-a", "value": "a\r\nx-b: 1"}, "value"),
        ({"key": "bad name", "value": "v"}, "key"),
        ({"key": "content-length", "value": "1"}, "key"),
    ],
)
def test_headers_to_add_must_be_writable(header: dict[str, str], where: str) -> None:
    err = reject(
        with_filter(
            http_service={**HTTP_SERVICE, "authorization_request": {"headers_to_add": [header]}}
        )
    )
    assert err.path.endswith(f"headers_to_add[0].{where}")
