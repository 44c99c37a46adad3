"""Plain data → Envoy's own protobuf types, with errors that name the field path.

Envoy's JSON parser (protobuf's, in its legacy mode) takes a few forms that
``json_format`` refuses; :func:`envoy_forms` rewrites them into the canonical form first,
walking the data against the message descriptors:

* an enum name in any letter case (``round_robin``, ``Strict_Dns``);
* a single value where a repeated field is expected (a list of one), and ``null`` as an
  item of a list (the item's default value);
* a ``Duration`` written as an object ``{seconds: 5, nanos: 0}``, and a wrapper
  (``UInt32Value``, ``BoolValue``, ...) written as an object ``{value: ...}``;
* a bool as a string: "true", "yes", "y", "t", "1" and their opposites, in any case.

``json_format.ParseDict`` then rejects unknown fields and wrong types exactly as Envoy
does, but its messages do not name the full path. When it fails, :func:`parse_bootstrap` walks
the data against the message descriptors (into ``Any`` by type URL) to find the first
field that is unknown or does not parse, and reports that field's path.

``Any`` payloads are resolved by type URL in the default descriptor pool. The modules
for the types proxyd supports are imported here; for any other ``envoy.*`` type the
``_pb2`` modules of its proto package are imported on demand, so an unsupported
extension still parses and is then rejected by name (see ``proxyd.config.supported``).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
import re
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.trace.v3 import opentelemetry_pb2, zipkin_pb2  # noqa: F401 - registers the types
from envoy.extensions.access_loggers.file.v3 import file_pb2  # noqa: F401 - registers the type
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401 - registers the types
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 - registers the type
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from proxyd.errors import ConfigError

ANY = "google.protobuf.Any"
# Messages whose JSON form is not an object of their fields: json_format parses them
# as a whole, so the locator treats them as leaves.
_SPECIAL_JSON = frozenset(
    {
        "google.protobuf.Duration",
        "google.protobuf.Timestamp",
        "google.protobuf.FieldMask",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.Empty",
        "google.protobuf.BoolValue",
        "google.protobuf.BytesValue",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int32Value",
        "google.protobuf.Int64Value",
        "google.protobuf.StringValue",
        "google.protobuf.UInt32Value",
        "google.protobuf.UInt64Value",
    }
)
_DURATION = "google.protobuf.Duration"
_WRAPPERS = frozenset(
    {
        "google.protobuf.BoolValue", "google.protobuf.BytesValue",
        "google.protobuf.DoubleValue", "google.protobuf.FloatValue",
        "google.protobuf.Int32Value", "google.protobuf.Int64Value",
        "google.protobuf.StringValue", "google.protobuf.UInt32Value",
        "google.protobuf.UInt64Value",
    }
)  # fmt: skip
# A bool in quotes, as Envoy's parser reads one (any letter case).
_TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1"})
_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_FLOAT_TYPES = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})
_DECIMAL_RE = re.compile(r"[-+]?[0-9]+")
_HEX_RE = re.compile(r"\s*([-+]?)0[xX]([0-9a-fA-F]+)\s*")
_FALSE_WORDS = frozenset({"false", "f", "no", "n", "0"})
_DURATION_MAX_SECONDS = 315_576_000_000  # protobuf's bound, about 10,000 years
# json_format appends ' at "Bootstrap.a.b"' or ' at Bootstrap.a.b' to its reasons.
_JSON_FORMAT_WHERE = re.compile(r'\.? at "?[A-Za-z_][^ ]*$')
_NOT_AN_INT = re.compile(r"invalid literal for int\(\) with base 10: ('.*')")
# Proto packages that may be imported on demand to resolve a type URL.
_IMPORTABLE_ROOTS = ("envoy.", "udpa.", "xds.", "google.protobuf.")
# Package versions of Envoy's v2 API: xds-protos still has some, Envoy 1.40 has none.
_V2_VERSIONS = frozenset({"v2", "v2alpha", "v2alpha1"})


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def message_class(desc: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(desc)


def is_v2_type(type_url: str) -> bool:
    """A type of Envoy's v2 API (``envoy.api.v2.Cluster``, ``...v2.HttpConnectionManager``)."""
    parts = type_url.rsplit("/", 1)[-1].split(".")
    return parts[0] == "envoy" and (parts[1:2] == ["api"] or not _V2_VERSIONS.isdisjoint(parts))


