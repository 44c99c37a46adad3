"""The jwt_authn filter, proxyd beside real Envoy on the same YAML. Tokens are minted
here with PyJWT (every algorithm family, valid, expired, not yet valid, wrong audience,
wrong issuer, bad signature, a key not in the JWKS, malformed, missing), sent in a
header, a query parameter and a cookie, under rules with each kind of requirement and
per-route configs; compared: status, body, ``www-authenticate``, what the upstream saw
(forwarded or removed token, payload header, claim headers), the access log's
details and ``%DYNAMIC_METADATA%`` of the payload, and the filter's stats."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.support import UpstreamServer, bootstrap, http_listener, static_cluster, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

JWT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
ISS = "https://issuer.example"
OTHER_ISS = "https://other.example"
HS_SECRET = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
LOG = (
    "%REQ(X-ID)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%"
    " sub=%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:sub)%"
    " other=%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:other:sub)%\n"
)
SEEN = (
    "authorization", "x-token", "cookie", "x-jwt-payload", "x-other-payload", "x-jwt-sub",
    "x-jwt-tenant", "x-jwt-admin", "x-jwt-level", "x-jwt-missing", "x-jwt-roles",
)  # fmt: skip

RSA1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # rotated away
EC256 = ec.generate_private_key(ec.SECP256R1())
EC384 = ec.generate_private_key(ec.SECP384R1())
EC521 = ec.generate_private_key(ec.SECP521R1())
ED = ed25519.Ed25519PrivateKey.generate()


def _jwk(algo: Any, key: Any, kid: str, **extra: str) -> dict[str, Any]:
    return {**json.loads(algo.to_jwk(key.public_key())), "kid": kid, **extra}


JWKS = {
    "keys": [
        _jwk(RSAAlgorithm, RSA1, "rsa1"),
        _jwk(ECAlgorithm, EC256, "ec256"),
        _jwk(ECAlgorithm, EC384, "ec384"),
        _jwk(ECAlgorithm, EC521, "ec521"),
        _jwk(OKPAlgorithm, ED, "ed1"),
        {"kty": "oct", "kid": "hs1", "k": jwt.utils.base64url_encode(HS_SECRET).decode()},
    ]
}
OTHER_JWKS = {"keys": [_jwk(RSAAlgorithm, RSA1, "rsa1", alg="RS256")]}

SIGNERS: dict[str, tuple[Any, str]] = {
    "RS256": (RSA1, "rsa1"), "RS384": (RSA1, "rsa1"), "RS512": (RSA1, "rsa1"),
    "PS256": (RSA1, "rsa1"), "PS384": (RSA1, "rsa1"), "PS512": (RSA1, "rsa1"),
    "ES256": (EC256, "ec256"), "ES384": (EC384, "ec384"), "ES512": (EC521, "ec521"),
    "EdDSA": (ED, "ed1"),
    "HS256": (HS_SECRET, "hs1"), "HS384": (HS_SECRET, "hs1"), "HS512": (HS_SECRET, "hs1"),
}  # fmt: skip

NOW = int(time.time())


def mint(alg: str = "RS256", key: Any = None, kid: str | None = None, **claims: Any) -> str:
    signer, default_kid = SIGNERS[alg]
    payload = {"iss": ISS, "sub": "alice", "aud": "api.example", "exp": NOW + 3600}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    headers = {"kid": default_kid if kid is None else kid}
    return jwt.encode(payload, signer if key is None else key, algorithm=alg, headers=headers)


def relabel(token: str, alg: str) -> str:
    """``token`` with its header's alg changed (the signature left as it was)."""
    _, payload, signature = token.split(".")
    header = json.dumps({"alg": alg, "kid": jwt.get_unverified_header(token)["kid"]})
    return ".".join((jwt.utils.base64url_encode(header.encode()).decode(), payload, signature))


GOOD = mint(org={"tenant": "acme"}, admin=True, level=7)
OTHER = mint(iss=OTHER_ISS, sub="bob", aud="special")
BEARER = {"authorization": f"Bearer {GOOD}"}
CK = mint(iss="https://ck.example", sub="carol")


