"""epoch_check: the master refuses exactly the epochs a worker's compile refuses."""

from __future__ import annotations

import dataclasses

import pytest

from proxyd import epoch as ep
from proxyd.protocol.epoch_check import EpochChecker, EpochRejected, check_epoch
from proxyd.protocol.http1_headers import RequestIdGenerator
from proxyd.worker.accesslog import prepare_writers
from proxyd.worker.plan import CompiledEpoch
from proxyd.worker.stats import StatsStore


def epoch(
    routes: tuple[ep.Route, ...] = (),
    domains: tuple[tuple[str, ...], ...] = (("*",),),
    hcm: dict[str, object] | None = None,
    cluster: dict[str, object] | None = None,
) -> ep.Epoch:
    routes = routes or (ep.Route("all", ep.RouteMatch("prefix", "/"), "up"),)
    vhosts = tuple(ep.VirtualHost(f"vh{i}", d, routes) for i, d in enumerate(domains))
    manager = ep.HttpConnectionManager(
        "ingress_http", "AUTO", ep.RouteConfig("local_route", vhosts), **(hcm or {})
    )
    listener = ep.Listener("ingress", "127.0.0.1", 10000, manager)
    hosts = (ep.Endpoint("127.0.0.1", 8080), ep.Endpoint("127.0.0.1", 8081, priority=1))
    up = dataclasses.replace(
        ep.Cluster("up", "STATIC", 1.0, "ROUND_ROBIN", hosts), **(cluster or {})
    )
    return ep.Epoch(1, (listener,), (up,))


def worker_compile(e: ep.Epoch) -> None:
    """What proxyd.worker.process.Worker._apply compiles (opening no file)."""
    paths = {al.path for lst in e.listeners for al in lst.hcm.access_logs}
    writers = prepare_writers({}, paths)
    CompiledEpoch(e, {}, StatsStore(), writers, "127.0.0.1", RequestIdGenerator())
    assert not any(w.is_open for w in writers.values())


REFUSED = {
    "route regex": (
        epoch(routes=(ep.Route("rx", ep.RouteMatch("safe_regex", "(a"), "up"),)),
        "listener 'ingress': route config 'local_route': missing ), unterminated subpattern",
    ),
    "header regex": (
        epoch(
            routes=(
                ep.Route(
                    "h",
                    ep.RouteMatch(
                        "prefix",
                        "/",
                        headers=(ep.HeaderMatch("x", ep.StringMatch("safe_regex", "[")),),
                    ),
                    "up",
                ),
            )
        ),
        "listener 'ingress': route config 'local_route': unterminated character set",
    ),
    "duplicate domain": (
        epoch(domains=(("a.example",), ("a.example",))),
        "duplicate domain 'a.example'",
    ),
    "two wildcards": (epoch(domains=(("*",), ("*",))), "only one virtual host may use '*'"),
    "log format": (
        epoch(hcm={"access_logs": (ep.AccessLog("/dev/null", "%NOT_AN_OPERATOR%"),)}),
        "listener 'ingress': access_logs[0] (/dev/null): Not supported field in StreamInfo: "
        "NOT_AN_OPERATOR",
    ),
    "server name": (
        epoch(hcm={"server_name": "sn☃w"}),
        "listener 'ingress': server_name 'sn☃w' cannot be sent as a header value "
        "(character '☃' is not ISO-8859-1)",
    ),
    "lb policy": (
        epoch(cluster={"lb_policy": "CLUSTER_PROVIDED"}),
        "cluster 'up': unsupported lb_policy",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_by_the_check_and_by_the_worker_compile(case: str) -> None:
    bad, message = REFUSED[case]
    with pytest.raises(EpochRejected) as info:
        check_epoch(bad)
    assert message in str(info.value)
    with pytest.raises(Exception):  # noqa: B017 - whatever the worker's compiler raises
        worker_compile(bad)


def test_a_good_epoch_passes_both() -> None:
    good = epoch(
        routes=(ep.Route("rx", ep.RouteMatch("safe_regex", "/a+"), "up"),),
        hcm={"access_logs": (ep.AccessLog("/dev/null", "%REQ(:PATH)%\n"),), "server_name": "prøxy"},
        cluster={"lb_policy": "LEAST_REQUEST", "locality_weighted_lb": True},
    )
    check_epoch(good)
    worker_compile(good)


def test_checker_checks_only_what_changed() -> None:
    checker = EpochChecker()
    good = epoch()
    checker.check(good)
    # An equal listener is not compiled again; a changed one is.
    bad_listener = epoch(hcm={"server_name": "sn☃w"})
    with pytest.raises(EpochRejected, match="server_name"):
        checker.check(bad_listener)
    # A refused epoch is not remembered: the good one still passes, the bad one fails.
    checker.check(dataclasses.replace(good, number=2))
    with pytest.raises(EpochRejected, match="lb_policy"):
        checker.check(epoch(cluster={"lb_policy": "CLUSTER_PROVIDED"}))
