"""Stats totals kept by the master, rendered the way Envoy's admin renders them.

Workers keep counters as plain integers and ship them in ``ipc.StatsReport`` frames:
counter *deltas* since the last report and gauges as *absolute* values. The master's
:class:`StatsStore` sums the deltas into totals and keeps the latest gauges per worker;
a gauge total is the sum over the live workers (a worker that died takes its gauges
with it; its counters stay counted). The master sets its own values (``server.*``,
``cluster_manager.*``) with :meth:`StatsStore.set_gauge` and :meth:`StatsStore.add_counter`.

Names are Envoy's ("cluster.up.upstream_rq_total"). A key of the form
``<cluster>::<ip>:<port>::<stat>`` is a per-host value for ``/clusters`` (Envoy keeps
those outside the stats tree too) and is never listed by ``/stats``.

Histograms arrive as bins (:mod:`proxyd.protocol.histogram`) recorded since the
worker's last report; the store adds them to a cumulative total and to the current
interval, which :meth:`StatsStore.latch_histograms` closes at every stats flush (as
Envoy merges its histograms at each ``stats_flush_interval``): ``/stats`` shows each
histogram's quantiles for the last closed interval and for all time, and the sinks get
the closed interval's samples.

Rendering is sans-IO: :meth:`StatsStore.render_text` is Envoy's ``/stats`` ("name: value"
lines sorted by name) and :meth:`StatsStore.render_prometheus` is ``/stats/prometheus``
with Envoy's tag extraction. Both show only the stats ``stats_config.stats_matcher``
accepts, and the tags are ``stats_config``'s (:class:`proxyd.protocol.stats_tags.StatsView`, set
with :meth:`StatsStore.configure`); the store itself keeps every stat, so what the
master reads for its own decisions does not depend on what is shown.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from functools import cache

from proxyd.protocol import histogram as hist
from proxyd.protocol.stats_tags import StatsView

HOST_SEP = "::"


@cache
def _default_view() -> StatsView:
    # Built on first use: a worker imports this module for HOST_SEP only.
    return StatsView()


def extract_tags(name: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Envoy's default tag extraction: ``(tag-extracted name, ((tag, value), ...))``.

    >>> extract_tags("cluster.up.upstream_rq_2xx")
    ('cluster.upstream_rq_xx', (('envoy.response_code_class', '2'), ('envoy.cluster_name', 'up')))
    """
    return _default_view().tags.produce(name)


_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(name: str) -> str:
    """Envoy's metric name for a tag-extracted stat name."""
    return "envoy_" + _UNSAFE.sub("_", name)


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(tags: tuple[tuple[str, str], ...]) -> str:
    inner = ",".join(f'{_UNSAFE.sub("_", k)}="{_label_value(v)}"' for k, v in tags)
    return "{" + inner + "}"


def _json_number(value: float) -> float | int | None:
    """A quantile in ``/stats?format=json``: integral values as integers, as Envoy's."""
    if value != value:  # NaN: no sample in the interval
        return None
    return int(value) if value == int(value) else value


# -- the store ------------------------------------------------------------------------


