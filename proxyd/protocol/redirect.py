"""The answers of routes that need no upstream: ``redirect`` and ``direct_response``.

No I/O here: :class:`LocalAction` turns a request's Host, path and x-forwarded-proto
into the status, body and ``location`` Envoy 1.40 answers with. The rules are Envoy's
(``Http::Utility::newUri`` and ``processRequestHost``, and the route's path rewrite that
the router applies to ``:path`` before it builds the location), checked against Envoy by
``tests/compat/test_route_actions_compat.py``:

* **Scheme**: ``scheme_redirect``, else ``https`` for ``https_redirect``, else the
  request's scheme: its x-forwarded-proto when that is ``http`` or ``https`` (any case,
  lower-cased), else ``http`` (proxyd listens without TLS).
* **Host**: ``host_redirect`` as written (the request's port is never carried over to
  it), else the request's Host. Its port (after the last ``:``; after ``]:`` for an
  IPv6 literal) is dropped when ``port_redirect`` is set, and when the new scheme is
  not the request's x-forwarded-proto (compared exactly) and that is ``https`` with
  port 443 or ``http`` with port 80 (compared in any case).
* **Port**: ``:<port_redirect>`` is appended after the host, whatever the host and
  scheme (``https`` with port_redirect 443 gives ``https://foo.com:443``).
* **Path**: ``path_redirect`` (the request's query string is appended unless
  path_redirect has one of its own), else the request's path after ``prefix_rewrite``
  (the matched prefix, the whole ``path`` or the whole regex-matched path is replaced;
  the query stays) or ``regex_rewrite`` (every match in the path without its query).
  A path without a leading ``/`` gets one. ``strip_query`` then removes the query,
  unless path_redirect had its own.
* A ``direct_response`` with a 3xx status gets a location too: the request's own URL.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from proxyd.epoch import DirectResponse, Redirect, RouteMatch


def request_scheme(xfp: str) -> str:
    """The scheme Envoy gives an HTTP/1 request: its x-forwarded-proto when valid."""
    lowered = xfp.lower()
    return lowered if lowered in ("http", "https") else "http"


def request_host(host: str, new_scheme: str, new_port: str, xfp: str) -> str:
    """Envoy's ``processRequestHost``: the request's Host with its port dropped where
    the redirect changes the port or leaves a scheme's default port behind."""
    if not host:
        return host
    if host[0] == "[":
        end = host.rfind("]:")
        if end != -1:
            end += 1
    else:
        end = host.rfind(":")
    if end == -1:
        return host
    port = host[end:]
    remove = bool(new_port)
    if new_scheme != xfp:
        proto = xfp.lower()
        remove = (
            remove or (proto == "https" and port == ":443") or (proto == "http" and port == ":80")
        )
    return host[:end] if remove else host


def re2_substitution(template: str, groups: int) -> Callable[[re.Match[str]], str]:
    """RE2's rewrite string (``\\0``-``\\9`` for groups, ``\\\\`` for a backslash) as a
    function for :func:`re.sub`; ValueError names what RE2 would refuse."""
    parts: list[str | int] = []
    literal: list[str] = []
    i = 0
    while i < len(template):
        c = template[i]
        if c != "\\":
            literal.append(c)
            i += 1
            continue
        if i + 1 == len(template):
            raise ValueError("the substitution ends with a lone backslash")
        nxt = template[i + 1]
        if nxt == "\\":
            literal.append("\\")
        elif nxt.isdigit():
            n = int(nxt)
            if n > groups:
                raise ValueError(
                    f"the substitution uses group \\{n} but the pattern has {groups} groups"
                )
            parts.append("".join(literal))
            literal = []
            parts.append(n)
        else:
            raise ValueError(f"invalid escape \\{nxt} in the substitution (\\0-\\9 or \\\\)")
        i += 2
    parts.append("".join(literal))
    pieces = tuple(parts)

    def expand(m: re.Match[str]) -> str:
        return "".join(p if isinstance(p, str) else (m.group(p) or "") for p in pieces)

    return expand


class PathRewrite:
    """A route's ``prefix_rewrite`` or ``regex_rewrite`` of ``:path`` (of a redirect's
    path, or of the path sent upstream by a RouteAction)."""

    __slots__ = ("rewrites", "_prefix", "_prefix_len", "_regex", "_substitution")

    def __init__(
        self, match: RouteMatch, prefix: str | None, regex: str = "", substitution: str = ""
    ) -> None:
        # prefix_rewrite replaces this many characters (None: the path without its query).
        self._prefix = prefix
        self._prefix_len: int | None = (
            len(match.value) if match.kind in ("prefix", "path") else None
        )
        self._regex: re.Pattern[str] | None = None
        self._substitution: Callable[[re.Match[str]], str] | None = None
        if regex:
            self._regex = re.compile(regex)
            self._substitution = re2_substitution(substitution, self._regex.groups)
        self.rewrites = prefix is not None or self._regex is not None

    def apply(self, path: str) -> str:
        if self._prefix is not None:
            n = self._prefix_len
            if n is None:
                q = path.find("?")
                n = len(path) if q == -1 else q
            return self._prefix + path[n:]
        if self._regex is not None:
            assert self._substitution is not None
            q = path.find("?")
            bare, query = (path, "") if q == -1 else (path[:q], path[q:])
            return self._regex.sub(self._substitution, bare) + query
        return path


class LocalAction:
    """What a redirect or direct_response route answers, ready for each request."""

    __slots__ = (
        "status", "body", "redirect", "with_location", "rewrites_path", "_rewrite",
        "_path_has_query",
    )  # fmt: skip

    def __init__(
        self, match: RouteMatch, redirect: Redirect | None, direct: DirectResponse | None
    ) -> None:
        self.redirect = redirect
        if redirect is not None:
            self.status = redirect.status
            self.body = b""
        else:
            assert direct is not None
            self.status = direct.status
            self.body = direct.body
        self.with_location = redirect is not None or 300 <= self.status < 400
        self._rewrite = (
            PathRewrite(match, redirect.prefix_rewrite, redirect.regex, redirect.substitution)
            if redirect is not None
            else None
        )
        self._path_has_query = redirect is not None and "?" in redirect.path
        self.rewrites_path = self._rewrite is not None and self._rewrite.rewrites

    def rewritten_path(self, path: str) -> str:
        """The request path after the route's prefix_rewrite or regex_rewrite (Envoy
        rewrites ``:path`` itself; the access log shows the result)."""
        return self._rewrite.apply(path) if self._rewrite is not None else path

    def location(self, host: str, path: str, xfp: str) -> str:
        """The ``location`` for a request with this Host, (rewritten) path and
        x-forwarded-proto (as the router sees it: "http" when it had none)."""
        r = self.redirect
        if r is None:
            scheme = request_scheme(xfp)
            return f"{scheme}://{request_host(host, scheme, '', xfp)}{_slash(path)}"
        scheme = r.scheme or request_scheme(xfp)
        new_host = r.host or request_host(host, scheme, r.port, xfp)
        if r.path:
            if self._path_has_query:
                path = r.path
            else:
                q = path.find("?")
                path = r.path if q == -1 else r.path + path[q:]
        path = _slash(path)
        if r.strip_query and not self._path_has_query:
            q = path.find("?")
            if q != -1:
                path = path[:q]
        return f"{scheme}://{new_host}{r.port}{path}"


def _slash(path: str) -> str:
    return path if path.startswith("/") else "/" + path
