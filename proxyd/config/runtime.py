"""``layered_runtime`` → the runtime layers, and runtime values parsed as Envoy parses them.

A layer is one of ``static_layer`` (a Struct in the bootstrap), ``disk_layer`` (a
directory tree read by the master, ``proxyd.master.runtime``) ``admin_layer`` (what
``/runtime_modify`` sets) or ``rtds_layer`` (a Runtime resource from the Runtime
Discovery Service, read as a static layer: ``proxyd.master.xds``; empty until one
arrives). Envoy's checks: layer names are unique ("Duplicate layer name: a"), at most one
admin layer, a static value may not be a list or null ("Invalid runtime entry value
for k"), and a disk layer's ``symlink_root`` must be in a directory that exists (Envoy
watches that directory: "unable to add filesystem watch for file ...").

Values (``source/common/runtime/runtime_impl.cc``):

* a static layer's nested maps are flattened into dotted keys, except a map with a
  ``numerator`` or ``denominator`` key (or an empty one), which is one value;
* a number keeps Envoy's text for it (``5``, ``1.5``, ``1e+20``, as ``absl::StrCat``)
  and is an unsigned integer when it is >= 0 (floored); a bool is ``true``/``false``;
* a string (a static string, a disk file, an admin value) is a boolean when it is
  ``true``/``false`` in any case, else an unsigned integer when it parses as a number
  >= 0 (floored), else a FractionalPercent when it is one in YAML or JSON.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import yaml
from envoy.type.v3 import percent_pb2
from google.protobuf import json_format

from proxyd.config.proto import join
from proxyd.epoch import RuntimeValue
from proxyd.errors import ConfigError

DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class RuntimeLayer:
    """One entry of ``layered_runtime.layers``. ``kind`` is "static", "disk", "admin"
    or "rtds" (``rtds_name``: the Runtime resource it takes).

    disk: ``symlink_root`` is watched for a swap (Envoy reloads when it is replaced);
    the layer's keys are the files under ``directory`` (symlink_root/subdirectory, plus
    the node's cluster with append_service_cluster)."""

    name: str
    kind: str
    static: tuple[RuntimeValue, ...] = ()
    symlink_root: str = ""
    directory: str = ""
    rtds_name: str = ""


def compile_layered_runtime(bootstrap: Any, file: str) -> tuple[RuntimeLayer, ...]:
    if not bootstrap.HasField("layered_runtime"):
        return ()  # Envoy 1.40: no layers at all, /runtime_modify answers 503
    layers: list[RuntimeLayer] = []
    names: set[str] = set()
    admin = 0
    for i, layer in enumerate(bootstrap.layered_runtime.layers):
        path = f"layered_runtime.layers[{i}]"
        if layer.name in names:
            raise ConfigError(file, join(path, "name"), f"Duplicate layer name: {layer.name}")
        names.add(layer.name)
        kind = layer.WhichOneof("layer_specifier")
        if kind == "static_layer":
            values = flatten_struct(layer.static_layer, join(path, "static_layer"), file)
            layers.append(RuntimeLayer(layer.name, "static", static=values))
        elif kind == "disk_layer":
            disk = layer.disk_layer
            _check_watchable(disk.symlink_root, join(path, "disk_layer.symlink_root"), file)
            directory = disk.symlink_root
            if disk.subdirectory:
                directory = f"{directory}/{disk.subdirectory}"
            if disk.append_service_cluster:
                directory = f"{directory}/{bootstrap.node.cluster}"
            layers.append(
                RuntimeLayer(
                    layer.name, "disk", symlink_root=disk.symlink_root, directory=directory
                )
            )
        elif kind == "admin_layer":
            admin += 1
            if admin > 1:
                raise ConfigError(
                    file,
                    join(path, "admin_layer"),
                    "Too many admin layers specified in LayeredRuntime, at most one may be "
                    "specified",
                )
            layers.append(RuntimeLayer(layer.name, "admin"))
        elif kind == "rtds_layer":  # its source: proxyd.config.dynamic
            layers.append(RuntimeLayer(layer.name, "rtds", rtds_name=layer.rtds_layer.name))
        else:  # the proto requires one of them
            raise ConfigError(file, path, f"runtime layer {kind} not supported by proxyd")
    return tuple(layers)


