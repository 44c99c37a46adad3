"""Access-log filters: each kind on records, and the runtime seam."""

from __future__ import annotations

import random

import pytest

from proxyd.epoch import AccessLogFilter, HeaderMatch, StringMatch
from proxyd.protocol.access_log import DOWNSTREAM_START, LogRecord
from proxyd.protocol.access_log_filters import (
    compile_filter,
    filter_header_names,
    filter_reads_grpc_status,
    request_id_sample,
)

F = AccessLogFilter


def rec(**kw: object) -> LogRecord:
    base: dict[str, object] = {"response_code": 200, "duration_ms": 10, "method": "GET"}
    base.update(kw)
    return LogRecord(**base)


class Runtime:
    """A runtime snapshot with some keys set (the shape of proxyd.protocol.runtime's)."""

    def __init__(self, values: dict[str, int | tuple[int, int]]) -> None:
        self.values = values

    def integer(self, key: str, default: int) -> int:
        v = self.values.get(key)
        return v if isinstance(v, int) else default

    def fraction(self, key: str, numerator: int, denominator: int) -> tuple[int, int]:
        v = self.values.get(key)
        if v is None:
            return numerator, denominator
        if isinstance(v, int):
            return (1, 1) if v > 100 else (v, 100)
        return v


@pytest.mark.parametrize(
    ("op", "value", "code", "expected"),
    [("GE", 400, 404, True), ("GE", 400, 200, False), ("EQ", 200, 200, True),
     ("EQ", 200, 201, False), ("LE", 299, 299, True), ("LE", 299, 300, False),
     ("EQ", 0, 0, True)],
)  # fmt: skip
def test_status_code(op: str, value: int, code: int, expected: bool) -> None:
    f = compile_filter(F("status_code", op=op, value=value, runtime_key="k"))
    assert f(rec(response_code=code)) is expected


def test_comparison_runtime_value_wins_over_the_default() -> None:
    flt = F("duration", op="GE", value=100, runtime_key="slow_ms")
    assert not compile_filter(flt)(rec(duration_ms=50))
    assert compile_filter(flt, Runtime({"slow_ms": 20}))(rec(duration_ms=50))
    assert not compile_filter(flt, Runtime({"other": 20}))(rec(duration_ms=50))


def test_health_check_and_traceable() -> None:
    assert compile_filter(F("not_health_check"))(rec())
    assert not compile_filter(F("traceable"))(rec())


def test_runtime_filter_samples_by_request_id() -> None:
    f = compile_filter(F("runtime", value=50, denominator=100, runtime_key="k"))
    # 0x00000031 = 49 -> 49 % 100 < 50; 0x00000032 = 50 -> not.
    assert f(rec(request_id="00000031-0000-4000-8000-000000000000"))
    assert not f(rec(request_id="00000032-0000-4000-8000-000000000000"))
    # The same id always gives the same answer.
    rid = "9e3779b1-0000-4000-8000-000000000001"
    assert len({f(rec(request_id=rid)) for _ in range(20)}) == 1
    assert request_id_sample(rid) == 0x9E3779B1
    assert request_id_sample("short") is None and request_id_sample("zzzzzzzz-1") is None


def test_runtime_filter_runtime_override_and_denominators() -> None:
    flt = F("runtime", value=0, denominator=10_000, runtime_key="sample")
    rid = "00000031-0000-4000-8000-000000000000"  # 49
    assert not compile_filter(flt)(rec(request_id=rid))
    assert compile_filter(flt, Runtime({"sample": 50}))(rec(request_id=rid))  # 49 % 100 < 50
    assert not compile_filter(flt, Runtime({"sample": (49, 10_000)}))(rec(request_id=rid))
    assert compile_filter(flt, Runtime({"sample": 101}))(rec(request_id=rid))  # over 100: on


def test_runtime_filter_independent_randomness() -> None:
    flt = F("runtime", value=50, denominator=100, runtime_key="k", independent=True)
    f = compile_filter(flt, rng=random.Random(7))
    results = [f(rec(request_id="00000000-0000-4000-8000-000000000000")) for _ in range(200)]
    assert 50 < sum(results) < 150  # independent of the (always-sampled) id
    none = compile_filter(F("runtime", value=0, denominator=100), rng=random.Random(1))
    assert not any(none(rec()) for _ in range(50))


def test_and_or_stop_early() -> None:
    ge400 = F("status_code", op="GE", value=400, runtime_key="k")
    post = F("header", header=HeaderMatch(":method", StringMatch("exact", "POST")))
    both = compile_filter(F("and", children=(ge400, post)))
    either = compile_filter(F("or", children=(ge400, post)))
    assert both(rec(response_code=500, method="POST"))
    assert not both(rec(response_code=500))
    assert either(rec(response_code=500)) and either(rec(method="POST"))
    assert not either(rec())
    assert compile_filter(F("and"))(rec()) and not compile_filter(F("or"))(rec())


def test_response_flags() -> None:
    any_flag = compile_filter(F("response_flag"))
    some = compile_filter(F("response_flag", names=("UF", "NR")))
    assert not any_flag(rec()) and any_flag(rec(response_flags="DC"))
    assert some(rec(response_flags="DI,NR")) and not some(rec(response_flags="DC"))


def test_header_filter() -> None:
    present = F("header", header=HeaderMatch("x-log", None))
    absent = F("header", header=HeaderMatch("x-log", None, invert_match=True))
    host = F("header", header=HeaderMatch("host", StringMatch("prefix", "api.")))
    assert compile_filter(present)(rec(req_headers={"x-log": ""}))
    assert not compile_filter(present)(rec())
    assert compile_filter(absent)(rec())
    assert compile_filter(host)(rec(authority="api.example"))
    assert filter_header_names(F("or", children=(present, host))) == frozenset({"x-log"})


def test_grpc_status_filter() -> None:
    unavailable = compile_filter(F("grpc_status", codes=(14,)))
    not_ok = compile_filter(F("grpc_status", codes=(0,), exclude=True))
    assert unavailable(rec(response_code=503))  # inferred from the HTTP status
    assert unavailable(rec(resp_headers={"grpc-status": "14"}))
    assert not unavailable(rec())  # 200 without grpc-status: Unknown
    assert not not_ok(rec(resp_headers={"grpc-status": "0"}))
    assert not_ok(rec(response_code=0))  # no response: Unknown
    assert filter_reads_grpc_status(F("and", children=(F("grpc_status"),)))


def test_log_type_filter() -> None:
    end = compile_filter(F("log_type", names=("DownstreamEnd",)))
    not_start = compile_filter(F("log_type", names=(DOWNSTREAM_START,), exclude=True))
    assert end(rec()) and not end(rec(log_type=DOWNSTREAM_START))
    assert not_start(rec()) and not not_start(rec(log_type=DOWNSTREAM_START))
