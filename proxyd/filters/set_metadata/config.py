"""``envoy.extensions.filters.http.set_metadata.v3.Config`` → plain data.

As Envoy's ``SetMetadataConfig`` reads it: the deprecated ``metadata_namespace`` with
``value`` is one untyped entry that may overwrite; each ``metadata`` entry is untyped
when it has a ``value``, else typed when it has a ``typed_value`` (an entry with neither
sets nothing, and Envoy logs a warning, as proxyd does). The epoch carries::

    {"untyped": [[namespace, value (a JSON object), allow_overwrite]],
     "typed": [[namespace, type_url, allow_overwrite]]}

A typed value is kept by its type URL only: Envoy keeps it in the typed dynamic
metadata, which no part of proxyd reads (``%DYNAMIC_METADATA%`` reads the untyped).
"""

from __future__ import annotations

from typing import Any

from proxyd.config.proto import join
from proxyd.config.spec import LEAF, Spec
from proxyd.log import get_logger

log = get_logger("proxyd.config")

TYPE = "envoy.extensions.filters.http.set_metadata.v3.Config"
SPEC: Spec = {
    "metadata_namespace": LEAF,
    "value": LEAF,
    "metadata": {
        "metadata_namespace": LEAF,
        "allow_overwrite": LEAF,
        "value": LEAF,
        "typed_value": LEAF,
    },
}


def compile(msg: Any, path: str, file: str) -> dict[str, Any]:
    untyped: list[list[Any]] = []
    typed: list[list[Any]] = []
    if msg.HasField("value") and msg.metadata_namespace:
        untyped.append([msg.metadata_namespace, struct_json(msg.value), True])
    for i, entry in enumerate(msg.metadata):
        if entry.HasField("value"):
            untyped.append(
                [entry.metadata_namespace, struct_json(entry.value), entry.allow_overwrite]
            )
        elif entry.HasField("typed_value"):
            typed.append(
                [entry.metadata_namespace, entry.typed_value.type_url, entry.allow_overwrite]
            )
        else:
            log.warning(
                "set_metadata filter configuration contains metadata entries without value "
                "or typed_value",
                file=file,
                path=f"{join(path, 'metadata')}[{i}]",
            )
    return {"untyped": untyped, "typed": typed}


def struct_json(struct: Any) -> dict[str, Any]:
    """A ``google.protobuf.Struct`` as plain data, every number a float (as a protobuf
    ``Value`` holds it), so a merge and ``%DYNAMIC_METADATA%`` treat it as Envoy does."""
    return {key: _value(v) for key, v in struct.fields.items()}


def _value(value: Any) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_json(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    if kind == "number_value":
        return float(value.number_value)
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None
