"""What one epoch changes from another: ``proxyctl reload --dry-run``'s diff.

:func:`diff_epochs` compares two epochs (or epoch templates) as plain data and returns a
JSON-able document, the same one ``proxyctl reload --dry-run --json`` prints under
``"diff"``. It has one section per level of the epoch, in :data:`SECTIONS` order, each
``{"added": [...], "removed": [...], "changed": [...]}``:

* ``listeners`` by name; ``route_configs`` (one per listener: the listener's HTTP
  connection manager's routes, inline or RDS), ``virtual_hosts`` by name inside it,
  ``routes`` inside a virtual host by name, or by their match when they have none
  (``prefix /api``); ``clusters`` by name, ``endpoints`` inside a cluster by
  ``address:port`` (the host name for a DNS cluster's template);
* a second object with the same key within its parent gets ``#2``, ``#3``, ...;
* an entry names itself (``name``) and its parents (``listener``, ``route_config``,
  ``virtual_host``; ``cluster``); a route entry has its position too (``index``);
* what a listener or cluster brings with it when it is added or removed is not listed
  again below it: the routes of an added listener, the endpoints of a removed cluster;
* a changed entry has ``fields``: ``{"field": "hcm.idle_timeout_s", "old": 3600.0,
  "new": 60.0}`` for each value that differs, named by its path in the epoch (nested
  values by dotted path, list items by ``[i]`` when the list kept its length, else the
  whole list); a virtual host whose routes kept their keys but not their order has a
  ``route_order`` field. Values are plain JSON data (lists, objects, strings, numbers).

``epoch_fields`` lists the epoch-wide values that differ (any :class:`~proxyd.epoch.Epoch`
field other than its number, listeners and clusters). :func:`is_empty` says whether a
diff changes nothing, :func:`format_diff` renders one for people. No I/O here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from proxyd.epoch import Cluster, Endpoint, Epoch, HeaderMatch, Listener, Route, RouteConfig

SECTIONS = ("listeners", "route_configs", "virtual_hosts", "routes", "clusters", "endpoints")
# Epoch fields each section covers (the rest are epoch_fields).
_EPOCH_OWN = frozenset({"number", "listeners", "clusters"})
# Longest value (as JSON) format_diff shows in full.
_SHOW_MAX = 60

T = TypeVar("T")


def diff_epochs(old: Epoch, new: Epoch) -> dict[str, Any]:
    """What ``new`` changes from ``old`` (see the module docstring for the shape)."""
    out: dict[str, Any] = {s: {"added": [], "removed": [], "changed": []} for s in SECTIONS}
    out["epoch_fields"] = [
        change
        for f in dataclasses.fields(Epoch)
        if f.name not in _EPOCH_OWN
        for change in field_changes(getattr(old, f.name), getattr(new, f.name), f.name)
    ]
    listeners = _compare(
        out["listeners"], _keyed(old.listeners, _name), _keyed(new.listeners, _name),
        lambda key: {"name": key}, skip=frozenset({"hcm.route_config"}),
    )  # fmt: skip
    for key, (a, b) in listeners.items():
        if a.hcm is not None and b.hcm is not None:
            _diff_route_config(out, key, a.hcm.route_config, b.hcm.route_config)
    clusters = _compare(
        out["clusters"], _keyed(old.clusters, _name), _keyed(new.clusters, _name),
        lambda key: {"name": key}, skip=frozenset({"endpoints"}),
    )  # fmt: skip
    for key, (ca, cb) in clusters.items():
        _compare(
            out["endpoints"], _keyed(ca.endpoints, endpoint_key), _keyed(cb.endpoints, endpoint_key),
            _in_cluster(key),
        )  # fmt: skip
    return out


def _in_cluster(cluster: str) -> Callable[[str], dict[str, Any]]:
    return lambda key: {"cluster": cluster, "name": key}


def is_empty(diff: Mapping[str, Any]) -> bool:
    """Whether ``diff`` (from :func:`diff_epochs`) changes nothing."""
    return not diff.get("epoch_fields") and not any(
        diff[s]["added"] or diff[s]["removed"] or diff[s]["changed"] for s in SECTIONS
    )


def _diff_route_config(out: dict[str, Any], listener: str, a: RouteConfig, b: RouteConfig) -> None:
    fields = field_changes(a, b, skip=frozenset({"virtual_hosts"}))
    if fields:
        out["route_configs"]["changed"].append({"listener": listener, "name": b.name, "fields": fields})  # fmt: skip
    rc = b.name
    vhosts = _compare(
        out["virtual_hosts"], _keyed(a.virtual_hosts, _name), _keyed(b.virtual_hosts, _name),
        lambda key: {"listener": listener, "route_config": rc, "name": key},
        skip=frozenset({"routes"}),
    )  # fmt: skip
    for vh, (va, vb) in vhosts.items():
        old_routes, new_routes = _keyed(va.routes, route_key), _keyed(vb.routes, route_key)
        old_pos = {k: i for i, k in enumerate(old_routes)}
        new_pos = {k: i for i, k in enumerate(new_routes)}
        common_old = [k for k in old_routes if k in new_routes]
        common_new = [k for k in new_routes if k in old_routes]
        if common_old != common_new:
            _changed(
                out["virtual_hosts"],
                {"listener": listener, "route_config": rc, "name": vh},
                [{"field": "route_order", "old": common_old, "new": common_new}],
            )

        def ident(
            key: str,
            vh: str = vh,
            old_pos: dict[str, int] = old_pos,
            new_pos: dict[str, int] = new_pos,
        ) -> dict[str, Any]:
            where = new_pos.get(key, old_pos.get(key, 0))
            return {"listener": listener, "route_config": rc, "virtual_host": vh, "name": key, "index": where}  # fmt: skip

        _compare(out["routes"], old_routes, new_routes, ident)


def _changed(section: dict[str, Any], ident: dict[str, Any], fields: list[dict[str, Any]]) -> None:
    """Add ``fields`` to the changed entry ``ident`` of ``section`` (made if missing)."""
    for entry in section["changed"]:
        if all(entry.get(k) == v for k, v in ident.items()):
            entry["fields"].extend(fields)
            return
    section["changed"].append({**ident, "fields": fields})


def _compare(
    section: dict[str, Any],
    old: dict[str, T],
    new: dict[str, T],
    ident: Callable[[str], dict[str, Any]],
    skip: frozenset[str] = frozenset(),
) -> dict[str, tuple[T, T]]:
    """Fill ``section`` with what was added, removed and changed from ``old`` to ``new``
    (by key); the pairs present in both, by key, for the level below."""
    section["removed"].extend(ident(k) for k in old if k not in new)
    section["added"].extend(ident(k) for k in new if k not in old)
    both: dict[str, tuple[T, T]] = {}
    for key, b in new.items():
        if key not in old:
            continue
        a = old[key]
        both[key] = (a, b)
        if a is b:
            continue
        fields = field_changes(a, b, skip=skip)
        if fields:
            section["changed"].append({**ident(key), "fields": fields})
    return both


def _keyed(items: Iterable[T], key: Callable[[T], str]) -> dict[str, T]:
    """``items`` by key, in order; repeated keys get ``#2``, ``#3``, ..."""
    out: dict[str, T] = {}
    seen: dict[str, int] = {}
    for item in items:
        k = key(item)
        seen[k] = seen.get(k, 0) + 1
        out[k if seen[k] == 1 else f"{k}#{seen[k]}"] = item
    return out


