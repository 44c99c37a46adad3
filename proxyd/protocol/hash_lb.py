"""Hash-based load balancers with Envoy's semantics: RING_HASH and MAGLEV.

Envoy's ``ThreadAwareLoadBalancerBase`` (``source/extensions/load_balancing_policies``)
builds, for each priority level, a table from the level's hosts and their weights, and
picks with a 64-bit hash of the request (``RouteAction.hash_policy``; a random 64-bit
number when the request gives none). :func:`make_hash_balancer` does the same:

* **Priority.** The level is ``hash % 100`` placed on the priority load (the percent
  of traffic each level gets, :func:`proxyd.protocol.priority.priority_load`), so one
  key keeps its level as long as the load does not change. A level in panic uses all
  its hosts (each pick counted in ``lb_healthy_panic``), else its usable hosts.
* **Weights.** A level's hosts get normalized weights ``weight / sum(weights)``
  (``locality_weighted_lb_config`` is refused with these policies).
* **Ring hash** (:class:`Ring`): ``scale = min(ceil(min_weight * minimum_ring_size) /
  min_weight, maximum_ring_size)``; walking the hosts in order, each adds entries until
  the running count reaches the running ``scale * weight`` sum, entry ``i`` of a host
  hashed from ``"<address>_<i>"`` (xxHash64, or MurmurHash2 as libstdc++'s
  ``std::hash``); the ring is sorted and a hash picks the first entry at or above it
  (ketama's search, wrapping to the first entry).
* **Maglev** (:class:`MaglevTable`): hosts sorted by address; offset
  ``xxh64(address) % size``, skip ``xxh64(address, seed 1) % (size - 1) + 1``; the
  table is filled round by round, a host taking a slot in round ``n`` while
  ``n * weight >= its target`` (the target grows by the largest weight per slot taken),
  each at the next free place of its permutation. A hash picks ``table[hash % size]``.

A host is keyed by its endpoint's ``filter_metadata["envoy.lb"]["hash_key"]`` when it has
one, else by its address as Envoy prints it (``127.0.0.1:8080``, ``[::1]:80``, a pipe's
path), so a proxyd and an Envoy with the same endpoints build the same ring and
the same table, and the same request key picks the same host in both.

A retry that must avoid the hosts it tried (``previous_hosts``) picks with ``attempt``
1, 2, ...: the ring moves ``attempt`` entries on, Maglev flips the hash's high bits
(``hash ^ (2**64 - attempt)``), as Envoy does.

Everything is built once per host-set change (a new epoch or a health change compiles a
new cluster state); ``pick_hash`` is a modulo and, for the ring, a binary search.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import xxhash

from proxyd import pipes
from proxyd.protocol.balancers import RandomSource
from proxyd.protocol.priority import (
    DEFAULT_OVERPROVISIONING_FACTOR,
    DEFAULT_PANIC_THRESHOLD,
    PanicCounter,
    priority_load,
)

HASH_POLICIES = ("RING_HASH", "MAGLEV")
# Envoy's defaults (cluster.proto; ring_hash.v3 and maglev.v3 say the same).
DEFAULT_MIN_RING_SIZE = 1024
DEFAULT_MAX_RING_SIZE = 8 * 1024 * 1024
DEFAULT_MAGLEV_TABLE_SIZE = 65537
XX_HASH = "XX_HASH"
MURMUR_HASH_2 = "MURMUR_HASH_2"

_MASK64 = (1 << 64) - 1
# libstdc++'s std::hash seed, which Envoy's MurmurHash::STD_HASH_SEED copies.
_STD_HASH_SEED = 0xC70F6907
_MURMUR_MUL = 0xC6A4A7935BD1E995


class HashHost(Protocol):
    """What the hash balancers read of a host (proxyd.worker.upstream.HostState)."""

    address: str
    port: int
    weight: int
    priority: int
    usable: bool
    # The endpoint's envoy.lb hash_key metadata ("" = hash the address).
    hash_key: str


H = TypeVar("H", bound=HashHost)


def xxh64(data: bytes, seed: int = 0) -> int:
    """Envoy's ``HashUtil::xxHash64``."""
    return xxhash.xxh64_intdigest(data, seed)


