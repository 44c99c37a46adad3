"""Priority levels, panic mode and locality weighted balancing, with Envoy's semantics.

Envoy balances a request in three steps (``LoadBalancerBase`` and
``ZoneAwareLoadBalancerBase`` in ``source/extensions/load_balancing_policies/common``),
and so does :func:`make_priority_balancer`:

1. **Pick a priority level** with a random draw over the *priority load*, the percent of
   traffic each level gets. A level's *health* is ``min(100, overprovisioning_factor *
   usable_hosts // hosts)`` (integer arithmetic, the factor in percent, default 140).
   Levels take load in order, each ``health * 100 // normalized_total`` but no more
   than what is left, where ``normalized_total = min(100, sum(health))``; a rounding
   remainder goes to the first level with health. So P0 keeps all traffic while at
   least ~72% of its hosts are usable, and when the sum of health is below 100 the
   shares are scaled up to fill 100%.
2. **Panic.** When the normalized total is below 100, a level whose usable percentage
   is below ``healthy_panic_threshold`` (default 50; 0 disables panic) is *in panic*
   and balances over all its hosts, usable or not. When every level is in panic the
   load follows host counts instead of health. With panic disabled and nothing usable,
   P0 takes the load and, having no usable host, gives none: "no healthy upstream".
3. **Pick a locality** (``locality_weighted_lb_config``, not in panic): each
   locality's effective weight is ``weight * min(1, factor / 100 * usable / hosts)``
   and an earliest-deadline-first schedule picks among localities with a positive
   one (a locality without ``load_balancing_weight`` has weight 0 and gets no
   traffic). When none has a positive weight, the level's usable hosts are used as a
   whole, as in Envoy.

Then the lb_policy balancer of the chosen set (``proxyd.protocol.balancers``) picks the
host. Every set (a level's usable hosts, its hosts in panic, a locality's usable hosts)
has its own balancer, as each of Envoy's host sources has its own round-robin index or
EDF schedule. Everything is computed once per epoch; :meth:`pick` is a table lookup and
the set's own pick. A cluster with one level, no panic and no localities gets the plain
balancer itself, so the common case costs nothing extra.

Envoy's degraded hosts, ``weighted_priority_health`` and zone aware routing are not
implemented (the config compiler rejects their fields).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from proxyd.protocol.balancers import Balancer, RandomSource, make_balancer
from proxyd.protocol.slow_start import SlowStart

DEFAULT_OVERPROVISIONING_FACTOR = 140
DEFAULT_PANIC_THRESHOLD = 50


class LbHost(Protocol):
    """What the priority layer reads of a host (besides what the balancers read)."""

    weight: int
    active_requests: int
    priority: int
    locality: str
    locality_weight: int
    # Healthy and not ejected: Envoy's "healthy host".
    usable: bool


class PanicCounter(Protocol):
    """Where a pick made in panic mode is counted (Envoy's ``lb_healthy_panic``)."""

    lb_healthy_panic: int


H = TypeVar("H", bound=LbHost)


@dataclass(frozen=True, slots=True)
class PriorityLoad:
    """The per-level state Envoy derives from host counts, index = priority."""

    health: tuple[int, ...]
    # Percent of requests per level; sums to 100.
    load: tuple[int, ...]
    panic: tuple[bool, ...]


def priority_load(
    counts: Sequence[tuple[int, int]],
    overprovisioning_factor: int = DEFAULT_OVERPROVISIONING_FACTOR,
    panic_threshold: int = DEFAULT_PANIC_THRESHOLD,
) -> PriorityLoad:
    """Envoy's priority load for ``counts``: (usable hosts, hosts) of each level 0..N-1.

    An empty ``counts`` is one empty level, as Envoy always has P0.
    """
    if not counts:
        counts = [(0, 0)]
    n = len(counts)
    health = [
        min(100, overprovisioning_factor * usable // total) if total else 0
        for usable, total in counts
    ]
    total_health = min(100, sum(health))
    load = [0] * n
    if total_health:
        left = 100
        first = -1
        for i, h in enumerate(health):
            if first < 0 and h > 0:
                first = i
            load[i] = min(left, h * 100 // total_health)
            left -= load[i]
        load[first] += left
    only_p0 = tuple([100] + [0] * (n - 1))
    if panic_threshold == 0 and total_health == 0:
        # Envoy's corner case: no usable host and panic disabled. P0 "takes" the load.
        return PriorityLoad(tuple(health), only_p0, (False,) * n)
    panic = tuple(
        total_health != 100 and (100.0 * usable / total if total else 0.0) < panic_threshold
        for usable, total in counts
    )
    if all(panic):
        # Total panic: the load follows host counts, regardless of health.
        hosts = sum(total for _, total in counts)
        if not hosts:
            return PriorityLoad(tuple(health), only_p0, panic)
        load = [100 * total // hosts for _, total in counts]
        first = next(i for i, (_, total) in enumerate(counts) if total)
        load[first] += 100 - sum(load)
    elif not total_health:
        # Nothing usable, yet some level not in panic: only with a threshold below 1%
        # (config truncates it to 0), kept so the load always sums to 100. Envoy has no
        # load to give then and falls back to P0.
        return PriorityLoad(tuple(health), only_p0, panic)
    return PriorityLoad(tuple(health), tuple(load), panic)


def load_without(
    counts: Sequence[tuple[int, int]],
    excluded: frozenset[int],
    overprovisioning_factor: int = DEFAULT_OVERPROVISIONING_FACTOR,
) -> tuple[int, ...] | None:
    """The priority load with the ``excluded`` levels' health taken as 0 (Envoy's
    ``PreviousPrioritiesRetryPriority::adjustForAttemptedPriorities``), or None when
    nothing is left (Envoy then forgets the excluded levels and uses the original load).
    """
    health = [
        0 if i in excluded or not total else min(100, overprovisioning_factor * usable // total)
        for i, (usable, total) in enumerate(counts)
    ]
    # As Envoy's LoadBalancerBase: shares of the health capped at 100, in level order,
    # the rounding remainder to the first level with health.
    total_health = min(100, sum(health))
    if not total_health:
        return None
    load = [0] * len(health)
    left = 100
    for i, h in enumerate(health):
        load[i] = min(left, h * 100 // total_health)
        left -= load[i]
    load[next(i for i, h in enumerate(health) if h)] += left
    return tuple(load)


# -- the balancer ---------------------------------------------------------------------


class _Panic(Generic[H]):
    """A level in panic: all its hosts, each pick counted."""

    __slots__ = ("_inner", "_stats")

    def __init__(self, inner: Balancer[H], stats: PanicCounter) -> None:
        self._inner = inner
        self._stats = stats

    def pick(self) -> H | None:
        self._stats.lb_healthy_panic += 1
        return self._inner.pick()


class _Localities(Generic[H]):
    """Envoy's LocalityWrr: an EDF schedule over localities by effective weight, then
    the chosen locality's own balancer."""

    __slots__ = ("_balancers", "_weights", "_heap", "_order")

    def __init__(
        self, balancers: Sequence[Balancer[H]], weights: Sequence[float], rng: RandomSource
    ) -> None:
        self._balancers = tuple(balancers)
        self._weights = tuple(weights)
        self._heap = [(1.0 / w, i, i) for i, w in enumerate(self._weights)]
        heapq.heapify(self._heap)
        self._order = len(self._weights)
        # A random start, so workers do not all begin with the same locality.
        for _ in range(rng.randrange(len(self._weights))):
            self._next()

    def _next(self) -> int:
        deadline, _order, index = self._heap[0]
        heapq.heapreplace(self._heap, (deadline + 1.0 / self._weights[index], self._order, index))
        self._order += 1
        return index

    def pick(self) -> H | None:
        return self._balancers[self._next()].pick()


class _Priorities(Generic[H]):
    """A draw of 1..100 over the priority load: ``table[draw - 1]`` is the level's set."""

    __slots__ = ("_table", "_random")

    def __init__(self, table: Sequence[Balancer[H]], rng: RandomSource) -> None:
        self._table = tuple(table)
        self._random = rng.random

    def pick(self) -> H | None:
        return self._table[int(self._random() * 100)].pick()


def make_priority_balancer(
    policy: str,
    hosts: Sequence[H],
    *,
    choice_count: int = 2,
    overprovisioning_factor: int = DEFAULT_OVERPROVISIONING_FACTOR,
    panic_threshold: int = DEFAULT_PANIC_THRESHOLD,
    locality_weighted: bool = False,
    stats: PanicCounter | None = None,
    rng: RandomSource | None = None,
    excluded: frozenset[int] = frozenset(),
    slow_start: SlowStart | None = None,
) -> Balancer[H]:
    """A balancer over all of a cluster's ``hosts`` (usable or not) with Envoy's
    priority, panic and locality semantics; ``pick()`` gives None when no host may be
    used ("no healthy upstream"). With ``excluded`` levels (a retry's previous_priorities),
    the load is :func:`load_without` them (the levels' panic states stay the original's),
    or the original when nothing would be left."""
    gen: RandomSource = rng if rng is not None else random  # type: ignore[assignment]
    levels: list[list[H]] = [[] for _ in range(max((h.priority for h in hosts), default=0) + 1)]
    for h in hosts:
        levels[h.priority].append(h)
    state = priority_load(
        [(sum(1 for h in level if h.usable), len(level)) for level in levels],
        overprovisioning_factor,
        panic_threshold,
    )
    loads = state.load
    if excluded:
        counts = [(sum(1 for h in level if h.usable), len(level)) for level in levels]
        loads = load_without(counts, excluded, overprovisioning_factor) or state.load
    sources: list[Balancer[H]] = []
    for level, load, panic in zip(levels, loads, state.panic, strict=True):
        if not load:
            sources.append(make_balancer(policy, ()))
        elif panic:
            inner = make_balancer(policy, level, choice_count, rng=gen, slow_start=slow_start)
            sources.append(inner if stats is None else _Panic(inner, stats))
        else:
            usable = [h for h in level if h.usable]
            picker = (
                _locality_picker(
                    policy, usable, level, choice_count, overprovisioning_factor, gen, slow_start
                )
                if locality_weighted
                else None
            )
            sources.append(
                picker
                or make_balancer(policy, usable, choice_count, rng=gen, slow_start=slow_start)
            )
    if 100 in loads:
        return sources[loads.index(100)]
    table = [src for src, load in zip(sources, loads, strict=True) for _ in range(load)]
    return _Priorities(table, gen)


def _locality_picker(
    policy: str,
    usable: Sequence[H],
    level: Sequence[H],
    choice_count: int,
    overprovisioning_factor: int,
    rng: RandomSource,
    slow_start: SlowStart | None = None,
) -> Balancer[H] | None:
    """The level's locality schedule, or None when no locality has a positive
    effective weight (then Envoy balances over the level's usable hosts)."""
    if not usable:
        return None
    by_locality: dict[str, list[H]] = {}
    for h in level:
        by_locality.setdefault(h.locality, []).append(h)
    balancers: list[Balancer[H]] = []
    weights: list[float] = []
    for name in sorted(by_locality):
        members = by_locality[name]
        eligible = [h for h in members if h.usable]
        availability = min(1.0, overprovisioning_factor / 100.0 * len(eligible) / len(members))
        weight = max(h.locality_weight for h in members) * availability
        if weight > 0:
            balancers.append(
                make_balancer(policy, eligible, choice_count, rng=rng, slow_start=slow_start)
            )
            weights.append(weight)
    if not weights:
        return None
    return _Localities(balancers, weights, rng)
