"""Histograms as Envoy keeps them (its circllhist): log-linear bins of two significant
decimal digits; sans-IO.

A worker records integer samples (milliseconds, bytes, percents) with :func:`record`:
the bin's key is the sample with all but its two leading digits zeroed (``1234`` →
``1200``; ``0`` to ``99`` are their own keys), and a histogram is a plain
``dict[key, count]``. Workers ship those dicts as deltas; the master adds them up
(:func:`merge`) and computes what Envoy's admin shows from the bins alone:

* bin ``k`` covers ``[k, k + width)``, the width being one unit of its second digit
  (``0.1`` for 1–9, ``1`` for 10–99, ``10`` for 100–999, …); ``0`` is a bin of width 0.
  An integer sample ``5`` is therefore read as lying in ``[5, 5.1)``, as in Envoy;
* a quantile ``q`` of ``n`` samples is the sample of rank ``max(1, ceil(q·n))``, the
  ``c`` samples of a bin taken as evenly spread inside it (the ``j``-th at
  ``lo + width·j/(c+1)``): Envoy's ``P50`` of five samples of 100 is 105, its ``P0``
  101.67;
* a Prometheus bucket ``le=b`` counts the samples of the bins that start at or below
  ``b`` (so an integer sample ``b`` is under ``le=b``); ``_sum`` adds each bin's count times a point about the harmonic mean of its
  bounds (both as Envoy's circllhist computes them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

# Envoy's supported quantiles, in percent for the text form ("P99.5").
QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0)
QUANTILE_LABELS = ("0", "25", "50", "75", "90", "95", "99", "99.5", "99.9", "100")
# Envoy's default histogram bucket bounds for /stats/prometheus.
DEFAULT_BUCKETS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip

Bins = dict[int, int]


def bin_key(value: int) -> int:
    """The bin of an integer sample (negative samples count as 0)."""
    if value < 100:
        return value if value > 0 else 0
    if value < 1000:
        return value - value % 10
    if value < 10000:
        return value - value % 100
    unit = 10 ** (len(str(value)) - 2)
    return value - value % unit


def record(bins: Bins, value: int) -> None:
    """One sample: the worker's whole cost of a histogram (a few compares and a dict
    increment; no allocation once the bin exists)."""
    if value < 100:
        key = value if value > 0 else 0
    elif value < 1000:
        key = value - value % 10
    else:
        key = bin_key(value)
    bins[key] = bins.get(key, 0) + 1


def bounds(key: int) -> tuple[float, float]:
    """``(lower bound, width)`` of bin ``key``."""
    if key < 10:
        return float(key), (0.1 if key > 0 else 0.0)
    if key < 100:
        return float(key), 1.0
    return float(key), float(10 ** (len(str(key)) - 2))


def merge(into: Bins, more: Mapping[int, int]) -> None:
    for key, count in more.items():
        into[key] = into.get(key, 0) + count


def sample_count(bins: Mapping[int, int]) -> int:
    return sum(bins.values())


def quantiles(bins: Mapping[int, int], qs: Iterable[float] = QUANTILES) -> list[float]:
    """The quantiles of the samples in ``bins`` (NaN for each when there are none)."""
    items = sorted((k, c) for k, c in bins.items() if c > 0)
    n = sum(c for _, c in items)
    out: list[float] = []
    for q in qs:
        if not n:
            out.append(math.nan)
            continue
        rank = max(1, math.ceil(q * n))
        seen = 0
        for key, count in items:
            if seen + count >= rank:
                lo, width = bounds(key)
                out.append(lo + width * (rank - seen) / (count + 1))
                break
            seen += count
    return out


def approx_sum(bins: Mapping[int, int]) -> float:
    total = 0.0
    for key, count in sorted(bins.items()):
        if key and count:
            lo, width = bounds(key)
            # Nearer the bottom than the middle (about the harmonic mean of the bounds),
            # computed as circllhist does, so the sum agrees with Envoy's to the last bit.
            total += (lo + width * (lo / (lo + lo + width))) * count
    return total


def cumulative_buckets(bins: Mapping[int, int], limits: Iterable[float]) -> list[int]:
    """For each bound ``b`` (ascending), the samples of the bins that start at or below
    it (Envoy's count: a sample of 100, in ``[100, 110)``, is under ``le="100"``)."""
    items = sorted(bins.items())
    out: list[int] = []
    for limit in limits:
        below = 0
        for key, count in items:
            if key > limit:
                break
            below += count
        out.append(below)
    return out


def representative(key: int) -> int:
    """The integer a statsd timer line reports for a sample of bin ``key``: the sample
    itself below 100 (those bins hold one integer), else the bin's middle."""
    if key < 100:
        return key
    return key + 10 ** (len(str(key)) - 2) // 2


def number(value: float) -> str:
    """A value as Envoy prints a double: shortest form, no ".0", ``nan``."""
    if math.isnan(value):
        return "nan"
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def summary(interval: Mapping[int, int], cumulative: Mapping[int, int]) -> str:
    """Envoy's ``/stats`` line value: ``P0(interval,cumulative) P25(...) ...``, or
    ``No recorded values`` when nothing was ever recorded."""
    if not sample_count(cumulative):
        return "No recorded values"
    inner = quantiles(interval)
    outer = quantiles(cumulative)
    return " ".join(
        f"P{label}({number(i)},{number(c)})"
        for label, i, c in zip(QUANTILE_LABELS, inner, outer, strict=True)
    )


def bucket_summary(
    interval: Mapping[int, int],
    cumulative: Mapping[int, int],
    limits: tuple[float, ...] = DEFAULT_BUCKETS,
) -> str:
    """``/stats?histogram_buckets=cumulative``: ``B<bound>(interval,cumulative)`` for
    each bound (Envoy's default ones unless ``histogram_bucket_settings`` says)."""
    inner = cumulative_buckets(interval, limits)
    outer = cumulative_buckets(cumulative, limits)
    return " ".join(f"B{b:g}({i},{c})" for b, i, c in zip(limits, inner, outer, strict=True))
