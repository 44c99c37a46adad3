"""stats_config (tag extraction, the matcher), the sink snapshot, the statsd wire format
and the stats fields' config errors; sans-IO."""

from __future__ import annotations

from typing import Any

import pytest

from proxyd.config import compile_bootstrap
from proxyd.config.stats import DEFAULT_FLUSH_INTERVAL_S, build_view
from proxyd.epoch import StringMatch
from proxyd.errors import ConfigError
from proxyd.protocol.routing import compile_string_match
from proxyd.protocol.stats_tags import (
    StatsMatcher,
    StatsView,
    TagProducer,
    TagSpec,
    TokensTagExtractor,
    UnknownDefaultTag,
    regex_prefix,
)
from proxyd.protocol.statsd import StatsdFormat, datagrams, flush_lines, statsd_line
from proxyd.stats import StatsStore

# -- tag extraction ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("regex", "prefix"),
    [
        (r"^cluster\.((.+?)\.)", "cluster"),
        (r"^http(?=\.).*?\.rbac", "http"),
        (r"_rq(_(\d{3}))$", ""),
        (r"^(?:listener|server)\.worker_((\d+)\.)", ""),
        (r"^cluster$", "cluster"),
        (r"^clu.ster", ""),
    ],
)
def test_regex_prefix_is_envoys(regex: str, prefix: str) -> None:
    assert regex_prefix(regex) == prefix


@pytest.mark.parametrize(
    ("pattern", "name", "found"),
    [
        ("cluster.$.**", "cluster.up.upstream_rq_total", ("up", "cluster.upstream_rq_total")),
        # A trailing ** takes at least one token.
        ("cluster.$.**", "cluster.up", None),
        ("vhost.*.route.$.**", "vhost.v.route.r.upstream_rq_total", ("r", "vhost.v.route.upstream_rq_total")),
        ("mongo.*.collection.$.**.query.*", "mongo.p.collection.c.a.b.query.total", ("c", "mongo.p.collection.a.b.query.total")),
        ("mongo.*.collection.$.**.query.*", "mongo.p.collection.c.query", None),
        ("$.http_local_rate_limit.**", "x.http_local_rate_limit.ok", ("x", "http_local_rate_limit.ok")),
        ("tcp.$.**", "udp.a.b", None),
    ],
)  # fmt: skip
def test_token_patterns(pattern: str, name: str, found: tuple[str, str] | None) -> None:
    ex = TokensTagExtractor("t", pattern)
    got = ex.extract(name, name.split("."))
    if found is None:
        assert got is None
        return
    assert got is not None
    value, (start, end) = got
    assert (value, name[:start] + name[end:]) == found


def test_custom_tags_order_fixed_and_prefixed() -> None:
    producer = TagProducer(
        (
            TagSpec("team", fixed_value="edge"),
            TagSpec("stage", regex=r"^cluster\.\w+\.(upstream_)"),
            TagSpec("anywhere", regex=r"(_total)$"),
        )
    )
    name, tags = producer.produce("cluster.up.upstream_rq_total")
    # No-prefix extractors first (defaults, then custom), then the "cluster" ones.
    assert tags == (
        ("team", "edge"),
        ("anywhere", "_total"),
        ("envoy.cluster_name", "up"),
        ("stage", "upstream_"),
    )
    assert name == "cluster.rq"


def test_only_named_defaults_without_use_all_default_tags() -> None:
    producer = TagProducer((TagSpec("envoy.cluster_name"),), use_all_default_tags=False)
    assert producer.produce("cluster.up.upstream_rq_200") == (
        "cluster.upstream_rq_200",
        (("envoy.cluster_name", "up"),),
    )
    assert producer.produce("http.ingress.downstream_rq_total") == (
        "http.ingress.downstream_rq_total",
        (),
    )
    with pytest.raises(UnknownDefaultTag):
        TagProducer((TagSpec("nope"),))


def test_first_extractor_of_a_name_wins() -> None:
    producer = TagProducer(
        (TagSpec("x", regex=r"^a\.((\w+)\.)"), TagSpec("x", regex=r"\.((\w+))$")),
        use_all_default_tags=False,
    )
    # The no-prefix one runs first; the "a" one is then skipped.
    assert producer.produce("a.b.c") == ("a.b", (("x", "c"),))
    only_prefixed = TagProducer((TagSpec("x", regex=r"^a\.((\w+)\.)"),), False)
    assert only_prefixed.produce("a.b.c") == ("a.c", (("x", "b"),))


def test_negative_match_and_group_one_value() -> None:
    producer = TagProducer()
    assert producer.produce("listener.admin.downstream_cx_total")[1] == ()
    single = TagProducer((TagSpec("whole", regex=r"^server\.(\w+)_total$"),), False)
    assert single.produce("server.uptime_total") == ("server._total", (("whole", "uptime"),))


# -- the matcher --------------------------------------------------------------------


def _matcher(mode: str, *patterns: StringMatch) -> StatsMatcher:
    return StatsMatcher(mode, tuple(compile_string_match(p) for p in patterns))


