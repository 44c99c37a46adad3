"""A JWKS (RFC 7517 key set) → the public keys proxyd verifies tokens with.

The keys are made by PyJWT's algorithms (``from_jwk``), which use ``cryptography``;
nothing here checks a signature by hand. A key of a type Envoy's verifier does not take
(``kty`` other than RSA, EC, oct and OKP, or an EC or OKP curve it does not know) is
left out, as Envoy's JWKS reader skips it (an EC key is tried for any ES alg, as
Envoy does: a curve that does not fit the alg fails the signature); a key of a known type that does not parse,
a set that is not JSON or has no ``keys``, and a set with no usable key are errors
(:class:`JwksError`, with Envoy's status text)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

# The algorithms each key type verifies (the EC ones by curve).
EC_CURVES = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
HMAC_ALGS = frozenset({"HS256", "HS384", "HS512"})
ALGS = RSA_ALGS | HMAC_ALGS | frozenset(EC_CURVES.values()) | {"EdDSA"}


class JwksError(ValueError):
    """A JWKS that cannot be used; the message is Envoy's status text."""


@dataclass(frozen=True, slots=True)
class Key:
    kid: str
    alg: str  # "" when the JWK names none
    kty: str
    crv: str
    key: Any  # a cryptography public key, or the HMAC secret (bytes)

    def fits(self, alg: str) -> bool:
        """Whether this key can verify a token signed with ``alg`` (Envoy's choice of
        keys: the JWK's alg when it has one, and its type and curve)."""
        if self.alg and self.alg != alg:
            return False
        if self.kty == "RSA":
            return alg in RSA_ALGS
        if self.kty == "EC":
            return alg[:2] == "ES"  # any curve: a wrong one fails the signature
        if self.kty == "oct":
            return alg in HMAC_ALGS
        return alg == "EdDSA"  # OKP, Ed25519


_B64_FIELDS = ("n", "e", "x", "y", "k")


def _key(jwk: dict[str, Any]) -> Key | None:
    # Whitespace inside a base64url value (a JWKS folded over lines in YAML) is skipped,
    # as Envoy's decoder skips it.
    jwk = {
        name: "".join(v.split()) if name in _B64_FIELDS and isinstance(v, str) else v
        for name, v in jwk.items()
    }
    kty = jwk.get("kty")
    kid = jwk.get("kid", "")
    alg = jwk.get("alg", "")
    if not isinstance(kid, str) or not isinstance(alg, str):
        raise JwksError("Jwks [kid] or [alg] field is not a string")
    crv = jwk.get("crv", "")
    try:
        if kty == "RSA":
            if not isinstance(jwk.get("n"), str) or not isinstance(jwk.get("e"), str):
                raise JwksError("Jwks RSA [n] or [e] field is missing or has a parse error")
            public: Any = RSAAlgorithm.from_jwk({"kty": "RSA", "n": jwk["n"], "e": jwk["e"]})
        elif kty == "EC":
            if crv not in EC_CURVES:
                return None
            public = ECAlgorithm.from_jwk(
                {"kty": "EC", "crv": crv, "x": jwk.get("x"), "y": jwk.get("y")}
            )
        elif kty == "oct":
            if not isinstance(jwk.get("k"), str):
                raise JwksError("Jwks Oct key is an invalid Base64")
            public = HMACAlgorithm.from_jwk({"kty": "oct", "k": jwk["k"]})
        elif kty == "OKP":
            if crv != "Ed25519":
                return None
            public = OKPAlgorithm.from_jwk({"kty": "OKP", "crv": crv, "x": jwk.get("x")})
        else:
            return None
    except (InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, JwksError):
            raise
        raise JwksError(f"Jwks {kty} key does not parse: {exc}") from None
    return Key(kid=kid, alg=alg, kty=kty, crv=crv if isinstance(crv, str) else "", key=public)


@lru_cache(maxsize=64)
def parse_jwks(text: str) -> tuple[Key, ...]:
    """The usable keys of a JWKS document (cached: the routes of an epoch share one)."""
    try:
        # (Control characters inside strings are taken, as Envoy's JSON reader takes a
        # line break inside a value.)
        doc = json.loads(text, strict=False)
    except ValueError:
        raise JwksError("Jwks is an invalid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError("Jwks does not have [keys] field")
    keys = []
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict):
            raise JwksError("Jwks is an invalid JSON")
        key = _key(jwk)
        if key is not None:
            keys.append(key)
    if not keys:
        raise JwksError("Jwks doesn't have any valid public key")
    return tuple(keys)
