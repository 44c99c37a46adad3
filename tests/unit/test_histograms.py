"""Histogram bins, quantiles and rendering (proxyd.protocol.histogram, proxyd.stats).

The expected values are what Envoy 1.x's admin printed for the same samples (five
request bodies of 100 bytes, four 0 ms and one 2 ms response, one 14 ms sample)."""

from __future__ import annotations

import json
import math

from proxyd.protocol import histogram as hist
from proxyd.protocol.header_sizes import request_map_size, response_map_size
from proxyd.protocol.stats_tags import StatsMatcher, StatsView, TagProducer
from proxyd.protocol.statsd import StatsdFormat, flush_lines, timer_samples
from proxyd.stats import StatsStore
from proxyd.worker.stats import StatsStore as WorkerStats


def bins_of(*values: int) -> hist.Bins:
    bins: hist.Bins = {}
    for v in values:
        hist.record(bins, v)
    return bins


def test_bin_keys_keep_two_significant_digits() -> None:
    assert [hist.bin_key(v) for v in (0, 7, 42, 99, 100, 109, 999, 1234, 98765, 1234567)] == [
        0, 7, 42, 99, 100, 100, 990, 1200, 98000, 1200000,
    ]  # fmt: skip
    assert hist.bin_key(-3) == 0
    assert hist.bounds(0) == (0.0, 0.0)
    assert hist.bounds(5) == (5.0, 0.1)
    assert hist.bounds(42) == (42.0, 1.0)
    assert hist.bounds(1200) == (1200.0, 100.0)
    # record() and bin_key() agree everywhere
    for v in (0, 1, 9, 10, 99, 100, 101, 999, 1000, 1001, 9999, 10000, 123456):
        assert list(bins_of(v)) == [hist.bin_key(v)]


def test_quantiles_as_envoy_prints_them() -> None:
    sizes = bins_of(100, 100, 100, 100, 100)
    assert hist.summary(sizes, sizes) == (
        "P0(101.66666666666667,101.66666666666667) P25(103.33333333333333,103.33333333333333) "
        "P50(105,105) P75(106.66666666666667,106.66666666666667) "
        "P90(108.33333333333333,108.33333333333333) P95(108.33333333333333,108.33333333333333) "
        "P99(108.33333333333333,108.33333333333333) "
        "P99.5(108.33333333333333,108.33333333333333) "
        "P99.9(108.33333333333333,108.33333333333333) P100(108.33333333333333,108.33333333333333)"
    )
    times = bins_of(2, 0, 0, 0, 0)
    assert hist.summary(times, times) == (
        "P0(0,0) P25(0,0) P50(0,0) P75(0,0) P90(2.05,2.05) P95(2.05,2.05) P99(2.05,2.05) "
        "P99.5(2.05,2.05) P99.9(2.05,2.05) P100(2.05,2.05)"
    )
    one = bins_of(14)
    assert hist.summary({}, one).startswith("P0(nan,14.5) P25(nan,14.5)")
    assert hist.summary({}, {}) == "No recorded values"


def test_quantiles_of_a_spread() -> None:
    bins = bins_of(*range(1, 101))  # 1..100 ms
    p = dict(zip(hist.QUANTILE_LABELS, hist.quantiles(bins), strict=True))
    assert p["0"] == 1.05
    assert 50 <= p["50"] < 51
    assert 90 <= p["90"] < 91
    assert 100 <= p["100"] <= 110
    qs = hist.quantiles(bins)
    assert qs == sorted(qs)
    assert all(math.isnan(q) for q in hist.quantiles({}))


def test_prometheus_buckets_sum_and_count() -> None:
    times = bins_of(2, 0, 0, 0, 0)
    assert hist.cumulative_buckets(times, hist.DEFAULT_BUCKETS)[:3] == [4, 4, 5]
    # Envoy: envoy_cluster_upstream_rq_time_sum{...} 2.0487804878048780921062643756159
    assert f"{hist.approx_sum(times):.32g}" == "2.0487804878048780921062643756159"
    # and for one sample of 14 (server.initialization_time_ms) and eight of 6
    assert f"{hist.approx_sum(bins_of(14)):.32g}" == "14.482758620689654804891688399948"
    assert f"{hist.approx_sum(bins_of(*[6] * 8)):.32g}" == "48.396694214876035289307765197009"
    # a sample of 1 lies in [1, 1.1): Envoy counts it under le="1" (the bin's start)
    assert hist.cumulative_buckets(bins_of(1), (0.5, 1, 5)) == [0, 1, 1]
    assert hist.cumulative_buckets(bins_of(100, 109, 110), (50, 100, 105, 110)) == [0, 2, 2, 3]


