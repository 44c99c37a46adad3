"""Envoy's proto constraints (protoc-gen-validate annotations), checked on a message.

Envoy validates every config message against the ``validate.rules`` annotations in its
protos before using it ("value length must be at least 1 characters", "value must be
greater than 0s", ...). proxyd checks the same annotations, read from the descriptors,
so a config one rejects the other rejects too. The rule kinds that Envoy's supported
fields use are implemented: required messages and oneofs, numeric bounds (also on
wrapper types), string lengths and header-name/value patterns, enum ``defined_only``,
duration bounds, a bool's ``const``, repeated and map sizes, rules on repeated items and
their uniqueness.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import validate.validate_pb2 as pgv
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_NUMERIC_KINDS = frozenset(
    {
        "float", "double", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
        "fixed32", "fixed64", "sfixed32", "sfixed64",
    }
)  # fmt: skip
_WRAPPERS = frozenset(
    {
        "google.protobuf.DoubleValue", "google.protobuf.FloatValue",
        "google.protobuf.Int64Value", "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue", "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)  # fmt: skip
# The patterns protoc-gen-validate uses for HTTP header names and values (strict mode).
_HEADER_NAME = re.compile(r"^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$")
_HEADER_VALUE = re.compile(r"^[^\x00-\x08\x0a-\x1f\x7f]*$")
_HEADER_VALUE_LOOSE = re.compile(r"^[^\x00\n\r]*$")


@cache
def _field_rules(desc: Descriptor) -> tuple[tuple[FieldDescriptor, Any], ...]:
    out = []
    for f in desc.fields:
        opts = f.GetOptions()
        if opts.HasExtension(pgv.rules):
            out.append((f, opts.Extensions[pgv.rules]))
    return tuple(out)


@cache
def _required_oneofs(desc: Descriptor) -> tuple[str, ...]:
    return tuple(o.name for o in desc.oneofs if o.GetOptions().Extensions[pgv.required])


def violations(msg: Message) -> Iterator[tuple[str, str]]:
    """(field name or "name[i]", reason) for each constraint ``msg`` breaks, itself only."""
    desc = msg.DESCRIPTOR
    for oneof in _required_oneofs(desc):
        if msg.WhichOneof(oneof) is None:
            yield oneof, "one of its fields is required"
    for field, rules in _field_rules(desc):
        yield from _check_field(msg, field, rules)


def _check_field(msg: Message, field: FieldDescriptor, rules: Any) -> Iterator[tuple[str, str]]:
    name = field.name
    oneof = field.containing_oneof
    if oneof is not None and msg.WhichOneof(oneof.name) != name:
        return  # rules on a oneof member apply only when it is the one set
    # ``message`` sits beside the ``type`` oneof: a wrapper may have both (Buffer's
    # max_request_bytes is required and greater than 0).
    if rules.HasField("message") and rules.message.required and not msg.HasField(name):
        yield name, "value is required"
        return
    kind = rules.WhichOneof("type")
    if kind is None:
        return
    value = getattr(msg, name)
    if kind == "repeated":
        r = rules.repeated
        if r.ignore_empty and len(value) == 0:
            return
        if r.min_items and len(value) < r.min_items:
            yield name, f"value must contain at least {r.min_items} item(s)"
        if r.HasField("max_items") and len(value) > r.max_items:
            yield name, f"value must contain no more than {r.max_items} item(s)"
        if r.HasField("items"):
            for i, item in enumerate(value):
                for reason in _check_value(item, r.items):
                    yield f"{name}[{i}]", reason
        if r.unique:  # scalars only, in protoc-gen-validate
            seen: set[Any] = set()
            for i, item in enumerate(value):
                if item in seen:
                    yield f"{name}[{i}]", "repeated value must contain unique items"
                seen.add(item)
        return
    if kind == "map":
        r = rules.map
        if r.min_pairs and len(value) < r.min_pairs:
            yield name, f"value must contain at least {r.min_pairs} pair(s)"
        return
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None  # set on every message field
        full_name = field.message_type.full_name
        if kind == "duration":
            if rules.duration.required and not msg.HasField(name):
                yield name, "value is required"
            if not msg.HasField(name):
                return
        elif kind == "any":
            if rules.any.required and not msg.HasField(name):
                yield name, "value is required"
            return
        elif full_name in _WRAPPERS:
            if not msg.HasField(name):
                return
            value = value.value
        else:
            return
    if kind == "enum" and rules.enum.defined_only and not field.is_repeated:
        enum_type = field.enum_type
        assert enum_type is not None  # protoc-gen-validate puts enum rules on enum fields
        if value not in enum_type.values_by_number:
            yield name, f"value {value} is not a defined {enum_type.name}"
    for reason in _check_value(value, rules):
        yield name, reason


def _check_value(value: Any, rules: Any) -> Iterator[str]:
    kind = rules.WhichOneof("type")
    if kind in _NUMERIC_KINDS:
        yield from _check_number(value, getattr(rules, kind))
    elif kind == "string":
        yield from _check_string(value, rules.string)
    elif kind == "enum":
        yield from _check_enum(value, rules.enum)
    elif kind == "duration":
        yield from _check_duration(value, rules.duration)
    elif kind == "bool":
        if rules.bool.HasField("const") and value != rules.bool.const:
            yield f"value must equal {str(rules.bool.const).lower()}"


def _check_number(value: float, r: Any) -> Iterator[str]:
    if getattr(r, "ignore_empty", False) and value == 0:
        return
    if r.HasField("const") and value != r.const:
        yield f"value must equal {r.const}"
    if r.HasField("gt") and not value > r.gt:
        yield f"value must be greater than {r.gt}"
    if r.HasField("gte") and not value >= r.gte:
        yield f"value must be greater than or equal to {r.gte}"
    if r.HasField("lt") and not value < r.lt:
        yield f"value must be less than {r.lt}"
    if r.HasField("lte") and not value <= r.lte:
        yield f"value must be less than or equal to {r.lte}"
    yield from _check_in(value, r)


def _check_in(value: Any, r: Any) -> Iterator[str]:
    allowed = getattr(r, "in")  # "in" is a Python keyword
    if len(allowed) and value not in allowed:
        yield f"value must be in list {list(allowed)}"
    if len(r.not_in) and value in r.not_in:
        yield f"value must not be in list {list(r.not_in)}"


def _check_string(value: str, r: Any) -> Iterator[str]:
    if r.ignore_empty and value == "":
        return
    n = len(value)
    if r.HasField("min_len") and n < r.min_len:
        yield f"value length must be at least {r.min_len} characters"
    if r.HasField("max_len") and n > r.max_len:
        yield f"value length must be at most {r.max_len} characters"
    size = len(value.encode())
    if r.HasField("min_bytes") and size < r.min_bytes:
        yield f"value length must be at least {r.min_bytes} bytes"
    if r.HasField("max_bytes") and size > r.max_bytes:
        yield f"value length must be at most {r.max_bytes} bytes"
    if r.HasField("pattern") and _pattern(r.pattern).search(value) is None:
        # protoc-gen-validate's C++ checks use RE2::PartialMatch: a search.
        yield f'value does not match regex pattern "{r.pattern}"'
    if r.HasField("well_known_regex"):
        strict = r.strict if r.HasField("strict") else True
        if r.well_known_regex == pgv.HTTP_HEADER_NAME:
            if strict and not _HEADER_NAME.match(value):
                yield "value does not match regex pattern for an HTTP header name"
        elif r.well_known_regex == pgv.HTTP_HEADER_VALUE:
            pattern = _HEADER_VALUE if strict else _HEADER_VALUE_LOOSE
            if not pattern.match(value):
                yield "value does not match regex pattern for an HTTP header value"


@cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _check_enum(value: int, r: Any) -> Iterator[str]:
    # defined_only needs the enum's descriptor: _check_field does it.
    if r.HasField("const") and value != r.const:
        yield f"value must equal {r.const}"
    yield from _check_in(value, r)


def _nanos(d: Any) -> int:
    return d.seconds * 1_000_000_000 + d.nanos


def _fmt(d: Any) -> str:
    seconds = _nanos(d) / 1e9
    return f"{seconds:g}s"


def _check_duration(value: Any, r: Any) -> Iterator[str]:
    n = _nanos(value)
    if r.HasField("const") and n != _nanos(r.const):
        yield f"value must equal {_fmt(r.const)}"
    if r.HasField("gt") and not n > _nanos(r.gt):
        yield f"value must be greater than {_fmt(r.gt)}"
    if r.HasField("gte") and not n >= _nanos(r.gte):
        yield f"value must be greater than or equal to {_fmt(r.gte)}"
    if r.HasField("lt") and not n < _nanos(r.lt):
        yield f"value must be less than {_fmt(r.lt)}"
    if r.HasField("lte") and not n <= _nanos(r.lte):
        yield f"value must be less than or equal to {_fmt(r.lte)}"
