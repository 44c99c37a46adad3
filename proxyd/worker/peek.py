"""The host a cluster's balancer would pick next, without taking the pick.

``proxyctl explain`` asks every worker (``ipc.PeekPicks``). A balancer's state is small
(a round-robin position, EDF heaps), so :func:`peek_pick` picks from a deep copy of
it: the hosts themselves (and the stats a pick in panic mode counts) are kept out of
the copy, so the worker's balancer, its hosts and its counters are untouched, and the
copy's pick is the one the worker's next request would get. A balancer that draws at
random (RANDOM, LEAST_REQUEST with equal weights, the choice of a priority level by
its load) shares the process's random generator with its copy, so there the peek is
one draw of the same distribution, not a prediction.
"""

from __future__ import annotations

import copy
from typing import Any

from proxyd.worker.upstream import ClusterState, HostState


class _Scratch:
    """Stands in for the cluster's stats in the copy (a pick in panic counts there)."""

    lb_healthy_panic = 0


def peek_pick(cluster: ClusterState) -> HostState | None:
    """What ``cluster.balancer.pick()`` would return now; nothing changes."""
    memo: dict[int, Any] = {id(h): h for h in cluster.hosts}
    memo[id(cluster.stats)] = _Scratch()
    balancer = copy.deepcopy(cluster.balancer, memo)
    return balancer.pick()
