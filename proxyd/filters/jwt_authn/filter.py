"""The jwt_authn filter on a stream: Envoy's ``JwtAuthn::Filter``.

Which requirement a request must meet: the route's ``PerRouteConfig`` when it has one
(``disabled``: none; ``requirement_name``: that entry of ``requirement_map``, else
403 ``Wrong requirement_name: ...``), else the first of the filter's ``rules`` whose
match takes the request (none: no requirement). A request with no requirement passes
and counts ``allowed``, as in Envoy.

Requirements (:meth:`Check.requirement`): a provider needs every token found in its
locations to verify (no token: ``Jwt is missing``); ``requires_any`` passes with the
first child that passes, else fails with the children's most telling status (one
other than missing and unknown issuer, else unknown issuer, else missing), unless an
``allow_missing_or_failed`` child (or, for a missing token, ``allow_missing``) allows it;
``requires_all`` fails with the first child that fails; ``allow_missing`` and
``allow_missing_or_failed`` read the tokens of every provider's locations, each verified
by the provider of its issuer. A verified token, per its provider: the token's header
is removed unless ``forward``, ``forward_payload_header`` gets the payload as it is in
the token (base64url, padded with ``pad_forward_payload_header``), ``claim_to_headers``
set their headers, and ``payload_in_metadata`` puts the payload in the stream's dynamic
metadata under ``envoy.filters.http.jwt_authn``.

A failure is answered 401 (403 for ``Audiences in Jwt are not allowed``) with the
status as the body, ``www-authenticate: Bearer realm="<scheme>://<host><path>"`` (and
``, error="invalid_token"`` unless the token is missing), counts ``denied`` and has the
details ``jwt_authn_access_denied{<status with _ for spaces>}``.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from proxyd.epoch import RouteMatch, from_wire
from proxyd.filters.api import (
    CONTINUE,
    EpochFacts,
    FilterStream,
    HttpFilter,
    LocalReply,
    Result,
    StatsScope,
)
from proxyd.filters.jwt_authn import token as tk
from proxyd.filters.jwt_authn.jwks import Key, parse_jwks
from proxyd.filters.jwt_authn.remote import FETCH_FAILED, HttpGet, RemoteJwks
from proxyd.protocol.routing import ascii_lower, compile_headers, header_names, headers_match

NAMESPACE = "envoy.filters.http.jwt_authn"
METADATA = "dynamic_metadata"
STATS = ("allowed", "denied", "cors_preflight_bypassed", "jwks_fetch_success",
         "jwks_fetch_failed", "jwt_cache_hit", "jwt_cache_miss")  # fmt: skip

# The requirements that allow a request without a verified token.
_ALLOWS = frozenset({"allow_missing", "allow_missing_or_failed"})


class Provider:
    __slots__ = (
        "name", "issuer", "audiences", "keys", "headers", "params", "cookies", "forward",
        "payload_header", "pad", "claims", "metadata_key", "skew", "remote",
    )  # fmt: skip

    def __init__(self, name: str, p: dict[str, Any]) -> None:
        self.name = name
        self.issuer: str = p["issuer"]
        self.audiences: tuple[str, ...] = tuple(p["audiences"])
        # local_jwks: the keys; remote_jwks: fetched when a token needs them.
        self.keys: tuple[Key, ...] = parse_jwks(p["jwks"]) if p["jwks"] else ()
        self.remote = RemoteJwks(p["remote"]) if p.get("remote") else None
        self.headers: tuple[tuple[str, str], ...] = tuple((n, v) for n, v in p["headers"])
        self.params: tuple[str, ...] = tuple(p["params"])
        self.cookies: tuple[str, ...] = tuple(p["cookies"])
        self.forward: bool = p["forward"]
        self.payload_header: str = p["forward_payload_header"]
        self.pad: bool = p["pad_forward_payload_header"]
        self.claims: tuple[tuple[str, str], ...] = tuple((h, c) for h, c in p["claim_to_headers"])
        self.metadata_key: str = p["payload_in_metadata"]
        self.skew: int = p["clock_skew_seconds"]


# A token found in the request: (the token, where: the header it came in, "?" and the
# query parameter, or "" for a cookie).
Found = tuple[str, str]

# Characters a header value cannot carry: a claim with one sets no header.
_UNSAFE = re.compile(r"[\r\n\x00]")
_JWT_CHARS = re.compile(r"[A-Za-z0-9_\-.=+/]+")


def _from_header(value: str, prefix: str) -> str | None:
    """Envoy's header extraction: without a prefix the whole value; with one, the run
    of token characters after the prefix."""
    if not prefix:
        return value
    at = value.find(prefix)
    if at < 0:
        return None
    m = _JWT_CHARS.search(value, at + len(prefix))
    return m.group() if m is not None else value[at + len(prefix) :]


def _query(path: str) -> dict[str, str]:
    _, sep, query = path.partition("?")
    if not sep:
        return {}
    out: dict[str, str] = {}
    for part in query.split("&"):
        key, _, value = part.partition("=")
        out.setdefault(urllib.parse.unquote(key), urllib.parse.unquote(value))
    return out  # (a token is ASCII: a value with other bytes fails to parse)


def _without_param(path: str, name: str) -> str:
    """``path`` without the query parameter ``name``, the query rebuilt as Envoy
    rebuilds it (Envoy takes a token that is not forwarded out of the query): the
    parameters percent-decoded, sorted by name (each name's values in order),
    ``name=value``. Decoded bytes stay bytes (the head is latin-1), and control
    characters are encoded again, so that no CR or LF reaches the request line."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    params: dict[str, list[str]] = {}
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        params.setdefault(_decoded(key), []).append(_decoded(value))
    params.pop(name, None)
    kept = [f"{k}={v}" for k in sorted(params) for v in params[k]]
    return base + "?" + "&".join(kept) if kept else base


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _decoded(text: str) -> str:
    raw = urllib.parse.unquote_to_bytes(text).decode("latin-1")
    return _CONTROL.sub(lambda m: f"%{ord(m.group()):02X}", raw)


def _cookies(header: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (header or "").split(";"):
        k, sep, v = part.strip().partition("=")
        if sep:
            out.setdefault(k, v.strip('"'))
    return out


def _claim_text(value: object) -> str | None:
    """A claim as Envoy puts it in a header: a string as it is, ``true``/``false``, a
    whole number without a fraction and another number with six decimals (C++'s
    ``std::to_string``), a list or an object as its JSON in base64 (with padding)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if value == value and abs(value) < 2**63 and value == int(value):
            return str(int(value))
        return f"{value:f}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        return base64.b64encode(text.encode()).decode()
    return None


def _claim(payload: dict[str, Any], name: str) -> object:
    value: object = payload
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class Check:
    """One request's verification: reads its tokens and applies what verified tokens
    do to the request."""

    __slots__ = ("stream", "providers", "stats", "http_get", "query", "cookies", "now")

    def __init__(
        self,
        stream: FilterStream,
        providers: dict[str, Provider],
        stats: StatsScope,
        http_get: HttpGet | None = None,
    ) -> None:
        self.stream = stream
        self.providers = providers
        self.stats = stats
        self.http_get = http_get
        self.query: dict[str, str] | None = None
        self.cookies: dict[str, str] | None = None
        self.now = int(time.time())

    def tokens(
        self,
        headers: tuple[tuple[str, str], ...],
        params: tuple[str, ...],
        cookies: tuple[str, ...],
    ) -> list[Found]:
        h = self.stream.head.headers
        found: list[Found] = []
        for name, prefix in headers:
            value = h.get(name)
            if value is not None:
                t = _from_header(value, prefix)
                if t is not None:
                    found.append((t, name))
        if params:
            if self.query is None:
                self.query = _query(self.stream.head.path)
            found.extend((self.query[p], "?" + p) for p in params if p in self.query)
        if cookies:
            if self.cookies is None:
                self.cookies = _cookies(h.get("cookie"))
            found.extend((self.cookies[c], "") for c in cookies if c in self.cookies)
        return found

    async def verify(self, found: Found, provider: Provider | None, audiences: Any) -> str:
        status, jwt = tk.parse(found[0])
        if status != tk.OK:
            return status
        self.stats.inc("jwt_authn.jwt_cache_miss")  # Envoy counts one without a cache too
        if provider is None:
            provider = self._by_issuer(jwt.iss)
            if provider is None:
                return tk.UNKNOWN_ISSUER
        elif provider.issuer and provider.issuer != jwt.iss:
            return tk.UNKNOWN_ISSUER
        status = tk.time_status(jwt, self.now, provider.skew)
        if status != tk.OK:
            return status
        allowed = provider.audiences if audiences is None else audiences
        if not tk.audiences_allowed(allowed, jwt):
            return tk.AUDIENCE_NOT_ALLOWED
        keys = provider.keys
        if provider.remote is not None:
            fetched = await provider.remote.keys(self.http_get, self.stats)
            if fetched is None:
                return FETCH_FAILED
            keys = fetched
        status = tk.signature_status(jwt, keys)
        if status == tk.OK:
            self._good(found, provider, jwt)
        return status

    def _by_issuer(self, iss: str) -> Provider | None:
        for p in self.providers.values():
            if p.issuer == iss:
                return p
        for p in self.providers.values():
            if not p.issuer:
                return p
        return None

    def _good(self, found: Found, p: Provider, jwt: tk.Jwt) -> None:
        s = self.stream
        if p.payload_header:
            value = jwt.payload_b64
            if p.pad:
                value += "=" * (-len(value) % 4)
            s.set_request_header(p.payload_header, value)
        where = found[1]
        if not p.forward and where:
            if where[0] == "?":
                s.set_request_path(_without_param(s.head.path, where[1:]))
            else:
                s.remove_request_header(where)
        for header, claim in p.claims:
            text = _claim_text(_claim(jwt.payload, claim))
            if text is not None and not _UNSAFE.search(text):
                # The claim's UTF-8 bytes go upstream as they are (the head is latin-1).
                s.set_request_header(header, text.encode("utf-8").decode("latin-1"))
        if p.metadata_key:
            state = s.filter_state
            if state is None:
                state = s.filter_state = {}
            metadata: Any = state.setdefault(METADATA, {})
            metadata.setdefault(NAMESPACE, {})[p.metadata_key] = jwt.payload

    async def requirement(self, req: list[Any]) -> str:
        tag = req[0]
        if tag == "provider":
            p = self.providers[req[1]]
            found = self.tokens(p.headers, p.params, p.cookies)
            if not found:
                return tk.MISSING
            for f in reversed(found):  # Envoy verifies the last found first
                status = await self.verify(f, p, req[2])
                if status != tk.OK:
                    return status
            return tk.OK
        if tag == "any":
            # As Envoy's AnyVerifier: allow_missing(_or_failed) among the children are
            # not verified themselves but decide what the others' failure means.
            allows = {sub[0] for sub in req[1] if sub[0] in _ALLOWS}
            subs = [sub for sub in req[1] if sub[0] not in _ALLOWS] or req[1]
            final = tk.MISSING
            for sub in subs:
                status = await self.requirement(sub)
                if status == tk.OK:
                    return status
                if status not in (tk.MISSING, tk.UNKNOWN_ISSUER) or final == tk.MISSING:
                    final = status
            if "allow_missing_or_failed" in allows or (
                "allow_missing" in allows and final == tk.MISSING
            ):
                return tk.OK
            return final
        if tag == "all":
            for sub in req[1]:
                status = await self.requirement(sub)
                if status != tk.OK:
                    return status
            return tk.OK
        # allow_missing / allow_missing_or_failed: every provider's locations
        headers: dict[tuple[str, str], None] = {}
        params: dict[str, None] = {}
        cookies: dict[str, None] = {}
        for p in self.providers.values():
            headers.update(dict.fromkeys(p.headers))
            params.update(dict.fromkeys(p.params))
            cookies.update(dict.fromkeys(p.cookies))
        found = self.tokens(tuple(headers), tuple(params), tuple(cookies))
        if not found:
            return tk.OK
        result = tk.OK
        for f in reversed(found):
            status = await self.verify(f, None, None)
            if status != tk.OK and result == tk.OK:
                result = status
        return tk.OK if tag == "allow_missing_or_failed" else result


MAX_REALM_PATH = 256  # Envoy cuts the path in the realm to this length


def _realm(stream: FilterStream, path: str) -> str:
    scheme = "http" if stream.downstream_tls() is None else "https"
    return f"{scheme}://{stream.head.host}{path[:MAX_REALM_PATH]}"


def _denied(stream: FilterStream, path: str, status: str) -> LocalReply:
    """The reply to a request that failed; ``path`` is the request's as it came (a
    verified token may have left the query since)."""
    value = f'Bearer realm="{_realm(stream, path)}"'
    if status != tk.MISSING:
        value += ', error="invalid_token"'
    code = 403 if status == tk.AUDIENCE_NOT_ALLOWED else 401
    details = "jwt_authn_access_denied{" + status.replace(" ", "_") + "}"
    return LocalReply(code, status, headers=(("www-authenticate", value),), details=details)


RuleTest = Callable[[FilterStream], bool]


def _rule_test(match: RouteMatch, names: set[str]) -> RuleTest:
    tests = compile_headers(match.headers)
    names.update(header_names(tests))
    kind, value, nocase = match.kind, match.value, not match.case_sensitive
    if nocase:
        value = ascii_lower(value)
    rx = re.compile(value) if kind == "safe_regex" else None

    def test(stream: FilterStream) -> bool:
        head = stream.head
        bare = head.path.split("?", 1)[0].split("#", 1)[0]
        if nocase:
            bare = ascii_lower(bare)
        if kind == "prefix":
            ok = bare.startswith(value)
        elif kind == "path":
            ok = bare == value
        elif rx is not None:
            ok = rx.fullmatch(bare) is not None
        else:  # path_separated_prefix
            n = len(value)
            ok = bare.startswith(value) and (len(bare) == n or bare[n] == "/")
        return ok and (not tests or headers_match(tests, head.headers, head.host, head.path))

    return test


class Factory:
    """One per epoch and route (the epoch's facts give ``remote_jwks`` its fetches)."""

    takes_epoch_facts = True

    __slots__ = (
        "name", "wanted_headers", "decodes", "encodes", "stats", "providers", "rules",
        "fixed", "wrong", "http_get",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        config: Any,
        per_route: Any,
        stats: StatsScope,
        runtime: Any = None,
        facts: EpochFacts | None = None,
    ) -> None:
        self.name = name
        self.stats = stats
        self.http_get = facts.http_get if facts is not None else None
        for stat in STATS:
            stats.inc("jwt_authn." + stat, 0)  # shown at 0 from the start, as Envoy does
        self.providers = {n: Provider(n, p) for n, p in config["providers"].items()}
        names: set[str] = set()
        self.rules: tuple[tuple[RuleTest, list[Any] | None], ...] = ()
        # The route's own requirement (PerRouteConfig): (requirement or None,).
        self.fixed: tuple[list[Any] | None] | None = None
        self.wrong = ""
        if per_route is not None:
            if per_route.get("disabled"):
                self.fixed = (None,)
            else:
                wanted = per_route["requirement_name"]
                requirement_map = config["requirement_map"]
                if wanted in requirement_map:
                    self.fixed = (requirement_map[wanted],)
                else:
                    self.wrong = (
                        f"Wrong requirement_name: {wanted}. It should be one of "
                        f"[{','.join(sorted(requirement_map))}]"
                    )
        else:
            self.rules = tuple(
                (_rule_test(from_wire(RouteMatch, m), names), r) for m, r in config["rules"]
            )
        for p in self.providers.values():
            names.update(n for n, _ in p.headers)
            if p.cookies:
                names.add("cookie")
        self.wanted_headers = frozenset(names)
        self.decodes = True
        self.encodes = False

    def create(self) -> JwtAuthnFilter:
        return JwtAuthnFilter(self)


class JwtAuthnFilter(HttpFilter):
    __slots__ = ("factory",)

    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        f = self.factory
        if f.wrong:
            f.stats.inc("jwt_authn.denied")
            return LocalReply(
                403,
                "Failed JWT authentication: " + f.wrong,
                details="jwt_authn_access_denied{" + f.wrong.replace(" ", "_") + "}",
            )
        requirement: list[Any] | None = None
        if f.fixed is not None:
            requirement = f.fixed[0]
        else:
            for test, req in f.rules:
                if test(stream):
                    requirement = req
                    break
        if requirement is not None:
            path = stream.head.path
            status = await Check(stream, f.providers, f.stats, f.http_get).requirement(requirement)
            if status != tk.OK:
                f.stats.inc("jwt_authn.denied")
                return _denied(stream, path, status)
        f.stats.inc("jwt_authn.allowed")
        return CONTINUE