def murmur_hash2(data: bytes, seed: int = _STD_HASH_SEED) -> int:
    """Envoy's ``MurmurHash::murmurHash2`` (libstdc++'s 64-bit ``_Hash_bytes``)."""
    mul = _MURMUR_MUL
    n = len(data)
    aligned = n & ~7
    h = (seed ^ (n * mul)) & _MASK64
    for i in range(0, aligned, 8):
        k = (int.from_bytes(data[i : i + 8], "little") * mul) & _MASK64
        k = ((k ^ (k >> 47)) * mul) & _MASK64
        h = ((h ^ k) * mul) & _MASK64
    if n & 7:
        h = ((h ^ int.from_bytes(data[aligned:], "little")) * mul) & _MASK64
    h = ((h ^ (h >> 47)) * mul) & _MASK64
    return h ^ (h >> 47)


def host_key(host: HashHost) -> bytes:
    """What Envoy hashes a host by: its ``envoy.lb`` ``hash_key`` metadata when set, else
    its address as ``Address::asString()`` prints it."""
    if host.hash_key:
        return host.hash_key.encode()
    return pipes.host_label(host.address, host.port).encode("latin-1")


def normalized_weights(hosts: Sequence[H]) -> list[tuple[H, float]]:
    """Envoy's ``normalizeHostWeights``: (host, share) pairs whose shares sum to 1."""
    total = sum(h.weight for h in hosts)
    return [(h, h.weight / total) for h in hosts] if total else []


class Ring(Generic[H]):
    """Envoy's ``RingHashLoadBalancer::Ring`` for one set of (host, share) pairs."""

    __slots__ = ("hashes", "hosts", "min_hashes_per_host", "max_hashes_per_host")

    def __init__(
        self,
        weighted: Sequence[tuple[H, float]],
        min_ring_size: int = DEFAULT_MIN_RING_SIZE,
        max_ring_size: int = DEFAULT_MAX_RING_SIZE,
        hash_function: str = XX_HASH,
    ) -> None:
        self.hashes: list[int] = []
        self.hosts: list[H] = []
        self.min_hashes_per_host = 0
        self.max_hashes_per_host = 0
        if not weighted:
            return
        min_weight = min(1.0, min(w for _, w in weighted))
        scale = min(math.ceil(min_weight * min_ring_size) / min_weight, float(max_ring_size))
        hash_of = xxh64 if hash_function == XX_HASH else murmur_hash2
        entries: list[tuple[int, int]] = []
        current = 0.0
        target = 0.0
        counts = []
        for index, (host, weight) in enumerate(weighted):
            prefix = host_key(host) + b"_"
            target += scale * weight
            i = 0
            while current < target:
                entries.append((hash_of(prefix + str(i).encode()), index))
                i += 1
                current += 1.0
            counts.append(i)
        # Envoy's std::sort leaves equal hashes in no set order; 64-bit hashes of
        # distinct keys all but never collide.
        entries.sort(key=lambda e: e[0])
        self.hashes = [h for h, _ in entries]
        self.hosts = [weighted[i][0] for _, i in entries]
        self.min_hashes_per_host = min(counts)
        self.max_hashes_per_host = max(counts)

    def __len__(self) -> int:
        return len(self.hashes)

    def pick(self, h: int, attempt: int = 0) -> H | None:
        hashes = self.hashes
        n = len(hashes)
        if not n:
            return None
        # Envoy's port of ketama_get_server finds the i with ring[i-1] < h <= ring[i]
        # (the first entry when h is above them all): bisect_left's answer.
        i = bisect.bisect_left(hashes, h)
        if i == n:
            i = 0
        if attempt > 0:
            i = (i + attempt) % n
        return self.hosts[i]