def test_merge_adds_bins() -> None:
    into = bins_of(1, 1, 200)
    hist.merge(into, bins_of(1, 250))
    assert into == {1: 3, 200: 1, 250: 1}
    assert hist.sample_count(into) == 5


def store_with(samples: dict[str, list[int]]) -> StatsStore:
    store = StatsStore()
    store.add_histograms({name: bins_of(*values) for name, values in samples.items()})
    return store


def test_store_renders_text_after_counters() -> None:
    store = store_with({"cluster.up.upstream_rq_time": [2, 0], "http.in.downstream_rq_time": []})
    store.add_counter("cluster.up.upstream_rq_total", 2)
    text = store.render_text()
    lines = text.splitlines()
    assert lines[0] == "cluster.up.upstream_rq_total: 2"
    assert lines[1].startswith("cluster.up.upstream_rq_time: P0(nan,0) ")  # no closed interval
    assert lines[2] == "http.in.downstream_rq_time: No recorded values"
    store.latch_histograms()
    assert "P100(2.05,2.05)" in store.render_text()
    assert "http.in.downstream_rq_time" not in store.render_text(used_only=True)
    assert "downstream_rq_time" not in store.render_text("upstream")
    # the next interval starts empty
    store.latch_histograms()
    assert "P100(nan,2.05)" in store.render_text()
    buckets = store.render_text("upstream_rq_time", buckets=True)
    assert buckets.startswith("cluster.up.upstream_rq_time: B0.5(0,1) B1(0,1) B5(0,2) ")
    assert buckets.endswith(" B1.8e+06(0,2) B3.6e+06(0,2)\n")


def test_store_renders_prometheus_with_tags() -> None:
    store = store_with({"cluster.up.upstream_rq_time": [2, 0, 0, 0, 0]})
    text = store.render_prometheus()
    assert text.startswith("# TYPE envoy_cluster_upstream_rq_time histogram\n")
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="up",le="0.5"} 4\n' in text
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="up",le="3600000"} 5\n' in text
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="up",le="+Inf"} 5\n' in text
    assert (
        'envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="up"} '
        "2.0487804878048780921062643756159\n"
    ) in text
    assert 'envoy_cluster_upstream_rq_time_count{envoy_cluster_name="up"} 5\n' in text
    assert text.count("_bucket{") == 20


def test_matcher_applies_to_histograms() -> None:
    store = store_with(
        {"cluster.up.upstream_rq_time": [1], "cluster.up.upstream_cx_length_ms": [3]}
    )
    from proxyd.epoch import StringMatch
    from proxyd.protocol.routing import compile_string_match

    reject = (compile_string_match(StringMatch("suffix", "_length_ms")),)
    store.configure(StatsView(TagProducer((), True), StatsMatcher("exclusion", reject)))
    assert "upstream_cx_length_ms" not in store.render_text()
    assert "upstream_cx_length_ms" not in store.render_prometheus()
    assert "upstream_rq_time" in store.render_prometheus()
    names = [
        h["name"] for h in store.render_json()["stats"][-1]["histograms"]["computed_quantiles"]
    ]  # type: ignore[index]
    assert names == ["cluster.up.upstream_rq_time"]


def test_json_form() -> None:
    store = store_with({"cluster.up.upstream_rq_time": [100] * 5, "x.never": []})
    store.latch_histograms()
    doc = store.render_json()
    h = doc["stats"][-1]["histograms"]
    assert h["supported_quantiles"] == [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]  # type: ignore[index]
    first, never = h["computed_quantiles"]  # type: ignore[index]
    assert first["values"][2] == {"interval": 105, "cumulative": 105}
    assert never["values"][0] == {"interval": None, "cumulative": None}
    json.dumps(doc)


