"""request_mirror_policies without sockets: the config (accepted, refused as Envoy
refuses it), the shadow's head, which clusters a request is shadowed to, and the body
feed's bounds. tests/compat/test_mirror_compat.py checks the whole against Envoy, and
tests/integration/test_mirror.py a shadow cluster that stops answering."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from proxyd.config import compile_bootstrap
from proxyd.epoch import MirrorPolicy, Route, RuntimeFraction, RuntimeValue
from proxyd.errors import ConfigError
from proxyd.protocol.header_mutations import split_head
from proxyd.protocol.runtime import Snapshot
from proxyd.worker.mirror import MirrorPlan, MirrorTap, _Feed, shadow_head, shadow_host

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def bootstrap(mirrors: list[dict[str, Any]]) -> dict[str, Any]:
    route = {
        "match": {"prefix": "/"},
        "route": {"cluster": "a", "request_mirror_policies": mirrors},
    }
    hcm = {
        "@type": HCM,
        "stat_prefix": "in",
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }

    def cluster(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": "127.0.0.1", "port_value": 1}
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }

    return {"static_resources": {"listeners": [listener], "clusters": [cluster("a"), cluster("s")]}}


def compile_route(mirrors: list[dict[str, Any]]) -> Route:
    epoch = compile_bootstrap(bootstrap(mirrors), "conf.yaml").epoch_template
    return epoch.listeners[0].hcm.route_config.virtual_hosts[0].routes[0]


def test_policies_compile() -> None:
    r = compile_route(
        [
            {"cluster": "s"},
            {
                "cluster_header": "X-Mirror",
                "runtime_fraction": {
                    "default_value": {"numerator": 5, "denominator": "TEN_THOUSAND"},
                    "runtime_key": "k",
                },
                "disable_shadow_host_suffix_append": True,
                "trace_sampled": True,
            },
        ]
    )
    assert r.mirrors == (
        MirrorPolicy(cluster="s"),
        MirrorPolicy(
            cluster_header="x-mirror",
            fraction=RuntimeFraction("k", 5, 10_000),
            host_suffix=False,
        ),
    )


@pytest.mark.parametrize(
    ("mirrors", "reason"),
    [
        ([{"cluster": "nope"}], "unknown shadow cluster 'nope'"),
        (
            [{"runtime_fraction": {"default_value": {"numerator": 5}}}],
            "Exactly one of cluster or cluster_header in request mirror policy need to be "
            "specified",
        ),
        (
            [{"cluster": "s", "cluster_header": "x-m"}],
            "Only one of cluster 's' or cluster_header 'x-m' in request mirror policy can be "
            "specified",
        ),
    ],
)
def test_policies_refused_as_envoy_refuses_them(mirrors: list, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_route(mirrors)
    assert reason in str(info.value)
    assert "request_mirror_policies[0]" in str(info.value)


@pytest.mark.parametrize(
    ("host", "shadow"),
    [
        (b"a.example", b"a.example-shadow"),
        (b"a.example:8080", b"a.example-shadow:8080"),
        (b"10.1.2.3", b"10.1.2.3-shadow"),
        (b"[::1]:8080", b"[::1]-shadow:8080"),
        (b"[::1]", b"[::1]-shadow"),
        (b"a.example:port", b"a.example:port-shadow"),
    ],
)
def test_shadow_host_suffix_goes_before_the_port(host: bytes, shadow: bytes) -> None:
    assert shadow_host(host) == shadow


def lines(head: bytes) -> list[bytes]:
    return [line for _, line in split_head(head)[1]]


def test_shadow_head_edits() -> None:
    head = (
        b"POST /p HTTP/1.1\r\nhost: a.example:81\r\nx-forwarded-for: 1.2.3.4\r\n"
        b"x-envoy-internal: false\r\ncontent-length: 3\r\n\r\n"
    )
    out = shadow_head(head, True)
    assert out.startswith(b"POST /p HTTP/1.1\r\n")
    assert lines(out) == [
        b"host: a.example-shadow:81",
        b"content-length: 3",
        b"x-forwarded-for: 1.2.3.4,192.0.2.2",
        b"x-envoy-internal: true",
    ]
    plain = shadow_head(b"GET / HTTP/1.1\r\nhost: h\r\n\r\n", False)
    assert lines(plain) == [b"host: h", b"x-forwarded-for: 192.0.2.2", b"x-envoy-internal: true"]


class _Cluster:
    def __init__(self, name: str) -> None:
        self.name = name


def test_picks_by_name_header_and_fraction() -> None:
    clusters: dict[str, Any] = {n: _Cluster(n) for n in ("s", "t")}
    runtime = Snapshot([RuntimeValue(key="off", raw="0", uint=0)])
    plan = MirrorPlan(
        (
            MirrorPolicy(cluster="s"),
            MirrorPolicy(cluster_header="x-m", host_suffix=False),
            MirrorPolicy(cluster="t", fraction=RuntimeFraction("off", 100)),
            MirrorPolicy(cluster="t", fraction=RuntimeFraction("", 0)),
        ),
        clusters,
        runtime,
    )
    assert plan.headers == {"x-m"}
    assert [(c.name, suffix) for c, suffix in plan.picks({})] == [("s", True)]
    assert [(c.name, suffix) for c, suffix in plan.picks({"x-m": "t"})] == [
        ("s", True),
        ("t", False),
    ]
    assert [c.name for c, _ in plan.picks({"x-m": "unknown"})] == ["s"]


class _Sink:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.completed = False

    def take_buffered_body(self) -> list[memoryview]:
        return [memoryview(b"head-body")]

    async def recv_body(self) -> list[memoryview]:
        return [memoryview(self.chunks.pop(0))] if self.chunks else []

    def complete(self) -> None:
        self.completed = True


class _Stream:
    request_complete = False


def test_tap_copies_the_body_and_holds_the_client_while_a_shadow_is_behind() -> None:
    trio.run(_tap_scenario)


async def _tap_scenario() -> None:
    stream = _Stream()
    feed = _Feed(limit=10)
    gone = _Feed(limit=10)
    gone.abandon()
    tap = MirrorTap(_Sink([b"x" * 8, b"y" * 8]), stream, [feed, gone])
    assert bytes(tap.take_buffered_body()[0]) == b"head-body"
    await tap.recv_body()
    assert feed.size == 17 and not gone.pieces  # an abandoned feed takes nothing
    # Over the limit: the next read waits until the shadow took what waits.
    async with trio.open_nursery() as nursery:
        got: list = []

        async def read() -> None:
            got.append(await tap.recv_body())

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert not got
        assert await feed.take() == [b"head-body", b"x" * 8]
    assert bytes(got[0][0]) == b"y" * 8
    stream.request_complete = True
    await tap.recv_body()
    assert feed.done
    tap.complete()
    assert not feed.abandoned and tap.inner.completed  # type: ignore[attr-defined]


def test_a_stream_that_ends_early_abandons_its_shadows() -> None:
    feed = _Feed(limit=10)
    tap = MirrorTap(_Sink([]), _Stream(), [feed])
    tap.complete()
    assert feed.abandoned