def _name(obj: Listener | Cluster | Any) -> str:
    return str(obj.name)


def endpoint_key(e: Endpoint) -> str:
    """``10.0.0.1:8080``, ``[::1]:8080``, ``backend.internal:80``."""
    host = f"[{e.address}]" if ":" in e.address else e.address
    return f"{host}:{e.port}"


def route_key(r: Route) -> str:
    """A route's name, else its match: ``prefix /api``, ``path /x (any case)``,
    ``prefix / [header x-env exact "canary"]``."""
    if r.name:
        return r.name
    m = r.match
    text = f"{m.kind} {m.value}" + ("" if m.case_sensitive else " (any case)")
    if m.headers:
        text += " [" + ", ".join(_header_text(h) for h in m.headers) + "]"
    return text


def _header_text(h: HeaderMatch) -> str:
    text = f"header {h.name}"
    text += " present" if h.match is None else f" {h.match.kind} {json.dumps(h.match.value)}"
    return text + (" inverted" if h.invert_match else "")


# -- field-by-field comparison ------------------------------------------------------


def field_changes(
    old: Any, new: Any, path: str = "", skip: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Each value that differs between ``old`` and ``new`` (dataclasses of the epoch,
    dicts, lists, plain values): ``{"field": path, "old": ..., "new": ...}``, with nested
    values named by dotted path and list items by ``[i]``; paths in ``skip`` are left
    out (a level diffed on its own)."""
    out: list[dict[str, Any]] = []
    _walk(old, new, path, skip, out)
    return out


def _walk(old: Any, new: Any, path: str, skip: frozenset[str], out: list[dict[str, Any]]) -> None:
    if path in skip or old is new:
        return
    if dataclasses.is_dataclass(old) and not isinstance(old, type) and type(old) is type(new):
        for f in dataclasses.fields(old):
            _walk(getattr(old, f.name), getattr(new, f.name), _join(path, f.name), skip, out)
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            _walk(old.get(k), new.get(k), _join(path, str(k)), skip, out)
        return
    if (
        isinstance(old, list | tuple)
        and isinstance(new, list | tuple)
        and len(old) == len(new)
        and any(_structured(x) for x in (*old, *new))
    ):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            _walk(a, b, f"{path}[{i}]", skip, out)
        return
    if _same(old, new):
        return
    out.append({"field": path, "old": plain(old), "new": plain(new)})


def _structured(value: Any) -> bool:
    return isinstance(value, dict | list | tuple) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN is NaN
    return bool(type(a) is type(b) and a == b) or (
        isinstance(a, int | float) and isinstance(b, int | float)
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b
    )  # fmt: skip


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def plain(value: Any) -> Any:
    """``value`` as JSON data: dataclasses as objects of their fields, tuples as lists,
    bytes as text (undecodable bytes as ``\\xNN``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


# -- for people -----------------------------------------------------------------------

_KINDS = {
    "listeners": "listener",
    "route_configs": "route config",
    "virtual_hosts": "virtual host",
    "routes": "route",
    "clusters": "cluster",
    "endpoints": "endpoint",
}
# The parents an entry of each section names, outermost first, with their labels.
_PARENTS = {
    "route_configs": (("listener", "listener"),),
    "virtual_hosts": (("listener", "listener"), ("route_config", "route config")),
    "routes": (
        ("listener", "listener"),
        ("route_config", "route config"),
        ("virtual_host", "virtual host"),
    ),
    "endpoints": (("cluster", "cluster"),),
}


def format_diff(diff: Mapping[str, Any]) -> list[str]:
    """``diff`` as lines: ``+ cluster 'b'``, ``- endpoint '10.0.0.2:80' (cluster 'b')``,
    ``~ listener 'ingress'`` followed by one indented ``field: old -> new`` line per
    changed value; no lines when it changes nothing."""
    lines = [f"~ epoch: {c['field']}: {show(c['old'])} -> {show(c['new'])}" for c in diff.get("epoch_fields", ())]  # fmt: skip
    for section in SECTIONS:
        part = diff[section]
        for sign, action in (("-", "removed"), ("+", "added"), ("~", "changed")):
            for entry in part[action]:
                lines.append(f"{sign} {_entry_text(section, entry)}")
                for c in entry.get("fields", ()) if action == "changed" else ():
                    lines.append(f"    {c['field']}: {show(c['old'])} -> {show(c['new'])}")
    return lines


def _entry_text(section: str, entry: Mapping[str, Any]) -> str:
    text = f"{_KINDS[section]} {_quote(entry['name'])}"
    parents = [f"{label} {_quote(entry[key])}" for key, label in _PARENTS.get(section, ())]
    if parents:
        text += f" ({', '.join(parents)})"
    return text


def _quote(name: Any) -> str:
    return f"'{name}'"


def show(value: Any) -> str:
    """A value for a ``field: old -> new`` line: JSON when short, else what it is
    (``[3 items]``, ``[3 items: a, b, c]`` for named ones, ``{...}``)."""
    text = json.dumps(value, ensure_ascii=False)
    if len(text) <= _SHOW_MAX:
        return text
    if isinstance(value, list):
        names = [v["name"] for v in value if isinstance(v, dict) and isinstance(v.get("name"), str)]
        count = f"{len(value)} item{'s' if len(value) != 1 else ''}"
        if len(names) == len(value) and all(names):
            listed = ", ".join(names)
            if len(listed) <= _SHOW_MAX:
                return f"[{count}: {listed}]"
        return f"[{count}]"
    if isinstance(value, dict):
        return "{...}"
    return text[: _SHOW_MAX - 3] + "..."
