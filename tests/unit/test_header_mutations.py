"""Route header mutations without sockets: value parsing, the order of levels, each
append_action, keep_empty_value, joined inline headers, protected lines, and the
compile from a route configuration (checked against Envoy by
tests/compat/test_header_mutations_compat.py)."""

from __future__ import annotations

import pytest

from proxyd.epoch import HeaderAdd, HeaderMutations
from proxyd.protocol.access_log import LogRecord
from proxyd.protocol.header_mutations import MutationPlan, parse_value, split_head
from proxyd.protocol.header_values import ValueFormat
from proxyd.protocol.http1 import ResponseHead

HEAD = b"GET /p HTTP/1.1\r\nhost: x\r\nx-a: client\r\nuser-agent: ua\r\n\r\n"
FACTS = LogRecord(
    downstream_remote_address="10.0.0.1:5555", downstream_local_address="127.0.0.1:80"
)


def headers(head: bytes) -> list[tuple[bytes, bytes]]:
    return [(n, line[len(n) + 2 :]) for n, line in split_head(head)[1]]


def plan(*levels: HeaderMutations) -> MutationPlan:
    return MutationPlan(levels)


def req(*adds: HeaderAdd, remove: tuple[str, ...] = ()) -> HeaderMutations:
    return HeaderMutations(request_add=adds, request_remove=remove)


def test_parse_value_literals_operators_and_escapes() -> None:
    assert parse_value("plain") == b"plain"
    assert parse_value("100%% sure") == b"100% sure"
    v = parse_value("a-%PROTOCOL%-b")
    assert isinstance(v, ValueFormat) and v(LogRecord()) == "a-HTTP/1.1-b"
    assert parse_value("") == b""


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("50%", "Couldn't find valid command at position 2"),
        ("%PROTOCOL", "Couldn't find valid command at position 0"),
        ("%FOO%", "Not supported field in StreamInfo: FOO"),
        ("%CEL(x)%", "%CEL% is not supported by proxyd"),
        ("%REQ()%", "REQ requires parameters"),
        ("%REQ(x)%", None),
        ("%PROTOCOL(x)%", "PROTOCOL does not take any parameters or length"),
        ("%HOSTNAME%:3", None),
    ],
)
def test_parse_value_refusals(value: str, reason: str | None) -> None:
    if reason is None:
        parse_value(value)
        return
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_value(value)


def test_each_append_action() -> None:
    m = plan(
        req(
            HeaderAdd("x-a", "app"),
            HeaderAdd("x-a", "absent", "ADD_IF_ABSENT"),
            HeaderAdd("x-b", "absent", "ADD_IF_ABSENT"),
            HeaderAdd("user-agent", "ow", "OVERWRITE_IF_EXISTS"),
            HeaderAdd("x-c", "ow", "OVERWRITE_IF_EXISTS"),
            HeaderAdd("x-d", "owa", "OVERWRITE_IF_EXISTS_OR_ADD"),
        )
    )
    out = headers(m.request_head(HEAD, None))
    assert out == [
        (b"host", b"x"),
        (b"x-a", b"client"),
        (b"user-agent", b"ow"),
        (b"x-d", b"owa"),
        (b"x-a", b"app"),
        (b"x-b", b"absent"),
    ]


def test_remove_before_add_and_add_if_absent_sees_the_level_before_its_adds() -> None:
    m = plan(
        req(
            HeaderAdd("x-a", "new"),
            HeaderAdd("x-n", "one", "ADD_IF_ABSENT"),
            HeaderAdd("x-n", "two", "ADD_IF_ABSENT"),
            remove=("x-a",),
        )
    )
    assert headers(m.request_head(HEAD, None))[-3:] == [
        (b"x-a", b"new"),
        (b"x-n", b"one"),
        (b"x-n", b"two"),
    ]


def test_levels_in_the_order_given_last_overwrite_wins() -> None:
    route = req(HeaderAdd("x-l", "route", "OVERWRITE_IF_EXISTS_OR_ADD"), HeaderAdd("x-all", "r"))
    vhost = req(HeaderAdd("x-l", "vh", "OVERWRITE_IF_EXISTS_OR_ADD"), HeaderAdd("x-all", "v"))
    out = headers(plan(route, vhost).request_head(HEAD, None))
    assert (b"x-l", b"vh") in out and (b"x-l", b"route") not in out
    assert [v for n, v in out if n == b"x-all"] == [b"r", b"v"]