def build_cases() -> dict[str, tuple[str, dict[str, str]]]:
    """The cases, their tokens minted now: the ones near a time limit (within the clock
    skew) keep their meaning however long after the import they are sent."""
    global NOW
    NOW = int(time.time())
    return {
        "valid": ("/echo/api", BEARER),
        "missing": ("/echo/api", {}),
        "expired": ("/echo/api", {"authorization": "Bearer " + mint(exp=NOW - 3600)}),
        "expired_within_skew": ("/echo/api", {"authorization": "Bearer " + mint(exp=NOW - 20)}),
        # A fractional NumericDate is taken (jwt_verify_lib casts it).
        "fractional_exp": ("/echo/api", {"authorization": "Bearer " + mint(exp=NOW + 3600.75)}),
        "fractional_exp_expired": (
            "/echo/api",
            {"authorization": "Bearer " + mint(exp=NOW - 3600.25)},
        ),
        "not_yet_valid": ("/echo/api", {"authorization": "Bearer " + mint(nbf=NOW + 3600)}),
        "nbf_within_skew": ("/echo/api", {"authorization": "Bearer " + mint(nbf=NOW + 20)}),
        "no_exp": ("/echo/api", {"authorization": "Bearer " + mint(exp=None)}),
        "wrong_audience": ("/echo/api", {"authorization": "Bearer " + mint(aud="elsewhere")}),
        "audience_list": ("/echo/api", {"authorization": "Bearer " + mint(aud=["x", "api.example"])}),
        "no_audience": ("/echo/api", {"authorization": "Bearer " + mint(aud=None)}),
        "wrong_issuer": ("/echo/api", {"authorization": "Bearer " + mint(iss="https://evil.example")}),
        "bad_signature": ("/echo/api", {"authorization": "Bearer " + GOOD[:-6] + "AAAAAA"}),
        "signed_by_other_key": ("/echo/api", {"authorization": "Bearer " + mint(key=RSA2)}),
        "rotated_key": ("/echo/api", {"authorization": "Bearer " + mint(key=RSA2, kid="rsa2")}),
        "no_kid": ("/echo/api", {"authorization": "Bearer " + mint(kid="")}),
        "malformed": ("/echo/api", {"authorization": "Bearer not-a-jwt"}),
        "bad_header_b64": ("/echo/api", {"authorization": "Bearer e30.e30.sig"}),
        "bad_header_json": ("/echo/api", {"authorization": "Bearer bm90anNvbg.e30.c2ln"}),
        "alg_none": ("/echo/api", {"authorization": "Bearer eyJhbGciOiJub25lIn0.e30."}),
        "exp_not_int": ("/echo/api", {"authorization": "Bearer " + mint(exp="soon")}),
        "lower_bearer": ("/echo/api", {"authorization": f"bearer {GOOD}"}),
        "no_prefix": ("/echo/api", {"authorization": GOOD}),
        "access_token_param": (f"/echo/api?x=1&access_token={GOOD}", {}),
        "access_token_only_param": (f"/echo/api?access_token={GOOD}", {}),
        "access_token_first_param": (f"/echo/api?access_token={GOOD}&y=2&z", {}),
        "access_token_among_params": (f"/echo/api?z=1&access_token={GOOD}&a=%41&z=2", {}),
        "access_token_encoded_params": (f"/echo/api?b=%26%20x+y%3D&access_token={GOOD}&%61=1", {}),
        "cookie_not_forwarded": ("/echo/cookie", {"cookie": f"a=1; jwt={CK}; b=2"}),
        "cookie_bad": ("/echo/cookie", {"cookie": "jwt=" + mint(iss="https://ck.example", exp=NOW - 3600)}),
        "two_tokens_one_bad": (f"/echo/api?access_token={mint(exp=NOW - 3600)}", BEARER),
        "utf8_claim": ("/echo/api", {"authorization": "Bearer " + mint(sub="Zoë")}),
        "float_and_list_claims": ("/echo/api", {"authorization": "Bearer " + mint(level=7.5, roles=["a", "b"])}),
        "object_claim": ("/echo/api", {"authorization": "Bearer " + mint(org={"tenant": {"x": 1}})}),
        "spoofed_claim_header": ("/echo/api", {**BEARER, "x-jwt-sub": "mallory"}),
        **{f"alg_{a}": ("/echo/api", {"authorization": "Bearer " + mint(a)}) for a in SIGNERS},
        "es384_header_on_es256_key": ("/echo/api", {"authorization": "Bearer " + relabel(mint("ES256"), "ES384")}),
        "public_rule": ("/echo/public/x", {}),
        "skip_header_rule": ("/echo/api", {"x-skip-auth": "1"}),
        "hdr_in_header": ("/echo/hdr", {"x-token": f"Tok {OTHER}"}),
        "hdr_in_param": (f"/echo/hdr?tok={OTHER}", {}),
        "hdr_in_cookie": ("/echo/hdr", {"cookie": f"a=1; session={OTHER}"}),
        "hdr_bearer_ignored": ("/echo/hdr", {"authorization": f"Bearer {OTHER}"}),
        "hdr_skew_5s": ("/echo/hdr", {"x-token": "Tok " + mint(iss=OTHER_ISS, aud="special", exp=NOW - 30)}),
        "any_first": ("/echo/any", BEARER),
        "any_second": ("/echo/any", {"x-token": f"Tok {OTHER}"}),
        "any_none": ("/echo/any", {}),
        "any_bad": ("/echo/any", {"authorization": "Bearer " + mint(exp=NOW - 3600)}),
        "all_both": ("/echo/all", {**BEARER, "x-token": f"Tok {OTHER}"}),
        "all_one": ("/echo/all", BEARER),
        "all_wrong_aud": ("/echo/all", {**BEARER, "x-token": "Tok " + mint(iss=OTHER_ISS, aud="api.example")}),
        "any_or_missing_none": ("/echo/anymiss", {}),
        "any_or_missing_good": ("/echo/anymiss", BEARER),
        "any_or_missing_expired": ("/echo/anymiss", {"authorization": "Bearer " + mint(exp=NOW - 3600)}),
        "any_or_missing_unknown_iss": ("/echo/anymiss", {"authorization": "Bearer " + mint(iss="https://x")}),
        "any_or_failed_expired": ("/echo/anyfail", {"authorization": "Bearer " + mint(exp=NOW - 3600)}),
        "all_with_missing_none": ("/echo/allmiss", {}),
        "all_with_missing_bad": ("/echo/allmiss", {"x-token": "Tok " + mint(iss=OTHER_ISS, exp=NOW - 3600)}),
        "optional_none": ("/echo/optional", {}),
        "optional_good": ("/echo/optional", BEARER),
        "optional_bad": ("/echo/optional", {"authorization": "Bearer " + mint(exp=NOW - 3600)}),
        "optional_unknown_iss": ("/echo/optional", {"authorization": "Bearer " + mint(iss="https://x")}),
        "lenient_bad": ("/echo/lenient", {"authorization": "Bearer " + mint(exp=NOW - 3600)}),
        "lenient_good": ("/echo/lenient", {"x-token": f"Tok {OTHER}"}),
        "named_rule": ("/echo/named", {"x-token": f"Tok {OTHER}"}),
        "named_rule_missing": ("/echo/named", {}),
        "route_disabled": ("/echo/route-disabled", {}),
        "route_named": ("/echo/route-named", {"x-token": f"Tok {OTHER}"}),
        "route_named_missing": ("/echo/route-named", {}),
        "route_wrong_name": ("/echo/route-wrong", BEARER),
    }  # fmt: skip


