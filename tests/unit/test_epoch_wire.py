"""EpochWire: successive epochs encode as to_wire does, re-using unchanged parts."""

from __future__ import annotations

import dataclasses

from proxyd.epoch import Cluster, Endpoint, Epoch, EpochWire, from_wire, to_wire


def cluster(name: str, port: int) -> Cluster:
    return Cluster(name, "STATIC", 1.0, "ROUND_ROBIN", (Endpoint("127.0.0.1", port),))


def test_wire_matches_to_wire_and_reuses_unchanged_clusters() -> None:
    clusters = tuple(cluster(f"c{i}", 1000 + i) for i in range(5))
    first = Epoch(1, (), clusters)
    wire = EpochWire()
    one = wire.encode(first)
    assert one == to_wire(first)
    changed = dataclasses.replace(clusters[2], endpoints=(Endpoint("127.0.0.1", 9),))
    second = Epoch(2, (), (*clusters[:2], changed, *clusters[3:]))
    two = wire.encode(second)
    assert two == to_wire(second)
    assert from_wire(Epoch, two) == second
    clusters_at = [f.name for f in dataclasses.fields(Epoch)].index("clusters")
    assert two[clusters_at][0] is one[clusters_at][0]  # unchanged: the same wire object
    assert two[clusters_at][2] is not one[clusters_at][2]
