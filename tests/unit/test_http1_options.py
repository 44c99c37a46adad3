"""The connection manager's http_protocol_options on HTTP/1 heads (sans-IO): HTTP/1.0
with accept_http_10 and default_host_for_http_10, and header_key_format. What Envoy
does with each is checked against real Envoy in
tests/compat/test_http1_options_compat.py; these pin the codec pieces, fed whole and
one byte at a time, and the config that selects them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proxyd.config import compile_bootstrap
from proxyd.epoch import Http1Options
from proxyd.errors import ConfigError, ProtocolError
from proxyd.protocol.http1 import RequestHead, RequestHeadParser, check_request_line
from proxyd.protocol.http1_framing import ReceiveBuffer
from proxyd.protocol.http1_options import Http1Format, original_names, proper_case
from proxyd.protocol.http1_request_line import (
    check_http10_request_line,
    check_request_start,
    is_http10,
)
from tests.unit.test_config_errors import BASE, HCM_PATH, hcm

STEPS = pytest.mark.parametrize("step", [1, 1 << 20], ids=["bytewise", "whole"])
H10 = Http1Format(Http1Options(accept_http_10=True))
H10_HOST = Http1Format(Http1Options(accept_http_10=True, default_host_for_http_10="d.example"))
PRESERVE = Http1Format(Http1Options(header_key_format="preserve_case"))
PRESERVE_PROPER = Http1Format(
    Http1Options(header_key_format="preserve_case", envoy_headers_proper_case=True)
)
PROPER = Http1Format(Http1Options(header_key_format="proper_case_words"))


def parse(data: bytes, step: int, http1: Http1Format | None) -> RequestHead:
    """One request head fed ``step`` bytes at a time through the receive buffer (which
    checks the request line as soon as it is in), then parsed."""
    check = check_http10_request_line if http1 is not None and http1.accept_http_10 else None
    rb = ReceiveBuffer(
        max_head=4096,
        check_first_line=check or check_request_line,
        check_line_start=check_request_start,
    )
    head = None
    for i in range(0, len(data), step):
        rb.feed(data[i : i + step])
        head = rb.next_head()
        if head is not None:
            break
    assert head is not None
    return RequestHeadParser().parse(head, {}, 100, http1)


# -- the request line -------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [b"GET / HTTP/1.0", b"GET /", b"GET / HTTP/1.2", b"GET / HTTP/2.0", b"GET / HTTP/0.9"],
)
def test_accept_http_10_takes_each_version_envoy_answers_426(line: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        check_request_line(line)
    assert info.value.status == 426
    assert check_request_line(line, True) == (b"GET", b"/")
    assert is_http10(line)


@pytest.mark.parametrize(
    ("line", "status"),
    [(b"GET / HTTP/1.x", 400), (b"GET /a\x7f HTTP/1.0", 400), (b"FOO / HTTP/1.0", 400)],
)
def test_accept_http_10_still_refuses_malformed_lines(line: bytes, status: int) -> None:
    with pytest.raises(ProtocolError) as info:
        check_request_line(line, True)
    assert info.value.status == status


def test_http11_is_not_http10() -> None:
    assert not is_http10(b"GET / HTTP/1.1")
    assert not is_http10(b"GET\t/ HTTP/1.1 ")


@STEPS
def test_http10_without_the_option_is_426_at_the_first_line(step: int) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(b"GET / HTTP/1.0\r\nhost: a\r\n\r\n", step, None)
    assert info.value.status == 426


# -- HTTP/1.0 requests ------------------------------------------------------------------


@STEPS
def test_http10_goes_upstream_as_http11_and_closes(step: int) -> None:
    h = parse(b"GET /x HTTP/1.0\r\nHost: a.example\r\nX-Foo: 1\r\n\r\n", step, H10)
    assert h.http10 and not h.keep_alive
    assert h.raw == b"GET /x HTTP/1.1\r\nhost: a.example\r\nx-foo: 1\r\n\r\n"


@STEPS
def test_http10_keep_alive_when_asked(step: int) -> None:
    h = parse(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: Keep-Alive\r\n\r\n", step, H10)
    assert h.http10 and h.keep_alive
    h = parse(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n", step, H10)
    assert not h.keep_alive


@STEPS
def test_http10_without_host_takes_the_default_host(step: int) -> None:
    h = parse(b"GET /p?q=1 HTTP/1.0\r\n\r\n", step, H10_HOST)
    assert h.host == "d.example"
    assert h.raw == b"GET /p?q=1 HTTP/1.1\r\nhost: d.example\r\n\r\n"
    # A Host, or an absolute-form target, wins over the default.
    assert parse(b"GET / HTTP/1.0\r\nHost: b\r\n\r\n", step, H10_HOST).host == "b"
    assert parse(b"GET http://c.example/ HTTP/1.0\r\n\r\n", step, H10_HOST).host == "c.example"
    # A version-less line is HTTP/1.0 too.
    assert parse(b"GET /nine\r\n\r\n", step, H10_HOST).http10


@STEPS
def test_http10_without_host_and_default_is_400_marked_http10(step: int) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(b"GET / HTTP/1.0\r\n\r\n", step, H10)
    assert info.value.status == 400 and info.value.http10


@STEPS
def test_http11_without_host_is_400_even_with_a_default_host(step: int) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(b"GET / HTTP/1.1\r\n\r\n", step, H10_HOST)
    assert info.value.status == 400 and not info.value.http10


@STEPS
def test_http11_on_an_http10_listener_is_unchanged(step: int) -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX-B: 1\r\n\r\n"
    h = parse(data, step, H10)
    assert not h.http10 and h.keep_alive and h.names is None
    assert h.raw == parse(data, step, None).raw


# -- header name case -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "proper"),
    [
        (b"content-type", b"Content-Type"),
        (b"x-envoy-upstream-service-time", b"X-Envoy-Upstream-Service-Time"),
        (b"x_under", b"X_Under"),
        (b"x-9abc_d-e", b"X-9abc_D-E"),  # a digit does not start a word
        (b"www-authenticate", b"Www-Authenticate"),
    ],
)
def test_proper_case_is_envoys(name: bytes, proper: bytes) -> None:
    assert proper_case(name) == proper


def test_original_names_keep_the_first_spelling() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\nUser-Agent: z\r\n\r\n"
    assert original_names(head) == {b"host": b"Host", b"x-a": b"X-A", b"user-agent": b"User-Agent"}


UPSTREAM = (
    b"GET / HTTP/1.1\r\nhost: a\r\nx-a: 1\r\nx-a: 2\r\nx-forwarded-proto: http\r\n"
    b"x-request-id: r\r\n\r\n"
)


@STEPS
def test_preserve_case_sends_the_names_as_they_arrived(step: int) -> None:
    h = parse(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\nX-Request-ID: r\r\n\r\n", step, PRESERVE
    )
    assert h.names is not None
    assert h.raw == b"GET / HTTP/1.1\r\nhost: a\r\nx-a: 1\r\nx-a: 2\r\nx-request-id: r\r\n\r\n"
    # Lines proxyd adds keep their lower case unless the client used the name.
    assert PRESERVE.upstream_head(UPSTREAM, h.names) == (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-A: 2\r\nx-forwarded-proto: http\r\n"
        b"X-Request-ID: r\r\n\r\n"
    )
    assert PRESERVE_PROPER.upstream_head(UPSTREAM, h.names) == (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-A: 2\r\nX-Forwarded-Proto: http\r\n"
        b"X-Request-ID: r\r\n\r\n"
    )


def test_preserve_case_leaves_the_body_alone() -> None:
    head = b"POST / HTTP/1.1\r\nhost: a\r\n\r\nhost: not a header"
    assert PRESERVE.upstream_head(head, {b"host": b"HOST"}) == (
        b"POST / HTTP/1.1\r\nHOST: a\r\n\r\nhost: not a header"
    )


def test_options_that_change_no_request_leave_it_alone() -> None:
    assert PROPER.upstream_head(UPSTREAM, None) is UPSTREAM
    assert H10.upstream_head(UPSTREAM, None) is UPSTREAM


RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-UP-two: 2\r\nserver: envoy\r\n\r\nok"


def test_proper_case_responses_and_local_replies() -> None:
    assert PROPER.downstream_head(RESPONSE, False, True) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Up-Two: 2\r\nServer: envoy\r\n\r\nok"
    )
    assert PRESERVE.downstream_head(RESPONSE, False, True) == RESPONSE


def test_http10_response_head() -> None:
    assert H10.downstream_head(RESPONSE, True, False) == b"HTTP/1.0" + RESPONSE[8:]
    assert H10.downstream_head(RESPONSE, True, True) == (
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\nx-UP-two: 2\r\nserver: envoy\r\n"
        b"connection: keep-alive\r\n\r\nok"
    )
    assert H10.downstream_head(RESPONSE, False, True) == RESPONSE


# -- config -------------------------------------------------------------------------------

PRESERVE_TYPE = (
    "type.googleapis.com/envoy.extensions.http.header_formatters.preserve_case.v3."
    "PreserveCaseFormatterConfig"
)


def compiled(options: dict[str, Any]) -> Http1Options | None:
    d = copy.deepcopy(BASE)
    hcm(d)["http_protocol_options"] = options
    return compile_bootstrap(d, "conf.yaml").epoch_template.listeners[0].hcm.http1


def test_config_selects_the_options() -> None:
    assert compiled({}) is None
    assert compiled({"accept_http_10": False}) is None
    assert compiled({"accept_http_10": True, "default_host_for_http_10": "h"}) == Http1Options(
        accept_http_10=True, default_host_for_http_10="h"
    )
    assert compiled({"header_key_format": {"proper_case_words": {}}}) == Http1Options(
        header_key_format="proper_case_words"
    )
    fmt = {
        "name": "preserve_case",
        "typed_config": {"@type": PRESERVE_TYPE, "formatter_type_on_envoy_headers": "PROPER_CASE"},
    }
    assert compiled({"header_key_format": {"stateful_formatter": fmt}}) == Http1Options(
        header_key_format="preserve_case", envoy_headers_proper_case=True
    )


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"enable_trailers": True}, "http_protocol_options.enable_trailers"),
        ({"allow_chunked_length": True}, "http_protocol_options.allow_chunked_length"),
        ({"send_fully_qualified_url": True}, "http_protocol_options.send_fully_qualified_url"),
        (
            {
                "header_key_format": {
                    "stateful_formatter": {
                        "name": "x",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.http."
                            "header_formatters.dynamic_modules.v3.Nope"
                        },
                    }
                }
            },
            "http_protocol_options.header_key_format.stateful_formatter",
        ),
    ],
)
def test_what_proxyd_does_not_implement_is_refused_by_path(
    options: dict[str, Any], path: str
) -> None:
    with pytest.raises(ConfigError) as info:
        compiled(options)
    assert info.value.path.startswith(f"{HCM_PATH}.{path}")
    assert "not supported by proxyd" in info.value.reason
