"""The local rate limit filter: its config through proxyd.config.compile_bootstrap, the
token bucket on a clock the test moves, and the filter's decisions driven through an
in-memory FilterStream."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from proxyd.config.runtime import from_string
from proxyd.filters.api import CONTINUE, LocalReply
from proxyd.filters.local_ratelimit import filter as lrl
from proxyd.filters.local_ratelimit.filter import Factory, TokenBucket, bucket_for
from proxyd.protocol.runtime import Snapshot
from proxyd.worker.stats import StatsStore
from tests.unit.filter_stream import Head, MemoryStream
from tests.unit.test_filter_config import base, compiled, hcm, overrides, reject, route

LRL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ALWAYS = {"default_value": {"numerator": 100}}


def lrl_config(**fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "@type": LRL,
        "stat_prefix": "rl",
        "token_bucket": {"max_tokens": 3, "fill_interval": "3600s"},
    }
    out.update(fields)
    return out


def with_filter(**fields: Any) -> dict[str, Any]:
    d = base()
    hcm(d)["http_filters"][0] = {"name": "rl", "typed_config": lrl_config(**fields)}
    return d


# -- config ---------------------------------------------------------------------------------


def test_the_filter_compiles_to_plain_data() -> None:
    d = with_filter(
        filter_enabled={"runtime_key": "rl.on", "default_value": {"numerator": 50}},
        filter_enforced={"default_value": {"numerator": 7, "denominator": "TEN_THOUSAND"}},
        status={"code": "ServiceUnavailable"},
        response_headers_to_add=[{"header": {"key": "X-A", "value": "100%%"}}],
        enable_x_ratelimit_headers="DRAFT_VERSION_03",
    )
    config = compiled(d).http_filters[0].config
    assert config["bucket"]["max_tokens"] == 3
    assert config["bucket"]["tokens_per_fill"] == 1  # Envoy's default
    assert config["bucket"]["fill_ms"] == 3_600_000
    assert config["bucket"]["key"].endswith("http_filters[0].typed_config")
    assert config["enabled"] == ["rl.on", 50, 100]
    assert config["enforced"] == ["", 7, 10_000]
    assert config["status"] == 503
    assert config["response_headers"] == [["x-a", "100%", "APPEND_IF_EXISTS_OR_ADD", False]]
    assert config["x_ratelimit_headers"] is True
    assert config["resource_exhausted"] is False


def test_unset_percentages_and_a_status_below_400() -> None:
    config = compiled(with_filter(status={"code": "OK"})).http_filters[0].config
    assert config["enabled"] is None and config["enforced"] is None
    assert config["status"] == 429  # Envoy's toErrorCode: a non-error status is 429


def test_the_hcm_config_may_have_no_bucket() -> None:
    d = with_filter()
    del hcm(d)["http_filters"][0]["typed_config"]["token_bucket"]
    assert compiled(d).http_filters[0].config["bucket"] is None


def test_per_route_configs_get_their_own_bucket_key() -> None:
    d = with_filter()
    for i in (0, 1):
        route(d, i)["typed_per_filter_config"] = {"rl": lrl_config(stat_prefix=f"r{i}")}
    keys = {overrides(d, i)["rl"].config["bucket"]["key"] for i in (0, 1)}
    assert len(keys) == 2


@pytest.mark.parametrize(
    ("field", "value", "where", "reason"),
    [
        ("descriptors", [{"entries": [{"key": "k", "value": "v"}], "token_bucket": {
            "max_tokens": 1, "fill_interval": "1s"}}], "descriptors", "not supported"),
        ("local_rate_limit_per_downstream_connection", True,
         "local_rate_limit_per_downstream_connection", "not supported"),
        ("max_dynamic_descriptors", 5, "max_dynamic_descriptors", "not supported"),
        ("token_bucket", {"max_tokens": 1, "fill_interval": "0.04s"},
         "token_bucket.fill_interval", ">= 50ms"),
        ("response_headers_to_add", [{"header": {"key": "x", "value": "%HOSTNAME%"}}],
         "response_headers_to_add[0].header.value", "not supported"),
        ("response_headers_to_add", [{"header": {"key": "content-length", "value": "1"}}],
         "response_headers_to_add[0].header.key", "may not be added"),
    ],
)  # fmt: skip
def test_refusals_name_the_field(field: str, value: Any, where: str, reason: str) -> None:
    err = reject(with_filter(**{field: value}))
    assert err.path.endswith(f"http_filters[0].typed_config.{where}")
    assert reason in err.reason


def test_a_per_route_config_needs_a_bucket() -> None:
    d = with_filter()
    per_route = lrl_config()
    del per_route["token_bucket"]
    route(d, 0)["typed_per_filter_config"] = {"rl": per_route}
    err = reject(d)
    assert "token bucket must be set for per filter configs" in err.reason


# -- the bucket -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_starts_full_and_the_next_request_is_refused() -> None:
    clock = Clock()
    bucket = TokenBucket(3, 1 / 3600, clock)
    assert [bucket.consume() for _ in range(4)] == [True, True, True, False]
    assert bucket.reset_seconds() == 3600


def test_the_bucket_refills_continuously_up_to_its_size() -> None:
    clock = Clock()
    bucket = TokenBucket(2, 8.0, clock)  # 8 tokens a second (times exact in binary)
    assert bucket.consume() and bucket.consume() and not bucket.consume()
    clock.now += 0.0625  # half a token: still none whole
    assert not bucket.consume()
    assert bucket.reset_seconds() == 1  # 0.0625 s to go, rounded up to a second
    clock.now += 0.0625
    assert bucket.consume() and not bucket.consume()
    clock.now += 60
    assert bucket.tokens() == 2.0  # never above max_tokens
    assert bucket.reset_seconds() == 0


def test_a_config_without_a_bucket_is_always_empty() -> None:
    bucket = bucket_for(None)
    assert not bucket.consume()
    assert bucket.reset_seconds() == 0


def test_the_worker_keeps_a_bucket_while_its_config_is_unchanged() -> None:
    spec = {"max_tokens": 1, "tokens_per_fill": 1, "fill_ms": 3_600_000, "key": "here"}
    first = bucket_for(spec)
    assert first.consume()
    assert bucket_for(dict(spec)) is first  # a new epoch, the same config
    assert bucket_for({**spec, "max_tokens": 2}) is not first  # changed: a new bucket
    assert bucket_for({**spec, "key": "elsewhere"}) is not first


# -- the filter -----------------------------------------------------------------------------


def settings(**more: Any) -> dict[str, Any]:
    """The plain config proxyd.filters.local_ratelimit.config compiles."""
    out: dict[str, Any] = {
        "stat_prefix": "rl",
        "status": 429,
        "bucket": None,
        "enabled": ["", 100, 100],
        "enforced": ["", 100, 100],
        "response_headers": [],
        "request_headers": [],
        "x_ratelimit_headers": False,
        "resource_exhausted": False,
    }
    out.update(more)
    return out


def factory(
    config: dict[str, Any], runtime: Snapshot | None = None, tokens: int = 1
) -> tuple[Factory, StatsStore]:
    store = StatsStore()
    config.setdefault("bucket", None)
    if config["bucket"] is None and tokens:
        config["bucket"] = {
            "max_tokens": tokens,
            "tokens_per_fill": 1,
            "fill_ms": 3_600_000,
            "key": f"test-{id(config)}",
        }
    f = Factory("rl", config, None, store.named("http.ingress."), runtime or Snapshot())
    return f, store


def counters(store: StatsStore) -> dict[str, int]:
    """The counters (deltas since the last call: call once per check)."""
    return {k: v for k, v in store.report()[0].items() if "http_local_rate_limit" in k}


def run(f: Factory, stream: MemoryStream | None = None) -> Any:
    stream = stream or MemoryStream()

    async def go() -> Any:
        flt = f.create()
        result = await flt.on_request_headers(stream, True)
        if result is CONTINUE and f.encodes:
            await flt.on_response_headers(stream, None, True)
        return result

    return trio.run(go)


def test_second_request_is_answered_429_and_counted() -> None:
    f, store = factory(
        settings(response_headers=[["x-rl", "yes", "APPEND_IF_EXISTS_OR_ADD", False]])
    )
    assert run(f) is CONTINUE
    stream = MemoryStream()
    reply = run(f, stream)
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.body, reply.headers) == (
        429,
        "local_rate_limited",
        (("x-rl", "yes"),),
    )
    assert reply.grpc_status == 14 and reply.details == "local_rate_limited"
    assert stream.flags == ["RL"]
    assert counters(store) == {
        "rl.http_local_rate_limit.enabled": 2,
        "rl.http_local_rate_limit.ok": 1,
        "rl.http_local_rate_limit.rate_limited": 1,
        "rl.http_local_rate_limit.enforced": 1,
        "rl.http_local_rate_limit.shadow_mode": 0,
    }


def test_unset_filter_enabled_does_nothing() -> None:
    f, store = factory(settings(enabled=None))
    assert not f.decodes  # the chain leaves it out
    assert set(counters(store).values()) == {0}  # shown at 0 all the same


def test_not_enforced_goes_upstream_with_the_request_headers() -> None:
    adds = [
        ["x-limited", "yes", "OVERWRITE_IF_EXISTS_OR_ADD", False],
        ["x-app", "more", "APPEND_IF_EXISTS_OR_ADD", False],
        ["x-absent", "added", "ADD_IF_ABSENT", False],
        ["x-there", "new", "OVERWRITE_IF_EXISTS", False],
        ["x-missing", "never", "OVERWRITE_IF_EXISTS", False],
        ["x-empty", "", "APPEND_IF_EXISTS_OR_ADD", False],
    ]
    f, store = factory(settings(enforced=None, request_headers=adds), tokens=0)
    assert f.wanted_headers >= {"x-absent", "x-there"}
    stream = MemoryStream(head=Head(headers={"x-there": "old", "x-absent": "mine"}))
    assert run(f, stream) is CONTINUE
    assert stream.request_headers == {"x-limited": "yes", "x-there": "new"}
    assert stream.added_request_headers == [("x-app", "more")]
    counted = counters(store)
    assert counted["rl.http_local_rate_limit.rate_limited"] == 1
    assert counted["rl.http_local_rate_limit.enforced"] == 0


def test_x_ratelimit_headers_on_both_answers() -> None:
    f, _ = factory(settings(x_ratelimit_headers=True), tokens=2)
    assert f.encodes
    stream = MemoryStream()
    assert run(f, stream) is CONTINUE
    assert stream.response_headers == {
        "x-ratelimit-limit": "2", "x-ratelimit-remaining": "1", "x-ratelimit-reset": "0",
    }  # fmt: skip
    run(f)
    reply = run(f)
    assert isinstance(reply, LocalReply)
    assert dict(reply.headers) == {
        "x-ratelimit-limit": "2", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "3600",
    }  # fmt: skip


def test_resource_exhausted_for_grpc() -> None:
    f, _ = factory(settings(resource_exhausted=True), tokens=0)
    reply = run(f)
    assert isinstance(reply, LocalReply) and reply.grpc_status == 8


def test_runtime_turns_the_filter_off(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = Snapshot([from_string("rl.on", "0")])
    f, _ = factory(settings(enabled=["rl.on", 100, 100]), runtime)
    assert not f.decodes
    runtime = Snapshot([from_string("rl.on", "100")])
    f, _ = factory(settings(enabled=["rl.on", 0, 100]), runtime)
    assert f.decodes
    # A fraction strictly between 0 and 1 is drawn per request.
    f, _ = factory(settings(enabled=["", 1, 2]), tokens=5)
    monkeypatch.setattr(lrl.RANDOM, "getrandbits", lambda _: 1)
    assert run(f) is CONTINUE
    assert f.bucket.tokens() == 5.0  # not enabled for this one: no token taken
