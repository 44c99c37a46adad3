"""The jwt_authn filter: its config through proxyd.config.compile_bootstrap (what
compiles, what is refused by name), the token parser's statuses, and its decisions
driven through an in-memory FilterStream with tokens minted by PyJWT."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from proxyd.filters.api import CONTINUE, EpochFacts, LocalReply
from proxyd.filters.jwt_authn import token as tk
from proxyd.filters.jwt_authn.filter import Factory
from proxyd.filters.jwt_authn.jwks import JwksError, parse_jwks
from proxyd.worker.stats import StatsStore
from tests.unit.filter_stream import Head, MemoryStream
from tests.unit.test_filter_config import base, compiled, hcm, overrides, reject, route

JWT = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = {
    "keys": [
        {**json.loads(RSAAlgorithm.to_jwk(RSA.public_key())), "kid": "r"},
        {**json.loads(ECAlgorithm.to_jwk(EC.public_key())), "kid": "e"},
    ]
}
ISS = "https://iss"
REMOTE = {"http_uri": {"uri": "http://k.example/jwks", "cluster": "c", "timeout": "2s"}}


def provider(**fields: Any) -> dict[str, Any]:
    return {"issuer": ISS, "local_jwks": {"inline_string": json.dumps(JWKS)}, **fields}


def with_filter(**fields: Any) -> dict[str, Any]:
    d = base()
    fields.setdefault("providers", {"p": provider()})
    hcm(d)["http_filters"][0] = {"name": "jwt", "typed_config": {"@type": JWT, **fields}}
    return d


def config_of(**fields: Any) -> dict[str, Any]:
    return compiled(with_filter(**fields)).http_filters[0].config


# -- config ---------------------------------------------------------------------------------


def test_providers_rules_and_requirements_compile() -> None:
    config = config_of(
        providers={
            "p": provider(audiences=["a"], claim_to_headers=[{"header_name": "X-Sub", "claim_name": "sub"}]),
            "q": provider(from_headers=[{"name": "X-Tok", "value_prefix": "T "}], from_cookies=["c"],
                          clock_skew_seconds=3, forward=True),
        },
        rules=[
            {"match": {"prefix": "/a"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "p"},
                {"provider_and_audiences": {"provider_name": "q", "audiences": ["z"]}}]}}},
            {"match": {"path": "/b"}, "requirement_name": "m"},
            {"match": {"prefix": "/"}},
        ],
        requirement_map={"m": {"allow_missing": {}}},
    )  # fmt: skip
    p, q = config["providers"]["p"], config["providers"]["q"]
    assert p["headers"] == [["authorization", "Bearer "]] and p["params"] == ["access_token"]
    assert p["clock_skew_seconds"] == 60 and p["forward"] is False
    assert p["claim_to_headers"] == [["x-sub", "sub"]]
    assert q["headers"] == [["x-tok", "T "]] and q["params"] == [] and q["cookies"] == ["c"]
    assert q["clock_skew_seconds"] == 3
    assert [r[1] for r in config["rules"]] == [
        ["any", [["provider", "p", None], ["provider", "q", ["z"]]]],
        ["allow_missing"],
        None,
    ]


def test_local_jwks_is_read_from_its_file(tmp_path: Any) -> None:
    f = tmp_path / "keys.json"
    f.write_text(json.dumps(JWKS))
    config = config_of(providers={"p": provider(local_jwks={"filename": str(f)})})
    assert json.loads(config["providers"]["p"]["jwks"]) == JWKS


def test_remote_jwks_compiles() -> None:
    config = config_of(providers={"p": {"remote_jwks": {**REMOTE, "cache_duration": "30s"}}})
    assert config["providers"]["p"]["jwks"] == ""
    assert config["providers"]["p"]["remote"] == {
        "cluster": "c", "authority": "k.example", "path": "/jwks", "timeout_s": 2.0, "cache_s": 30.0, "retry": None,
    }  # fmt: skip
    config = config_of(
        providers={"p": {"remote_jwks": {"http_uri": {**REMOTE["http_uri"], "uri": "http://k"}}}}
    )
    assert config["providers"]["p"]["remote"]["path"] == "/"
    assert config["providers"]["p"]["remote"]["cache_s"] == 600.0
    assert config["providers"]["p"]["remote"]["retry"] is None
    retry = {"retry_back_off": {"base_interval": "0.1s"}}
    config = config_of(providers={"p": {"remote_jwks": {**REMOTE, "retry_policy": retry}}})
    assert config["providers"]["p"]["remote"]["retry"] == [1, 0.1, 1.0]


def test_a_remote_fetch_that_fails_fails_the_token() -> None:
    async def refused(cluster: str, authority: str, path: str, timeout_s: float) -> Any:
        raise OSError("refused")

    config = config_of(providers={"p": {"issuer": ISS, "remote_jwks": REMOTE}})
    store = StatsStore()
    f = Factory("jwt", config, None, store.named("http.x."), facts=EpochFacts(http_get=refused))
    f.rules = ((lambda s: True, ["provider", "p", None]),)
    result, _ = run(f, authorization="Bearer " + mint())
    assert isinstance(result, LocalReply) and result.body == "Jwks remote fetch is failed"


def test_per_route_config_compiles() -> None:
    d = with_filter(requirement_map={"m": {"provider_name": "p"}})
    route(d, 0)["typed_per_filter_config"] = {"jwt": {"@type": PER_ROUTE, "disabled": True}}
    route(d, 1)["typed_per_filter_config"] = {"jwt": {"@type": PER_ROUTE, "requirement_name": "m"}}
    assert overrides(d, 0)["jwt"].config == {"disabled": True}
    assert overrides(d, 1)["jwt"].config == {"requirement_name": "m"}


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"providers": {"p": provider(subjects={"exact": "x"})}}, "subjects"),
        ({"providers": {"p": provider(max_lifetime="10s")}}, "max_lifetime"),
        ({"providers": {"p": provider(require_expiration=True)}}, "require_expiration"),
        ({"providers": {"p": provider(normalize_payload_in_metadata={"space_delimited_claims": ["s"]})}},
         "normalize_payload_in_metadata"),
        ({"providers": {"p": provider(header_in_metadata="h")}}, "header_in_metadata"),
        ({"providers": {"p": provider(failed_status_in_metadata="f")}}, "failed_status_in_metadata"),
        ({"providers": {"p": provider(jwt_cache_config={"jwt_cache_size": 10})}}, "jwt_cache_config"),
        ({"providers": {"p": provider(clear_route_cache=True)}}, "clear_route_cache"),
        ({"filter_state_rules": {"name": "n", "requires": {"a": {"provider_name": "p"}}}},
         "filter_state_rules"),
        ({"providers": {"p": {"remote_jwks": {**REMOTE, "async_fetch": {}}}}},
         "remote_jwks.async_fetch"),
        ({"providers": {"p": {"remote_jwks": {**REMOTE, "retry_policy": {"retry_on": "5xx"}}}}},
         "remote_jwks.retry_policy.retry_on"),
        ({"bypass_cors_preflight": True}, "bypass_cors_preflight"),
        ({"strip_failure_response": True}, "strip_failure_response"),
        ({"stat_prefix": "s"}, "stat_prefix"),
        ({"rules": [{"match": {"prefix": "/", "grpc": {}}, "requires": {"provider_name": "p"}}]},
         "match.grpc"),
    ],
)  # fmt: skip
def test_refused_by_name(fields: dict[str, Any], where: str) -> None:
    err = reject(with_filter(**fields))
    assert err.path.endswith(where), err.path
    assert "not supported by proxyd" in err.reason


def test_unknown_provider_and_requirement_name_are_refused() -> None:
    err = reject(
        with_filter(rules=[{"match": {"prefix": "/"}, "requires": {"provider_name": "x"}}])
    )
    assert err.path.endswith("rules[0].requires.provider_name")
    assert "Required provider ['x'] is not configured." in err.reason
    err = reject(with_filter(rules=[{"match": {"prefix": "/"}, "requirement_name": "nope"}]))
    assert "Wrong requirement_name: nope" in err.reason


@pytest.mark.parametrize(
    ("jwks", "reason"),
    [
        ("not json", "Jwks is an invalid JSON"),
        ('{"nokeys": []}', "Jwks does not have [keys] field"),
        ('{"keys": [{"kty": "XYZ"}]}', "Jwks doesn't have any valid public key"),
        ('{"keys": [{"kty": "RSA", "n": 5}]}', "Jwks RSA [n] or [e] field is missing"),
    ],
)
def test_an_unusable_local_jwks_is_refused(jwks: str, reason: str) -> None:
    err = reject(with_filter(providers={"p": provider(local_jwks={"inline_string": jwks})}))
    assert err.path.endswith("providers['p'].local_jwks")
    assert reason in err.reason


def test_a_missing_jwks_file_is_refused() -> None:
    err = reject(with_filter(providers={"p": provider(local_jwks={"filename": "/nonexistent/k"})}))
    assert err.path.endswith("local_jwks.filename")


def test_parse_jwks_skips_unknown_key_types() -> None:
    keys = parse_jwks(json.dumps({"keys": [{"kty": "XYZ"}, *JWKS["keys"]]}))
    assert [k.kid for k in keys] == ["r", "e"]
    with pytest.raises(JwksError):
        parse_jwks("[]")


def B64(raw: bytes) -> str:  # noqa: N802 (reads as the encoding's name)
    return jwt.utils.base64url_encode(raw).decode()


# -- the token parser ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "status"),
    [
        ("abc", tk.BAD_FORMAT),
        ("a.b.c.d", tk.BAD_FORMAT),
        ("e30.e30.", tk.BAD_FORMAT),
        ("!!.e30.c2ln", "Jwt header is an invalid Base64url encoded"),
        ("bm90anNvbg.e30.c2ln", "Jwt header is an invalid JSON"),
        ("e30.e30.c2ln", "Jwt header [alg] field is required and must be a string"),
        ("eyJhbGciOiJub25lIn0.e30.c2ln", "Jwt header [alg] is not supported"),
        ("eyJhbGciOiJSUzI1NiIsImtpZCI6MX0.e30.c2ln", "Jwt header [kid] field is not a string"),
        ("eyJhbGciOiJSUzI1NiJ9.eyJleHAiOiJ4In0.c2ln", "Jwt payload [exp] field is not an integer"),
        ("eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOjF9.c2ln", "Jwt payload [aud] field is not a string or string list"),
        ("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOjF9.c2ln", "Jwt payload [iss] field is not a string"),
        ("eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjFlNDAwfQ.c2ln", "Jwt payload [exp] field is not a positive 64 bit integer"),
        ("eyJhbGciOiJSUzI1NiJ9.eyJuYmYiOi0xfQ.c2ln", "Jwt payload [nbf] field is not a positive 64 bit integer"),
        ("eyJhbGciOiJSUzI1NiJ9." + B64(b"[" * 100_000) + ".c2ln", "Jwt payload is an invalid JSON"),
        ("eyJhbGciOiJSUzI1NiJ9.e30.c2ln", tk.OK),
    ],
)  # fmt: skip
def test_parse_statuses(token: str, status: str) -> None:
    assert tk.parse(token)[0] == status


# -- decisions ------------------------------------------------------------------------------

NOW = int(time.time())


def mint(key: Any = RSA, alg: str = "RS256", kid: str = "r", **claims: Any) -> str:
    # (Margins of days: the module is imported when the suite starts, and its tests may
    # run many minutes later.)
    payload = {"iss": ISS, "sub": "alice", "exp": NOW + 30 * 86400, **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def factory(requires: dict[str, Any] | None = None, per_route: Any = None, **p: Any) -> Factory:
    rules: list[dict[str, Any]] = [{"match": {"prefix": "/"}}]
    if requires is not None:
        rules[0]["requires"] = requires
    config = config_of(
        providers={"p": provider(**p)}, rules=rules, requirement_map={"m": {"provider_name": "p"}}
    )
    return Factory("jwt", config, per_route, StatsStore().named("http.x."))


def run(f: Factory, path: str = "/", **headers: str) -> tuple[Any, MemoryStream]:
    stream = MemoryStream(head=Head(path=path, host="h", headers=headers))
    result = trio.run(f.create().on_request_headers, stream, True)
    return result, stream


def test_a_good_token_passes_and_its_header_goes() -> None:
    f = factory({"provider_name": "p"}, forward_payload_header="x-payload",
                claim_to_headers=[{"header_name": "x-sub", "claim_name": "sub"}])  # fmt: skip
    result, stream = run(f, authorization="Bearer " + mint())
    assert result is CONTINUE
    assert stream.removed_headers == ["authorization"]
    assert stream.request_headers["x-sub"] == "alice"
    assert (
        json.loads(jwt.utils.base64url_decode(stream.request_headers["x-payload"]))["sub"]
        == "alice"
    )


def test_claims_go_upstream_as_utf8_and_unsafe_ones_are_left_out() -> None:
    f = factory({"provider_name": "p"}, claim_to_headers=[
        {"header_name": "x-name", "claim_name": "name"},
        {"header_name": "x-evil", "claim_name": "evil"},
        {"header_name": "x-obj", "claim_name": "obj"}])  # fmt: skip
    token = mint(name="Zoë", evil="a\r\nx-injected: 1", obj={"a": 1})
    result, stream = run(f, authorization="Bearer " + token)
    assert result is CONTINUE
    assert stream.request_headers == {
        "x-name": "Zoë".encode().decode("latin-1"),
        "x-obj": "eyJhIjoxfQ==",  # {"a":1}
    }


@pytest.mark.parametrize(
    ("query", "rebuilt"),
    [
        ("x=1&access_token={t}&y=2", "/a?x=1&y=2"),
        ("access_token={t}", "/a"),
        ("z=2&access_token={t}&a=%41&z", "/a?a=A&z=2&z="),
        ("n=%0d%0aX:%20y&access_token={t}", "/a?n=%0D%0AX: y"),
        ("u=%C3%A9%ff&access_token={t}", "/a?u=" + b"\xc3\xa9\xff".decode("latin-1")),
    ],
)
def test_a_token_in_the_query_is_taken_out_of_it(query: str, rebuilt: str) -> None:
    path = "/a?" + query.format(t=mint())
    result, stream = run(factory({"provider_name": "p"}), path=path)
    assert result is CONTINUE and stream.head.path == rebuilt


@pytest.mark.parametrize(
    ("token", "status", "body"),
    [
        (None, 401, tk.MISSING),
        (mint(exp=NOW - 100), 401, tk.EXPIRED),
        (mint(nbf=NOW + 86400), 401, tk.NOT_YET_VALID),
        (mint(iss="https://other"), 401, tk.UNKNOWN_ISSUER),
        (mint(aud="nope"), 403, tk.AUDIENCE_NOT_ALLOWED),
        (mint(key=OTHER_RSA), 401, tk.VERIFICATION_FAILS),
        (mint(kid="gone"), 401, tk.KID_ALG_MISMATCH),
        (mint(EC, "ES256", "e"), 200, ""),
    ],
)  # fmt: skip
def test_failures_answer_as_envoy(token: str | None, status: int, body: str) -> None:
    f = factory(
        {"provider_name": "p"}, audiences=["api"] if body == tk.AUDIENCE_NOT_ALLOWED else []
    )
    headers = {} if token is None else {"authorization": "Bearer " + token}
    result, _ = run(f, path="/x?q", **headers)
    if status == 200:
        assert result is CONTINUE
        return
    assert isinstance(result, LocalReply)
    assert (result.status, result.body) == (status, body)
    realm = 'Bearer realm="http://h/x?q"'
    expected = realm if body == tk.MISSING else realm + ', error="invalid_token"'
    assert dict(result.headers)["www-authenticate"] == expected


def test_per_route_disabled_and_wrong_name() -> None:
    assert run(factory({"provider_name": "p"}, per_route={"disabled": True}))[0] is CONTINUE
    result, _ = run(factory(None, per_route={"requirement_name": "zzz"}))
    assert isinstance(result, LocalReply) and result.status == 403
    assert (
        result.body
        == "Failed JWT authentication: Wrong requirement_name: zzz. It should be one of [m]"
    )


def test_a_jwks_folded_over_lines_is_read_as_envoy_reads_it() -> None:
    # A JWKS in a YAML folded scalar keeps line breaks inside its base64url values (four
    # public configs have one); Envoy reads it, and so must proxyd, whitespace skipped.
    import json as _json

    import jwt as _jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    from proxyd.filters.jwt_authn.jwks import parse_jwks

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = _json.loads(_jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    n = jwk["n"]
    e, head, tail = jwk["e"], n[:40], n[40:]
    text = f'{{"keys": [{{"kty": "RSA", "e": "{e}",\n "n": "{head}\n        {tail}"}}]}}'
    (key,) = parse_jwks(text)
    token = _jwt.encode({"iss": "a"}, private, algorithm="RS256")
    assert _jwt.decode(token, key.key, algorithms=["RS256"])["iss"] == "a"