def test_empty_values_need_keep_empty_value() -> None:
    m = plan(req(HeaderAdd("x-e", ""), HeaderAdd("x-k", "", keep_empty=True)))
    out = headers(m.request_head(HEAD, None))
    assert (b"x-k", b"") in out and all(n != b"x-e" for n, _ in out)


def test_inline_request_headers_are_joined_with_a_comma() -> None:
    m = plan(req(HeaderAdd("user-agent", "more"), HeaderAdd("user-agent", "again")))
    assert (b"user-agent", b"ua,more,again") in headers(m.request_head(HEAD, None))


def test_the_timeout_header_is_protected_when_the_route_sets_it() -> None:
    head = HEAD[:-2] + b"x-envoy-expected-rq-timeout-ms: 15000\r\n\r\n"
    m = plan(req(remove=("x-envoy-expected-rq-timeout-ms",)))
    assert b"x-envoy-expected-rq-timeout-ms: 15000" in m.request_head(head, None, True)
    assert b"x-envoy-expected-rq-timeout-ms" not in m.request_head(head, None, False)


def test_substitutions() -> None:
    m = plan(
        req(
            HeaderAdd("x-r", "%DOWNSTREAM_REMOTE_ADDRESS%"),
            HeaderAdd("x-ip", "[%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%]"),
            HeaderAdd("x-l", "%DOWNSTREAM_LOCAL_ADDRESS%"),
            HeaderAdd("x-p", "%PROTOCOL% 100%%"),
        )
    )
    assert m.request_dynamic
    out = dict(headers(m.request_head(HEAD, FACTS)))
    assert out[b"x-r"] == b"10.0.0.1:5555"
    assert out[b"x-ip"] == b"[10.0.0.1]"
    assert out[b"x-l"] == b"127.0.0.1:80"
    assert out[b"x-p"] == b"HTTP/1.1 100%"


def test_upstream_response_cut_lines_service_time_and_protected() -> None:
    r = ResponseHead()
    r.raw = b"HTTP/1.1 200 OK\r\nserver: up\r\nx-up: 1\r\ncontent-type: a\r\n\r\n"
    r.cuts = [(15, 27)]  # "\r\nserver: up"
    r.status = 200
    m = plan(
        HeaderMutations(
            response_add=(
                HeaderAdd("content-type", "b"),
                HeaderAdd("server", "mine"),
                HeaderAdd("x-envoy-upstream-service-time", "x"),
            ),
            response_remove=("x-up", "date"),
        )
    )
    new, service = m.on_response(r, None, None, 7)
    assert service == -1 and not new.cuts
    assert new.raw == (
        b"HTTP/1.1 200 OK\r\ncontent-type: a,b\r\nx-envoy-upstream-service-time: 7,x\r\n\r\n"
    )


def test_local_reply_keeps_its_body_and_framing() -> None:
    data = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nno"
    m = plan(
        HeaderMutations(response_add=(HeaderAdd("x-r", "v"),), response_remove=("content-type",))
    )
    assert m.response_lines(data, None) == (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nx-r: v\r\n\r\nno"
    )


def test_a_route_without_mutations_has_no_plan(tmp_path: object) -> None:
    from proxyd.worker.plan import RoutePlan

    rp = RoutePlan("r", None, "", 15.0)
    assert rp.mutations is None


def test_rewrites_host_and_path_after_the_mutations() -> None:
    from proxyd.epoch import RouteMatch
    from proxyd.protocol.redirect import PathRewrite

    class Head:
        path = "/api/v1?q=1"
        headers: dict[str, str] = {}

    match = RouteMatch(kind="prefix", value="/api", case_sensitive=True, headers=())
    m = MutationPlan((), PathRewrite(match, "/svc"), "up.example")
    head = b"GET /api/v1?q=1 HTTP/1.1\r\nhost: x\r\nx-envoy-original-path: /c\r\n\r\n"
    h = Head()
    out = m.rewrite_head(head, h)
    assert out == (
        b"GET /svc/v1?q=1 HTTP/1.1\r\nhost: up.example\r\n"
        b"x-envoy-original-host: x\r\nx-envoy-original-path: /api/v1?q=1\r\n\r\n"
    )
    assert h.path == "/svc/v1?q=1" and h.headers["x-envoy-original-path"] == "/api/v1?q=1"


