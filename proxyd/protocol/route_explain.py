"""``proxyctl explain``'s route step: why a request selects its virtual host and route.

:func:`explain_match` walks the compiled structures of a
:class:`proxyd.protocol.routing.RouteTable` (its domain tables, and each virtual host's
compiled routes with their path matchers and header tests) the way
:meth:`RouteTable.match` does, and records each decision with the value it was made on.
The predicates it runs are the table's own compiled ones; only the words describing
them come from the epoch's ``RouteMatch``. The plain ``match`` path is untouched: this
walk is a separate function, run only for an explanation.

A route with a ``runtime_fraction`` strictly between 0 and 1 is decided by a random
draw per request; the walk records it as ``"maybe"`` with its odds and goes on to the
routes a request that loses the draw would try, so the answer names every route the
request could take.
"""

from __future__ import annotations

from typing import Any

from proxyd.epoch import HeaderMatch, QueryMatch, Route, StringMatch
from proxyd.protocol import routing as r

_KIND_WORDS = {
    r._PREFIX: "prefix",
    r._PREFIX_NOCASE: "prefix",
    r._PATH: "path",
    r._PATH_NOCASE: "path",
    r._REGEX: "safe_regex",
    r._SEP: "path_separated_prefix",
    r._SEP_NOCASE: "path_separated_prefix",
}
_NOCASE = (r._PREFIX_NOCASE, r._PATH_NOCASE, r._SEP_NOCASE)


def _describe_string(sm: StringMatch) -> str:
    kind = "regex" if sm.kind == "safe_regex" else sm.kind
    return f"{kind} {sm.value!r}" + (" (ignore case)" if sm.ignore_case else "")


def _describe_header(hm: HeaderMatch) -> str:
    if hm.match is None:
        what = "absent" if hm.invert_match else "present"
        return what
    text = _describe_string(hm.match)
    if hm.invert_match:
        text = f"not {text}"
    if hm.treat_missing_as_empty:
        text += ' (missing = "")'
    return text


def _describe_query(qm: QueryMatch) -> str:
    if qm.match is None:
        return "present" if qm.present else "absent"
    return _describe_string(qm.match)


def _test_words(route: Route) -> list[tuple[str, str, str]]:
    """(what, subject, matcher text) for each compiled header test of ``route``, in the
    order :func:`routing._compile_route` appends them: headers, grpc, query."""
    m = route.match
    out = [("header", hm.name.lower(), _describe_header(hm)) for hm in m.headers]
    if m.grpc:
        out.append(("grpc", "content-type", "application/grpc or application/grpc+…"))
    out += [("query", qm.name, _describe_query(qm)) for qm in m.query]
    return out


def _check_tests(
    tests: tuple[Any, ...], route: Route, headers: dict[str, str], host: str, path: str
) -> tuple[bool, list[dict[str, Any]]]:
    """Run each compiled test (as :func:`routing.headers_match`, one at a time)."""
    checks: list[dict[str, Any]] = []
    for test, (what, subject, text) in zip(tests, _test_words(route), strict=True):
        ok = r.headers_match((test,), headers, host, path)
        name = test[0]
        if name == ":authority":
            value: str | None = host
        elif name == ":path":
            value = path
        elif name[0] == "?":
            value = r.query_value(path, name[1:])
        else:
            value = headers.get(name)
        checks.append(
            {"kind": what, "name": subject, "matcher": text, "value": value, "matched": ok}
        )
        if not ok:
            return False, checks
    return True, checks


def _path_step(kind: int, value: str, rx: Any, bare: str, route: Route) -> dict[str, Any]:
    ok = r._path_matches(kind, value, rx, bare)
    word = _KIND_WORDS[kind]
    shown = route.match.value
    return {
        "kind": word,
        "value": shown,
        "case_sensitive": kind not in _NOCASE,
        "path": bare,
        "matched": ok,
    }


def _fraction(guard: Any) -> tuple[str, float]:
    num, den = guard.numerator, guard.denominator
    if num >= den:
        return "yes", 1.0
    if num <= 0:
        return "no", 0.0
    return "maybe", num / den


def explain_vhost(table: r.RouteTable, host: str) -> dict[str, Any]:
    """The domain lookups :meth:`RouteTable._find_vhost` makes for ``host``, in order,
    and the virtual host chosen (None: no domain matches, a 404)."""
    lowered = r.ascii_lower(host)
    steps: list[dict[str, Any]] = []
    chosen: Any = None

    def step(kind: str, domain: str, found: Any) -> bool:
        nonlocal chosen
        steps.append(
            {"kind": kind, "domain": domain, "virtual_host": found.vhost.name if found else None}
        )
        if found is not None:
            chosen = found
            return True
        return False

    done = False
    if not table._only_default:
        done = step("exact", lowered, table._exact.get(lowered))
        n = len(lowered)
        if not done:
            for length, suffixes in table._suffixes:
                if length < n and step("suffix", "*" + lowered[n - length :], suffixes.get(lowered[n - length :])):  # fmt: skip
                    done = True
                    break
        if not done:
            for length, prefixes in table._prefixes:
                if length < n and step("prefix", lowered[:length] + "*", prefixes.get(lowered[:length])):  # fmt: skip
                    done = True
                    break
    if not done:
        step("default", "*", table._default)
    return {"host": host, "lookups": steps, "compiled": chosen}