CASES = build_cases()  # (their names, for the parametrization)


def _requires(name: str) -> dict[str, Any]:
    return {"provider_name": name}


def config(upstream: int, log_path: str, jwks_file: str) -> str:
    providers = {
        "main": {
            "issuer": ISS,
            "audiences": ["api.example"],
            "local_jwks": {"inline_string": json.dumps(JWKS)},
            "forward_payload_header": "x-jwt-payload",
            "payload_in_metadata": "payload",
            "claim_to_headers": [
                {"header_name": "x-jwt-sub", "claim_name": "sub"},
                {"header_name": "x-jwt-tenant", "claim_name": "org.tenant"},
                {"header_name": "x-jwt-admin", "claim_name": "admin"},
                {"header_name": "x-jwt-level", "claim_name": "level"},
                {"header_name": "x-jwt-missing", "claim_name": "nope"},
                {"header_name": "x-jwt-roles", "claim_name": "roles"},
            ],
        },
        "ck": {
            "issuer": "https://ck.example",
            "local_jwks": {"inline_string": json.dumps(JWKS)},
            "from_cookies": ["jwt"],
            "claim_to_headers": [{"header_name": "x-jwt-sub", "claim_name": "sub"}],
        },
        "hdr": {
            "issuer": OTHER_ISS,
            "local_jwks": {"filename": jwks_file},
            "from_headers": [{"name": "x-token", "value_prefix": "Tok "}],
            "from_params": ["tok"],
            "from_cookies": ["session"],
            "forward": True,
            "forward_payload_header": "x-other-payload",
            "pad_forward_payload_header": True,
            "payload_in_metadata": "other",
            "clock_skew_seconds": 5,
        },
    }
    rules = [
        {"match": {"prefix": "/echo/public"}},
        {"match": {"prefix": "/", "headers": [{"name": "x-skip-auth", "present_match": True}]}},
        {"match": {"path": "/echo/hdr"}, "requires": _requires("hdr")},
        {"match": {"path": "/echo/cookie"}, "requires": _requires("ck")},
        {"match": {"prefix": "/echo/anymiss"}, "requires": {"requires_any": {"requirements": [_requires("main"), {"allow_missing": {}}]}}},
        {"match": {"prefix": "/echo/anyfail"}, "requires": {"requires_any": {"requirements": [_requires("main"), {"allow_missing_or_failed": {}}]}}},
        {"match": {"prefix": "/echo/allmiss"}, "requires": {"requires_all": {"requirements": [_requires("main"), {"allow_missing": {}}]}}},
        {"match": {"prefix": "/echo/any"}, "requires": {"requires_any": {"requirements": [_requires("main"), _requires("hdr")]}}},
        {
            "match": {"prefix": "/echo/all"},
            "requires": {
                "requires_all": {
                    "requirements": [
                        _requires("main"),
                        {"provider_and_audiences": {"provider_name": "hdr", "audiences": ["special"]}},
                    ]
                }
            },
        },
        {"match": {"prefix": "/echo/optional"}, "requires": {"allow_missing": {}}},
        {"match": {"prefix": "/echo/lenient"}, "requires": {"allow_missing_or_failed": {}}},
        {"match": {"safe_regex": {"regex": "/echo/nam[e]d"}}, "requirement_name": "need_hdr"},
        {"match": {"prefix": "/"}, "requires": _requires("main")},
    ]  # fmt: skip

    def route(path: str, per_route: dict[str, Any] | None = None) -> dict[str, Any]:
        r: dict[str, Any] = {"match": {"path": path}, "route": {"cluster": "svc"}}
        if per_route is not None:
            r["typed_per_filter_config"] = {
                "envoy.filters.http.jwt_authn": {"@type": PER_ROUTE, **per_route}
            }
        return r

    route_config = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    route("/echo/route-disabled", {"disabled": True}),
                    route("/echo/route-named", {"requirement_name": "need_hdr"}),
                    route("/echo/route-wrong", {"requirement_name": "nope"}),
                    {"match": {"prefix": "/"}, "route": {"cluster": "svc"}},
                ],
            }
        ],
    }
    filt = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": JWT_TYPE,
            "providers": providers,
            "rules": rules,
            "requirement_map": {"need_hdr": _requires("hdr"), "need_main": _requires("main")},
        },
    }
    listener = http_listener(
        "ingress",
        0,
        route_config,
        [filt],
        stat_prefix="ingress_http",
        access_log=[
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": log_path,
                    "log_format": {"text_format_source": {"inline_string": LOG}},
                },
            }
        ],
    )
    return yaml.safe_dump(
        bootstrap([listener], [static_cluster("svc", [upstream])]), sort_keys=False
    )


