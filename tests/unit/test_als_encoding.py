"""proxyd.protocol.als: the hand-made StreamAccessLogsMessage bytes, decoded with the
xds-protos messages (which the worker never imports)."""

from __future__ import annotations

from types import SimpleNamespace

from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2

from proxyd.protocol import als
from proxyd.protocol.access_log import LogRecord


def _enum(enum: object) -> dict[str, int]:
    return {v.name: v.number for v in enum.DESCRIPTOR.values}  # type: ignore[attr-defined]


def test_tables_match_the_protos() -> None:
    methods = _enum(base_pb2.RequestMethod)
    assert {k: methods[k] for k in als.METHODS} == als.METHODS
    types = _enum(accesslog_pb2.AccessLogType)
    assert {k: types[k] for k in als.LOG_TYPES} == als.LOG_TYPES
    tls = _enum(accesslog_pb2.TLSProperties.TLSVersion)
    assert {k: tls[k.replace(".", "_")] for k in als.TLS_VERSIONS} == als.TLS_VERSIONS
    fields = {f.name: f.number for f in accesslog_pb2.ResponseFlags.DESCRIPTOR.fields}
    assert fields["unauthorized_details"] == als.UNAUTHORIZED_EXTERNAL
    assert set(als.RESPONSE_FLAGS.values()) <= set(fields.values())
    assert fields["no_route_found"] == als.RESPONSE_FLAGS["NR"]
    assert fields["upstream_retry_limit_exceeded"] == als.RESPONSE_FLAGS["URX"]


def _record() -> LogRecord:
    rec = LogRecord()
    rec.start_time = 1_700_000_000.25
    rec.duration_ms = 1500
    rec.method = "PATCH"
    rec.path = "/a?b=1"
    rec.authority = "example.com"
    rec.scheme = "https"
    rec.protocol = "HTTP/2"
    rec.response_code = 403
    rec.response_flags = "UAEX,URX"
    rec.details = "ext_authz_denied"
    rec.bytes_received = 7
    rec.bytes_sent = 0
    rec.upstream_host = "[::1]:8080"
    rec.upstream_cluster = "svc"
    rec.attempt_count = 2
    rec.route_name = "r1"
    rec.downstream_remote_address = "10.0.0.1:0"
    rec.downstream_direct_remote_address = "127.0.0.1:5555"
    rec.downstream_local_address = "127.0.0.1:80"
    rec.request_id = "id-1"
    rec.user_agent = "ua"
    rec.x_forwarded_for = "10.0.0.1"
    rec.req_headers = {"x-a": "1", "referer": "http://r/"}
    rec.resp_headers = {"x-b": "2"}
    rec.dynamic_metadata = {"jwt": {"sub": "me", "n": 3, "ok": True, "l": [1, None], "m": {}}}
    rec.log_type = "DownstreamEnd"
    peer = {
        "subject": ((("commonName", "client"),),),
        "issuer": ((("commonName", "ca"),),),
        "subjectAltName": (("DNS", "a.test"), ("URI", "spiffe://a"), ("URI", "spiffe://b")),
    }
    local = SimpleNamespace(subject="CN=server", uri_sans=("spiffe://s",), dns_sans=("s.test",))
    rec.tls = SimpleNamespace(
        version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256",
        sni="example.com",
        peer=peer,
        local=local,
    )
    return rec


def test_http_entry_decodes_with_the_protos() -> None:
    entry = accesslog_pb2.HTTPAccessLogEntry.FromString(
        als.http_entry(_record(), ("x-a", "x-none"), ("x-b",), (("t1", "v1"), ("t2", "v2")))
    )
    assert dict(entry.common_properties.custom_tags) == {"t1": "v1", "t2": "v2"}
    c = entry.common_properties
    assert c.start_time.seconds == 1_700_000_000 and c.start_time.nanos == 250_000_000
    assert c.duration.seconds == 1 and c.duration.nanos == 500_000_000
    assert c.upstream_remote_address.socket_address.address == "::1"
    assert c.upstream_remote_address.socket_address.port_value == 8080
    assert c.downstream_remote_address.socket_address.address == "10.0.0.1"
    assert c.downstream_direct_remote_address.socket_address.port_value == 5555
    assert c.upstream_cluster == "svc" and c.route_name == "r1" and c.stream_id == "id-1"
    assert c.upstream_request_attempt_count == 2
    assert c.response_flags.upstream_retry_limit_exceeded
    assert c.response_flags.unauthorized_details.reason == 1
    assert not c.response_flags.no_route_found
    assert c.access_log_type == accesslog_pb2.DownstreamEnd
    jwt = c.metadata.filter_metadata["jwt"]
    assert jwt["sub"] == "me" and jwt["n"] == 3 and jwt["ok"] is True
    assert list(jwt["l"]) == [1, None] and dict(jwt["m"]) == {}
    tls = c.tls_properties
    assert tls.tls_version == accesslog_pb2.TLSProperties.TLSv1_3
    assert tls.tls_cipher_suite.value == 0x1301
    assert tls.tls_sni_hostname == "example.com"
    peer = tls.peer_certificate_properties
    # URI SANs only, as Envoy logs them
    assert [s.uri for s in peer.subject_alt_name] == ["spiffe://a", "spiffe://b"]
    assert peer.subject == "CN=client" and peer.issuer == "CN=ca"
    own = tls.local_certificate_properties
    assert [s.uri for s in own.subject_alt_name] == ["spiffe://s"]
    assert own.subject == "CN=server" and not own.issuer
    assert entry.protocol_version == accesslog_pb2.HTTPAccessLogEntry.HTTP2
    r = entry.request
    assert r.request_method == base_pb2.PATCH and r.scheme == "https"
    assert (r.authority, r.path, r.user_agent, r.referer) == (
        "example.com",
        "/a?b=1",
        "ua",
        "http://r/",
    )
    assert r.forwarded_for == "10.0.0.1" and r.request_id == "id-1" and r.request_body_bytes == 7
    assert dict(r.request_headers) == {"x-a": "1"}
    s = entry.response
    assert s.response_code.value == 403 and s.response_code_details == "ext_authz_denied"
    assert dict(s.response_headers) == {"x-b": "2"} and s.response_body_bytes == 0


def test_stream_message_with_and_without_identifier() -> None:
    rec = _record()
    ident = als.identifier("node-1", "fleet", "my_log")
    first = als_pb2.StreamAccessLogsMessage.FromString(
        als.stream_message(ident, [als.http_entry(rec), als.http_entry(rec)], tcp=False)
    )
    assert first.identifier.node.id == "node-1" and first.identifier.node.cluster == "fleet"
    assert first.identifier.log_name == "my_log"
    assert len(first.http_logs.log_entry) == 2
    rec.bytes_received, rec.bytes_sent = 9, 14
    later = als_pb2.StreamAccessLogsMessage.FromString(
        als.stream_message(None, [als.tcp_entry(rec, "s-1")], tcp=True)
    )
    assert not later.HasField("identifier")
    (tcp,) = later.tcp_logs.log_entry
    assert tcp.connection_properties.received_bytes == 9
    assert tcp.connection_properties.sent_bytes == 14
    assert tcp.common_properties.stream_id == "s-1"


def test_a_plaintext_record_without_a_request() -> None:
    rec = LogRecord()
    rec.method = None
    entry = accesslog_pb2.HTTPAccessLogEntry.FromString(als.http_entry(rec))
    assert not entry.common_properties.HasField("tls_properties")
    assert not entry.response.HasField("response_code")
    assert entry.request.request_method == 0 and entry.request.scheme == ""