def explain_match(
    table: r.RouteTable, host: str, path: str, headers: dict[str, str]
) -> dict[str, Any]:
    """Why ``table`` routes (host, path, headers) where it does, as plain data:
    ``virtual_host`` (name or None), ``domain_lookups``, ``routes`` (one entry per route
    tried: its name, index, the path step, the header/query/grpc checks and the
    verdict "yes", "no" or "maybe"), ``route`` (the name of the route taken when
    every draw goes its way, or None: 404) and ``route_index``. ``_route`` is the
    epoch's Route object (for the caller; not plain data)."""
    vh = explain_vhost(table, host)
    cvh = vh.pop("compiled")
    out: dict[str, Any] = {
        "host": host,
        "path": path,
        "domain_lookups": vh["lookups"],
        "virtual_host": None if cvh is None else cvh.vhost.name,
        "routes": [],
        "route": None,
        "route_index": None,
        "_route": None,
    }
    if cvh is None:
        return out
    bare = path
    if "?" in bare:
        bare = bare[: bare.find("?")]
    if "#" in bare:
        bare = bare[: bare.find("#")]
    for index, (kind, value, rx, tests, route) in enumerate(cvh.routes):
        if kind == r._TREE:
            # VirtualHost.matcher: the worker's own tree picks the route (its steps
            # inside the tree are not itemized).
            out["routes"].append(_tree_entry(cvh.vhost, rx.match(host, path, bare, headers)))
            chosen = out["routes"][-1]
            if chosen["verdict"] == "yes":
                out["route"], out["route_index"] = chosen["name"], chosen["index"]
                out["_route"] = cvh.vhost.routes[chosen["index"]]
            break
        entry: dict[str, Any] = {"index": index, "name": route.name}
        verdict = "yes"
        if kind == r._GUARDED:
            entry["path_match"] = _path_step(rx.kind, rx.value, rx.rx, bare, route)
            fraction = route.match.runtime_fraction
            assert fraction is not None
            verdict, odds = _fraction(rx)
            entry["runtime_fraction"] = {
                "runtime_key": fraction.runtime_key,
                "numerator": rx.numerator,
                "denominator": rx.denominator,
                "probability": odds,
            }
        else:
            entry["path_match"] = _path_step(kind, value, rx, bare, route)
        if not entry["path_match"]["matched"]:
            verdict = "no"
        elif verdict != "no" and tests:
            ok, entry["checks"] = _check_tests(tests, route, headers, host, path)
            if not ok:
                verdict = "no"
        entry["verdict"] = verdict
        entry["reason"] = _reason(entry)
        out["routes"].append(entry)
        if verdict == "yes":
            out["route"], out["route_index"], out["_route"] = route.name, index, route
            break
    return out


def _tree_entry(vhost: Any, route: Any) -> dict[str, Any]:
    if route is None:
        return {
            "index": 0,
            "name": "(matcher)",
            "verdict": "no",
            "reason": "the virtual host's matcher leads to no route (404)",
        }
    index = next(i for i, x in enumerate(vhost.routes) if x is route)
    return {
        "index": index,
        "name": route.name,
        "verdict": "yes",
        "reason": "chosen by the virtual host's matcher (and its own match holds)",
    }


def _reason(entry: dict[str, Any]) -> str:
    """One line saying why a route matched or not."""
    pm = entry["path_match"]
    nocase = "" if pm["case_sensitive"] else " (case-insensitive)"
    path_words = f"{pm['kind']} {pm['value']!r}{nocase}"
    if not pm["matched"]:
        return f"{path_words} does not match path {pm['path']!r}"
    for c in entry.get("checks", ()):
        if not c["matched"]:
            seen = "missing" if c["value"] is None else repr(c["value"])
            what = {"header": "header", "query": "query parameter", "grpc": "grpc"}[c["kind"]]
            return f"{path_words} matches, but {what} {c['name']!r}: {c['matcher']} fails on {seen}"  # fmt: skip
    rf = entry.get("runtime_fraction")
    if rf is not None:
        if entry["verdict"] == "no":
            return f"{path_words} matches, but runtime_fraction {rf['runtime_key']!r} is 0"
        if entry["verdict"] == "maybe":
            return (
                f"{path_words} matches; runtime_fraction {rf['runtime_key']!r} takes "
                f"{rf['probability']:.2%} of such requests (the others try the routes below)"
            )
    n = len(entry.get("checks", ()))
    return f"{path_words} matches" + (f", and its {n} header/query/grpc check(s) pass" if n else "")  # fmt: skip