def play_all(
    port_of: PortOf, log: Path, cases: dict[str, tuple[str, dict[str, str]]]
) -> dict[str, Any]:
    port = port_of("ingress")
    out: dict[str, Any] = {}
    for name, (path, headers) in cases.items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path, headers={"host": "jwt.test", "x-id": name, **headers})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        upstream = r.status == 200 and body.startswith(b"{")
        seen = dict(json.loads(body)["headers"]) if upstream else {}
        out[name] = {
            "status": r.status,
            "body": "" if upstream else body.decode(),
            "www-authenticate": r.getheader("www-authenticate"),
            "upstream": {h: seen.get(h) for h in SEEN} if upstream else None,
            "upstream_path": json.loads(body)["path"] if upstream else None,
        }
    lines = wait_for(
        lambda: (t := log.read_text() if log.exists() else "").count("\n") >= len(CASES) and t,
        timeout=10,
    )
    log.write_text("")
    for line in lines.splitlines():
        name, _, rest = line.partition(" ")
        out[name]["log"] = rest
    return out


def pick(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if ".jwt_authn." in k}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    upstream = UpstreamServer("svc").start()
    work = tmp_path_factory.mktemp("jwt")
    log = work / "access.log"
    jwks_file = work / "other.jwks"
    jwks_file.write_text(json.dumps(OTHER_JWKS))
    cases = build_cases()  # minted now, the same tokens for both proxies
    try:
        yield run_pair(
            config(upstream.port, str(log), str(jwks_file)),
            tmp_path_factory.mktemp("jwt-proxyd"),
            lambda port_of: play_all(port_of, log, cases),
            pick,
        )
    finally:
        upstream.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_jwt_authn_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_stats_like_envoy(results: Pair) -> None:
    assert results.envoy.stats["http.ingress_http.jwt_authn.denied"] > 0
    assert results.proxyd.stats == results.envoy.stats


