"""HCM tracing: the config (proxyd.config.tracing), B3 propagation, Envoy's sampling
decision kept in x-request-id, and the Zipkin v2 JSON (proxyd.protocol.zipkin)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.epoch import CustomTag
from proxyd.protocol.zipkin import (
    Incoming,
    extract_b3,
    inject_b3,
    new_id,
    span_json,
    trace_decision,
)
from tests.unit.test_config_parse import HCM, base, hcm, load, reject, route

ZIPKIN_T = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig"


def traced(d: dict[str, Any], **zipkin: Any) -> dict[str, Any]:
    tracing = {
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {"@type": ZIPKIN_T, "collector_cluster": "web", **zipkin},
        }
    }
    hcm(d)["tracing"] = tracing
    return tracing


# -- config -------------------------------------------------------------------------------


def test_zipkin_config_defaults() -> None:
    d = base()
    traced(d, collector_endpoint="/api/v2/spans", collector_endpoint_version="HTTP_JSON")
    t = load(d).epoch_template.listeners[0].hcm.tracing
    assert t is not None
    assert (t.collector_cluster, t.collector_endpoint, t.collector_hostname) == (
        "web", "/api/v2/spans", "web",
    )  # fmt: skip
    assert t.shared_span_context and not t.trace_id_128bit
    assert (t.random_sampling, t.client_sampling, t.overall_sampling) == ((10000, 10000),) * 3
    assert t.kind == "SERVER" and t.max_path_tag_length == 256


def test_no_tracing_is_none() -> None:
    assert load(base()).epoch_template.listeners[0].hcm.tracing is None


def test_sampling_tags_direction_and_decorator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACE_TEST_ENV", "from-env")
    d = base()
    d["static_resources"]["listeners"][0]["traffic_direction"] = "OUTBOUND"
    tracing = traced(d, trace_id_128bit=True, shared_span_context=False, collector_hostname="zk")
    tracing["random_sampling"] = {"value": 12.5}
    tracing["overall_sampling"] = {"value": 50}
    tracing["max_path_tag_length"] = 10
    tracing["custom_tags"] = [
        {"tag": "a", "literal": {"value": "1"}},
        {"tag": "b", "request_header": {"name": "X-Foo", "default_value": "none"}},
        {"tag": "c", "environment": {"name": "TRACE_TEST_ENV"}},
        {"tag": "d", "environment": {"name": "TRACE_TEST_UNSET", "default_value": "dflt"}},
    ]
    route(d)["decorator"] = {"operation": "op1"}
    lst = load(d).epoch_template.listeners[0]
    t = lst.hcm.tracing
    assert t is not None
    assert t.kind == "CLIENT" and t.trace_id_128bit and not t.shared_span_context
    assert t.collector_hostname == "zk"
    assert (t.random_sampling, t.overall_sampling, t.client_sampling) == (
        (1250, 10000), (5000, 10000), (10000, 10000),
    )  # fmt: skip
    assert t.max_path_tag_length == 10
    assert t.custom_tags == (
        CustomTag("a", "literal", "1"),
        CustomTag("b", "request_header", "x-foo", "none"),
        CustomTag("c", "literal", "from-env"),
        CustomTag("d", "literal", "dflt"),
    )
    assert lst.hcm.route_config.virtual_hosts[0].routes[0].decorator_operation == "op1"


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("verbose", True, "tracing.verbose"),
        ("spawn_upstream_span", True, "tracing.spawn_upstream_span"),
        ("operation", "%REQ(x)%", "tracing.operation"),
    ],
)
def test_refused_tracing_fields(field: str, value: Any, where: str) -> None:
    d = base()
    traced(d)[field] = value
    assert reject(d).path == f"{HCM}.{where}"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("collector_endpoint_version", "HTTP_PROTO"),
        ("collector_endpoint_version", "GRPC"),
        ("trace_context_option", "USE_B3_WITH_W3C_PROPAGATION"),
        ("split_spans_for_request", True),
        ("collector_cluster", "nope"),
    ],
)
def test_refused_zipkin_fields(field: str, value: Any) -> None:
    d = base()
    traced(d, **{field: value})
    assert reject(d).path == f"{HCM}.tracing.provider.typed_config.{field}"


def test_router_start_child_span_is_refused_with_tracing() -> None:
    d = base()
    traced(d)
    hcm(d)["http_filters"][-1]["typed_config"]["start_child_span"] = True
    assert reject(d).path == f"{HCM}.http_filters[0].typed_config.start_child_span"
    del hcm(d)["tracing"]
    load(d)  # without tracing it changes nothing, as in Envoy


def test_decorator_propagate() -> None:
    d = base()
    route(d)["decorator"] = {"operation": "op", "propagate": False}
    r = load(d).epoch_template.listeners[0].hcm.route_config.virtual_hosts[0].routes[0]
    assert (r.decorator_operation, r.decorator_propagate) == ("op", False)


def test_route_tracing_overrides() -> None:
    d = base()
    route(d)["tracing"] = {
        "random_sampling": {"numerator": 5, "denominator": "HUNDRED"},
        "overall_sampling": {"numerator": 7, "denominator": "MILLION"},
        "custom_tags": [{"tag": "r", "literal": {"value": "x"}}],
    }
    rt = load(d).epoch_template.listeners[0].hcm.route_config.virtual_hosts[0].routes[0].tracing
    assert rt is not None
    assert (rt.random_sampling, rt.overall_sampling, rt.client_sampling) == (
        (5, 100), (7, 1_000_000), None,
    )  # fmt: skip
    assert rt.custom_tags == (CustomTag("r", "literal", "x"),)
    route(d)["tracing"] = {"operation": "op"}
    assert reject(d).path.endswith("routes[0].tracing.operation")


def test_fractions_use_their_denominator() -> None:
    # 100 % 100 = 0 < 1: sampled at 1 % over HUNDRED, not at 1 over 10,000.
    assert trace_decision(RID, False, False, (1, 100), (10000, 10000), (10000, 10000), 0)[1]
    assert not trace_decision(RID, False, False, (1, 10000), (10000, 10000), (10000, 10000), 0)[1]


def test_metadata_custom_tag_is_refused() -> None:
    d = base()
    traced(d)["custom_tags"] = [
        {
            "tag": "m",
            "metadata": {
                "kind": {"request": {}},
                "metadata_key": {"key": "k", "path": [{"key": "p"}]},
            },
        }
    ]
    assert "custom_tags[0]" in reject(d).path


def test_other_tracers_are_refused_by_name() -> None:
    d = base()
    hcm(d)["tracing"] = {
        "provider": {
            "name": "envoy.tracers.datadog",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.DatadogConfig",
                "collector_cluster": "web",
                "service_name": "x",
            },
        }
    }
    err = reject(d)
    assert "DatadogConfig" in str(err)


# -- B3 -----------------------------------------------------------------------------------


def test_extract_multi_headers() -> None:
    h = {
        "x-b3-traceid": "0000000000000001",
        "x-b3-spanid": "0000000000000002",
        "x-b3-parentspanid": "0000000000000003",
        "x-b3-sampled": "0",
    }
    assert extract_b3(h) == Incoming(
        "0000000000000001", "0000000000000002", "0000000000000003", False, False
    )
    assert extract_b3({**h, "x-b3-flags": "1"}).sampled is True  # type: ignore[union-attr]
    del h["x-b3-sampled"]
    assert extract_b3(h).sampled is None  # type: ignore[union-attr]


def test_extract_single_header() -> None:
    v = "00000000000000060000000000000007-0000000000000008-1-0000000000000009"
    assert extract_b3({"b3": v}) == Incoming(
        "00000000000000060000000000000007", "0000000000000008", "0000000000000009", True, True
    )
    assert extract_b3({"b3": "0"}) == Incoming("", "", "", False, True)
    assert extract_b3({"b3": "0000000000000001-0000000000000002"}).sampled is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-b3-traceid": "0000000000000001"},  # no span id: a new trace, as Envoy starts
        {"x-b3-traceid": "xyz", "x-b3-spanid": "0000000000000002"},
        {"x-b3-traceid": "00000000000000001", "x-b3-spanid": "0000000000000002"},
        {"b3": "not-a-context"},
    ],
)
def test_extract_gives_up_on_incomplete_contexts(headers: dict[str, str]) -> None:
    assert extract_b3(headers) is None


@given(
    st.dictionaries(
        st.sampled_from(
            ["x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3"]
        ),
        st.text(),
    )
)
def test_extract_never_raises(headers: dict[str, str]) -> None:
    inc = extract_b3(headers)
    if inc is not None and inc.trace_id:
        assert len(inc.trace_id) in (16, 32) and len(inc.span_id) == 16


def test_inject_round_trips() -> None:
    lines = inject_b3("0000000000000001", "0000000000000002", "0000000000000003", True, False)
    assert lines == (
        b"x-b3-traceid: 0000000000000001\r\nx-b3-spanid: 0000000000000002\r\n"
        b"x-b3-parentspanid: 0000000000000003\r\nx-b3-sampled: 1\r\n"
    )
    assert inject_b3("0000000000000001", "0000000000000002", "", False, True) == (
        b"b3: 0000000000000001-0000000000000002-0\r\n"
    )
    parsed = dict(
        line.split(": ", 1)
        for line in inject_b3("a" * 32, "b" * 16, "", True, False).decode().split("\r\n")
        if line
    )
    assert extract_b3(parsed) == Incoming("a" * 32, "b" * 16, "", True, False)


def test_new_ids_are_16_hex_digits() -> None:
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 16 and int(i, 16) for i in ids)


# -- sampling -----------------------------------------------------------------------------

RID = "00000064-1111-4222-8333-444444444444"  # first 8 hex digits: 100 → 100 % 10000


def test_random_sampling_sets_the_sampled_reason() -> None:
    assert trace_decision(RID, False, False, (10000, 10000), (10000, 10000), (10000, 10000), 0) == (
        "00000064-1111-9222-8333-444444444444", True,
    )  # fmt: skip
    # 100 % 10000 = 100: sampled when random_sampling > 100 (over 10,000).
    assert (
        trace_decision(RID, False, False, (101, 10000), (10000, 10000), (10000, 10000), 0)[1]
        is True
    )
    assert trace_decision(RID, False, False, (100, 10000), (10000, 10000), (10000, 10000), 0) == (
        RID,
        False,
    )


def test_overall_sampling_undoes_any_reason() -> None:
    sampled = "00000064-1111-9222-8333-444444444444"
    assert trace_decision(
        sampled, False, False, (10000, 10000), (10000, 10000), (100, 10000), 0
    ) == (RID, False)


def test_forced_reasons() -> None:
    client = trace_decision(RID, True, False, (0, 10000), (10000, 10000), (10000, 10000), 5)
    assert client == ("00000064-1111-b222-8333-444444444444", True)
    assert trace_decision(RID, True, False, (0, 10000), (0, 10000), (10000, 10000), 5) == (
        RID,
        False,
    )  # client_sampling 0
    forced = trace_decision(RID, False, True, (0, 10000), (10000, 10000), (10000, 10000), 0)
    assert forced == ("00000064-1111-a222-8333-444444444444", True)


def test_an_id_already_traced_keeps_its_reason() -> None:
    forced = "00000064-1111-a222-8333-444444444444"
    assert trace_decision(forced, False, False, (0, 10000), (10000, 10000), (10000, 10000), 0) == (
        forced,
        True,
    )


@pytest.mark.parametrize("rid", ["", "abc", "zzzzzzzz-1111-4222-8333-444444444444"])
def test_a_missing_or_corrupt_id_is_not_traced_and_left_alone(rid: str) -> None:
    assert trace_decision(rid, False, False, (10000, 10000), (10000, 10000), (10000, 10000), 0) == (
        rid,
        False,
    )


# -- Zipkin JSON --------------------------------------------------------------------------


def test_span_json_shape() -> None:
    record = (
        "t" * 16, "s" * 16, "p" * 16, "op", "SERVER", True, 1_000, 250, [("http.method", "GET")],
    )  # fmt: skip
    assert span_json(record, "svc", "10.0.0.1") == {
        "traceId": "t" * 16,
        "id": "s" * 16,
        "parentId": "p" * 16,
        "name": "op",
        "kind": "SERVER",
        "timestamp": 1_000,
        "duration": 250,
        "localEndpoint": {"serviceName": "svc", "port": 0, "ipv4": "10.0.0.1"},
        "annotations": [{"timestamp": 1_250, "value": "ss"}],
        "tags": {"http.method": "GET"},
        "shared": True,
    }
    client = span_json(("t" * 16, "s" * 16, "", "op", "CLIENT", False, 1, 2, []), "svc", "::1")
    assert "parentId" not in client and "shared" not in client
    assert client["localEndpoint"]["ipv6"] == "::1"
    assert client["annotations"][0]["value"] == "cr"
