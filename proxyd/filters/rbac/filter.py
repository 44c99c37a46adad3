"""The RBAC filter on a stream: Envoy's ``RoleBasedAccessControlFilter``.

Rules (the route's ``RBACPerRoute.rbac`` if it has one, else the filter's) are compiled
once per epoch and route into predicates (:func:`compile_rule`) over a :class:`Request`:
a policy matches when any of its permissions and any of its principals match.

* ``shadow_rules`` are evaluated first and only counted: ``shadow_allowed`` or
  ``shadow_denied``.
* ``rules``: with action ALLOW a request is allowed when a policy matches; with DENY
  when none does; LOG allows every request. Allowed counts ``allowed``; denied counts
  ``denied`` and is answered 403 "RBAC: access denied" (details
  ``rbac_access_denied_matched_policy[<policy>]``, ``none`` when no policy matched).
* A route whose ``RBACPerRoute`` has no ``rbac`` runs neither; a config without
  ``rules`` (or ``shadow_rules``) runs only the other.

Stats are ``http.<stat_prefix>.rbac.<rules_stat_prefix>.allowed`` / ``denied`` and
``...rbac.<shadow_rules_stat_prefix>.shadow_allowed`` / ``shadow_denied``, with the
filter's prefixes also on routes that have their own rules, as Envoy counts them.

What a rule reads (Envoy 1.40 on an HTTP/1 connection without TLS):

* ``header``: the request header as routing matches it (repeated values joined with
  ","; ``:authority``/``host`` the Host, ``:path`` the path, ``:method`` the method,
  ``:scheme`` "http"); ``url_path``: the path without query and fragment;
* ``remote_ip``: the client address the connection manager trusts (x-forwarded-for
  and ``xff_num_trusted_hops``, or the peer with ``use_remote_address``);
  ``direct_remote_ip`` (and the deprecated ``source_ip``): the connection's peer;
* ``destination_ip`` / ``destination_port`` / ``destination_port_range``: the
  address and port the connection came to; ``requested_server_name``: the SNI of a TLS
  connection ("" on plaintext); ``authenticated``: the verified client certificate;
* ``metadata`` / ``sourced_metadata``: the stream's dynamic metadata as the filters
  before this one left it (jwt_authn's payload, set_metadata, header_to_metadata),
  matched as Envoy's ``MetadataMatcher`` (a missing value matches only an inverted
  matcher; a string matcher takes strings only, a double matcher numbers only).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from proxyd.epoch import HeaderMatch, StringMatch, from_wire
from proxyd.filters.api import CONTINUE, FilterStream, HttpFilter, LocalReply, Result, StatsScope
from proxyd.protocol.routing import compile_headers, compile_string_match, headers_match
from proxyd.protocol.runtime import EMPTY, Snapshot
from proxyd.protocol.tls_context import peer_subject

BODY = "RBAC: access denied"
STATUS = 403
_PSEUDO = frozenset({":method", ":scheme"})

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None  # a Unix socket's peer: no IP rule matches it


class Request:
    """What the rules of one request read; the addresses only when a rule needs them."""

    __slots__ = (
        "headers", "host", "path", "remote", "direct", "local_ip", "local_port", "tls",
        "metadata",
    )  # fmt: skip

    def __init__(self, stream: FilterStream, addresses: bool, pseudo: bool) -> None:
        h = stream.head
        headers = h.headers
        # The connection's TLS session (SNI, peer certificate), None on plaintext.
        self.tls = stream.downstream_tls()
        if pseudo:
            headers = dict(headers)
            headers[":method"] = h.method
            headers[":scheme"] = "http" if self.tls is None else "https"
        self.headers = headers
        self.host = h.host
        self.path = h.path
        state = stream.filter_state
        # namespace → its object (Envoy's dynamic metadata), {} when no filter set any.
        self.metadata: Any = (state.get("dynamic_metadata") if state else None) or {}
        self.remote: IpAddress | None = None
        self.direct: IpAddress | None = None
        self.local_ip: IpAddress | None = None
        self.local_port = 0
        if addresses:
            remote, direct, local_ip, self.local_port = stream.downstream_addresses()
            self.remote, self.direct, self.local_ip = _ip(remote), _ip(direct), _ip(local_ip)


Rule = Callable[[Request], bool]


def _authenticated(test: Callable[[str], bool], peer: dict[str, Any] | None) -> bool:
    """Envoy's AuthenticatedMatcher: the peer certificate's URI SANs, then its DNS SANs,
    then its subject."""
    sans = (peer or {}).get("subjectAltName", ())
    for kind in ("URI", "DNS"):
        for k, value in sans:
            if k == kind and test(value):
                return True
    return bool(test(peer_subject(peer)))


class Needs:
    """What the compiled rules read beyond the head: header names, addresses."""

    __slots__ = ("headers", "addresses")

    def __init__(self) -> None:
        self.headers: set[str] = set()
        self.addresses = False


def _bare(path: str) -> str:
    if "?" in path:
        path = path[: path.find("?")]
    if "#" in path:
        path = path[: path.find("#")]
    return path


_MISSING = object()
ValueTest = Callable[[Any], bool]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compile_value(data: list[Any]) -> ValueTest:
    """Envoy's ``ValueMatcher`` over a metadata value (``_MISSING`` when there is none)."""
    tag = data[0]
    if tag == "null":
        return lambda v: v is None
    if tag == "double":
        exact, start, end = data[1], data[2], data[3]
        if exact is not None:
            return lambda v: _number(v) and v == exact
        return lambda v: _number(v) and start <= v < end
    if tag == "string":
        test = compile_string_match(from_wire(StringMatch, data[1]))
        return lambda v: isinstance(v, str) and bool(test(v))
    if tag == "bool":
        want = data[1]
        return lambda v: isinstance(v, bool) and v == want
    if tag == "present":
        present = data[1]
        return lambda v: present and v is not _MISSING
    if tag == "list":
        inner = compile_value(data[1])
        return lambda v: isinstance(v, list) and any(inner(x) for x in v)
    tests = [compile_value(x) for x in data[1]]  # "or"
    return lambda v: any(t(v) for t in tests)


