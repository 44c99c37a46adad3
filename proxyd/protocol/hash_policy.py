"""RouteAction.hash_policy: a request's 64-bit hash, as Envoy's ``HashPolicyImpl``.

A route's policies are evaluated in order. Each gives a hash or none:

* ``header``: xxHash64 of the header's value (after the policy's regex rewrite);
* ``cookie``: xxHash64 of the cookie's value. A request without the cookie (or with an
  empty one) gets none, unless the policy has a ``ttl``: then the proxy makes the cookie
  (16 hex digits of xxHash64 of the client's and the listener's ``address:port``), hashes
  that, and the response carries ``Set-Cookie: name="value"; Max-Age=ttl; Path=path;
  <attributes>; HttpOnly`` (no Max-Age for a ttl of 0, no Path when it has none);
* ``source_ip``: xxHash64 of the client's IP address (the trusted one, as Envoy's
  ``x-forwarded-for`` handling decides);
* ``query_parameter``: xxHash64 of the first value of the parameter in the query string
  as it is (not percent-decoded; a parameter without "=" has the value "").

Hashes combine as ``rotl1(hash) ^ new`` (so two equal policies do not cancel out), and a
``terminal`` policy that produced a hash (its own or an earlier one) ends the walk. A
request for which no policy gives a hash gets none, and the balancer picks with a random
one, as Envoy's.

Differences from Envoy (documented in docs/configuration.md): the request parser keeps
one value per header name (repeated lines joined with ","), so a header sent several
times hashes as that joined value where Envoy hashes its sorted values, and several
``cookie`` lines are searched as one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from proxyd.epoch import HashPolicy
from proxyd.protocol.hash_lb import xxh64
from proxyd.protocol.redirect import re2_substitution

_MASK64 = (1 << 64) - 1

# What the cookie policy asks when a cookie must be made: (name, path, ttl, attributes)
# -> the cookie's value (the caller adds the Set-Cookie line to the response).
MakeCookie = Callable[[HashPolicy], str]


def cookie_value(cookie_header: str, name: str) -> str:
    """Envoy's ``parseCookieValue``: the value of the first cookie ``name`` ("" when
    there is none), without the double quotes around it."""
    for part in cookie_header.split(";"):
        if not part:
            continue
        eq = part.find("=")
        if eq < 0:
            continue
        if part[:eq].lstrip(" ") != name:
            continue
        value = part[eq + 1 :]
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        return value
    return ""


def query_value(path: str, name: str) -> str | None:
    """The first value of query parameter ``name`` in ``path`` as it is (None: absent)."""
    q = path.find("?")
    if q < 0:
        return None
    for param in path[q + 1 :].split("&"):
        eq = param.find("=")
        if eq < 0:
            if param == name:
                return ""
        elif param[:eq] == name:
            return param[eq + 1 :]
    return None


def set_cookie_value(
    name: str, value: str, path: str, max_age: int, attributes: Sequence[tuple[str, str]]
) -> str:
    """Envoy's ``makeSetCookieValue`` with httponly: a Set-Cookie header's value."""
    out = f'{name}="{value}"'
    if max_age:
        out += f"; Max-Age={max_age}"
    if path:
        out += f"; Path={path}"
    for attr, attr_value in attributes:
        out += f"; {attr}={attr_value}" if attr_value else f"; {attr}"
    return out + "; HttpOnly"


def generated_cookie(remote: str, local: str) -> str:
    """The value Envoy gives a cookie it makes: xxHash64 of the client's and the
    listener's ``address:port``, as 16 hex digits."""
    return f"{xxh64((remote + local).encode('latin-1')):016x}"


class _Method:
    __slots__ = ("policy", "terminal", "rewrite")

    def __init__(self, policy: HashPolicy) -> None:
        self.policy = policy
        self.terminal = policy.terminal
        self.rewrite: Callable[[str], str] | None = None
        if policy.regex:
            pattern = re.compile(policy.regex)
            repl = re2_substitution(policy.substitution, pattern.groups)
            self.rewrite = lambda v: pattern.sub(repl, v)


class HashPlan:
    """A route's compiled hash policies; :meth:`hash` is called once per pick."""

    __slots__ = ("_methods", "headers")

    def __init__(self, policies: Sequence[HashPolicy]) -> None:
        self._methods = tuple(_Method(p) for p in policies)
        # Header names (lower case) the request parser must collect for this route.
        names = set()
        for p in policies:
            if p.kind == "header":
                names.add(p.name)
            elif p.kind == "cookie":
                names.add("cookie")
        self.headers = frozenset(names)

    def hash(
        self, headers: dict[str, str], path: str, source_ip: str, make_cookie: MakeCookie
    ) -> int | None:
        """The request's hash, or None when no policy gives one."""
        result: int | None = None
        for m in self._methods:
            p = m.policy
            kind = p.kind
            new: int | None = None
            if kind == "header":
                value = headers.get(p.name)
                if value is not None:
                    if m.rewrite is not None:
                        value = m.rewrite(value)
                    new = xxh64(value.encode("latin-1"))
            elif kind == "cookie":
                value = cookie_value(headers.get("cookie", ""), p.name)
                if not value and p.ttl_s >= 0:
                    value = make_cookie(p)
                    new = xxh64(value.encode("latin-1"))
                elif value:
                    new = xxh64(value.encode("latin-1"))
            elif kind == "source_ip":
                if source_ip:
                    new = xxh64(source_ip.encode("latin-1"))
            else:  # query_parameter
                value = query_value(path, p.name)
                if value is not None:
                    new = xxh64(value.encode("latin-1"))
            if new is not None:
                old = ((result << 1) | (result >> 63)) & _MASK64 if result is not None else 0
                result = old ^ new
            if m.terminal and result is not None:
                break
        return result
