"""``envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication`` and
``PerRouteConfig`` → plain data.

The epoch carries, for the filter::

    {"providers": {name: Provider}, "rules": [[RouteMatch wire, Requirement | None]],
     "requirement_map": {name: Requirement}}
    Provider = {"issuer": str, "audiences": [str], "jwks": JWKS JSON text (local_jwks)
                or "", "remote": Remote | None,
                "headers": [[lower-case name, value_prefix]], "params": [str],
                "cookies": [str], "forward": bool, "forward_payload_header": str,
                "pad_forward_payload_header": bool, "claim_to_headers": [[header, claim]],
                "payload_in_metadata": str, "clock_skew_seconds": int}

A rule's requirement is the one it names in ``requirement_map`` resolved here (None:
the rule matches and requires nothing). A requirement is a tagged list:
``["provider", name, audiences | None]``, ``["any", [Requirement]]``,
``["all", [Requirement]]``, ``["allow_missing"]``, ``["allow_missing_or_failed"]``.
A provider without token locations reads Envoy's defaults: ``Authorization: Bearer
<token>`` and the ``access_token`` query parameter. ``local_jwks`` is read (inline or
from its file) by the master and checked here; a JWKS proxyd cannot use is refused.

``remote_jwks`` is ``Remote = {"cluster": str, "authority": str, "path": str,
"timeout_s": float, "cache_s": float, "retry": [retries, base_s, max_s] | None}``
(:mod:`.remote` fetches it in the worker).

A route's ``PerRouteConfig`` is ``{"disabled": True}`` or ``{"requirement_name": str}``.

Not implemented, so left out of :data:`SPEC` and refused by name: ``remote_jwks``'s
``async_fetch`` and the ``retry_policy`` fields other than ``num_retries`` and
``retry_back_off``, ``subjects``, ``require_expiration``, ``max_lifetime``,
``normalize_payload_in_metadata``, ``header_in_metadata``, ``failed_status_in_metadata``,
``jwt_cache_config``, ``clear_route_cache``, ``filter_state_rules``,
``bypass_cors_preflight``, ``strip_failure_response``, ``stat_prefix``; the rule
matches' ``runtime_fraction``, ``grpc``, ``query_parameters``, ``path_match_policy``,
``connect_matcher``, ``dynamic_metadata``, ``filter_state`` and ``tls_context``.
"""

from __future__ import annotations

from typing import Any

from proxyd.config.matchers import header_match
from proxyd.config.proto import join
from proxyd.config.spec import HEADER_MATCHER, LEAF, REGEX, Spec
from proxyd.config.values import check_regex, data_source_text, wrapped_or
from proxyd.epoch import RouteMatch, to_wire
from proxyd.errors import ConfigError
from proxyd.filters.jwt_authn.jwks import JwksError, parse_jwks

TYPE = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
PER_ROUTE_TYPE = "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"

_DATA_SOURCE: Spec = {"inline_string": LEAF, "inline_bytes": LEAF, "filename": LEAF}
_PROVIDER: Spec = {
    "issuer": LEAF,
    "audiences": LEAF,
    "local_jwks": _DATA_SOURCE,
    "remote_jwks": {
        "http_uri": {"uri": LEAF, "cluster": LEAF, "timeout": LEAF},
        "cache_duration": LEAF,
        "retry_policy": {
            "num_retries": LEAF,
            "retry_back_off": {"base_interval": LEAF, "max_interval": LEAF},
        },
    },
    "forward": LEAF,
    "from_headers": {"name": LEAF, "value_prefix": LEAF},
    "from_params": LEAF,
    "from_cookies": LEAF,
    "forward_payload_header": LEAF,
    "pad_forward_payload_header": LEAF,
    "payload_in_metadata": LEAF,
    "clock_skew_seconds": LEAF,
    "claim_to_headers": {"header_name": LEAF, "claim_name": LEAF},
}
_REQUIREMENT: dict[str, Spec] = {
    "provider_name": LEAF,
    "provider_and_audiences": {"provider_name": LEAF, "audiences": LEAF},
    "allow_missing_or_failed": LEAF,
    "allow_missing": LEAF,
}
_REQUIREMENT["requires_any"] = {"requirements": _REQUIREMENT}
_REQUIREMENT["requires_all"] = {"requirements": _REQUIREMENT}
_MATCH: Spec = {
    "prefix": LEAF,
    "path": LEAF,
    "safe_regex": REGEX,
    "path_separated_prefix": LEAF,
    "case_sensitive": LEAF,
    "headers": HEADER_MATCHER,
}
SPEC: Spec = {
    "providers": _PROVIDER,
    "rules": {"match": _MATCH, "requires": _REQUIREMENT, "requirement_name": LEAF},
    "requirement_map": _REQUIREMENT,
}
PER_ROUTE_SPEC: Spec = {"disabled": LEAF, "requirement_name": LEAF}

