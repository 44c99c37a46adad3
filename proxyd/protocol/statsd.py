"""The statsd and DogStatsD wire format, as Envoy's UDP statsd sinks write it; sans-IO.

Envoy's ``envoy.stat_sinks.statsd`` writes ``<prefix>.<full stat name>:<value>|<type>``:
counters as the change since the previous flush (``|c``), gauges as their value
(``|g``), each line its own datagram. ``envoy.stat_sinks.dog_statsd`` writes the
tag-extracted name and the tags after the value,
``<prefix>.<name>:<value>|c|#<tag>:<value>,<tag>:<value>``, and packs lines into
datagrams of at most ``max_bytes_per_datagram`` bytes joined by newlines (a line longer
than that still goes alone).

Histograms are written as Envoy writes them, timers (``<name>:<value>|ms``), but from
the bins the workers shipped rather than from each raw sample: a histogram with at most
:data:`TIMER_LINES_PER_FLUSH` samples in the flush interval gets one line per sample
(the sample's bin representative: the sample itself below 100, the bin's middle above),
a busier one one line per bin with statsd's sample rate (``|@0.04`` for 25 samples), so
a flush stays bounded and the receiver's counts stay right.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from proxyd.protocol.histogram import representative

Tags = tuple[tuple[str, str], ...]
TIMER_LINES_PER_FLUSH = 100


@dataclass(frozen=True, slots=True)
class StatsdFormat:
    """How one sink writes a line."""

    prefix: str = "envoy"
    # DogStatsD: the tag-extracted name and "|#tag:value,..." after the type.
    use_tags: bool = False
    # Envoy's batch size: 0 sends every line alone.
    max_bytes_per_datagram: int = 0


def statsd_line(fmt: StatsdFormat, name: str, value: int, kind: str, tags: Tags = ()) -> str:
    """One line: ``kind`` is "c", "g" or "ms" (with a sample rate: "ms|@0.5");
    ``name`` is already tag-extracted when ``fmt.use_tags`` (the caller knows the tag
    producer)."""
    line = f"{fmt.prefix}.{name}:{value}|{kind}"
    if fmt.use_tags and tags:
        line += "|#" + ",".join(f"{k}:{v}" for k, v in tags)
    return line


def timer_samples(bins: Mapping[int, int]) -> list[tuple[int, str]]:
    """``(value, kind)`` for each timer line of one histogram's interval bins."""
    total = sum(bins.values())
    out: list[tuple[int, str]] = []
    for key in sorted(bins):
        count = bins[key]
        if not count:
            continue
        value = representative(key)
        if total <= TIMER_LINES_PER_FLUSH or count == 1:
            out.extend([(value, "ms")] * count)
        else:
            out.append((value, f"ms|@{1 / count:.6g}"))
    return out


def flush_lines(
    fmt: StatsdFormat,
    counters: Iterable[tuple[str, int]],
    gauges: Iterable[tuple[str, int]],
    produce: Callable[[str], tuple[str, Tags]],
    histograms: Iterable[tuple[str, Mapping[int, int]]] = (),
) -> list[str]:
    """Every line of one flush: the counters (their deltas), the gauges, then the
    histograms' samples of the interval as timers."""
    lines: list[str] = []
    for kind, values in (("c", counters), ("g", gauges)):
        for name, value in values:
            if fmt.use_tags:
                base, tags = produce(name)
                lines.append(statsd_line(fmt, base, value, kind, tags))
            else:
                lines.append(statsd_line(fmt, name, value, kind))
    for name, bins in histograms:
        base, tags = produce(name) if fmt.use_tags else (name, ())
        for value, kind in timer_samples(bins):
            lines.append(statsd_line(fmt, base, value, kind, tags))
    return lines


def datagrams(fmt: StatsdFormat, lines: Iterable[str]) -> list[bytes]:
    """The datagrams Envoy's UdpStatsdSink sends for ``lines`` (its ``writeBuffer``)."""
    limit = fmt.max_bytes_per_datagram
    out: list[bytes] = []
    buffer = b""
    for text in lines:
        line = text.encode()
        if len(line) >= limit:  # always, when there is no limit: one line per datagram
            out.append(line)
            continue
        if buffer and len(buffer) + len(line) + 1 > limit:
            out.append(buffer)
            buffer = b""
        buffer = buffer + b"\n" + line if buffer else line
    if buffer:
        out.append(buffer)
    return out