class StatsStore:
    """Counter totals and per-worker gauges; sans-IO."""

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}
        self._worker_gauges: dict[int, dict[str, int]] = {}
        self._master_gauges: dict[str, int] = {}
        self._host_counters: dict[str, int] = {}
        self._worker_host_gauges: dict[int, dict[str, int]] = {}
        # Envoy's text readouts (an xDS subscription's version_text, ...).
        self._texts: dict[str, str] = {}
        # stats_config: the tags and the matcher, applied when rendering.
        self.view = _default_view()
        # Counter totals at the last sink flush, and the part of each total that came
        # from a hot-restart predecessor (which flushed it to the sinks itself).
        self._flushed: dict[str, int] = {}
        # Master gauges set at least once, and worker gauges seen non-zero: Envoy's
        # "used" gauges, the ones a sink flush sends.
        self._used_gauges: set[str] = set()
        # Histogram bins: for all time, since the last latch, in the last closed interval.
        self._hist_total: dict[str, hist.Bins] = {}
        self._hist_pending: dict[str, hist.Bins] = {}
        self._hist_interval: dict[str, hist.Bins] = {}

    def configure(self, view: StatsView) -> None:
        """Use ``stats_config``'s tags and matcher from now on."""
        self.view = view

    # -- input ------------------------------------------------------------------------

    def add_report(self, worker_id: int, counters: dict[str, int], gauges: dict[str, int]) -> None:
        """A worker's ``StatsReport``: counters are deltas, gauges absolute values."""
        for name, delta in counters.items():
            target = self._host_counters if HOST_SEP in name else self._counters
            target[name] = target.get(name, 0) + int(delta)
        plain = self._worker_gauges.setdefault(worker_id, {})
        hosts = self._worker_host_gauges.setdefault(worker_id, {})
        for name, value in gauges.items():
            (hosts if HOST_SEP in name else plain)[name] = int(value)

    def add_histograms(self, histograms: dict[str, dict[int, int]]) -> None:
        """A worker's histogram bins since its last report (a name with no bins makes
        the histogram known: Envoy lists it as "No recorded values")."""
        total = self._hist_total
        pending = self._hist_pending
        for name, bins in histograms.items():
            hist.merge(total.setdefault(name, {}), bins)
            hist.merge(pending.setdefault(name, {}), bins)

    def record(self, name: str, value: int) -> None:
        """A sample the master takes itself (its admin listener's histograms)."""
        hist.record(self._hist_total.setdefault(name, {}), value)
        hist.record(self._hist_pending.setdefault(name, {}), value)

    def ensure_histograms(self, names: tuple[str, ...]) -> None:
        """Make histograms visible ("No recorded values") before any sample."""
        for name in names:
            self._hist_total.setdefault(name, {})

    def latch_histograms(self) -> dict[str, hist.Bins]:
        """Close the current interval (a stats flush): its bins become what ``/stats``
        shows as the interval values, and are returned for the sinks."""
        self._hist_interval, self._hist_pending = self._hist_pending, {}
        return self._hist_interval

    def histogram(self, name: str) -> hist.Bins:
        """The cumulative bins of one histogram (empty when unknown)."""
        return dict(self._hist_total.get(name, {}))

    def drop_worker(self, worker_id: int) -> None:
        """A worker exited: its gauges no longer describe anything; counters stay."""
        self._worker_gauges.pop(worker_id, None)
        self._worker_host_gauges.pop(worker_id, None)

    def add_counter(self, name: str, delta: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + delta

    def counter_totals(self) -> dict[str, int]:
        """Every counter total, per-host ones included: what a hot-restart successor
        carries over (gauges describe live processes and do not carry over)."""
        return {**self._counters, **self._host_counters}

    def add_counters(self, deltas: dict[str, int]) -> None:
        """Add counters from elsewhere (a hot-restart predecessor's totals or deltas).

        The predecessor sent these to the stats sinks itself, so they count as flushed."""
        flushed = self._flushed
        for name, delta in deltas.items():
            target = self._host_counters if HOST_SEP in name else self._counters
            target[name] = target.get(name, 0) + int(delta)
            if target is self._counters:
                flushed[name] = flushed.get(name, 0) + int(delta)

    def ensure_counters(self, names: list[str] | tuple[str, ...]) -> None:
        """Make counters visible at 0 before anything has counted them (as Envoy does)."""
        for name in names:
            self._counters.setdefault(name, 0)

    def set_gauge(self, name: str, value: int) -> None:
        """A gauge the master owns (server.*, cluster.<name>.membership_*)."""
        self._master_gauges[name] = int(value)
        self._used_gauges.add(name)

    def set_text(self, name: str, value: str) -> None:
        """A text readout the master owns (``<subscription>.version_text``)."""
        self._texts[name] = value

    def text(self, name: str) -> str:
        return self._texts.get(name, "")

    def remove_gauges(self, prefix: str) -> None:
        """Forget master gauges under ``prefix`` (a cluster or listener went away)."""
        for name in [n for n in self._master_gauges if n.startswith(prefix)]:
            del self._master_gauges[name]

    # -- totals -----------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def gauges(self) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        for per_worker in self._worker_gauges.values():
            for name, value in per_worker.items():
                total[name] += value
        total.update(self._master_gauges)
        return dict(total)

    def counter(self, name: str) -> int:
        return self._counters.get(name, 0)

    def gauge(self, name: str) -> int:
        return self.gauges().get(name, 0)

    def host_stats(self, cluster: str, host: str) -> dict[str, int]:
        """Per-host values for /clusters: ``{"rq_total": 7, "cx_active": 1, ...}``."""
        prefix = f"{cluster}{HOST_SEP}{host}{HOST_SEP}"
        out: dict[str, int] = defaultdict(int)
        for name, value in self._host_counters.items():
            if name.startswith(prefix):
                out[name[len(prefix) :]] += value
        for per_worker in self._worker_host_gauges.values():
            for name, value in per_worker.items():
                if name.startswith(prefix):
                    out[name[len(prefix) :]] += value
        return dict(out)

    # -- rendering --------------------------------------------------------------------

    def render_text(
        self, filter_regex: str | None = None, used_only: bool = False, buckets: bool = False
    ) -> str:
        """Envoy's ``/stats``: "name: value" lines sorted by name, then the histograms
        sorted by name.

        ``filter_regex`` and ``used_only`` are Envoy's ``filter`` and ``usedonly`` query
        parameters (usedonly: counters that are non-zero and histograms with a sample;
        gauges are always listed); ``buckets`` is ``histogram_buckets=cumulative``.
        """
        values: dict[str, int] = {}
        for name, value in self._counters.items():
            if not used_only or value:
                values[name] = value
        values.update(self.gauges())
        shown: dict[str, str] = {n: str(v) for n, v in values.items()}
        shown.update((n, json.dumps(v)) for n, v in self._texts.items())  # quoted, as Envoy
        pattern = re.compile(filter_regex) if filter_regex else None
        accepts = self.view.matcher.accepts
        lines = [
            f"{name}: {shown[name]}\n"
            for name in sorted(shown)
            if (pattern is None or pattern.search(name)) and accepts(name)
        ]
        interval = self._hist_interval
        for name in sorted(self._hist_total):
            if (pattern is not None and not pattern.search(name)) or not accepts(name):
                continue
            total = self._hist_total[name]
            if used_only and not hist.sample_count(total):
                continue
            recent = interval.get(name, {})
            if buckets:
                text = hist.bucket_summary(recent, total, self._buckets(name))
            else:
                text = hist.summary(recent, total)
            lines.append(f"{name}: {text}\n")
        return "".join(lines)

    def render_json(self, filter_regex: str | None = None) -> dict[str, list[dict[str, object]]]:
        """Envoy's ``/stats?format=json``: ``{"stats": [{"name": ..., "value": ...}]}``."""
        values: dict[str, object] = {**self._counters, **self.gauges(), **self._texts}
        pattern = re.compile(filter_regex) if filter_regex else None
        accepts = self.view.matcher.accepts
        stats: list[dict[str, object]] = [
            {"name": name, "value": values[name]}
            for name in sorted(values)
            if (pattern is None or pattern.search(name)) and accepts(name)
        ]
        computed = []
        for name in sorted(self._hist_total):
            if (pattern is not None and not pattern.search(name)) or not accepts(name):
                continue
            total = self._hist_total[name]
            if hist.sample_count(total):
                inner = hist.quantiles(self._hist_interval.get(name, {}))
                outer = hist.quantiles(total)
                entries = [
                    {"interval": _json_number(i), "cumulative": _json_number(c)}
                    for i, c in zip(inner, outer, strict=True)
                ]
            else:
                entries = [{"interval": None, "cumulative": None} for _ in hist.QUANTILES]
            computed.append({"name": name, "values": entries})
        if computed:
            quantiles = [float(label) if "." in label else int(label) for label in hist.QUANTILE_LABELS]  # fmt: skip
            stats.append(
                {"histograms": {"supported_quantiles": quantiles, "computed_quantiles": computed}}
            )
        return {"stats": stats}

    def render_prometheus(self) -> str:
        """Envoy's ``/stats/prometheus``: counters, then gauges, each family sorted;
        names and labels from the tag extraction ``stats_config`` sets."""
        out: list[str] = []
        produce = self.view.tags.produce
        accepts = self.view.matcher.accepts
        for kind, values in (("counter", self._counters), ("gauge", self.gauges())):
            families: dict[str, list[tuple[str, int]]] = defaultdict(list)
            for name, value in values.items():
                if not accepts(name):
                    continue
                base, tags = produce(name)
                families[prometheus_name(base)].append((_labels(tags), value))
            for metric in sorted(families):
                out.append(f"# TYPE {metric} {kind}\n")
                for labels, value in sorted(families[metric]):
                    out.append(f"{metric}{labels} {value}\n")
        self._render_prometheus_histograms(out)
        return "".join(out)

    def _buckets(self, name: str) -> tuple[float, ...]:
        """``histogram_bucket_settings``' bounds for ``name``, else Envoy's default."""
        configured = self.view.buckets_for(name)
        return hist.DEFAULT_BUCKETS if configured is None else configured

    def _render_prometheus_histograms(self, out: list[str]) -> None:
        """``# TYPE <name> histogram``: cumulative ``_bucket`` lines at Envoy's default
        bounds and ``+Inf``, then ``_sum`` and ``_count``, per tag set."""
        produce = self.view.tags.produce
        accepts = self.view.matcher.accepts
        families: dict[str, list[tuple[tuple[tuple[str, str], ...], hist.Bins, tuple[float, ...]]]]
        families = defaultdict(list)
        for name, bins in self._hist_total.items():
            if accepts(name):
                base, tags = produce(name)
                families[prometheus_name(base)].append((tags, bins, self._buckets(name)))
        for metric in sorted(families):
            out.append(f"# TYPE {metric} histogram\n")
            for tags, bins, limits in sorted(families[metric], key=lambda item: _labels(item[0])):
                counts = hist.cumulative_buckets(bins, limits)
                for bound, count in zip(limits, counts, strict=True):
                    labels = _labels((*tags, ("le", hist.number(bound))))
                    out.append(f"{metric}_bucket{labels} {count}\n")
                total = hist.sample_count(bins)
                out.append(f"{metric}_bucket{_labels((*tags, ('le', '+Inf')))} {total}\n")
                plain = _labels(tags)
                out.append(f"{metric}_sum{plain} {hist.approx_sum(bins):.32g}\n")
                out.append(f"{metric}_count{plain} {total}\n")

    # -- sinks ------------------------------------------------------------------------

    def sink_snapshot(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """What one flush to the stats sinks sends, as Envoy's MetricSnapshot gives it to
        its statsd sinks: ``(counters, gauges)``, each ``(name, value)``.

        Counters are the *used* ones (counted at least once) with their change since
        the previous flush, 0 included; gauges are the used ones with their value.
        Stats the matcher rejects are left out. Each call latches the counters."""
        accepts = self.view.matcher.accepts
        flushed = self._flushed
        counters: list[tuple[str, int]] = []
        for name, total in self._counters.items():
            if not total or not accepts(name):
                continue
            counters.append((name, total - flushed.get(name, 0)))
            flushed[name] = total
        used = self._used_gauges
        gauges: list[tuple[str, int]] = []
        for name, value in self.gauges().items():
            if value:
                used.add(name)
            elif name not in used:
                continue
            if accepts(name):
                gauges.append((name, value))
        return counters, gauges