# Envoy's token locations when a provider names none.
DEFAULT_HEADERS = [["authorization", "Bearer "]]
DEFAULT_PARAMS = ["access_token"]


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    providers = {
        name: _provider(msg.providers[name], f"{join(path, 'providers')}[{name!r}]", file)
        for name in sorted(msg.providers)
    }
    requirement_map = {
        name: _requirement(
            msg.requirement_map[name], f"{join(path, 'requirement_map')}[{name!r}]", providers, file
        )
        for name in sorted(msg.requirement_map)
    }
    rules = []
    for i, rule in enumerate(msg.rules):
        here = f"{join(path, 'rules')}[{i}]"
        if not rule.HasField("match"):
            raise ConfigError(file, join(here, "match"), "value is required")
        match = to_wire(_route_match(rule.match, join(here, "match"), file))
        which = rule.WhichOneof("requirement_type")
        requirement: list[Any] | None = None
        if which == "requires":
            requirement = _requirement(rule.requires, join(here, "requires"), providers, file)
        elif which == "requirement_name":
            if rule.requirement_name not in requirement_map:
                raise ConfigError(
                    file,
                    join(here, "requirement_name"),
                    f"Wrong requirement_name: {rule.requirement_name}. It should be one of "
                    f"[{','.join(sorted(requirement_map))}]",
                )
            requirement = requirement_map[rule.requirement_name]
        rules.append([match, requirement])
    return {
        "providers": providers,
        "rules": rules,
        "requirement_map": requirement_map,
    }


def compile_per_route(msg: Any, path: str, file: str) -> dict[str, Any]:
    which = msg.WhichOneof("requirement_specifier")
    if which == "disabled":
        if not msg.disabled:
            raise ConfigError(file, join(path, "disabled"), "value must equal true")
        return {"disabled": True}
    if which == "requirement_name":
        return {"requirement_name": msg.requirement_name}
    raise ConfigError(file, path, "one of disabled or requirement_name is required")


def _provider(p: Any, path: str, file: str) -> dict[str, Any]:
    which = p.WhichOneof("jwks_source_specifier")
    text = ""
    remote = None
    if which == "local_jwks":
        text = data_source_text(p.local_jwks, join(path, "local_jwks"), file)
        try:
            parse_jwks(text)
        except JwksError as exc:
            raise ConfigError(
                file, join(path, "local_jwks"), f"{exc}: a JWKS proxyd cannot use is refused"
            ) from None
    elif which == "remote_jwks":
        remote = _remote(p.remote_jwks, join(path, "remote_jwks"), file)
    else:
        raise ConfigError(file, path, "one of remote_jwks or local_jwks is required")
    headers = [[h.name.lower(), h.value_prefix] for h in p.from_headers]
    for i, h in enumerate(p.from_headers):
        if not h.name:
            raise ConfigError(
                file,
                f"{join(path, 'from_headers')}[{i}].name",
                "value length must be at least 1 characters",
            )
    params = list(p.from_params)
    cookies = list(p.from_cookies)
    if not headers and not params and not cookies:
        headers, params = [list(x) for x in DEFAULT_HEADERS], list(DEFAULT_PARAMS)
    claims = []
    for i, c in enumerate(p.claim_to_headers):
        here = f"{join(path, 'claim_to_headers')}[{i}]"
        if not c.header_name or not c.claim_name:
            raise ConfigError(file, here, "header_name and claim_name are required")
        claims.append([c.header_name.lower(), c.claim_name])
    return {
        "issuer": p.issuer,
        "audiences": list(p.audiences),
        "jwks": text,
        "remote": remote,
        "headers": headers,
        "params": params,
        "cookies": cookies,
        "forward": p.forward,
        "forward_payload_header": p.forward_payload_header.lower(),
        "pad_forward_payload_header": p.pad_forward_payload_header,
        "claim_to_headers": claims,
        "payload_in_metadata": p.payload_in_metadata,
        "clock_skew_seconds": p.clock_skew_seconds if p.clock_skew_seconds else 60,
    }