def test_regex_rewrite_keeps_the_query() -> None:
    from proxyd.epoch import RouteMatch
    from proxyd.protocol.redirect import PathRewrite

    match = RouteMatch(kind="safe_regex", value=".*", case_sensitive=True, headers=())
    rw = PathRewrite(match, None, "^/re/([a-z]+)/(.*)$", "/\\2/\\1")
    assert rw.apply("/re/abc/echo?x=/re/q/") == "/echo/abc?x=/re/q/"


def test_text_outside_latin_1_never_breaks_the_worker() -> None:
    m = plan(req(HeaderAdd("x-€", "€ %PROTOCOL%"), remove=("x-€€",)))
    assert b"x-?: ? HTTP/1.1" in m.request_head(HEAD, FACTS)


def test_operator_values_read_the_record_with_envoys_header_value_rules() -> None:
    m = plan(
        HeaderMutations(
            request_add=(
                HeaderAdd("x-req", "%REQ(x-missing?x-in):3%"),
                HeaderAdd("x-none", "%REQ(x-missing)%"),
                HeaderAdd("x-none-kept", "%REQ(x-missing)%", keep_empty=True),
                HeaderAdd("x-env", "%ENVIRONMENT(PROXYD_UNIT_NO_SUCH_VARIABLE)%"),
                HeaderAdd("x-flags", "%RESPONSE_FLAGS%|%RESPONSE_CODE%"),
            ),
            response_add=(HeaderAdd("x-code", "%RESPONSE_CODE%/%RESP(:status)%/%RESP(x-up)%"),),
        )
    )
    assert m.request_names == {"x-in", "x-missing"} and m.response_names == {"x-up"}
    rec = LogRecord(req_headers={"x-in": "value"})
    out = dict(headers(m.request_head(HEAD, rec)))
    assert out[b"x-req"] == b"val" and out[b"x-none-kept"] == b"" and b"x-none" not in out
    assert out[b"x-env"] == b"-" and out[b"x-flags"] == b"-|0"
    # An upstream's response, then a local reply (its code is not set yet, as in Envoy).
    up = LogRecord(response_code=200, resp_headers={"x-up": "u"})
    data = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
    assert b"x-code: 200/200/u" in m.response_lines(data, up)
    local = LogRecord(response_code=503, resp_headers={":status": "503"})
    assert b"x-code: 0/503/\r\n" in m.response_lines(data, local)


def test_a_plan_with_operators_asks_the_worker_for_the_record() -> None:
    m = plan(req(HeaderAdd("x-p", "%PROTOCOL%")))
    seen = []

    def record(stream: object, conn: object) -> LogRecord:
        seen.append((stream, conn))
        return LogRecord()

    m.record = record

    class Stream:
        head = None

    s = Stream()
    assert b"x-p: HTTP/1.1" in m.on_request(HEAD, s, "conn", b"")
    assert seen == [(s, "conn")]
    static = plan(req(HeaderAdd("x-s", "100%% static")))
    assert not static.request_dynamic
    assert b"x-s: 100% static" in static.on_request(HEAD, s, "conn", b"")


def test_host_rewrite_path_regex_uses_the_path_without_its_query() -> None:
    from proxyd.epoch import RouteMatch
    from proxyd.protocol.redirect import PathRewrite

    match = RouteMatch(kind="prefix", value="/", case_sensitive=True, headers=())
    m = MutationPlan((), None, host_regex=PathRewrite(match, None, "^/([a-z]+)/.*$", "\\1.up"))
    out = m.rewrite_head(b"GET /abc/d?q=/x/y HTTP/1.1\r\nhost: h\r\n\r\n")
    assert headers(out) == [(b"host", b"abc.up"), (b"x-envoy-original-host", b"h")]
    # No match: the path itself, as RE2's GlobalReplace leaves it (and Envoy uses it).
    out = m.rewrite_head(b"GET /ABC HTTP/1.1\r\nhost: h\r\n\r\n")
    assert headers(out)[0] == (b"host", b"/ABC")
