"""``envoy.extensions.filters.http.stateful_session.v3.StatefulSession`` and
``StatefulSessionPerRoute`` → plain data.

The session state is one of two extensions, compiled to::

    {"kind": "cookie", "name": str, "path": str, "ttl": int (whole seconds),
     "attributes": [[name, value], ...], "strict": bool}
    {"kind": "header", "name": str (lower case), "strict": bool}
    {"kind": "", "strict": bool}      # no session_state: the filter does nothing

A per-route config is ``{"disabled": True}`` or ``{"disabled": False, "config": <the
above>}`` (its own ``stateful_session`` replaces the filter's whole, as in Envoy).
``stat_prefix`` (the filter's stats) is refused by the allow-list.
"""

from __future__ import annotations

from typing import Any

from proxyd.config.proto import join, unpack
from proxyd.config.spec import LEAF, AnyOf, Spec

TYPE = "envoy.extensions.filters.http.stateful_session.v3.StatefulSession"
PER_ROUTE_TYPE = "envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute"
COOKIE_TYPE = "envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState"
HEADER_TYPE = "envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState"

SESSION_STATES: dict[str, Spec] = {
    COOKIE_TYPE: {
        "cookie": {
            "name": LEAF,
            "path": LEAF,
            "ttl": LEAF,
            "attributes": {"name": LEAF, "value": LEAF},
        }
    },
    HEADER_TYPE: {"name": LEAF},
}
SPEC: Spec = {
    "session_state": {"name": LEAF, "typed_config": AnyOf("session state", SESSION_STATES)},
    "strict": LEAF,
}
PER_ROUTE_SPEC: Spec = {"disabled": LEAF, "stateful_session": SPEC}


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "", "strict": msg.strict}
    if not msg.HasField("session_state"):
        return out
    any_msg = msg.session_state.typed_config
    kind = any_msg.type_url.rsplit("/", 1)[-1]
    state = unpack(any_msg)
    assert state is not None  # the allow-list walk resolved every type URL
    if kind == COOKIE_TYPE:
        cookie = state.cookie  # required, with a name (Envoy's proto rules, checked)
        out.update(
            kind="cookie",
            name=cookie.name,
            path=cookie.path,
            ttl=cookie.ttl.seconds,
            attributes=[[a.name, a.value] for a in cookie.attributes],
        )
    else:
        out.update(kind="header", name=state.name.lower())
    return out


def compile_per_route(msg: Any, path: str, file: str) -> dict[str, Any]:
    if msg.WhichOneof("override") == "disabled":
        return {"disabled": True}
    return {
        "disabled": False,
        "config": compile(msg.stateful_session, join(path, "stateful_session"), file),
    }