class MaglevTable(Generic[H]):
    """Envoy's Maglev table (``OriginalMaglevTable``; the compact one picks the same)."""

    __slots__ = ("size", "table", "min_entries_per_host", "max_entries_per_host")

    def __init__(
        self, weighted: Sequence[tuple[H, float]], size: int = DEFAULT_MAGLEV_TABLE_SIZE
    ) -> None:
        self.size = size
        self.table: list[H] = []
        self.min_entries_per_host = 0
        self.max_entries_per_host = 0
        if not weighted:
            return
        max_weight = max(w for _, w in weighted)
        # Envoy sorts by the hashed key (a stable table whatever the host order).
        keyed = sorted(((host_key(h), h, w) for h, w in weighted), key=lambda e: e[0])
        n = len(keyed)
        offsets = [xxh64(k) % size for k, _, _ in keyed]
        skips = [xxh64(k, 1) % (size - 1) + 1 for k, _, _ in keyed]
        weights = [w for _, _, w in keyed]
        targets = [0.0] * n
        nexts = [0] * n
        counts = [0] * n
        slots: list[int] = [-1] * size
        filled = 0
        iteration = 1
        while filled < size:
            for i in range(n):
                if filled >= size:
                    break
                if iteration * weights[i] < targets[i]:
                    continue
                targets[i] += max_weight
                offset, skip, nxt = offsets[i], skips[i], nexts[i]
                c = (offset + skip * nxt) % size
                while slots[c] >= 0:
                    nxt += 1
                    c = (offset + skip * nxt) % size
                slots[c] = i
                nexts[i] = nxt + 1
                counts[i] += 1
                filled += 1
            iteration += 1
        hosts = [h for _, h, _ in keyed]
        self.table = [hosts[i] for i in slots]
        self.min_entries_per_host = min(counts)
        self.max_entries_per_host = max(counts)

    def pick(self, h: int, attempt: int = 0) -> H | None:
        if not self.table:
            return None
        if attempt > 0:
            h ^= (_MASK64 - attempt + 1) & _MASK64
        return self.table[h % self.size]


class _Table(Protocol[H]):  # type: ignore[misc]
    def pick(self, h: int, attempt: int = 0) -> H | None: ...


class HashBalancer(Generic[H]):
    """A cluster's hash balancer: ``pick_hash(h, attempt)`` for a request's hash,
    ``pick()`` for a request without one (a random 64-bit hash, as Envoy)."""

    __slots__ = ("_levels", "_panic", "_table", "_stats", "_random")

    def __init__(
        self,
        levels: Sequence[_Table[H]],
        panic: Sequence[bool],
        table: Sequence[int],
        stats: PanicCounter | None,
        rng: RandomSource,
    ) -> None:
        self._levels = tuple(levels)
        self._panic = tuple(panic)
        # Priority level by hash % 100 (the priority load, one entry per percent).
        self._table = tuple(table)
        self._stats = stats
        self._random = rng.random

    def pick_hash(self, h: int, attempt: int = 0) -> H | None:
        level = self._table[h % 100]
        if self._panic[level] and self._stats is not None and attempt == 0:
            self._stats.lb_healthy_panic += 1
        return self._levels[level].pick(h, attempt)

    def pick(self) -> H | None:
        return self.pick_hash(int(self._random() * (1 << 53)) << 11 | int(self._random() * 2048))


def make_hash_balancer(
    policy: str,
    hosts: Sequence[H],
    *,
    min_ring_size: int = DEFAULT_MIN_RING_SIZE,
    max_ring_size: int = DEFAULT_MAX_RING_SIZE,
    hash_function: str = XX_HASH,
    table_size: int = DEFAULT_MAGLEV_TABLE_SIZE,
    overprovisioning_factor: int = DEFAULT_OVERPROVISIONING_FACTOR,
    panic_threshold: int = DEFAULT_PANIC_THRESHOLD,
    stats: PanicCounter | None = None,
    rng: RandomSource | None = None,
) -> HashBalancer[H]:
    """The RING_HASH or MAGLEV balancer over all of a cluster's ``hosts``."""
    if policy not in HASH_POLICIES:
        raise ValueError(f"not a hash lb_policy: {policy!r}")
    gen: RandomSource = rng if rng is not None else random  # type: ignore[assignment]
    levels: list[list[H]] = [[] for _ in range(max((h.priority for h in hosts), default=0) + 1)]
    for h in hosts:
        levels[h.priority].append(h)
    state = priority_load(
        [(sum(1 for h in level if h.usable), len(level)) for level in levels],
        overprovisioning_factor,
        panic_threshold,
    )
    tables: list[_Table[H]] = []
    for level, panic in zip(levels, state.panic, strict=True):
        members = level if panic else [h for h in level if h.usable]
        weighted = normalized_weights(members)
        if policy == "RING_HASH":
            tables.append(Ring(weighted, min_ring_size, max_ring_size, hash_function))
        else:
            tables.append(MaglevTable(weighted, table_size))
    by_percent = [i for i, load in enumerate(state.load) for _ in range(load)]
    return HashBalancer(tables, state.panic, by_percent, stats, gen)
