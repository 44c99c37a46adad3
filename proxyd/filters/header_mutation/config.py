"""``envoy.extensions.filters.http.header_mutation.v3.HeaderMutation`` and
``HeaderMutationPerRoute`` → plain data.

Each ``request_mutations[]`` / ``response_mutations[]`` entry (``config.common.
mutation_rules.v3.HeaderMutation``) is one step, ``remove`` or ``append`` (a
``HeaderValueOption``, checked as a route's ``request_headers_to_add`` is: names, the
framing headers proxyd refuses, ``%OPERATOR%`` values). A step is stored as one
:class:`~proxyd.epoch.HeaderMutations` level with only its request or response part, so
the worker evaluates the steps in order with the route's mutation code
(:mod:`proxyd.protocol.header_mutations`)::

    {"request": [HeaderMutations wire], "response": [HeaderMutations wire],
     "most_specific_wins": bool}          # the filter's; a route's has no flag

Every per-route level is kept (:data:`PER_ROUTE_LEVELS`), least specific first, as
Envoy's ``getAllPerFilterConfig`` gives them. ``remove_on_match``,
``query_parameter_mutations`` and the trailer mutations are refused by name.
"""

from __future__ import annotations

from typing import Any

from proxyd.config.proto import join
from proxyd.config.spec import LEAF, Spec
from proxyd.config.values import enum_name
from proxyd.epoch import HeaderAdd, HeaderMutations, to_wire
from proxyd.errors import ConfigError
from proxyd.protocol.header_mutations import ACTIONS, FRAMING, parse_value

TYPE = "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
_STEP: Spec = {
    "remove": LEAF,
    "append": {
        "header": {"key": LEAF, "value": LEAF},
        "append_action": LEAF,
        "keep_empty_value": LEAF,
    },
}
_MUTATIONS: Spec = {"request_mutations": _STEP, "response_mutations": _STEP}
SPEC: Spec = {"mutations": _MUTATIONS, "most_specific_header_mutations_wins": LEAF}

PER_ROUTE_TYPE = "envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
PER_ROUTE_SPEC: Spec = {"mutations": _MUTATIONS}
PER_ROUTE_LEVELS = True


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    out = _mutations(msg.mutations, join(path, "mutations"), file)
    out["most_specific_wins"] = msg.most_specific_header_mutations_wins
    return out


def compile_per_route(msg: Any, path: str, file: str) -> dict[str, Any]:
    return _mutations(msg.mutations, join(path, "mutations"), file)


def _mutations(m: Any, path: str, file: str) -> dict[str, Any]:
    return {
        "request": _steps(m.request_mutations, join(path, "request_mutations"), file, True),
        "response": _steps(m.response_mutations, join(path, "response_mutations"), file, False),
    }


def _steps(steps: Any, path: str, file: str, request: bool) -> list[Any]:
    out = []
    for i, step in enumerate(steps):
        here = f"{path}[{i}]"
        kind = step.WhichOneof("action")
        if kind == "remove":
            name = _name(step.remove, join(here, "remove"), file, "removed")
            level = (
                HeaderMutations(request_remove=(name,))
                if request
                else HeaderMutations(response_remove=(name,))
            )
        elif kind == "append":
            add = _add(step.append, join(here, "append"), file)
            level = (
                HeaderMutations(request_add=(add,))
                if request
                else HeaderMutations(response_add=(add,))
            )
        else:
            raise ConfigError(file, here, "one of remove or append is required")
        out.append(to_wire(level))
    return out


def _name(name: str, where: str, file: str, verb: str) -> str:
    low = name.lower()
    if not low:
        raise ConfigError(file, where, "value length must be at least 1 characters")
    if low.startswith(":") or low == "host":
        raise ConfigError(file, where, f":-prefixed or host headers may not be {verb}")
    if low in FRAMING:
        raise ConfigError(
            file, where, f"proxyd frames each message itself: header mutations may not name '{low}'"
        )
    return low


def _add(opt: Any, path: str, file: str) -> HeaderAdd:
    name = _name(opt.header.key, join(path, "header.key"), file, "modified")
    try:
        parse_value(opt.header.value)
    except ValueError as exc:
        raise ConfigError(file, join(path, "header.value"), str(exc)) from exc
    action = enum_name(opt, "append_action")
    if action not in ACTIONS:
        raise ConfigError(file, join(path, "append_action"), f"unknown append_action {action}")
    return HeaderAdd(
        name=name, value=opt.header.value, action=action, keep_empty=opt.keep_empty_value
    )
