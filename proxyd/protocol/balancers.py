"""Load balancers with Envoy's semantics, one instance per cluster per worker.

``make_balancer(policy, hosts)`` returns an object whose ``pick()`` gives the next host
(None when there are none). Hosts are any objects with ``weight`` and
``active_requests`` attributes; the balancer reads ``active_requests`` at pick time and
never changes it. As in Envoy (``source/extensions/load_balancing_policies``):

* ``ROUND_ROBIN``: plain rotation when all weights are equal, else earliest-deadline-
  first (EDF) scheduling on the weights. Each instance starts at a random point, as
  Envoy's workers do, so workers do not all send their first request to one host.
* ``LEAST_REQUEST``: equal weights → sample ``choice_count`` hosts at random (with
  replacement) and take the one with the fewest active requests (P2C for 2). Unequal
  weights → EDF where a host's weight is ``weight / (active_requests + 1)``
  (Envoy's ``active_request_bias`` 1.0), computed when the host is (re)scheduled.
* ``RANDOM``: a uniformly random host. Envoy's random balancer ignores weights
  (``hosts_to_use[random % size]``), and so does this one.

``pick()`` is O(1) for rotation and random choice and O(log n) for EDF.

With ``slow_start`` (ROUND_ROBIN and LEAST_REQUEST; :mod:`proxyd.protocol.slow_start`)
and a host in its window when the balancer is made, EDF is used whatever the weights,
and a host's weight (the static one, or LEAST_REQUEST's) is scaled by its slow start
factor each time it is scheduled, as in Envoy. Hosts then need ``active_since``.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from proxyd.protocol.slow_start import SlowStart


class Host(Protocol):
    weight: int
    active_requests: int


H = TypeVar("H", bound=Host)
H_co = TypeVar("H_co", covariant=True)

POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM")

# EDF start offset: at most this many picks are made up front (Envoy derives the
# start from a random seed; any offset serves the purpose of de-synchronising workers).
_MAX_START_PICKS = 1024


class Balancer(Protocol[H_co]):
    def pick(self) -> H_co | None: ...


class RandomSource(Protocol):
    """What a balancer needs from a generator: the ``random`` module or a ``Random``."""

    def random(self) -> float: ...

    def randrange(self, stop: int) -> int: ...


class _Empty(Generic[H]):
    __slots__ = ()

    def pick(self) -> H | None:
        return None


class _Rotation(Generic[H]):
    """Unweighted round robin from a random start."""

    __slots__ = ("_hosts", "_n", "_next")

    def __init__(self, hosts: Sequence[H], rng: RandomSource) -> None:
        self._hosts = tuple(hosts)
        self._n = len(self._hosts)
        self._next = rng.randrange(self._n)

    def pick(self) -> H | None:
        i = self._next
        self._next = i + 1 if i + 1 < self._n else 0
        return self._hosts[i]


class _Edf(Generic[H]):
    """Envoy's EdfScheduler: pick the smallest deadline, re-add at deadline + 1/weight.

    Ties go to the entry added first. ``weight_of`` is consulted when a host is
    (re)added, which is what makes LEAST_REQUEST's weights follow the active requests.
    """

    __slots__ = ("_hosts", "_heap", "_order", "_weight_of")

    def __init__(
        self, hosts: Sequence[H], weight_of: Callable[[H], float], rng: RandomSource
    ) -> None:
        self._hosts = tuple(hosts)
        self._weight_of = weight_of
        self._heap: list[tuple[float, int, int]] = []
        self._order = 0
        for i, h in enumerate(self._hosts):
            self._add(0.0, i, weight_of(h))
        total = sum(max(1, h.weight) for h in self._hosts)
        for _ in range(rng.randrange(min(total, _MAX_START_PICKS))):
            self.pick()

    def _add(self, now: float, index: int, weight: float) -> None:
        heapq.heappush(self._heap, (now + 1.0 / weight, self._order, index))
        self._order += 1

    def pick(self) -> H | None:
        deadline, _order, index = self._heap[0]
        host = self._hosts[index]
        weight = self._weight_of(host)
        heapq.heapreplace(self._heap, (deadline + 1.0 / weight, self._order, index))
        self._order += 1
        return host


class _LeastOfChoices(Generic[H]):
    """Envoy's N_CHOICES least request: ``choice_count`` random samples, fewest wins."""

    __slots__ = ("_hosts", "_n", "_choices", "_random")

    def __init__(self, hosts: Sequence[H], choice_count: int, rng: RandomSource) -> None:
        self._hosts = tuple(hosts)
        self._n = len(self._hosts)
        self._choices = max(1, choice_count)
        self._random = rng.random

    def pick(self) -> H | None:
        hosts, n, rand = self._hosts, self._n, self._random
        best = hosts[int(rand() * n)]
        for _ in range(self._choices - 1):
            cand = hosts[int(rand() * n)]
            if cand.active_requests < best.active_requests:
                best = cand
        return best


class _Uniform(Generic[H]):
    __slots__ = ("_hosts", "_n", "_random")

    def __init__(self, hosts: Sequence[H], rng: RandomSource) -> None:
        self._hosts = tuple(hosts)
        self._n = len(self._hosts)
        self._random = rng.random

    def pick(self) -> H | None:
        return self._hosts[int(self._random() * self._n)]


def _static_weight(h: Host) -> float:
    return float(max(1, h.weight))


def _least_request_weight(h: Host) -> float:
    # Envoy: load_balancing_weight / (active_requests + 1) ^ active_request_bias, bias 1.0.
    return max(1, h.weight) / (h.active_requests + 1)


def _slow_start_weight(
    base: Callable[[H], float], slow: SlowStart, clock: Callable[[], float]
) -> Callable[[H], float]:
    def weight(h: H) -> float:
        since: float = h.active_since  # type: ignore[attr-defined]
        if not since:
            return base(h)
        return base(h) * slow.factor(clock() - since)

    return weight


def make_balancer(
    policy: str,
    hosts: Sequence[H],
    choice_count: int = 2,
    *,
    rng: RandomSource | None = None,
    slow_start: SlowStart | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Balancer[H]:
    """A balancer for ``hosts`` with Envoy's ``lb_policy`` name ``policy``.

    ``rng`` defaults to the ``random`` module's shared generator (so ``random.seed``
    makes tests repeatable); pass a ``random.Random`` to isolate one balancer.
    ``slow_start``: the cluster's (None: none); ``clock`` is what hosts'
    ``active_since`` is read against.
    """
    if policy not in POLICIES:
        raise ValueError(f"unsupported lb_policy {policy!r}; expected one of {POLICIES}")
    gen: RandomSource = rng if rng is not None else random  # type: ignore[assignment]
    if not hosts:
        return _Empty()
    equal = len({h.weight for h in hosts}) == 1
    if policy == "RANDOM":
        return _Uniform(hosts, gen)
    if slow_start is not None and policy in ("ROUND_ROBIN", "LEAST_REQUEST"):
        now = clock()
        if any(slow_start.in_window(h.active_since, now) for h in hosts):  # type: ignore[attr-defined]
            base = _static_weight if policy == "ROUND_ROBIN" else _least_request_weight
            return _Edf(hosts, _slow_start_weight(base, slow_start, clock), gen)
    if policy == "ROUND_ROBIN":
        if equal:
            return _Rotation(hosts, gen)
        return _Edf(hosts, _static_weight, gen)
    if equal:
        return _LeastOfChoices(hosts, choice_count, gen)
    return _Edf(hosts, _least_request_weight, gen)
