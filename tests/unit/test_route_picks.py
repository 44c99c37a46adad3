"""weighted_clusters and cluster_header picks (proxyd.worker.plan) and query parameter
values (proxyd.protocol.routing), without sockets."""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

from proxyd.worker.plan import HeaderPick, RoutePlan, WeightedPick


def plans(*names: str) -> tuple[RoutePlan, ...]:
    return tuple(RoutePlan("r", None, n, 15.0) for n in names)


def test_header_value_picks_by_running_sum() -> None:
    a, b, c = plans("a", "b", "c")
    pick = WeightedPick((a, b, c), (1, 0, 3), "x-pick")
    got = [pick({"x-pick": str(v)}).cluster_name for v in range(8)]
    # 0 -> a; 1, 2, 3 -> c (b's weight is 0); then again from 4.
    assert got == ["a", "c", "c", "c", "a", "c", "c", "c"]
    assert pick({"x-pick": str((1 << 64) - 1)}).cluster_name == "c"  # 2**64 - 1 = 3 mod 4


def test_bad_header_values_fall_back_to_random() -> None:
    a, b = plans("a", "b")
    pick = WeightedPick((a, b), (1, 1), "x-pick")
    for value in ("", "-1", "1,1", " 1", "0x1", "١", str(1 << 64), "9" * 25):
        seen = Counter(pick({"x-pick": value}).cluster_name for _ in range(200))
        assert set(seen) == {"a", "b"}, value  # random, not always the same cluster


def test_random_picks_follow_weights() -> None:
    a, b = plans("a", "b")
    pick = WeightedPick((a, b), (1, 3), "")
    seen = Counter(pick({}).cluster_name for _ in range(4000))
    assert abs(seen["b"] / 4000 - 0.75) < 0.05


def test_cluster_header_makes_one_plan_per_known_cluster() -> None:
    made: list[str] = []

    def make(name: str) -> RoutePlan:
        made.append(name)
        return RoutePlan("r", None, name, 15.0)

    clusters = cast(dict[str, Any], {"a": object(), "b": object()})
    pick = HeaderPick("x-cluster", make, clusters)
    assert pick({"x-cluster": "a"}) is pick({"x-cluster": "a"})
    assert pick({"x-cluster": "b"}).cluster_name == "b"
    none = pick({})
    assert none.cluster_name == "" and pick({"x-cluster": "nope"}) is none
    assert pick({"x-cluster": ""}) is none
    assert made == ["", "a", "b"]


def test_query_value_reads_the_first_raw_value() -> None:
    from proxyd.protocol.routing import query_value

    assert query_value("/p?a=1&a=2", "a") == "1"
    assert query_value("/p?x&a", "a") == "" and query_value("/p?a=1=2", "a") == "1=2"
    assert query_value("/p?%61=1", "a") is None and query_value("/p?a=%31", "a") == "%31"
    assert query_value("/p", "a") is None and query_value("/p?", "a") is None
    assert query_value("/p?&&a=1&&", "a") == "1" and query_value("/p??a=1", "a") is None
