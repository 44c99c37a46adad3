"""transport_for: which transport socket a host gets from its cluster's
transport_socket_matches (Envoy's order: the endpoint's metadata over every match
first, then its locality's, then the cluster's transport_socket)."""

from __future__ import annotations

from proxyd.epoch import Cluster, Endpoint, TlsMatch, UpstreamTls, transport_for

DEFAULT = UpstreamTls(sni="default")
A = UpstreamTls(sni="a")
B = UpstreamTls(sni="b")


def cluster(*matches: TlsMatch, tls: UpstreamTls | None = DEFAULT) -> Cluster:
    return Cluster("c", "STATIC", 1.0, "ROUND_ROBIN", (), tls=tls, tls_matches=matches)


def host(labels=(), locality=()) -> Endpoint:
    return Endpoint("127.0.0.1", 1, tls_labels=tuple(labels), locality_tls_labels=tuple(locality))


def test_no_matches_is_the_cluster_socket() -> None:
    assert transport_for(cluster(), host([("a", '"1"')])) is DEFAULT


def test_every_label_must_be_there_with_its_value() -> None:
    c = cluster(TlsMatch("a", (("env", '"prod"'), ("tls", "true")), A))
    assert transport_for(c, host([("env", '"prod"'), ("tls", "true"), ("x", '"y"')])) is A
    assert transport_for(c, host([("env", '"prod"')])) is DEFAULT
    assert transport_for(c, host([("env", '"prod"'), ("tls", "false")])) is DEFAULT


def test_endpoint_metadata_first_over_every_match_then_the_locality() -> None:
    c = cluster(TlsMatch("a", (("zone", '"a"'),), A), TlsMatch("b", (("host", '"b"'),), B))
    # The locality matches the first match, the endpoint the second: the endpoint wins.
    assert transport_for(c, host([("host", '"b"')], [("zone", '"a"')])) is B
    assert transport_for(c, host([], [("zone", '"a"')])) is A


def test_an_empty_match_takes_every_host_and_none_is_plaintext() -> None:
    c = cluster(TlsMatch("plain", (), None))
    assert transport_for(c, host()) is None
    assert transport_for(cluster(TlsMatch("a", (("k", '"v"'),), A), tls=None), host()) is None


def test_matches_and_labels_travel_in_the_epoch() -> None:
    from proxyd.epoch import Epoch, from_wire, to_wire

    c = Cluster(
        "c", "STATIC", 1.0, "ROUND_ROBIN",
        (host([("k", '"v"')], [("zone", '"a"')]),),
        tls=DEFAULT, tls_matches=(TlsMatch("a", (("k", '"v"'),), A), TlsMatch("p", (), None)),
    )  # fmt: skip
    epoch = Epoch(1, (), (c,))
    assert from_wire(Epoch, to_wire(epoch)) == epoch
