"""xDS at scale: 1,000 clusters of 10 endpoints each, by CDS + EDS over ADS.

For proxyd and real Envoy on the same bootstrap (one worker each), in the same run:

1. start the proxy on ADS with a listener whose route configuration (RDS) sends
   ``/c<i>/`` to ``cluster_<i>`` for i < N, and no clusters yet (those routes give 503);
2. push N clusters (type EDS) and their N ClusterLoadAssignments of 10 endpoints and time
   until the first and the last cluster answer 200 ("routable");
3. push an EDS update that changes one cluster's endpoints and time until requests to it
   reach only its new endpoint.

Prints the times and writes them as JSON to bench/results/. The endpoints are 10 demo
upstreams on loopback. Run from the repository root:

    .venv/bin/python bench/xds_scale.py [--clusters 1000] [--targets proxyd,envoy]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from proxyd.demo import UpstreamServer  # noqa: E402
from tests.compat.xds_harness import (  # noqa: E402
    ADS_SOURCE,
    AdsSource,
    EnvoyTarget,
    ProxydTarget,
    ready_state,
)
from tests.support import free_port  # noqa: E402
from tests.xds_server import (  # noqa: E402
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    XdsServer,
    eds_cluster,
    load_assignment,
    rds_listener,
    route_config,
)

ENDPOINTS_PER_CLUSTER = 10


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.headers.get("x-upstream-name", "")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, ""
    except OSError:
        return 0, ""


def wait(predicate: Any, timeout: float = 60.0, interval: float = 0.01) -> float:
    """Seconds until ``predicate()`` is true."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError("condition not met")
        time.sleep(interval)
    return time.monotonic() - start


def run_target(target: Any, n: int, upstreams: list[UpstreamServer]) -> dict[str, float]:
    ports = [u.port for u in upstreams]
    with XdsServer() as xds, tempfile.TemporaryDirectory() as tmp:
        source = AdsSource(xds, "ingress")
        port = free_port()
        names = [f"cluster_{i}" for i in range(n)]
        routes = {f"/c{i}/": name for i, name in enumerate(names)}
        source.push(CLUSTER, "c0", [])
        source.push(ROUTE, "r1", [route_config("routes", routes)])
        source.push(LISTENER, "l1", [rds_listener("ingress", port, "routes", ADS_SOURCE)])
        admin = target.start(source.bootstrap(), Path(tmp))
        try:
            wait(lambda: ready_state(admin) == "LIVE", timeout=30)
            assert get(port, f"/c{n - 1}/")[0] == 503
            clusters = [eds_cluster(name, ADS_SOURCE) for name in names]
            assignments = [load_assignment(name, ports) for name in names]

            t0 = time.monotonic()
            source.push(ENDPOINT, "e1", assignments)
            source.push(CLUSTER, "c1", clusters)
            wait(lambda: get(port, "/c0/")[0] == 200)
            first = time.monotonic() - t0
            wait(lambda: get(port, f"/c{n - 1}/")[0] == 200)
            last = time.monotonic() - t0
            assert all(get(port, f"/c{i}/")[0] == 200 for i in range(0, n, max(1, n // 50)))

            # One cluster's endpoints change: only upstreams[0] remains.
            victim = n // 2
            moved = list(assignments)
            moved[victim] = load_assignment(names[victim], [ports[0]])
            t1 = time.monotonic()
            source.push(ENDPOINT, "e2", moved)

            def moved_over() -> bool:
                return all(get(port, f"/c{victim}/")[1] == upstreams[0].name for _ in range(12))

            wait(moved_over)
            update = time.monotonic() - t1
            assert get(port, f"/c{victim + 1}/")[0] == 200
        finally:
            target.stop()
    return {"first_routable_s": first, "all_routable_s": last, "eds_update_s": update}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--targets", default="proxyd,envoy")
    args = parser.parse_args()
    upstreams = [UpstreamServer(f"u{i}").start() for i in range(ENDPOINTS_PER_CLUSTER)]
    results: dict[str, dict[str, float]] = {}
    try:
        for name in args.targets.split(","):
            target = {"proxyd": ProxydTarget, "envoy": EnvoyTarget}[name]()
            results[name] = run_target(target, args.clusters, upstreams)
            r = results[name]
            print(
                f"{name:7s} {args.clusters} clusters x {ENDPOINTS_PER_CLUSTER} endpoints: "
                f"first routable {r['first_routable_s']:.3f} s, all routable "
                f"{r['all_routable_s']:.3f} s; one-cluster EDS update {r['eds_update_s']:.3f} s"
            )
    finally:
        for u in upstreams:
            u.stop()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    record = {
        "when": stamp,
        "machine": platform.platform(),
        "clusters": args.clusters,
        "endpoints_per_cluster": ENDPOINTS_PER_CLUSTER,
        "results": results,
    }
    (out / f"xds-scale-{stamp}.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