@cache
def find_type(type_url: str) -> Descriptor | None:
    """The descriptor for ``type.googleapis.com/<full name>``, importing it if needed;
    None for an unknown type and for Envoy's v2 API types."""
    if is_v2_type(type_url):
        return None
    full_name = type_url.rsplit("/", 1)[-1]
    pool = descriptor_pool.Default()
    try:
        return pool.FindMessageTypeByName(full_name)
    except KeyError:
        pass
    if not full_name.startswith(_IMPORTABLE_ROOTS):
        return None
    # A nested message type has more than one trailing component; try each package.
    parts = full_name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if _import_proto_package(".".join(parts[:end])):
            try:
                return pool.FindMessageTypeByName(full_name)
            except KeyError:
                continue
    return None


def _import_proto_package(package: str) -> bool:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    for info in pkgutil.iter_modules(spec.submodule_search_locations):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")
    return True


def _import_types(value: Any) -> None:
    """Make every '@type' named in ``value`` known to the descriptor pool."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            type_url = item.get("@type")
            if isinstance(type_url, str):
                find_type(type_url)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


# -- parsing ---------------------------------------------------------------------------


def parse_bootstrap(
    data: dict[str, Any], file: str, wrapped: list[str] | None = None
) -> bootstrap_pb2.Bootstrap:
    """ParseDict into a Bootstrap; on failure, ConfigError with the offending field path."""
    return parse_message(data, bootstrap_pb2.Bootstrap, file, wrapped=wrapped)


M = TypeVar("M", bound=Message)


def parse_message(
    data: dict[str, Any],
    cls: type[M],
    file: str,
    path: str = "",
    wrapped: list[str] | None = None,
) -> M:
    """ParseDict into ``cls`` (a Bootstrap, a DiscoveryResponse in a file, ...) after
    :func:`envoy_forms`; on failure, ConfigError with the offending field path (under
    ``path``, where the data sits in the file). The paths of single values read as
    lists are appended to ``wrapped``: errors found later map back with them."""
    message = cls()
    desc = cls.DESCRIPTOR
    # The stubs also name upb's Descriptor; it passes isinstance(desc, Descriptor).
    assert isinstance(desc, Descriptor)
    _import_types(data)
    singles: list[str] = [] if wrapped is None else wrapped
    data = envoy_forms(data, desc, path, file, singles)
    try:
        json_format.ParseDict(data, message)
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as exc:
        found = locate_error(data, desc, path)
        if found is None:
            raise ConfigError(file, path, f"invalid configuration: {_clean(str(exc))}") from exc
        where, reason = found
        raise ConfigError(file, file_path(where, singles), reason) from exc
    return message


# -- Envoy's forms -> json_format's ------------------------------------------------------


@dataclass
class _Forms:
    file: str
    # Paths (in the rewritten data) of single values made lists of one, outer first.
    wrapped: list[str]


def envoy_forms(
    value: Any, desc: Descriptor, path: str, file: str, wrapped: list[str] | None = None
) -> Any:
    """``value`` (data for a ``desc`` message) with Envoy's lenient forms rewritten into
    the canonical JSON form (see the module docstring). Data that is wrong in another
    way is returned as it is, for ParseDict and :func:`locate_error` to report; a
    Duration object that is wrong raises ConfigError here, naming its path. The paths
    of single values made lists are appended to ``wrapped`` (see :func:`file_path`)."""
    ctx = _Forms(file, [] if wrapped is None else wrapped)
    try:
        return _forms(value, desc, path, ctx)
    except ConfigError as exc:
        raise ConfigError(ctx.file, file_path(exc.path, ctx.wrapped), exc.reason) from exc


def file_path(path: str, wrapped: list[str]) -> str:
    """``path`` in data rewritten by :func:`envoy_forms` → the same place in the file:
    ``x[0]...`` is ``x...`` where ``x`` was a single value made a list of one."""
    for single in sorted(wrapped, key=len, reverse=True):
        item = f"{single}[0]"
        if path == item or path.startswith((item + ".", item + "[")):
            path = single + path[len(item) :]
    return path


def _forms(value: Any, desc: Descriptor, path: str, ctx: _Forms) -> Any:
    name = desc.full_name
    if name == _DURATION:
        return _duration(value, path, ctx) if isinstance(value, dict) else value
    if name in _WRAPPERS:
        if isinstance(value, dict) and set(value) == {"value"}:
            value = value["value"]
        return _scalar(value, desc.fields_by_name["value"], path, ctx)
    if name in _SPECIAL_JSON or not isinstance(value, dict):
        return value
    if name == ANY:
        return _any_forms(value, path, ctx)
    fields = _fields_by_json_key(desc)
    out: dict[Any, Any] = {}
    for key, item in value.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None or item is None:
            out[key] = item
        else:
            out[key] = _field_forms(item, field, join(path, key), ctx)
    return out


def _any_forms(value: dict[str, Any], path: str, ctx: _Forms) -> Any:
    type_url = value.get("@type")
    if isinstance(type_url, str) and is_v2_type(type_url):
        raise ConfigError(ctx.file, join(path, "@type"), unknown_type_reason(type_url))
    inner = find_type(type_url) if isinstance(type_url, str) and type_url else None
    if inner is None:
        return value  # locate_error names the missing or unknown type URL
    if inner.full_name in _SPECIAL_JSON:
        if "value" not in value:
            return value
        return {**value, "value": _forms(value["value"], inner, join(path, "value"), ctx)}
    rest = _forms({k: v for k, v in value.items() if k != "@type"}, inner, path, ctx)
    return {"@type": type_url, **rest}


def _field_forms(item: Any, field: FieldDescriptor, path: str, ctx: _Forms) -> Any:
    message_type = _message_type(field)
    if message_type is not None and message_type.GetOptions().map_entry:
        value_field = message_type.fields_by_name["value"]
        if not isinstance(item, dict):
            return item
        return {k: _one(v, value_field, f"{path}[{k!r}]", ctx) for k, v in item.items()}
    if field.is_repeated:
        if not isinstance(item, list):  # Envoy: one value is a list of one
            ctx.wrapped.append(path)
            item = [item]
        items = item
        # Envoy: a null item is the item's default value (an empty message, "", 0).
        items = [_default_json(field) if v is None else v for v in items]
        return [_one(v, field, f"{path}[{i}]", ctx) for i, v in enumerate(items)]
    return _one(item, field, path, ctx)


def _default_json(field: FieldDescriptor) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return {}
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return ""
    if field.type == FieldDescriptor.TYPE_BOOL:
        return False
    return 0  # numbers, and an enum's first value


def _one(item: Any, field: FieldDescriptor, path: str, ctx: _Forms) -> Any:
    message_type = _message_type(field)
    if message_type is not None:
        return _forms(item, message_type, path, ctx)
    return _scalar(item, field, path, ctx)


def _scalar(item: Any, field: FieldDescriptor, path: str, ctx: _Forms) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM and isinstance(item, str):
        enum_type = field.enum_type
        assert enum_type is not None  # set on every enum field
        if item not in enum_type.values_by_name and item.upper() in enum_type.values_by_name:
            return item.upper()
    elif field.type == FieldDescriptor.TYPE_BOOL and isinstance(item, str):
        word = item.lower()
        if word not in _TRUE_WORDS and word not in _FALSE_WORDS:
            raise ConfigError(
                ctx.file,
                path,
                f"expected true or false (or in quotes: yes, y, 1, ...), got {_kind(item)}",
            )
        return word in _TRUE_WORDS
    elif isinstance(item, str) and (field.type in _INTEGER_TYPES or field.type in _FLOAT_TYPES):
        return _numeric_text(item, field, path, ctx)
    return item


def _numeric_text(item: str, field: FieldDescriptor, path: str, ctx: _Forms) -> Any:
    """A number field given text (a YAML float or a big integer is text, as in Envoy):
    the forms C++'s number parsing takes and Python's would not (hexadecimal, ``-0`` for
    an unsigned field) become numbers here, and Python's extra (``1_000``) is refused."""
    if "_" in item:
        kind = "an integer" if field.type in _INTEGER_TYPES else "a number"
        raise ConfigError(ctx.file, path, f"expected {kind}, got the string {item!r}")
    hexadecimal = _HEX_RE.fullmatch(item)
    if field.type in _INTEGER_TYPES:
        if _DECIMAL_RE.fullmatch(item):
            return int(item)
        if hexadecimal and not item[:1].isspace() and not item[-1:].isspace():
            return int(hexadecimal[1] + hexadecimal[2], 16)
    elif hexadecimal:
        return float(int(hexadecimal[1] + hexadecimal[2], 16))
    return item