def test_matcher_modes() -> None:
    prefix = StringMatch("prefix", "cluster.")
    assert _matcher("accept_all").accepts("x")
    assert not _matcher("reject_all").accepts("x")
    assert _matcher("inclusion", prefix).accepts("cluster.up.x")
    assert not _matcher("inclusion", prefix).accepts("server.live")
    assert not _matcher("exclusion", prefix).accepts("cluster.up.x")
    assert _matcher("exclusion", prefix).accepts("server.live")
    upper = StringMatch("suffix", "_TOTAL", ignore_case=True)
    assert not _matcher("exclusion", upper).accepts("cluster.up.upstream_rq_total")


# -- the store: admin pages and the sink snapshot --------------------------------


def _store(view: StatsView | None = None) -> StatsStore:
    s = StatsStore()
    if view is not None:
        s.configure(view)
    return s


def test_pages_hide_rejected_stats_and_use_custom_tags() -> None:
    view = StatsView(
        TagProducer((TagSpec("team", fixed_value="edge"),)),
        _matcher("exclusion", StringMatch("prefix", "server.")),
    )
    s = _store(view)
    s.set_gauge("server.live", 1)
    s.add_report(0, {"cluster.up.upstream_rq_total": 3}, {})
    assert s.render_text() == "cluster.up.upstream_rq_total: 3\n"
    assert [x["name"] for x in s.render_json()["stats"]] == ["cluster.up.upstream_rq_total"]
    assert s.render_prometheus() == (
        "# TYPE envoy_cluster_upstream_rq_total counter\n"
        'envoy_cluster_upstream_rq_total{team="edge",envoy_cluster_name="up"} 3\n'
    )
    assert s.counter("cluster.up.upstream_rq_total") == 3  # still counted


def test_sink_snapshot_sends_used_counters_as_deltas() -> None:
    s = _store()
    s.ensure_counters(["cluster.up.upstream_rq_timeout"])  # never counted: not sent
    s.add_report(0, {"cluster.up.upstream_rq_total": 2}, {"cluster.up.upstream_cx_active": 0})
    s.set_gauge("server.live", 1)
    assert s.sink_snapshot() == ([("cluster.up.upstream_rq_total", 2)], [("server.live", 1)])
    s.add_report(1, {"cluster.up.upstream_rq_total": 3}, {"cluster.up.upstream_cx_active": 1})
    counters, gauges = s.sink_snapshot()
    assert counters == [("cluster.up.upstream_rq_total", 3)]
    assert ("cluster.up.upstream_cx_active", 1) in gauges
    s.drop_worker(1)
    # Unchanged counters are sent with 0; a gauge once non-zero stays "used" at 0.
    counters, gauges = s.sink_snapshot()
    assert counters == [("cluster.up.upstream_rq_total", 0)]
    assert ("cluster.up.upstream_cx_active", 0) in gauges


def test_sink_snapshot_leaves_a_predecessors_counts_to_it() -> None:
    s = _store()
    s.add_counters({"cluster.up.upstream_rq_total": 40})  # hot restart: flushed by the old master
    s.add_report(0, {"cluster.up.upstream_rq_total": 2}, {})
    assert s.sink_snapshot()[0] == [("cluster.up.upstream_rq_total", 2)]


def test_sink_snapshot_applies_the_matcher() -> None:
    s = _store(StatsView(matcher=_matcher("reject_all")))
    s.add_report(0, {"cluster.up.upstream_rq_total": 2}, {})
    s.set_gauge("server.live", 1)
    assert s.sink_snapshot() == ([], [])


# -- the wire format ----------------------------------------------------------------


def test_statsd_and_dogstatsd_lines() -> None:
    plain = StatsdFormat()
    assert statsd_line(plain, "cluster.up.upstream_rq_total", 3, "c") == (
        "envoy.cluster.up.upstream_rq_total:3|c"
    )
    dog = StatsdFormat(prefix="p", use_tags=True)
    produce = TagProducer().produce
    lines = flush_lines(dog, [("cluster.up.upstream_rq_200", 1)], [("server.live", 1)], produce)
    assert lines == [
        "p.cluster.upstream_rq:1|c|#envoy.response_code:200,envoy.cluster_name:up",
        "p.server.live:1|g",
    ]


def test_datagrams_one_line_each_without_limit() -> None:
    assert datagrams(StatsdFormat(), ["a:1|c", "b:2|g"]) == [b"a:1|c", b"b:2|g"]


def test_datagrams_packed_up_to_the_limit() -> None:
    fmt = StatsdFormat(max_bytes_per_datagram=12)
    out = datagrams(fmt, ["a:1|c", "b:2|c", "c:3|c", "a_very_long_line:1|c", "d:4|g"])
    # "a:1|c\nb:2|c" is 11 bytes; a third line would make 17. A line over the limit goes
    # alone, without flushing what is buffered.
    assert out == [b"a:1|c\nb:2|c", b"a_very_long_line:1|c", b"c:3|c\nd:4|g"]
    assert all(len(d) <= 12 for d in out if b"\n" in d)


# -- config -------------------------------------------------------------------------


def _compile(extra: dict[str, Any]) -> Any:
    return compile_bootstrap(extra, "conf.yaml").stats


