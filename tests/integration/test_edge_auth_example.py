"""conf/edge-auth.yaml at work: the example's own filter chain, routes and tracing, with
its addresses pointed at servers the test runs (the app, an HTTP authorization service,
an OTLP/gRPC collector) and its JWKS replaced by a key the test signs with. Each layer
is seen doing its job: jwt_authn (401 without a token), RBAC on the token's roles (403
on /admin), ext_authz (its answer decides; it sees /check + the path), the app reached (and a path the service refuses refused),
and the spans at the collector."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.otlp_wire import GrpcCollector
from tests.support import ProxydProcess, UpstreamServer, wait_for

ROOT = Path(__file__).resolve().parents[2]
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = {"keys": [{**json.loads(RSAAlgorithm.to_jwk(KEY.public_key())), "kid": "t1"}]}


class _Authz(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        _Authz.seen.append(self.path)
        if "/blocked" in self.path:
            body = b"denied by authz"
            self.send_response(403)
        else:
            body = b""
            self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _point(cluster: dict[str, Any], port: int) -> None:
    ep = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    ep["address"]["socket_address"]["port_value"] = port


def config(app: int, authz: int, otel: int) -> str:
    doc = yaml.safe_load((ROOT / "conf" / "edge-auth.yaml").read_text())
    doc["admin"]["address"]["socket_address"]["port_value"] = 0
    listener = doc["static_resources"]["listeners"][0]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    jwt_filter = hcm["http_filters"][0]["typed_config"]
    jwt_filter["providers"]["example"]["local_jwks"] = {"inline_string": json.dumps(JWKS)}
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    _point(clusters["app"], app)
    _point(clusters["authz"], authz)
    _point(clusters["otel_collector"], otel)
    ext = hcm["http_filters"][2]["typed_config"]
    ext["http_service"]["server_uri"]["uri"] = f"http://127.0.0.1:{authz}"
    return yaml.safe_dump(doc, sort_keys=False)


def token(**claims: Any) -> str:
    body = {"iss": "https://issuer.example.com", "aud": "edge", "exp": int(time.time()) + 600}
    return jwt.encode({**body, **claims}, KEY, algorithm="RS256", headers={"kid": "t1"})


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    app = UpstreamServer("app").start()
    authz = ThreadingHTTPServer(("127.0.0.1", 0), _Authz)
    threading.Thread(target=authz.serve_forever, daemon=True).start()
    collector = GrpcCollector()
    tmp = Path(tmp_path_factory.mktemp("edge"))
    text = config(app.port, authz.server_address[1], collector.port)
    p = ProxydProcess(tmp, text, concurrency=1).start()
    try:
        yield p, collector
    finally:
        p.stop()
        collector.close()
        authz.shutdown()
        authz.server_close()
        app.stop()


def _get(port: int, path: str, **headers: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"host": "edge", **headers})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def test_each_layer_does_its_job(edge: tuple[Any, Any]) -> None:
    p, collector = edge
    port = p.listener_port("edge")
    user = "Bearer " + token(sub="u1", roles=["user"])
    admin = "Bearer " + token(sub="a1", roles=["user", "admin"])
    assert _get(port, "/echo/hello")[0] == 401  # no token
    assert _get(port, "/echo/hello", authorization="Bearer x.y.z")[0] == 401
    status, body = _get(port, "/echo/hello", authorization=user)
    assert status == 200 and json.loads(body)["upstream"] == "app"
    assert _Authz.seen[-1] == "/check/echo/hello"
    assert _get(port, "/admin/x", authorization=user)[0] == 403  # RBAC: not an admin
    assert _get(port, "/admin/x", authorization=admin)[0] != 403  # the app's own answer
    assert _get(port, "/echo/blocked", authorization=user) == (
        403,
        b"denied by authz",
    )
    assert _get(port, "/healthz")[0] != 401  # no token needed there
    spans = wait_for(lambda: len(collector.spans) >= 5 and list(collector.spans), timeout=15)
    assert {s["name"] for s in spans} >= {"app"}