def _duration(value: dict[Any, Any], path: str, ctx: _Forms) -> str:
    """``{seconds: S, nanos: N}`` as the string json_format parses ("S.NNNNNNNNNs")."""
    for key in value:
        if key not in ("seconds", "nanos"):
            raise ConfigError(
                ctx.file, join(path, str(key)), f"unknown field '{key}' in {_DURATION}"
            )
    seconds = _integer(value.get("seconds", 0), join(path, "seconds"), ctx)
    nanos = _integer(value.get("nanos", 0), join(path, "nanos"), ctx)
    if (
        abs(seconds) > _DURATION_MAX_SECONDS
        or abs(nanos) >= 1_000_000_000
        or (seconds > 0 and nanos < 0)
        or (seconds < 0 and nanos > 0)
    ):
        raise ConfigError(ctx.file, path, "Duration out-of-range")
    total = abs(seconds) * 1_000_000_000 + abs(nanos)
    sign = "-" if seconds < 0 or nanos < 0 else ""
    return f"{sign}{total // 1_000_000_000}.{total % 1_000_000_000:09d}s"


def _integer(value: Any, path: str, ctx: _Forms) -> int:
    """An int64 or int32 as JSON gives it: a number without a fraction, or its string."""
    if isinstance(value, bool):
        raise ConfigError(ctx.file, path, f"expected an integer, got {_kind(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    raise ConfigError(ctx.file, path, f"expected an integer, got {_kind(value)}")


def locate_error(value: Any, desc: Descriptor, path: str) -> tuple[str, str] | None:
    """The first (path, reason) in ``value`` that does not parse as ``desc``, or None."""
    if desc.full_name in _SPECIAL_JSON:
        return _parse_alone(value, desc, path)
    if not isinstance(value, dict):
        return path, f"expected an object ({desc.full_name}), got {_kind(value)}"
    if desc.full_name == ANY:
        return _locate_in_any(value, path)
    fields = _fields_by_json_key(desc)
    oneofs_seen: dict[str, str] = {}
    for key, item in value.items():
        here = join(path, str(key))
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            return here, _unknown_field_reason(str(key), desc)
        if field.containing_oneof is not None and item is not None:
            other = oneofs_seen.setdefault(field.containing_oneof.name, field.name)
            if other != field.name:
                return here, (
                    f"'{field.name}' and '{other}' are both set, but only one of "
                    f"'{field.containing_oneof.name}' may be"
                )
        if item is None:
            continue
        found = _locate_in_field(key, item, field, desc, here)
        if found is not None:
            return found
    return None


def _locate_in_field(
    key: str, item: Any, field: FieldDescriptor, desc: Descriptor, here: str
) -> tuple[str, str] | None:
    message_type = _message_type(field)
    if message_type is not None and message_type.GetOptions().map_entry:
        if not isinstance(item, dict):
            return here, f"expected a map, got {_kind(item)}"
        value_field = message_type.fields_by_name["value"]
        value_type = _message_type(value_field)
        for k, v in item.items():
            at = f"{here}[{k!r}]" if isinstance(k, str) else f"{here}[{k}]"
            if value_type is not None:
                found = locate_error(v, value_type, at)
            else:
                found = _parse_alone({key: {k: v}}, desc, at)
            if found is not None:
                return found
        return _parse_alone({key: item}, desc, here)  # keys of the wrong type
    if field.is_repeated:
        if not isinstance(item, list):
            return here, f"expected a list, got {_kind(item)}"
        for i, element in enumerate(item):
            at = f"{here}[{i}]"
            if message_type is not None:
                found = locate_error(element, message_type, at)
            elif isinstance(element, (dict, list)):
                found = at, f"expected {_scalar_kind(field)}, got {_kind(element)}"
            else:
                found = _parse_alone({key: [element]}, desc, at)
            if found is not None:
                return found
        return None
    if message_type is not None:
        return locate_error(item, message_type, here)
    if isinstance(item, (dict, list)):
        return here, f"expected {_scalar_kind(field)}, got {_kind(item)}"
    return _parse_alone({key: item}, desc, here)


def _scalar_kind(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None  # set on every enum field
        return f"a {field.enum_type.full_name} name"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "true or false"
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return "a string"
    return "a number"


def _message_type(field: FieldDescriptor) -> Descriptor | None:
    """The message type of a message field; None for any other field."""
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return None
    assert field.message_type is not None  # set on every message field
    return field.message_type


def _locate_in_any(value: dict[str, Any], path: str) -> tuple[str, str] | None:
    type_url = value.get("@type")
    if not isinstance(type_url, str) or not type_url:
        return join(path, "@type"), "a typed_config (Any) needs an '@type' type URL"
    inner = find_type(type_url)
    if inner is None:
        return join(path, "@type"), unknown_type_reason(type_url)
    if inner.full_name in _SPECIAL_JSON:
        if "value" not in value:
            return path, f"'{type_url}' needs its payload in 'value'"
        return locate_error(value["value"], inner, join(path, "value"))
    return locate_error({k: v for k, v in value.items() if k != "@type"}, inner, path)


def _parse_alone(value: Any, desc: Descriptor, path: str) -> tuple[str, str] | None:
    """Parse ``value`` as ``desc`` with json_format; its own message is the reason."""
    try:
        json_format.ParseDict(value, message_class(desc)())
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as exc:
        return path, _clean(str(exc))
    return None


@cache
def _fields_by_json_key(desc: Descriptor) -> dict[str, FieldDescriptor]:
    out: dict[str, FieldDescriptor] = {}
    for f in desc.fields:
        out[f.name] = f
        out[f.json_name] = f
    return out


def unknown_type_reason(type_url: str) -> str:
    if is_v2_type(type_url):
        return f"unknown type URL '{type_url}' (an Envoy v2 API type; only v3 is read)"
    return f"unknown type URL '{type_url}'"


def _unknown_field_reason(key: str, desc: Descriptor) -> str:
    names = [f.name for f in desc.fields]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown field '{key}' in {desc.full_name}{hint}"


def _clean(message: str) -> str:
    """json_format's reason without its own nesting ("Failed to parse x field: ...")."""
    text = message
    while text.startswith("Failed to parse ") and ": " in text:
        text = text.split(": ", 1)[1]
    text = _JSON_FORMAT_WHERE.sub("", text.split("\n", 1)[0])
    text = text.rstrip(".").strip()
    # Python's own words for a string that is not a number (json_format passes them on).
    m = _NOT_AN_INT.fullmatch(text)
    return f"expected an integer, got the string {m.group(1)}" if m else text


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


def unpack(any_msg: any_pb2.Any) -> Any | None:
    """The payload of an ``Any``, or None when its type is unknown.

    The payload is typed ``Any``: its generated class (an xds-protos message) has no stubs.
    """
    desc = find_type(any_msg.type_url)
    if desc is None:
        return None
    inner = message_class(desc)()
    any_msg.Unpack(inner)
    return inner
