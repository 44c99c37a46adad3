"""RBAC principals and permissions from dynamic metadata, proxyd beside real Envoy: the
jwt_authn filter puts a verified token's payload in the metadata
(``payload_in_metadata``), set_metadata adds a namespace of its own, and RBAC policies
match them with ``metadata`` (deprecated) and ``sourced_metadata`` matchers: strings,
numbers (exact and range), booleans, presence, lists (``one_of``), ``or_match`` and
``invert``. Each case sends a token with other claims; compared: the status, and the
RBAC stats."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.support import UpstreamServer, bootstrap, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

JWT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
SET_TYPE = "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config"
ISS = "https://issuer.example"
SECRET = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
JWKS = {"keys": [{"kty": "oct", "kid": "k1", "k": jwt.utils.base64url_encode(SECRET).decode()}]}
NS = "envoy.filters.http.jwt_authn"


def _md(path: list[str], value: dict[str, Any], ns: str = NS, invert: bool = False) -> Any:
    return {"filter": ns, "path": [{"key": k} for k in path], "value": value, "invert": invert}


def _sourced(matcher: dict[str, Any]) -> dict[str, Any]:
    return {"sourced_metadata": {"metadata_matcher": matcher}}


# Each route's policy (ALLOW): who may pass.
POLICIES: dict[str, dict[str, Any]] = {
    # the deprecated Principal.metadata: sub is exactly alice
    "/sub": {"metadata": _md(["payload", "sub"], {"string_match": {"exact": "alice"}})},
    # sourced_metadata (DYNAMIC): a role list holding "admin"
    "/role": _sourced(
        _md(["payload", "roles"], {"list_match": {"one_of": {"string_match": {"exact": "admin"}}}})
    ),
    # a number in [10, 20)
    "/level": _sourced(
        _md(["payload", "level"], {"double_match": {"range": {"start": 10, "end": 20}}})
    ),
    # exactly 3
    "/exact": _sourced(_md(["payload", "level"], {"double_match": {"exact": 3}})),
    # a boolean claim
    "/verified": _sourced(_md(["payload", "verified"], {"bool_match": True})),
    # any tenant claim present
    "/tenant": _sourced(_md(["payload", "tenant"], {"present_match": True})),
    # not a guest (a missing claim counts as not a guest)
    "/noguest": _sourced(
        _md(["payload", "kind"], {"string_match": {"exact": "guest"}}, invert=True)
    ),
    # nested object claim: org.name has prefix "acme"
    "/org": _sourced(_md(["payload", "org", "name"], {"string_match": {"prefix": "acme"}})),
    # or_match: kind is staff or level is 7
    "/either": _sourced(
        _md(
            ["payload", "kind"],
            {
                "or_match": {
                    "value_matchers": [{"string_match": {"exact": "staff"}}, {"null_match": {}}]
                }
            },
        )
    ),
    # set_metadata's own namespace (always set to zone=eu)
    "/zone": _sourced(_md(["zone"], {"string_match": {"exact": "eu"}}, ns="site")),
}


def config(upstream: int) -> str:
    routes = [
        {
            "match": {"prefix": prefix},
            "route": {"cluster": "svc"},
            "typed_per_filter_config": {
                "rbac": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
                    "rbac": {
                        "rules": {
                            "action": "ALLOW",
                            "policies": {
                                "p": {"permissions": [{"any": True}], "principals": [principal]}
                            },
                        }
                    },
                }
            },
        }
        for prefix, principal in POLICIES.items()
    ]
    # A permission from metadata too: the route /perm allows only level 5 tokens.
    routes.append(
        {
            "match": {"prefix": "/perm"},
            "route": {"cluster": "svc"},
            "typed_per_filter_config": {
                "rbac": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
                    "rbac": {
                        "rules": {
                            "action": "ALLOW",
                            "policies": {
                                "p": {
                                    "permissions": [
                                        {
                                            "metadata": _md(
                                                ["payload", "level"], {"double_match": {"exact": 5}}
                                            )
                                        }
                                    ],
                                    "principals": [{"any": True}],
                                }
                            },
                        }
                    },
                }
            },
        }
    )
    route_config = {
        "name": "local",
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
    }
    filters = [
        {
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": JWT_TYPE,
                "providers": {
                    "p": {
                        "issuer": ISS,
                        "local_jwks": {"inline_string": json.dumps(JWKS)},
                        "payload_in_metadata": "payload",
                    }
                },
                "rules": [{"match": {"prefix": "/"}, "requires": {"allow_missing": {}}}],
            },
        },
        {
            "name": "envoy.filters.http.set_metadata",
            "typed_config": {
                "@type": SET_TYPE,
                "metadata": [{"metadata_namespace": "site", "value": {"zone": "eu"}}],
            },
        },
        {"name": "rbac", "typed_config": {"@type": RBAC_TYPE}},
    ]
    listener = http_listener("ingress", 0, route_config, filters, stat_prefix="ingress_http")
    return yaml.safe_dump(
        bootstrap([listener], [static_cluster("svc", [upstream])]), sort_keys=False
    )


def token(**claims: Any) -> str:
    return jwt.encode({"iss": ISS, **claims}, SECRET, algorithm="HS256", headers={"kid": "k1"})


CASES: dict[str, tuple[str, dict[str, Any] | None]] = {
    "sub_alice": ("/sub", {"sub": "alice"}),
    "sub_bob": ("/sub", {"sub": "bob"}),
    "sub_no_token": ("/sub", None),
    "role_admin": ("/role", {"roles": ["user", "admin"]}),
    "role_user": ("/role", {"roles": ["user"]}),
    "role_not_a_list": ("/role", {"roles": "admin"}),
    "level_15": ("/level", {"level": 15}),
    "level_20": ("/level", {"level": 20}),
    "level_10_5": ("/level", {"level": 10.5}),
    "level_text": ("/level", {"level": "15"}),
    "exact_3": ("/exact", {"level": 3}),
    "exact_3_5": ("/exact", {"level": 3.5}),
    "verified_true": ("/verified", {"verified": True}),
    "verified_false": ("/verified", {"verified": False}),
    "verified_text": ("/verified", {"verified": "true"}),
    "tenant_present": ("/tenant", {"tenant": "t1"}),
    "tenant_null": ("/tenant", {"tenant": None}),
    "tenant_missing": ("/tenant", {"sub": "x"}),
    "noguest_guest": ("/noguest", {"kind": "guest"}),
    "noguest_staff": ("/noguest", {"kind": "staff"}),
    "noguest_missing": ("/noguest", {"sub": "x"}),
    "noguest_no_token": ("/noguest", None),
    "org_acme": ("/org", {"org": {"name": "acme-eu"}}),
    "org_other": ("/org", {"org": {"name": "other"}}),
    "org_flat": ("/org", {"org": "acme"}),
    "either_staff": ("/either", {"kind": "staff"}),
    "either_null": ("/either", {"kind": None}),
    "either_other": ("/either", {"kind": "guest"}),
    "zone": ("/zone", None),
    "perm_5": ("/perm", {"level": 5}),
    "perm_6": ("/perm", {"level": 6}),
}


def play_all(port_of: PortOf) -> dict[str, Any]:
    port = port_of("ingress")
    out: dict[str, Any] = {}
    for name, (path, claims) in CASES.items():
        headers = {"host": "x"}
        if claims is not None:
            headers["authorization"] = "Bearer " + token(**claims)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        out[name] = {"status": r.status, "body": body.decode() if r.status == 403 else ""}
    return out


def pick(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if ".rbac." in k}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    upstream = UpstreamServer("svc").start()
    try:
        yield run_pair(
            config(upstream.port), Path(tmp_path_factory.mktemp("rbacmd")), play_all, pick
        )
    finally:
        upstream.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_rbac_on_metadata_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_stats_like_envoy(results: Pair) -> None:
    assert results.proxyd.stats == results.envoy.stats


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    e = results.envoy.replies
    assert e["sub_alice"]["status"] == 200 and e["sub_bob"]["status"] == 403
    assert e["role_admin"]["status"] == 200 and e["level_20"]["status"] == 403
    assert e["noguest_missing"]["status"] == 200 and e["zone"]["status"] == 200
