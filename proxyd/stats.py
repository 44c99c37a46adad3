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

Rendering is sans-IO: :meth:`StatsStore.render_text` is Envoy's ``/stats`` ("name: value"
lines sorted by name) and :meth:`StatsStore.render_prometheus` is ``/stats/prometheus``
with Envoy's default tag extraction (:func:`extract_tags`).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

HOST_SEP = "::"

# -- tag extraction (Envoy's source/common/config/well_known_names.cc) ----------------

_WORD = r"[^\.]+"
_ADDRESS = r"(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}_\d+|\[[_aAbBcCdDeEfF0-9]+\]_\d+)"
_EXPAND = {
    "<ADDRESS>": _ADDRESS,
    "<CIPHER>": r"[0-9A-Za-z_-]+",
    "<ROUTE_CONFIG_NAME>": r"[\w\-\.]+",
}


@dataclass(frozen=True, slots=True)
class TagExtractor:
    """One of Envoy's default tag regexes.

    Group 1 is removed from the stat name, group 2 is the tag value. Like Envoy, every
    extractor runs on the original name and the removals are applied together.
    """

    name: str
    regex: re.Pattern[str]
    # Envoy's cheap pre-filter: the regex is tried only when this substring is present.
    substr: str = ""


def _extractor(name: str, regex: str, substr: str = "") -> TagExtractor:
    for key, value in _EXPAND.items():
        regex = regex.replace(key, value)
    regex = re.sub(r"<[A-Z_]+>", lambda _m: _WORD, regex)
    return TagExtractor(name, re.compile(regex), substr)


# In Envoy's order (it is also the order of the labels in /stats/prometheus).
DEFAULT_TAG_EXTRACTORS: tuple[TagExtractor, ...] = (
    _extractor("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_"),
    _extractor("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_"),
    _extractor(
        "envoy.http_user_agent",
        r"^http\.<STAT_PREFIX>\.user_agent\.((<USER_AGENT>)\.)",
        ".user_agent.",
    ),
    _extractor(
        "envoy.virtual_cluster",
        r"^vhost\.<VIRTUAL_HOST_NAME>\.vcluster\.((<VIRTUAL_CLUSTER_NAME>)\.)",
        ".vcluster.",
    ),
    _extractor(
        "envoy.fault_downstream_cluster",
        r"^http\.<STAT_PREFIX>\.fault\.((<DOWNSTREAM_CLUSTER>)\.)",
        ".fault.",
    ),
    _extractor("envoy.ssl_cipher", r"^listener\..*?\.ssl\.cipher(\.(<CIPHER>))$"),
    _extractor(
        "envoy.ssl_cipher_suite",
        r"^cluster\.<CLUSTER_NAME>\.ssl\.ciphers(\.(<CIPHER>))$",
        ".ssl.ciphers.",
    ),
    _extractor("envoy.tcp_prefix", r"^tcp\.((<STAT_PREFIX>)\.)"),
    _extractor("envoy.udp_prefix", r"^udp\.((<STAT_PREFIX>)\.)"),
    _extractor("envoy.ratelimit_prefix", r"^ratelimit\.((<STAT_PREFIX>)\.)"),
    # Per-worker scopes: listener.<address>.worker_<id>. and server.worker_<id>.
    _extractor("envoy.worker_id", r"^listener\.<ADDRESS>\.worker_((\d+)\.)", ".worker_"),
    _extractor("envoy.worker_id", r"^server\.worker_((\d+)\.)", "server.worker_"),
    _extractor(
        "envoy.worker_id",
        r"^thread_local_cluster_manager\.worker_((\d+)\.)",
        "thread_local_cluster_manager.worker_",
    ),
    _extractor("envoy.cluster_name", r"^cluster\.((<CLUSTER_NAME>)\.)"),
    _extractor(
        "envoy.http_conn_manager_prefix",
        r"^listener\..*?\.http\.((<STAT_PREFIX>)\.)",
        ".http.",
    ),
    _extractor("envoy.http_conn_manager_prefix", r"^http\.((<STAT_PREFIX>)\.)"),
    _extractor("envoy.listener_address", r"^listener\.((<ADDRESS>)\.)"),
    _extractor("envoy.virtual_host", r"^vhost\.((<VIRTUAL_HOST_NAME>)\.)"),
    _extractor(
        "envoy.rds_route_config",
        r"^http\.<STAT_PREFIX>\.rds\.((<ROUTE_CONFIG_NAME>)\.)\w+?$",
        ".rds.",
    ),
    _extractor(
        "envoy.worker_id", r"^listener_manager\.((worker_\d+)\.)", "listener_manager.worker_"
    ),
)


