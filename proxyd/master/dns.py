"""STRICT_DNS and LOGICAL_DNS: the master resolves host names; workers see addresses.

An epoch template from ``proxyd.config`` carries the endpoints of DNS clusters with
``hostname`` set. :class:`DnsRefresher` resolves each (cluster, host name) pair, a
*target* (Envoy's ResolveTarget), through :class:`~proxyd.master.dns_client.DnsClient`
and expands the template:

* STRICT_DNS: one endpoint per address, in the order of the answer; an answer with no
  addresses (NXDOMAIN, NODATA) leaves the name with no hosts, as in Envoy;
* LOGICAL_DNS: one endpoint, the first address; an empty answer counts as a failure.

Each target is refreshed on its own schedule, as Envoy does: after ``dns_refresh_rate``
(default 5 s), or after the answer's TTL when ``respect_dns_ttl`` is set and the TTL is
not 0, plus a random ``dns_jitter``. When a lookup fails the last good answer is kept
and the next try comes after ``dns_refresh_rate``, or after Envoy's jittered exponential
backoff when ``dns_failure_refresh_rate`` is set.

The master runs :meth:`DnsRefresher.wait_changed` in a loop and publishes a new epoch
(:meth:`DnsRefresher.expand` of its template) when an answer changed; a new template
(reload, xDS) has its new names resolved at once (:meth:`DnsRefresher.resolve`).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from proxyd.epoch import Cluster, DnsSettings, Endpoint, Epoch
from proxyd.log import get_logger
from proxyd.master.dns_client import DnsClient
from proxyd.master.dns_protocol import Answer, DnsLookupError

DNS_CLUSTER_TYPES = ("STRICT_DNS", "LOGICAL_DNS")
DEFAULT_REFRESH_S = 5.0
# A bound on one lookup (every search name, family and server).
LOOKUP_TIMEOUT_S = 5.0
_NO_SETTINGS = DnsSettings()

log = get_logger("proxyd.master.dns")


@dataclass(frozen=True, slots=True)
class Target:
    """One name of one DNS cluster, with everything that decides how it is resolved."""

    cluster: str
    hostname: str
    logical: bool
    lookup_family: str
    refresh_s: float
    settings: DnsSettings


@dataclass(slots=True)
class _State:
    addresses: tuple[str, ...] = ()
    next_at: float = -math.inf
    # Current interval of the failure backoff (0: no failure since the last success).
    backoff_s: float = 0.0


Lookup = Callable[[Target], Awaitable[Answer]]


def targets(template: Epoch) -> list[Target]:
    """The names to resolve in ``template``, one per (cluster, host name)."""
    out: dict[Target, None] = {}
    for c in template.clusters:
        if c.type not in DNS_CLUSTER_TYPES:
            continue
        for e in c.endpoints:
            if e.hostname:
                out[_target(c, e.hostname)] = None
    return list(out)


def needs_dns(template: Epoch) -> bool:
    return bool(targets(template))


def _target(c: Cluster, hostname: str) -> Target:
    return Target(
        c.name, hostname, c.type == "LOGICAL_DNS", c.dns_lookup_family,
        c.dns_refresh_rate_s or DEFAULT_REFRESH_S, c.dns or _NO_SETTINGS,
    )  # fmt: skip


class DnsRefresher:
    """Resolves the DNS clusters of epoch templates and keeps them fresh."""

    def __init__(self, lookup: Lookup | None = None) -> None:
        self._lookup: Lookup = lookup or self._lookup_with_client
        self._clients: dict[DnsSettings, DnsClient] = {}
        self._states: dict[Target, _State] = {}
        self._pinned: set[Target] = set()
        self._rescheduled = trio.Event()

    # -- what the master calls -----------------------------------------------------------

    async def resolve(self, template: Epoch) -> Epoch:
        """``template`` expanded, after resolving its new names now (start, reload, xDS).

        A name is new unless the same cluster asked for it with the same DNS settings
        before; known names keep their answers and schedules, as Envoy keeps an
        unchanged cluster."""
        wanted = targets(template)
        # Kept until the next resolve even while the master still runs an older
        # template (it installs this one once it is resolved and checked).
        self._pinned = set(wanted)
        new = [t for t in wanted if t not in self._states]
        if new:
            self._clients.clear()  # read resolv.conf again for them
            async with trio.open_nursery() as nursery:
                for target in new:
                    nursery.start_soon(self._refresh, target)
            self._rescheduled.set()
        return self.expand(template)

    def expand(self, template: Epoch) -> Epoch:
        """``template`` with the DNS endpoints replaced by the current answers."""
        if not any(c.type in DNS_CLUSTER_TYPES for c in template.clusters):
            return template
        return dataclasses.replace(template, clusters=tuple(self._expand(c) for c in template.clusters))  # fmt: skip

    async def wait_changed(self, current: Callable[[], Epoch]) -> None:
        """Refresh the names of ``current()`` as they fall due; return once an answer
        changed. Sleeps while nothing is due (and forever with no DNS cluster)."""
        while True:
            wanted = targets(current())
            for stale in self._states.keys() - set(wanted) - self._pinned:
                del self._states[stale]
            now = trio.current_time()
            due = [t for t in wanted if self._state(t).next_at <= now]
            if not due:
                next_at = min((self._states[t].next_at for t in wanted), default=math.inf)
                self._rescheduled = trio.Event()
                with trio.move_on_at(next_at):
                    await self._rescheduled.wait()
                continue
            before = {t: self._state(t).addresses for t in due}
            async with trio.open_nursery() as nursery:
                for target in due:
                    nursery.start_soon(self._refresh, target)
            if any(self._states[t].addresses != before[t] for t in due if t in self._states):
                return

    # -- one target ------------------------------------------------------------------

    def _state(self, target: Target) -> _State:
        return self._states.setdefault(target, _State())

    async def _refresh(self, target: Target) -> None:
        state = self._state(target)
        state.next_at = math.inf  # in flight: not due for anyone else
        try:
            with trio.fail_after(LOOKUP_TIMEOUT_S):
                answer = await self._lookup(target)
            if target.logical and not answer.addresses:
                raise DnsLookupError("no addresses (a LOGICAL_DNS name needs one)")
        except (DnsLookupError, OSError, trio.TooSlowError) as exc:
            delay = self._failure_delay(target, state)
            log.warning(
                "dns_resolution_failed", cluster=target.cluster, hostname=target.hostname,
                error=str(exc) or type(exc).__name__, kept=list(state.addresses),
                retry_in_s=round(delay, 3),
            )  # fmt: skip
            state.next_at = trio.current_time() + delay
            return
        addresses = answer.addresses[:1] if target.logical else answer.addresses
        if addresses != state.addresses:
            log.info(
                "dns_answer_changed", cluster=target.cluster, hostname=target.hostname,
                addresses=list(addresses), ttl=answer.ttl,
            )  # fmt: skip
        state.addresses = addresses
        state.backoff_s = 0.0
        state.next_at = trio.current_time() + self._success_delay(target, answer)

    @staticmethod
    def _success_delay(target: Target, answer: Answer) -> float:
        delay = target.refresh_s
        if target.settings.respect_dns_ttl and answer.addresses and answer.ttl > 0:
            delay = float(answer.ttl)
        if target.settings.jitter_s > 0:
            delay += random.uniform(0, target.settings.jitter_s)
        return delay

    @staticmethod
    def _failure_delay(target: Target, state: _State) -> float:
        """Envoy: dns_refresh_rate, or JitteredExponentialBackOffStrategy(base, max):
        a random delay below an interval that starts at base and doubles up to max."""
        s = target.settings
        if s.failure_base_s <= 0:
            return target.refresh_s
        interval = state.backoff_s or s.failure_base_s
        state.backoff_s = s.failure_max_s if interval > s.failure_max_s / 2 else interval * 2
        return min(random.uniform(0, interval), s.failure_max_s)

    async def _lookup_with_client(self, target: Target) -> Answer:
        client = self._clients.get(target.settings)
        if client is None:
            client = self._clients[target.settings] = DnsClient(target.settings)
        return await client.lookup(target.hostname, target.lookup_family)

    def _expand(self, cluster: Cluster) -> Cluster:
        if cluster.type not in DNS_CLUSTER_TYPES:
            return cluster
        endpoints: list[Endpoint] = []
        for e in cluster.endpoints:
            if not e.hostname:
                endpoints.append(e)
                continue
            state = self._states.get(_target(cluster, e.hostname))
            for address in state.addresses if state is not None else ():
                endpoints.append(dataclasses.replace(e, address=address))
        return dataclasses.replace(cluster, endpoints=tuple(endpoints))