def _metadata_value(metadata: Any, namespace: str, keys: list[str]) -> Any:
    value: Any = metadata.get(namespace, _MISSING)
    for key in keys:
        if not isinstance(value, dict):
            return _MISSING
        value = value.get(key, _MISSING)
    return value if keys else _MISSING  # (a namespace alone is a struct: no match)


def compile_rule(data: list[Any], needs: Needs) -> Rule:
    """One permission or principal (:mod:`.config`'s tagged lists) as a predicate."""
    tag = data[0]
    if tag == "any":
        return lambda r: True
    if tag == "metadata":
        namespace, keys, invert = data[1], list(data[2]), bool(data[4])
        value_test = compile_value(data[3])
        return lambda r: value_test(_metadata_value(r.metadata, namespace, keys)) != invert
    if tag == "header":
        tests = compile_headers((from_wire(HeaderMatch, data[1]),))
        needs.headers.add(tests[0][0])
        return lambda r: headers_match(tests, r.headers, r.host, r.path)
    if tag == "path":
        test = compile_string_match(from_wire(StringMatch, data[1]))
        return lambda r: bool(test(_bare(r.path)))
    if tag == "sni":
        sni_test = compile_string_match(from_wire(StringMatch, data[1]))
        plain = bool(sni_test(""))  # a plaintext connection's requested server name
        return lambda r: plain if r.tls is None else bool(sni_test(r.tls.sni))
    if tag == "authenticated":
        if data[1] is None:
            return lambda r: r.tls is not None
        name_test = compile_string_match(from_wire(StringMatch, data[1]))
        return lambda r: r.tls is not None and _authenticated(name_test, r.tls.peer)
    if tag in ("destination_ip", "remote_ip", "direct_remote_ip"):
        net = ipaddress.ip_network(data[1])
        needs.addresses = True
        attr = {"destination_ip": "local_ip", "remote_ip": "remote", "direct_remote_ip": "direct"}[
            tag
        ]

        def in_net(r: Request) -> bool:
            ip = getattr(r, attr)
            return ip is not None and ip.version == net.version and ip in net

        return in_net
    if tag == "destination_port":
        port = data[1]
        needs.addresses = True
        return lambda r: r.local_port == port
    if tag == "destination_port_range":
        start, end = data[1], data[2]
        needs.addresses = True
        return lambda r: start <= r.local_port < end
    if tag == "and":
        subs = tuple(compile_rule(d, needs) for d in data[1])
        return lambda r: all(s(r) for s in subs)
    if tag == "or":
        subs = tuple(compile_rule(d, needs) for d in data[1])
        return lambda r: any(s(r) for s in subs)
    if tag == "not":
        sub = compile_rule(data[1], needs)
        return lambda r: not sub(r)
    raise ValueError(f"unknown RBAC rule {tag!r}")