def _remote(r: Any, path: str, file: str) -> dict[str, Any]:
    here = join(path, "http_uri")
    if not r.HasField("http_uri"):
        raise ConfigError(file, here, "value is required")
    u = r.http_uri
    if not u.cluster:
        raise ConfigError(file, join(here, "cluster"), "value length must be at least 1 characters")
    if not u.HasField("timeout"):
        raise ConfigError(file, join(here, "timeout"), "value is required")
    # Envoy's extractHostPathFromUri: the authority after "scheme://", then the path.
    rest = u.uri.split("://", 1)[1] if "://" in u.uri else u.uri
    slash = rest.find("/")
    authority, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    cache_s = (
        r.cache_duration.ToTimedelta().total_seconds() if r.HasField("cache_duration") else 600.0
    )
    retry = None
    if r.HasField("retry_policy"):
        rp = r.retry_policy
        # Envoy's defaults (Http::Utility::convertCoreToRouteRetryPolicy): one retry,
        # a base back-off of 1 s and a maximum of 10 times the base.
        retries = rp.num_retries.value if rp.HasField("num_retries") else 1
        base_s, max_s = 1.0, 10.0
        if rp.HasField("retry_back_off"):
            b = rp.retry_back_off
            here = join(join(path, "retry_policy"), "retry_back_off")
            base_s = b.base_interval.ToTimedelta().total_seconds()
            if base_s <= 0:
                raise ConfigError(
                    file, join(here, "base_interval"), "value must be greater than 0s"
                )
            max_s = (
                b.max_interval.ToTimedelta().total_seconds()
                if b.HasField("max_interval")
                else 10 * base_s
            )
            if max_s < base_s:
                raise ConfigError(
                    file,
                    join(here, "max_interval"),
                    "max_interval must be greater than or equal to the base_interval",
                )
        retry = [retries, base_s, max_s]
    return {
        "retry": retry,
        "cluster": u.cluster,
        "authority": authority,
        "path": target,
        "timeout_s": u.timeout.ToTimedelta().total_seconds(),
        "cache_s": cache_s,
    }


def _requirement(r: Any, path: str, providers: dict[str, Any], file: str) -> list[Any]:
    which = r.WhichOneof("requires_type")
    if which == "provider_name":
        _known(r.provider_name, providers, join(path, which), file)
        return ["provider", r.provider_name, None]
    if which == "provider_and_audiences":
        pa = r.provider_and_audiences
        _known(pa.provider_name, providers, join(path, which), file)
        return ["provider", pa.provider_name, list(pa.audiences)]
    if which in ("requires_any", "requires_all"):
        subs = getattr(r, which).requirements
        if len(subs) < 2:
            raise ConfigError(
                file,
                join(join(path, which), "requirements"),
                "value must contain at least 2 item(s)",
            )
        return [
            "any" if which == "requires_any" else "all",
            [
                _requirement(s, f"{join(join(path, which), 'requirements')}[{i}]", providers, file)
                for i, s in enumerate(subs)
            ],
        ]
    if which in ("allow_missing", "allow_missing_or_failed"):
        return [which]
    raise ConfigError(file, path, "a requirement needs one of its requires_type fields")


def _known(name: str, providers: dict[str, Any], path: str, file: str) -> None:
    if name not in providers:
        raise ConfigError(file, path, f"Required provider ['{name}'] is not configured.")


def _route_match(m: Any, path: str, file: str) -> RouteMatch:
    kind = m.WhichOneof("path_specifier")
    case_sensitive = wrapped_or(m, "case_sensitive", True)
    if kind == "safe_regex":
        value = m.safe_regex.regex
        check_regex(value, join(path, "safe_regex.regex"), file)
        case_sensitive = True
    elif kind in ("prefix", "path", "path_separated_prefix"):
        value = getattr(m, kind)
    else:
        raise ConfigError(
            file, path, "one of prefix, path, safe_regex or path_separated_prefix is required"
        )
    headers = tuple(
        header_match(h, f"{join(path, 'headers')}[{i}]", file) for i, h in enumerate(m.headers)
    )
    return RouteMatch(kind=kind, value=value, case_sensitive=case_sensitive, headers=headers)
