"""proxyd.filters.cache.rules: RFC 9111's rules as Envoy's cache filter applies them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxyd.filters.cache.rules import (
    ANY_STALE,
    NO_REQUEST_RULES,
    byte_range,
    cacheable_response,
    directives,
    http_time,
    needs_validation,
    request_rules,
    response_rules,
)

DATE = "Fri, 04 Dec 2026 20:00:00 GMT"
T = http_time(DATE)


def test_directives() -> None:
    assert directives('max-age=60, Private="set-cookie, x", no-cache') == {
        "max-age": "60",
        "private": "set-cookie, x",
        "no-cache": None,
    }
    assert directives(" ,, public ,max-age = 5") == {"public": None, "max-age": "5"}
    assert directives("max-age=1, max-age=9") == {"max-age": "1"}
    assert directives(None) == {} and directives("") == {}
    assert directives('a="unterminated') == {"a": "unterminated"}


def test_http_time() -> None:
    assert T is not None
    assert http_time("not a date") is None and http_time(None) is None
    assert http_time("Fri, 04 Dec 2026 20:00:00") is None  # no zone
    assert http_time("1 Jan 10000000000 00:00:00 GMT") is None  # beyond datetime
    assert http_time("Fri, 99 Dec 2026 20:00:00 GMT") is None


@pytest.mark.parametrize(
    ("cc", "expires", "status", "cacheable"),
    [
        ("max-age=60", None, 200, True),
        ("s-maxage=60", None, 404, True),
        ("no-cache", None, 200, True),
        (None, "Fri, 04 Dec 2026 20:01:00 GMT", 200, True),
        ("public", None, 200, False),
        ("max-age=abc", None, 200, False),
        ("max-age=60, no-store", None, 200, False),
        ("max-age=60, private", None, 200, False),
        ("max-age=60", None, 302, False),
        ("max-age=60", None, 500, False),
    ],
)
def test_cacheable(cc: str | None, expires: str | None, status: int, cacheable: bool) -> None:
    assert cacheable_response(status, response_rules(cc, DATE, expires)) is cacheable


def test_lifetime_and_validation() -> None:
    assert T is not None
    r = response_rules("max-age=60, s-maxage=10", DATE, None)
    assert r.lifetime == 10
    assert not needs_validation(r, NO_REQUEST_RULES, 10)
    assert needs_validation(r, NO_REQUEST_RULES, 11)
    exp = response_rules(None, DATE, "Fri, 04 Dec 2026 20:00:30 GMT")
    assert exp.lifetime == 30
    assert response_rules(None, DATE, "garbage").lifetime == -1.0
    assert needs_validation(response_rules("no-cache", DATE, None), NO_REQUEST_RULES, 0)
    # request directives
    fresh = response_rules("max-age=60", DATE, None)
    assert needs_validation(fresh, request_rules("no-cache", None), 0)
    assert needs_validation(fresh, request_rules(None, "no-cache"), 0)
    assert not needs_validation(fresh, request_rules("max-age=0", "no-cache"), 0)
    assert needs_validation(fresh, request_rules("max-age=5", None), 6)
    assert needs_validation(fresh, request_rules("min-fresh=30", None), 31)
    assert request_rules("max-stale", None).max_stale == ANY_STALE
    assert not needs_validation(fresh, request_rules("max-stale=10", None), 65)
    assert needs_validation(fresh, request_rules("max-stale=10", None), 75)
    strict = response_rules("max-age=60, must-revalidate", DATE, None)
    assert needs_validation(strict, request_rules("max-stale", None), 61)


@pytest.mark.parametrize(
    ("value", "length", "expected"),
    [
        (None, 16, None),
        ("bytes=2-5", 16, (2, 5)),
        ("bytes=10-", 16, (10, 15)),
        ("bytes=-4", 16, (12, 15)),
        ("bytes=0-100", 16, None),
        ("bytes=-100", 16, None),
        ("bytes=50-60", 16, True),
        ("bytes=-0", 16, True),
        ("bytes=0-1,4-5", 16, None),
        ("items=0-1", 16, None),
        ("bytes=5-2", 16, None),
        ("bytes=x-2", 16, None),
    ],
)
def test_byte_range(value: str | None, length: int, expected: object) -> None:
    assert byte_range(value, length) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40), st.integers(0, 10**6))
def test_no_header_value_raises(cc: str, date: str, other: str, age: int) -> None:
    """Whatever an upstream or a client sends, the rules answer (a worker never
    crashes on a header value)."""
    r = response_rules(cc, date, other)
    cacheable_response(200, r)
    needs_validation(r, request_rules(other, cc), age)
    byte_range(other, age)
    http_time(other)
