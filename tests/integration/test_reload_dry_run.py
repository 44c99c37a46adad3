"""``proxyctl reload --dry-run`` against a real master: the checks of a reload, the diff
of what it would change, and nothing changed."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.integration.master_fixtures import upstream_name
from tests.support import ProxydProcess, free_port, http_config

ROUTES = """
              - match: {{ prefix: "/b" }}
                route: {{ cluster: b, timeout: {timeout} }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: a }}"""


@pytest.fixture
def setup(tmp_path: Path, upstream):
    a, b = upstream("a"), upstream("b")
    port, admin = free_port(), free_port()
    clusters = {"a": [a.port], "b": [b.port]}
    text = http_config(port, admin, clusters, ROUTES.format(timeout="15s"))
    with ProxydProcess(tmp_path, text, admin) as p:
        yield p, port, admin, clusters


def served(port: int) -> tuple[str, str]:
    """Which upstream answers / and /b/x."""
    return upstream_name(port, "/"), upstream_name(port, "/b/x")


def unchanged(p: ProxydProcess, port: int, epoch: int = 1) -> None:
    """The master and every worker still run ``epoch``, and requests go where they went."""
    status = p.status()
    assert status["epoch"] == epoch
    assert all(w["epoch"] == epoch for w in status["workers"])
    assert served(port) == ("a", "b")


def test_dry_run_prints_the_diff_and_changes_nothing(setup, upstream) -> None:
    p, port, admin, clusters = setup
    c = upstream("c")
    before = p.config_path.read_text()
    candidate = p.dir / "candidate.yaml"
    new = http_config(
        port, admin, {"a": clusters["a"] + [c.port], "c": [c.port]}, ROUTES.format(timeout="5s")
    ).replace("cluster: b,", "cluster: c,")
    candidate.write_text(new)
    res = p.ctl("reload", "--dry-run", "--config", str(candidate))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"configuration '{candidate}' OK",
        "a reload would change (running epoch 1; nothing was changed):",
        "  ~ route 'prefix /b' (listener 'ingress', route config 'local_route', virtual host 'all')",  # fmt: skip
        '      cluster: "b" -> "c"',
        "      timeout_s: 15.0 -> 5.0",
        "  - cluster 'b'",
        "  + cluster 'c'",
        f"  + endpoint '127.0.0.1:{c.port}' (cluster 'a')",
        "after the reload: 1 listener, 1 route config, 1 virtual host, 2 routes, 2 clusters, "
        "3 endpoints, 0 http filters before the router",
    ]
    # Nothing changed: not the epoch, not the workers, not where requests go, not the file.
    unchanged(p, port)
    assert p.config_path.read_text() == before
    assert '"reload_dry_run"' in p.log()
    assert p.stats().get("server.proxyd.reload_success", 0) == 0
    # The real reload of that file does what the dry run said.
    p.config_path.write_text(new)
    assert p.ctl("reload").returncode == 0
    assert upstream_name(port, "/b/x") == "c"


def test_dry_run_of_the_running_file_and_json(setup) -> None:
    p, port, admin, clusters = setup
    res = p.ctl("reload", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[1] == "a reload would change nothing (running epoch 1)"
    # An edited file, as --json: the document scripts read.
    p.config_path.write_text(
        http_config(port, admin, clusters, ROUTES.format(timeout="15s"), hcm_extra="          server_name: edge")  # fmt: skip
    )
    res = p.ctl("reload", "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["valid"] is True and doc["changed"] is True
    assert doc["config"] == doc["running_config"] == str(p.config_path)
    assert doc["epoch"] == 1
    assert doc["warnings"] == [] and doc["bootstrap"] == []
    assert doc["diff"]["listeners"]["changed"] == [
        {"name": "ingress", "fields": [{"field": "hcm.server_name", "old": "envoy", "new": "edge"}]}  # fmt: skip
    ]
    for section in ("route_configs", "virtual_hosts", "routes", "clusters", "endpoints"):
        assert doc["diff"][section] == {"added": [], "removed": [], "changed": []}
    assert doc["counts"]["routes"] == 2
    unchanged(p, port)
    assert upstream_server_header(port) == "envoy"


def upstream_server_header(port: int) -> str:
    from tests.integration.master_fixtures import get

    return get(port)[1]["server"]


def test_dry_run_of_an_invalid_file_names_file_field_and_reason(setup) -> None:
    p, port, admin, clusters = setup
    bad = p.dir / "bad.yaml"
    bad.write_text(http_config(port, admin, clusters).replace("lb_policy", "lb_polcy"))
    res = p.ctl("reload", "--dry-run", "--config", str(bad))
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.startswith("proxyctl: reload --dry-run: ")
    assert str(bad) in res.stderr and "static_resources.clusters[0].lb_polcy" in res.stderr
    res = p.ctl("reload", "--dry-run", "--config", str(bad), "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["valid"] is False and doc["config"] == str(bad) and doc["epoch"] == 1
    assert "static_resources.clusters[0].lb_polcy" in doc["error"]
    unchanged(p, port)
    assert p.stats().get("server.proxyd.reload_failure", 0) == 0


def test_dry_run_refuses_what_a_worker_would_refuse(setup) -> None:
    p, port, admin, clusters = setup
    p.config_path.write_text(
        http_config(port, admin, clusters, hcm_extra='          server_name: "sn☃w"')
    )
    res = p.ctl("reload", "--dry-run")
    assert res.returncode == 1
    assert (
        f"{p.config_path}: listener 'ingress': server_name 'sn☃w' cannot be sent" in res.stderr
    )
    unchanged(p, port)


def test_dry_run_refuses_a_listener_moved_or_unbindable(setup) -> None:
    p, port, admin, clusters = setup
    moved = p.dir / "moved.yaml"
    moved.write_text(http_config(free_port(), admin, clusters))
    res = p.ctl("reload", "--dry-run", "--config", str(moved))
    assert res.returncode == 1
    assert "listener 'ingress'" in res.stderr and "different address" in res.stderr
    # A new listener on a port another process holds: the reload's bind would fail.
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        text = http_config(port, admin, clusters)
        extra = text.split("  clusters:")[0].split("  listeners:\n", 1)[1]
        extra = extra.replace("name: ingress", "name: second").replace(
            f"port_value: {port}", f"port_value: {taken.getsockname()[1]}"
        )
        p.config_path.write_text(text.replace("  clusters:", extra + "  clusters:", 1))
        res = p.ctl("reload", "--dry-run")
        assert res.returncode == 1
        assert f"cannot bind listener 'second' to 127.0.0.1:{taken.getsockname()[1]}" in res.stderr  # fmt: skip
        assert p.ctl("reload").returncode == 1  # the real reload agrees
    finally:
        taken.close()
    unchanged(p, port)


def test_dry_run_refuses_an_access_log_a_worker_could_not_open(setup, tmp_path: Path) -> None:
    p, port, admin, clusters = setup
    log_path = tmp_path / "no-such-dir" / "access.log"
    access_log = f"""          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log_path}"""
    p.config_path.write_text(http_config(port, admin, clusters, hcm_extra=access_log))
    res = p.ctl("reload", "--dry-run")
    assert res.returncode == 1
    assert f"access log '{log_path}' cannot be opened: No such file or directory" in res.stderr
    # The real reload is refused by the workers for the same reason.
    real = p.ctl("reload")
    assert real.returncode == 1
    assert f"access log '{log_path}' cannot be opened: No such file or directory" in real.stderr
    assert not log_path.exists()


def test_reload_flags_that_need_dry_run(setup) -> None:
    p, *_ = setup
    res = p.ctl("reload", "--json")
    assert res.returncode == 2
    assert "--dry-run" in res.stderr
    assert p.status()["epoch"] == 1


def test_dry_run_with_xds_shows_the_reloads_changes_only(tmp_path: Path, upstream) -> None:
    """What xDS delivered is the same on both sides of the diff: a static cluster added
    shows as that alone; a new node identity drops the delivered resources, as the
    reload would (the subscriptions start afresh)."""
    from tests.integration.test_xds_files import bootstrap, one_cluster, upstream_of

    a = upstream("a")
    port, admin = free_port(), free_port()
    files = one_cluster(tmp_path, a.port, {"front": port})
    config = json.loads(bootstrap(admin, files.lds, files.cds))
    with ProxydProcess(tmp_path, json.dumps(config), admin, config_name="proxyd.json") as p:
        url = f"http://127.0.0.1:{port}/x"
        assert upstream_of(url) == "a"
        epoch = p.status()["epoch"]
        static = {
            "name": "static_extra",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "static_extra",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": a.port}}}}]}],  # fmt: skip
            },
        }
        candidate = tmp_path / "candidate.json"
        candidate.write_text(json.dumps({**config, "static_resources": {"clusters": [static]}}))
        res = p.ctl("reload", "--dry-run", "--json", "--config", str(candidate))
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["changed"] is True and doc["bootstrap"] == []
        diff = doc["diff"]
        assert diff["clusters"] == {"added": [{"name": "static_extra"}], "removed": [], "changed": []}  # fmt: skip
        for section in ("listeners", "route_configs", "virtual_hosts", "routes", "endpoints"):
            assert diff[section] == {"added": [], "removed": [], "changed": []}, section
        # The counts include what xDS delivered: the LDS listener with its RDS route,
        # the EDS cluster with its endpoint.
        assert doc["counts"]["listeners"] == 1 and doc["counts"]["routes"] == 1
        assert doc["counts"]["clusters"] == 2 and doc["counts"]["endpoints"] == 2

        renamed = {**config, "node": {"id": "proxy-2", "cluster": "test"}}
        candidate.write_text(json.dumps(renamed))
        doc = json.loads(p.ctl("reload", "--dry-run", "--json", "--config", str(candidate)).stdout)
        assert doc["bootstrap"] == [{"field": "node.id", "old": "proxy-1", "new": "proxy-2"}]
        assert doc["diff"]["listeners"]["removed"] == [{"name": "front"}]
        assert doc["diff"]["clusters"]["removed"] == [{"name": "a"}]
        # Nothing changed.
        assert p.status()["epoch"] == epoch
        assert upstream_of(url) == "a"


# -- the probes on their own (no master) ------------------------------------------------


def _listener(address: str, port: int):
    from proxyd import epoch as ep

    hcm = ep.HttpConnectionManager("s", "AUTO", ep.RouteConfig("r", ()))
    return ep.Listener("probe", address, port, hcm)


def test_probe_bind_binds_nothing_that_stays() -> None:
    from proxyd.master.dry_run import probe_bind
    from proxyd.master.listeners import BindError

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        with pytest.raises(BindError, match=f"cannot bind listener 'probe' to 127.0.0.1:{port}"):
            probe_bind(_listener("127.0.0.1", port), offered=set())
        probe_bind(_listener("127.0.0.1", port), offered={"probe"})  # systemd's socket: not probed
    finally:
        holder.close()
    free = free_port()
    probe_bind(_listener("127.0.0.1", free), offered=set())
    # The probe is closed: the port can be bound (and listened on) by anyone at once.
    again = socket.socket()
    try:
        again.bind(("127.0.0.1", free))
        again.listen(1)
    finally:
        again.close()


def test_probe_bind_creates_no_unix_socket_file(tmp_path: Path) -> None:
    from proxyd.master.dry_run import probe_bind

    path = tmp_path / "listener.sock"
    probe_bind(_listener(str(path), 0), offered=set())
    assert not path.exists()


def test_probe_access_log(tmp_path: Path) -> None:
    from proxyd.master.dry_run import DryRunRefused, probe_access_log

    probe_access_log(str(tmp_path / "new.log"))  # can be created
    assert not (tmp_path / "new.log").exists()  # and was not
    existing = tmp_path / "old.log"
    existing.write_text("kept\n")
    probe_access_log(str(existing))
    assert existing.read_text() == "kept\n"
    with pytest.raises(DryRunRefused, match="cannot be opened: Is a directory"):
        probe_access_log(str(tmp_path))
    with pytest.raises(DryRunRefused, match="cannot be opened: No such file or directory"):
        probe_access_log(str(tmp_path / "missing" / "a.log"))