def _check_watchable(symlink_root: str, path: str, file: str) -> None:
    """Envoy watches the directory holding ``symlink_root`` for a rename onto it and
    refuses the config when that directory does not exist (the link itself may not)."""
    parent = os.path.dirname(symlink_root) or "."
    if not os.path.isdir(parent):
        raise ConfigError(
            file,
            path,
            f"unable to add filesystem watch for file {symlink_root}: No such file or directory",
        )


# -- values ---------------------------------------------------------------------------


def flatten_struct(struct: Any, path: str, file: str) -> tuple[RuntimeValue, ...]:
    """A static layer's Struct as Envoy's ``ProtoLayer::walkProtoValue`` reads it."""
    out: dict[str, RuntimeValue] = {}
    for key, value in struct.fields.items():
        _walk(value, key, out, path, file)
    return tuple(out[k] for k in sorted(out))


def _walk(value: Any, prefix: str, out: dict[str, RuntimeValue], path: str, file: str) -> None:
    kind = value.WhichOneof("kind")
    if kind in (None, "list_value", "null_value"):
        raise ConfigError(file, path, f"Invalid runtime entry value for {prefix}")
    if kind == "struct_value":
        fields = value.struct_value.fields
        if fields and "numerator" not in fields and "denominator" not in fields:
            for key, sub in fields.items():
                _walk(sub, f"{prefix}.{key}" if prefix else key, out, path, file)
            return
    out[prefix] = from_proto_value(prefix, value)


def from_proto_value(key: str, value: Any) -> RuntimeValue:
    """A ``google.protobuf.Value`` (a static layer's leaf) as a runtime value."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        return RuntimeValue(key, number_text(number), uint=_uint(number))
    if kind == "bool_value":
        return RuntimeValue(key, "true" if value.bool_value else "false")
    if kind == "string_value":
        return from_string(key, value.string_value)
    data = json_format.MessageToDict(value.struct_value)
    fraction = _fraction(data)
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"))
    if fraction is None:
        return RuntimeValue(key, raw)
    return RuntimeValue(key, raw, numerator=fraction[0], denominator=fraction[1])


def from_string(key: str, raw: str) -> RuntimeValue:
    """A value given as text (a disk file, an admin value, a static string)."""
    stripped = raw.strip(" \t\n\v\f\r")
    if stripped.lower() in ("true", "false"):
        return RuntimeValue(key, raw)
    number = _atod(raw)
    if number is not None:
        uint = _uint(number)
        if uint is not None:
            return RuntimeValue(key, raw, uint=uint)
    fraction = _text_fraction(raw)
    if fraction is not None:
        return RuntimeValue(key, raw, numerator=fraction[0], denominator=fraction[1])
    return RuntimeValue(key, raw)


def number_text(number: float) -> str:
    """``absl::StrCat`` of a double: six significant digits, no trailing zeros."""
    if math.isnan(number):
        return "nan"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return format(number, "g")


def _uint(number: float) -> int | None:
    if math.isnan(number) or number < 0 or number > _UINT64_MAX:
        return None
    return int(number)


def _atod(text: str) -> float | None:
    """``absl::SimpleAtod``: a decimal or exponent number with optional spaces around."""
    stripped = text.strip(" \t\n\v\f\r")
    if not stripped or "_" in stripped or not stripped.isascii():
        return None
    try:
        return float(stripped)
    except ValueError:
        return None


def _text_fraction(raw: str) -> tuple[int, int] | None:
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError:
        return None
    return _fraction(data) if isinstance(data, dict) else None


def _fraction(data: dict[str, Any]) -> tuple[int, int] | None:
    """A FractionalPercent in JSON form, as (numerator, denominator); None if it is not
    one (Envoy's ``parseEntryFractionalPercentValue`` leaves the value without one)."""
    percent = percent_pb2.FractionalPercent()
    try:
        json_format.ParseDict(data, percent)
    except (json_format.ParseError, TypeError, ValueError):
        return None
    denominator = DENOMINATORS.get(percent.denominator)
    if denominator is None:
        return None
    return percent.numerator, denominator