# -- remote_jwks ----------------------------------------------------------------------------

K2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS_K1 = {"keys": [_jwk(RSAAlgorithm, RSA1, "k1")]}
JWKS_K2 = {"keys": [_jwk(RSAAlgorithm, K2, "k2")]}


class JwksServer:
    """Serves the JWKS it is given at /keys (and a 500 at any other path, after 0.6 s at
    /slow) on keep-alive connections, and records each request it gets (path and Host)."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = JWKS_K1
        self.seen: list[tuple[str, str | None]] = []
        self.flaky_failures = 0  # /flaky answers 503 this many more times
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the proxies may reuse a connection

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.seen.append((self.path, self.headers.get("host")))
                if self.path == "/slow":
                    time.sleep(0.6)  # longer than the provider's 0.3 s timeout
                ok = self.path == "/keys"
                if self.path == "/flaky":
                    ok = server.flaky_failures <= 0
                    server.flaky_failures -= 1
                body = json.dumps(server.jwks).encode() if ok else b"no"
                self.send_response(200 if ok else (503 if self.path == "/flaky" else 500))
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


RETRY = {"num_retries": 2, "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.02s"}}


def _remote(path: str, cluster: str, timeout: str = "1s", **extra: Any) -> dict[str, Any]:
    return {
        "http_uri": {"uri": f"http://jwks.test{path}", "cluster": cluster, "timeout": timeout},
        **extra,
    }


def remote_config(upstream: int, jwks_port: int, dead_port: int) -> str:
    providers = {
        "remote": {"issuer": ISS, "remote_jwks": _remote("/keys", "jwks", cache_duration="1s")},
        "broken": {"issuer": "https://broken", "remote_jwks": _remote("/broken", "jwks")},
        "dead": {"issuer": "https://dead", "remote_jwks": _remote("/keys", "dead")},
        "retried": {
            "issuer": "https://retried",
            "remote_jwks": _remote("/flaky", "jwks", retry_policy=RETRY),
        },
        "retried_dead": {
            "issuer": "https://retried-dead",
            "remote_jwks": _remote("/keys", "dead", retry_policy=RETRY),
        },
        "slow": {"issuer": "https://slow", "remote_jwks": _remote("/slow", "jwks", timeout="0.3s")},
    }
    rules = [{"match": {"path": f"/{name}"}, "requires": _requires(name)} for name in providers]
    route_config = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}],
            }
        ],
    }
    filt = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {"@type": JWT_TYPE, "providers": providers, "rules": rules},
    }
    listener = http_listener("ingress", 0, route_config, [filt], stat_prefix="ingress_http")
    clusters = [
        static_cluster("svc", [upstream]),
        static_cluster("jwks", [jwks_port]),
        static_cluster("dead", [dead_port]),
    ]
    return yaml.safe_dump(bootstrap([listener], clusters), sort_keys=False)


def k1(**claims: Any) -> str:
    return mint(key=RSA1, kid="k1", **claims)


def k2(**claims: Any) -> str:
    return mint(key=K2, kid="k2", **claims)


def play_remote(port_of: PortOf, server: JwksServer) -> dict[str, Any]:
    port = port_of("ingress")
    server.jwks, server.seen = JWKS_K1, []
    out: dict[str, Any] = {}

    def ask(name: str, path: str, token: str | None) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"host": "jwt.test"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        out[name] = {
            "status": r.status,
            "body": "" if r.status == 200 else body.decode(),
            "www-authenticate": r.getheader("www-authenticate"),
            "fetches": len(server.seen),
        }

    ask("missing_no_fetch", "/remote", None)
    ask("k1", "/remote", k1())
    ask("k1_cached", "/remote", k1())
    ask("expired_cached", "/remote", k1(exp=NOW - 3600))
    server.jwks = JWKS_K2  # the key is rotated; the cached set still has k1 only
    ask("k2_before_expiry", "/remote", k2())
    time.sleep(1.2)  # the 1 s cache_duration passes
    ask("k2_after_expiry", "/remote", k2())
    ask("k1_rotated_out", "/remote", k1())
    ask("broken", "/broken", mint(iss="https://broken"))
    ask("broken_again", "/broken", mint(iss="https://broken"))
    ask("dead", "/dead", mint(iss="https://dead"))
    ask("slow", "/slow", mint(iss="https://slow"))
    server.flaky_failures = 5  # more than the retries
    ask("retried_out", "/retried", mint(iss="https://retried", kid="k2", key=K2))
    server.flaky_failures = 2  # two 503s, then the keys: the second retry gets them
    ask("retried", "/retried", mint(iss="https://retried", kid="k2", key=K2))
    ask("retried_dead", "/retried_dead", mint(iss="https://retried-dead"))
    out["seen"] = sorted(set(server.seen))
    return out


FETCH_STATS = (
    "cluster.jwks.upstream_rq_total", "cluster.jwks.upstream_rq_200",
    "cluster.jwks.upstream_rq_500", "cluster.jwks.upstream_cx_total",
    "cluster.dead.upstream_cx_connect_fail",
    "cluster.jwks.upstream_rq_503", "cluster.jwks.upstream_rq_retry",
    "cluster.jwks.upstream_rq_retry_success", "cluster.dead.upstream_rq_retry",
    "cluster.jwks.upstream_rq_retry_backoff_exponential",
)  # fmt: skip


def pick_remote(stats: dict[str, int]) -> dict[str, int]:
    """The filter's stats, and the JWKS fetches as the clusters counted them."""
    return {**pick(stats), **{k: stats.get(k, 0) for k in FETCH_STATS}}


