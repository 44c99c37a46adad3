"""SDS from files through a real proxyd: a listener's certificate (and its client CA)
come from a DiscoveryResponse file; replacing a certificate file, or the SDS file,
rotates the certificate for new handshakes while an established connection goes on
serving; a listener whose secret file holds no secret yet closes its connections until the file
appears; a cluster's client certificate comes from SDS too."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import (
    ProxydProcess,
    UpstreamServer,
    bootstrap,
    http_listener,
    static_cluster,
    wait_for,
)
from tests.tls_upstream import TlsUpstream
from tests.tls_upstream import get as upstream_get

TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS_TYPE = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
)
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
ROUTE = {
    "virtual_hosts": [
        {
            "name": "all",
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
        }
    ]
}


def write_atomically(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


def cert_secret(name: str, chain: Path | str, key: Path | str) -> dict[str, Any]:
    return {
        "@type": SECRET_TYPE,
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"filename": str(chain)},
            "private_key": {"filename": str(key)},
        },
    }


def sds_file(path: Path, *secrets: dict[str, Any], version: str = "1") -> None:
    write_atomically(path, yaml.safe_dump({"version_info": version, "resources": list(secrets)}))


def sds_config(name: str, path: Path, timeout: str = "15s") -> dict[str, Any]:
    return {
        "name": name,
        "sds_config": {"path_config_source": {"path": str(path)}, "initial_fetch_timeout": timeout},
    }


def tls_listener(name: str, common: dict[str, Any]) -> dict[str, Any]:
    lst = http_listener(name, 0, ROUTE)
    lst["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": TLS_TYPE, "common_tls_context": common},
    }
    return lst


@pytest.fixture(scope="module")
def setup(tmp_path_factory, certs):
    tmp = tmp_path_factory.mktemp("sds")
    files = tmp / "files"
    files.mkdir()
    shutil.copy(certs.server, files / "cert.pem")
    shutil.copy(certs.server_key, files / "key.pem")
    sds_file(files / "server.yaml", cert_secret("server", files / "cert.pem", files / "key.pem"))
    sds_file(
        files / "ca.yaml",
        {
            "@type": SECRET_TYPE,
            "name": "ca",
            "validation_context": {"trusted_ca": {"filename": certs.ca}},
        },
    )
    rotating = tls_listener(
        "rotating",
        {
            "tls_certificate_sds_secret_configs": [sds_config("server", files / "server.yaml")],
            "validation_context_sds_secret_config": sds_config("ca", files / "ca.yaml"),
        },
    )
    late = tls_listener(
        "late",
        {"tls_certificate_sds_secret_configs": [sds_config("late", files / "late.yaml", "0.3s")]},
    )
    sds_file(files / "late.yaml", version="0")  # no secret yet (the file must exist)
    static = tls_listener("static", {"tls_certificate_sds_secret_configs": [{"name": "fixed"}]})
    up = UpstreamServer("up")
    up.start()
    doc = bootstrap([rotating, late, static], [static_cluster("up", [up.port])])
    doc["static_resources"]["secrets"] = [
        {
            k: v
            for k, v in cert_secret("fixed", certs.other, certs.other_key).items()
            if k != "@type"
        }
    ]
    doc["node"] = {"id": "node-1", "cluster": "test"}
    p = ProxydProcess(tmp, yaml.safe_dump(doc), concurrency=1).start()
    try:
        yield p, files
    finally:
        p.stop()
        up.stop()


def client(certs: Any, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs.ca)
    ctx.check_hostname = False  # the rotated certificate names other.test
    if with_cert:
        ctx.load_cert_chain(certs.client, certs.client_key)
    return ctx


def connect(p: ProxydProcess, listener: str, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", p.listener_port(listener)), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="example.com")


def serial_of(path: str | Path) -> str:
    info = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
    return str(info["serialNumber"])


def get(s: ssl.SSLSocket) -> int:
    s.sendall(b"GET /echo HTTP/1.1\r\nhost: example.com\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            v
            for k, _, v in (x.partition(b":") for x in head.split(b"\r\n"))
            if k.lower() == b"content-length"
        )
    )
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk
        body += chunk
    assert b"connection: close" not in head.lower()
    json.loads(body)
    return int(head.split(b" ")[1])


def seen_serial(p: ProxydProcess, listener: str, ctx: ssl.SSLContext) -> str:
    with connect(p, listener, ctx) as s:
        cert = s.getpeercert()
        assert get(s) == 200
    assert cert is not None
    return str(cert["serialNumber"])


def test_certificate_file_replaced_rotates_new_handshakes_only(setup, certs) -> None:
    p, files = setup
    ctx = client(certs, with_cert=True)
    assert seen_serial(p, "rotating", ctx) == serial_of(certs.server)
    old = connect(p, "rotating", ctx)
    try:
        assert get(old) == 200
        write_atomically(files / "key.pem", Path(certs.other_key).read_bytes())
        write_atomically(files / "cert.pem", Path(certs.other).read_bytes())
        wait_for(lambda: seen_serial(p, "rotating", ctx) == serial_of(certs.other))
        # The connection made before the rotation keeps serving, with its certificate.
        for _ in range(3):
            assert get(old) == 200
        assert old.getpeercert()["serialNumber"] == serial_of(certs.server)  # type: ignore[index]
    finally:
        old.close()
    assert p.stats().get("sds.server.update_success", 0) >= 2


def test_a_reload_keeps_the_delivered_secret_and_the_connections(setup, certs) -> None:
    p, _ = setup
    ctx = client(certs, with_cert=True)
    before = seen_serial(p, "rotating", ctx)
    with connect(p, "rotating", ctx) as old:
        assert get(old) == 200
        dry = p.ctl("reload", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        res = p.ctl("reload")
        assert res.returncode == 0, res.stderr
        # (get asserts the answer does not say "connection: close": no drain)
        assert get(old) == 200 and get(old) == 200
    assert seen_serial(p, "rotating", ctx) == before


def test_sds_file_replaced_points_at_other_files(setup, certs) -> None:
    p, files = setup
    ctx = client(certs, with_cert=True)
    sds_file(
        files / "server.yaml", cert_secret("server", certs.server, certs.server_key), version="2"
    )
    wait_for(lambda: seen_serial(p, "rotating", ctx) == serial_of(certs.server))


def test_validation_context_from_sds_requires_a_trusted_client(setup, certs) -> None:
    p, _ = setup
    ctx = ssl.create_default_context(cafile=certs.ca)
    ctx.check_hostname = False
    ctx.load_cert_chain(certs.stranger, certs.stranger_key)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with connect(p, "rotating", ctx) as s:
            get(s)  # TLS 1.3: the refusal arrives with the first read


def test_a_bad_sds_update_keeps_the_last_good_secret(setup, certs) -> None:
    p, files = setup
    ctx = client(certs, with_cert=True)
    before = p.stats().get("sds.server.update_rejected", 0)
    # The key does not match the certificate: refused, the running certificate stays.
    sds_file(
        files / "server.yaml", cert_secret("server", certs.server, certs.other_key), version="3"
    )
    wait_for(lambda: p.stats().get("sds.server.update_rejected", 0) > before)
    assert seen_serial(p, "rotating", ctx) == serial_of(certs.server)
    assert "KEY_VALUES_MISMATCH" in p.log() or "key values mismatch" in p.log().lower()
    sds_file(
        files / "server.yaml",
        cert_secret("server", files / "cert.pem", files / "key.pem"),
        version="4",
    )
    wait_for(lambda: seen_serial(p, "rotating", ctx) == serial_of(certs.other))


def test_listener_without_its_secret_closes_connections_until_it_arrives(setup, certs) -> None:
    p, files = setup
    ctx = client(certs)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        connect(p, "late", ctx).close()
    sds_file(files / "late.yaml", cert_secret("late", certs.server, certs.server_key))
    wait_for(lambda: _serves(p, "late", ctx))


def _serves(p: ProxydProcess, listener: str, ctx: ssl.SSLContext) -> bool:
    try:
        return seen_serial(p, listener, ctx) != ""
    except (ssl.SSLError, ConnectionError):
        return False


def test_static_secret_by_name(setup, certs) -> None:
    p, _ = setup
    assert seen_serial(p, "static", client(certs)) == serial_of(certs.other)


def test_cluster_client_certificate_from_sds(tmp_path, certs) -> None:
    sds = tmp_path / "client.yaml"
    sds_file(sds, cert_secret("client", certs.client, certs.client_key))
    with TlsUpstream(certs, verify_clients=True) as up:
        cluster = static_cluster("up", [up.port])
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": UPSTREAM_TLS_TYPE,
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [sds_config("client", sds)],
                    "validation_context": {"trusted_ca": {"filename": certs.ca}},
                },
            },
        }
        doc = bootstrap(
            [http_listener("plain", 0, ROUTE)], [cluster], node={"id": "node-1", "cluster": "test"}
        )
        with ProxydProcess(tmp_path, yaml.safe_dump(doc), concurrency=1) as p:
            got = upstream_get(p.listener_port("plain"), "/echo")
    assert got["status"] == 200
    assert "spiffe://test/client" in got["json"]["client_sans"]


LISTENER_T = "type.googleapis.com/envoy.config.listener.v3.Listener"


def test_lds_listener_warms_until_its_secret_arrives(tmp_path, certs) -> None:
    """A listener delivered by LDS whose secret is not there yet is not added (Envoy
    warms it) until the secret arrives; then it serves with it."""
    sds = tmp_path / "secret.yaml"
    sds_file(sds, version="0")  # no secret yet
    lds = tmp_path / "lds.yaml"
    lst = tls_listener(
        "warming", {"tls_certificate_sds_secret_configs": [sds_config("web", sds, "60s")]}
    )
    write_atomically(
        lds, yaml.safe_dump({"version_info": "1", "resources": [{"@type": LISTENER_T, **lst}]})
    )
    up = UpstreamServer("up")
    up.start()
    doc = bootstrap(
        [],
        [static_cluster("up", [up.port])],
        node={"id": "node-1", "cluster": "test"},
        dynamic_resources={
            "lds_config": {
                "path_config_source": {"path": str(lds)},
                "initial_fetch_timeout": "0.2s",
            }
        },
    )
    try:
        with ProxydProcess(tmp_path, yaml.safe_dump(doc), concurrency=1) as p:
            wait_for(lambda: p.stats().get("listener_manager.lds.update_success", 0) >= 1)
            status, body = p.admin("/listeners?format=json")
            assert status == 200 and "warming" not in body, body
            sds_file(sds, cert_secret("web", certs.server, certs.server_key), version="1")
            port = p.listener_port("warming")
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            with client(certs).wrap_socket(raw, server_hostname="example.com") as s:
                assert get(s) == 200
                assert s.getpeercert()["serialNumber"] == serial_of(certs.server)  # type: ignore[index]
    finally:
        up.stop()


def test_config_dump_shows_the_secrets(setup, certs) -> None:
    p, _ = setup
    status, body = p.admin("/config_dump")
    assert status == 200
    dump = json.loads(body)
    (secrets,) = [c for c in dump["configs"] if c["@type"].endswith("SecretsConfigDump")]
    assert [s["name"] for s in secrets["static_secrets"]] == ["fixed"]
    dynamic = {s["name"]: s for s in secrets["dynamic_active_secrets"]}
    assert {"server", "ca"} <= set(dynamic)
    cert = dynamic["server"]["secret"]["tls_certificate"]
    assert cert["private_key"]["filename"].endswith("key.pem")  # a file name is shown
    assert dynamic["server"]["version_info"]