def test_statsd_timers_from_bins() -> None:
    assert timer_samples(bins_of(3, 3, 150)) == [(3, "ms"), (3, "ms"), (155, "ms")]
    busy = timer_samples(bins_of(*([7] * 150), 8))
    assert busy == [(7, "ms|@0.00666667"), (8, "ms")]
    fmt = StatsdFormat(prefix="envoy")
    lines = flush_lines(
        fmt, [], [], lambda n: (n, ()), [("cluster.up.upstream_rq_time", bins_of(4))]
    )
    assert lines == ["envoy.cluster.up.upstream_rq_time:4|ms"]
    dog = StatsdFormat(prefix="envoy", use_tags=True)
    produce = StatsView().tags.produce
    lines = flush_lines(dog, [], [], produce, [("cluster.up.upstream_rq_time", bins_of(4))])
    assert lines == ["envoy.cluster.upstream_rq_time:4|ms|#envoy.cluster_name:up"]


def test_worker_scopes_ship_deltas() -> None:
    stats = WorkerStats()
    cluster = stats.cluster("up")
    http = stats.http("in")
    first = stats.report_histograms()
    # created with the scope, as Envoy's: reported (empty) at once; upstream_rq_time waits
    assert first == {
        "cluster.up.upstream_cx_connect_ms": {},
        "cluster.up.upstream_cx_length_ms": {},
        "cluster.up.upstream_rq_per_cx": {},
        "http.in.downstream_rq_time": {},
        "http.in.downstream_cx_length_ms": {},
    }
    hist.record(cluster.h_rq_time, 12)
    hist.record(http.h_rq_time, 12)
    hist.record(http.h_rq_time, 130)
    assert stats.report_histograms() == {
        "cluster.up.upstream_rq_time": {12: 1},
        "http.in.downstream_rq_time": {12: 1, 130: 1},
    }
    assert stats.report_histograms() == {}
    cluster.track(timeout_budgets=True, request_response_sizes=False)
    assert set(stats.report_histograms()) == {
        "cluster.up.upstream_cx_connect_ms",
        "cluster.up.upstream_cx_length_ms",
        "cluster.up.upstream_rq_per_cx",
        "cluster.up.upstream_rq_timeout_budget_percent_used",
        "cluster.up.upstream_rq_timeout_budget_per_try_percent_used",
    }


def test_header_map_sizes() -> None:
    head = (
        b"POST /x HTTP/1.1\r\nhost: 127.0.0.1:10000\r\naccept-encoding: identity\r\n"
        b"content-length: 100\r\nx-a: b\r\nx-forwarded-proto: http\r\n"
        b"x-request-id: 0c8d7e3a-5f41-4d86-9d5f-0d6a4bd1b9a2\r\n"
        b"x-envoy-expected-rq-timeout-ms: 15000\r\n\r\n"
    )
    # Envoy: 10 headers, 202 bytes for this request (:authority, :path, :method,
    # :scheme and the seven above but host)
    assert request_map_size(head, tls=False) == (202, 10)
    assert request_map_size(head, tls=True) == (203, 10)
    response = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length:  3 \r\n\r\n"
    assert response_map_size(response) == (len(":status200") + 7 + 15, 3)


def test_histogram_bucket_settings_choose_the_bounds() -> None:
    from proxyd.epoch import StringMatch
    from proxyd.protocol.routing import compile_string_match

    rules = (
        (compile_string_match(StringMatch("suffix", "_rq_time")), (2.5, 10.0)),
        (compile_string_match(StringMatch("prefix", "cluster.")), (1.0,)),
    )
    store = store_with({"cluster.up.upstream_rq_time": [2, 3], "cluster.up.upstream_cx_length_ms": [0], "http.in.downstream_cx_length_ms": [7]})  # fmt: skip
    store.configure(StatsView(TagProducer((), True), StatsMatcher(), rules))
    text = store.render_prometheus()
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="up",le="2.5"} 1\n' in text
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="up",le="10"} 2\n' in text
    assert 'envoy_cluster_upstream_cx_length_ms_bucket{envoy_cluster_name="up",le="1"} 1\n' in text
    assert text.count("envoy_cluster_upstream_cx_length_ms_bucket") == 2  # 1 and +Inf
    assert text.count("envoy_http_downstream_cx_length_ms_bucket") == 20  # the default ones
    assert "cluster.up.upstream_rq_time: B2.5(0,1) B10(0,2)\n" in store.render_text(buckets=True)