def _reject(extra: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(extra, "conf.yaml")
    return info.value


SINK = {
    "name": "envoy.stat_sinks.statsd",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.config.metrics.v3.StatsdSink",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8125}},
    },
}


def test_defaults_and_sinks() -> None:
    settings = _compile({})
    assert settings.flush_interval_s == DEFAULT_FLUSH_INTERVAL_S == 5.0
    assert settings.sinks == ()
    dog = {
        "name": "d",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink",
            "address": {"socket_address": {"address": "::1", "port_value": 9, "protocol": "UDP"}},
            "max_bytes_per_datagram": 100,
        },
    }
    settings = _compile({"stats_sinks": [SINK, dog], "stats_flush_interval": "1.5s"})
    assert settings.flush_interval_s == 1.5
    statsd, dogstatsd = settings.sinks
    assert (statsd.kind, statsd.address, statsd.port, statsd.format) == (
        "statsd", "127.0.0.1", 8125, StatsdFormat("envoy", False, 0),
    )  # fmt: skip
    assert dogstatsd.format == StatsdFormat("envoy", True, 100)
    view = build_view(_compile({"stats_config": {"stats_matcher": {"reject_all": True}}}))
    assert not view.matcher.accepts("server.live")


@pytest.mark.parametrize(
    ("extra", "path", "reason"),
    [
        ({"stats_config": {"stats_tags": [{"tag_name": "", "regex": "a(b)"}]}},
         "stats_config.stats_tags[0].tag_name", "tag_name cannot be empty"),
        ({"stats_config": {"stats_tags": [{"tag_name": "a", "regex": "x"}, {"tag_name": "foo"}]}},
         "stats_config.stats_tags[1]",
         "No regex specified for tag specifier and no default regex for name: 'foo'"),
        ({"stats_config": {"stats_tags": [{"tag_name": "a", "regex": "x(y"}]}},
         "stats_config.stats_tags[0].regex", "Invalid regex 'x(y'"),
        ({"stats_flush_on_admin": True, "stats_flush_interval": "1s"},
         "stats_flush_interval", "Only one of stats_flush_interval or stats_flush_on_admin"),
        ({"stats_sinks": [{"name": "foo"}]}, "stats_sinks[0]",
         "Didn't find a registered implementation for 'foo'"),
        ({"stats_sinks": [{**SINK, "typed_config": {**SINK["typed_config"], "address": {"socket_address": {"address": "localhost", "port_value": 1}}}}]},
         "stats_sinks[0].typed_config.address.socket_address.address", "malformed IP address"),
        ({"stats_sinks": [{"name": "s", "typed_config": {"@type": "type.googleapis.com/envoy.config.metrics.v3.StatsdSink", "tcp_cluster_name": "c"}}]},
         "stats_sinks[0].typed_config.tcp_cluster_name", "tcp statsd: node 'id' and 'cluster' are required"),
        ({"node": {"id": "a", "cluster": "b"}, "stats_sinks": [{"name": "s", "typed_config": {"@type": "type.googleapis.com/envoy.config.metrics.v3.StatsdSink", "tcp_cluster_name": "c"}}]},
         "stats_sinks[0].typed_config.tcp_cluster_name", "tcp statsd: unknown cluster 'c'"),
        ({"stats_config": {"histogram_bucket_settings": [{"match": {"prefix": "a"}, "buckets": [1], "bins": 10}]}},
         "stats_config.histogram_bucket_settings[0].bins", "field not supported by proxyd"),
        ({"stats_config": {"histogram_bucket_settings": [{"match": {"prefix": "a"}, "buckets": [1, 0]}]}},
         "stats_config.histogram_bucket_settings[0].buckets[1]", "value must be greater than 0"),
        ({"stats_config": {"histogram_bucket_settings": [{"match": {"prefix": "a"}, "buckets": [2, 2]}]}},
         "stats_config.histogram_bucket_settings[0].buckets[1]", "repeated value must contain unique items"),
        ({"stats_config": {"stats_matcher": {"inclusion_list": {"patterns": []}}}},
         "stats_config.stats_matcher.inclusion_list.patterns", ""),
        ({"stats_flush_interval": "400s"}, "stats_flush_interval", ""),
    ],
)  # fmt: skip
def test_config_errors(extra: dict[str, Any], path: str, reason: str) -> None:
    err = _reject(extra)
    assert err.path == path
    assert reason in err.reason


def test_custom_regex_values_as_std_regex() -> None:
    producer = TagProducer(
        (
            TagSpec("two", regex=r"^a\.(b(x?))\."),  # group 2 matched empty: value ""
            TagSpec("one", regex=r"\.(c)$"),
        ),
        use_all_default_tags=False,
    )
    # Trailing dots go (as Envoy's prometheus names show), leading ones stay.
    assert producer.produce("a.b.c") == ("a", (("one", "c"), ("two", "")))
    lead = TagProducer((TagSpec("lead", regex=r"^(cluster)\.up"),), use_all_default_tags=False)
    assert lead.produce("cluster.up.x") == (".up.x", (("lead", "cluster"),))