@pytest.fixture(scope="module")
def remote_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    upstream = UpstreamServer("svc").start()
    server = JwksServer()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # closed again: nothing listens there
    try:
        yield run_pair(
            remote_config(upstream.port, server.port, dead_port),
            tmp_path_factory.mktemp("jwt-remote"),
            lambda port_of: play_remote(port_of, server),
            pick_remote,
        )
    finally:
        server.stop()
        upstream.stop()


REMOTE_CASES = [
    "missing_no_fetch", "k1", "k1_cached", "expired_cached", "k2_before_expiry",
    "k2_after_expiry", "k1_rotated_out", "broken", "broken_again", "dead", "slow",
    "retried_out", "retried", "retried_dead", "seen",
]  # fmt: skip


@pytest.mark.parametrize("name", REMOTE_CASES)
def test_remote_jwks_like_envoy(remote_results: Pair, name: str) -> None:
    assert remote_results.proxyd.replies[name] == remote_results.envoy.replies[name]


def test_remote_jwks_rotation_is_seen_after_the_cache_expires(remote_results: Pair) -> None:
    replies = remote_results.proxyd.replies
    assert replies["k1"]["status"] == replies["k2_after_expiry"]["status"] == 200
    assert replies["k2_before_expiry"]["status"] == replies["k1_rotated_out"]["status"] == 401
    assert replies["k1_cached"]["fetches"] == 1 and replies["k2_after_expiry"]["fetches"] == 2


def test_remote_jwks_stats_like_envoy(remote_results: Pair) -> None:
    assert remote_results.envoy.stats["http.ingress_http.jwt_authn.jwks_fetch_success"] == 3
    assert remote_results.envoy.stats["cluster.jwks.upstream_rq_retry"] > 0
    assert remote_results.proxyd.stats == remote_results.envoy.stats
