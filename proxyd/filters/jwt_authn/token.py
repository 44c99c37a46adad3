"""One token, parsed and verified as Envoy's verifier (jwt_verify_lib) does it.

:func:`parse` splits the compact form and reads the header and payload, answering
Envoy's status text for each way a token can be malformed; :func:`verify` checks the
issuer, the time window (``nbf``/``exp`` with the clock skew), the audiences and the
signature against the provider's keys, in Envoy's order. Signatures are checked by
PyJWT's algorithm objects (``cryptography`` underneath)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any

from jwt.algorithms import Algorithm, get_default_algorithms

from proxyd.filters.jwt_authn.jwks import ALGS, Key

OK = "OK"
MISSING = "Jwt is missing"
EXPIRED = "Jwt is expired"
NOT_YET_VALID = "Jwt not yet valid"
BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
UNKNOWN_ISSUER = "Jwt issuer is not configured"
AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
VERIFICATION_FAILS = "Jwt verification fails"
KID_ALG_MISMATCH = "Jwks doesn't have key to match kid or alg from Jwt"

_ALGORITHMS: dict[str, Algorithm] = {
    name: algo for name, algo in get_default_algorithms().items() if name in ALGS
}


_TO_STANDARD = str.maketrans("-_", "+/")


class Jwt:
    __slots__ = ("header_b64", "payload_b64", "signature", "alg", "kid", "payload", "iss", "aud")

    def __init__(self) -> None:
        self.header_b64 = self.payload_b64 = ""
        self.signature = b""
        self.alg = self.kid = self.iss = ""
        self.payload: dict[str, Any] = {}
        self.aud: tuple[str, ...] = ()


def _b64(segment: str) -> bytes | None:
    """Base64url as jwt_verify_lib decodes it: padding optional."""
    if "+" in segment or "/" in segment:
        return None
    text = segment.rstrip("=").translate(_TO_STANDARD)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _object(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return None
    return value if isinstance(value, dict) else None


def _int_claim(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"Jwt payload [{name}] field is not an integer"
    if not 0 <= value < 2**63 or value != int(value):  # (inf and nan fail the range)
        return f"Jwt payload [{name}] field is not a positive 64 bit integer"
    return ""


def parse(token: str) -> tuple[str, Jwt]:
    """(status, the parsed token): status is :data:`OK` or Envoy's text."""
    jwt = Jwt()
    parts = [p for p in token.split(".") if p]  # jwt_verify_lib skips empty sections
    if len(parts) != 3:
        return BAD_FORMAT, jwt
    jwt.header_b64, jwt.payload_b64 = parts[0], parts[1]
    header = _object(_b64(parts[0]))
    if header is None:
        raw = _b64(parts[0])
        return ("Jwt header is an invalid Base64url encoded" if raw is None else
                "Jwt header is an invalid JSON"), jwt  # fmt: skip
    alg = header.get("alg")
    if not isinstance(alg, str):
        return "Jwt header [alg] field is required and must be a string", jwt
    if alg not in ALGS:
        return "Jwt header [alg] is not supported", jwt
    jwt.alg = alg
    kid = header.get("kid", "")
    if not isinstance(kid, str):
        return "Jwt header [kid] field is not a string", jwt
    jwt.kid = kid
    raw = _b64(parts[1])
    if raw is None:
        return "Jwt payload is an invalid Base64url encoded", jwt
    payload = _object(raw)
    if payload is None:
        return "Jwt payload is an invalid JSON", jwt
    for name in ("iss", "sub", "jti"):
        if name in payload and not isinstance(payload[name], str):
            return f"Jwt payload [{name}] field is not a string", jwt
    for name in ("iat", "nbf", "exp"):
        error = _int_claim(payload, name)
        if error:
            return error, jwt
    aud = payload.get("aud")
    if isinstance(aud, str):
        jwt.aud = (aud,)
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        jwt.aud = tuple(aud)
    elif aud is not None:
        return "Jwt payload [aud] field is not a string or string list", jwt
    jwt.iss = payload.get("iss", "")
    jwt.payload = payload
    signature = _b64(parts[2])
    if signature is None:
        return "Jwt signature is an invalid Base64url encoded", jwt
    jwt.signature = signature
    return OK, jwt


def _audience(value: str) -> str:
    """jwt_verify_lib compares audiences without the scheme and a trailing "/"."""
    for scheme in ("http://", "https://"):
        if value.startswith(scheme):
            value = value[len(scheme) :]
            break
    return value.rstrip("/")


def audiences_allowed(allowed: Sequence[str], jwt: Jwt) -> bool:
    if not allowed:
        return True
    wanted = {_audience(a) for a in allowed}
    return any(_audience(a) in wanted for a in jwt.aud)


def time_status(jwt: Jwt, now: int, skew: int) -> str:
    nbf = jwt.payload.get("nbf")
    if nbf and now + skew < nbf:
        return NOT_YET_VALID
    exp = jwt.payload.get("exp")
    if exp and now > exp + skew:
        return EXPIRED
    return OK


def signature_status(jwt: Jwt, keys: Sequence[Key]) -> str:
    """Envoy's choice of keys: those with the token's kid (every key when either has
    none) that fit its alg; the first that verifies it wins."""
    signed = f"{jwt.header_b64}.{jwt.payload_b64}".encode()
    algo = _ALGORITHMS[jwt.alg]
    matched = False
    for key in keys:
        if jwt.kid and key.kid and key.kid != jwt.kid:
            continue
        if not key.fits(jwt.alg):
            continue
        matched = True
        try:
            if algo.verify(signed, key.key, jwt.signature):
                return OK
        except (ValueError, TypeError):
            continue  # a signature of the wrong shape for the key: not verified
    return VERIFICATION_FAILS if matched else KID_ALG_MISMATCH