@lru_cache(maxsize=65536)
def extract_tags(name: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Envoy's tag extraction: ``(tag-extracted name, ((tag, value), ...))``.

    >>> extract_tags("cluster.up.upstream_rq_2xx")
    ('cluster.upstream_rq_xx', (('envoy.response_code_class', '2'), ('envoy.cluster_name', 'up')))
    """
    removed: list[tuple[int, int]] = []
    tags: list[tuple[str, str]] = []
    for ex in DEFAULT_TAG_EXTRACTORS:
        if ex.substr and ex.substr not in name:
            continue
        m = ex.regex.search(name)
        if m is None:
            continue
        tags.append((ex.name, m.group(2)))
        removed.append(m.span(1))
    if not removed:
        return name, ()
    keep = [True] * len(name)
    for start, end in removed:
        for i in range(start, end):
            keep[i] = False
    return "".join(c for c, k in zip(name, keep, strict=True) if k), tuple(tags)


_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(name: str) -> str:
    """Envoy's metric name for a tag-extracted stat name."""
    return "envoy_" + _UNSAFE.sub("_", name)


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(tags: tuple[tuple[str, str], ...]) -> str:
    inner = ",".join(f'{_UNSAFE.sub("_", k)}="{_label_value(v)}"' for k, v in tags)
    return "{" + inner + "}"


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
        """Add counters from elsewhere (a hot-restart predecessor's totals or deltas)."""
        for name, delta in deltas.items():
            target = self._host_counters if HOST_SEP in name else self._counters
            target[name] = target.get(name, 0) + int(delta)

    def ensure_counters(self, names: list[str] | tuple[str, ...]) -> None:
        """Make counters visible at 0 before anything has counted them (as Envoy does)."""
        for name in names:
            self._counters.setdefault(name, 0)

    def set_gauge(self, name: str, value: int) -> None:
        """A gauge the master owns (server.*, cluster.<name>.membership_*)."""
        self._master_gauges[name] = int(value)

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

    def render_text(self, filter_regex: str | None = None, used_only: bool = False) -> str:
        """Envoy's ``/stats``: "name: value" lines sorted by name.

        ``filter_regex`` and ``used_only`` are Envoy's ``filter`` and ``usedonly`` query
        parameters (usedonly: counters that are non-zero; gauges are always listed).
        """
        values: dict[str, int] = {}
        for name, value in self._counters.items():
            if not used_only or value:
                values[name] = value
        values.update(self.gauges())
        shown: dict[str, str] = {n: str(v) for n, v in values.items()}
        shown.update((n, json.dumps(v)) for n, v in self._texts.items())  # quoted, as Envoy
        pattern = re.compile(filter_regex) if filter_regex else None
        lines = [
            f"{name}: {shown[name]}\n"
            for name in sorted(shown)
            if pattern is None or pattern.search(name)
        ]
        return "".join(lines)

    def render_json(self, filter_regex: str | None = None) -> dict[str, list[dict[str, object]]]:
        """Envoy's ``/stats?format=json``: ``{"stats": [{"name": ..., "value": ...}]}``."""
        values: dict[str, object] = {**self._counters, **self.gauges(), **self._texts}
        pattern = re.compile(filter_regex) if filter_regex else None
        return {
            "stats": [
                {"name": name, "value": values[name]}
                for name in sorted(values)
                if pattern is None or pattern.search(name)
            ]
        }

    def render_prometheus(self) -> str:
        """Envoy's ``/stats/prometheus``: counters, then gauges, each family sorted."""
        out: list[str] = []
        for kind, values in (("counter", self._counters), ("gauge", self.gauges())):
            families: dict[str, list[tuple[str, int]]] = defaultdict(list)
            for name, value in values.items():
                base, tags = extract_tags(name)
                families[prometheus_name(base)].append((_labels(tags), value))
            for metric in sorted(families):
                out.append(f"# TYPE {metric} {kind}\n")
                for labels, value in sorted(families[metric]):
                    out.append(f"{metric}{labels} {value}\n")
        return "".join(out)