class Engine:
    """One RBAC rule set: its action and its policies, in name order."""

    __slots__ = ("action", "policies")

    def __init__(self, rules: dict[str, Any], needs: Needs) -> None:
        self.action: str = rules["action"]
        self.policies = tuple(
            (
                name,
                tuple(compile_rule(p, needs) for p in permissions),
                tuple(compile_rule(p, needs) for p in principals),
            )
            for name, permissions, principals in rules["policies"]
        )

    def matched(self, r: Request) -> str | None:
        """The name of the first policy that matches, or None."""
        for name, permissions, principals in self.policies:
            if any(p(r) for p in permissions) and any(p(r) for p in principals):
                return name
        return None

    def allows(self, r: Request) -> tuple[bool, str | None]:
        """(allowed, the policy that decided it) as Envoy's handleAction."""
        if self.action == "LOG":
            return True, None
        name = self.matched(r)
        if self.action == "ALLOW":
            return name is not None, name
        return name is None, name  # DENY


def _stat_prefix(prefix: str) -> str:
    if prefix and not prefix.endswith("."):
        prefix += "."
    return "rbac." + prefix


class Factory:
    """One per epoch and route: the route's ``RBACPerRoute`` replaces the filter's."""

    __slots__ = (
        "name", "wanted_headers", "decodes", "encodes", "stats", "engine", "shadow",
        "addresses", "pseudo", "allowed", "denied", "shadow_allowed", "shadow_denied",
    )  # fmt: skip

    def __init__(
        self, name: str, config: Any, per_route: Any, stats: StatsScope, runtime: Snapshot = EMPTY
    ) -> None:
        self.name = name
        self.stats = stats
        rules_prefix = _stat_prefix(config["rules_stat_prefix"])
        shadow_prefix = _stat_prefix(config["shadow_rules_stat_prefix"])
        self.allowed = rules_prefix + "allowed"
        self.denied = rules_prefix + "denied"
        self.shadow_allowed = shadow_prefix + "shadow_allowed"
        self.shadow_denied = shadow_prefix + "shadow_denied"
        for stat in (self.allowed, self.denied, self.shadow_allowed, self.shadow_denied):
            stats.inc(stat, 0)  # shown at 0 from the start, as Envoy does
        settings = config if per_route is None else per_route["rbac"]
        needs = Needs()
        self.engine: Engine | None = None
        self.shadow: Engine | None = None
        if settings is not None:
            if settings["rules"] is not None:
                self.engine = Engine(settings["rules"], needs)
            if settings["shadow"] is not None:
                self.shadow = Engine(settings["shadow"], needs)
        self.addresses = needs.addresses
        self.pseudo = bool(needs.headers & _PSEUDO)
        self.wanted_headers = frozenset(
            n for n in needs.headers if not n.startswith(":") and n != "host"
        )
        self.decodes = self.engine is not None or self.shadow is not None
        self.encodes = False

    def create(self) -> RbacFilter:
        return RbacFilter(self)


class RbacFilter(HttpFilter):
    __slots__ = ("factory",)

    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        f = self.factory
        r = Request(stream, f.addresses, f.pseudo)
        if f.shadow is not None:
            allowed, _ = f.shadow.allows(r)
            f.stats.inc(f.shadow_allowed if allowed else f.shadow_denied)
        if f.engine is None:
            return CONTINUE
        allowed, policy = f.engine.allows(r)
        if allowed:
            f.stats.inc(f.allowed)
            return CONTINUE
        f.stats.inc(f.denied)
        details = f"rbac_access_denied_matched_policy[{policy or 'none'}]"
        return LocalReply(STATUS, BODY, details=details)
