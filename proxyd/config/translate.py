"""What Envoy's loader does to a parsed config before using it, done the same way.

:func:`translate` walks a parsed message (the bootstrap, or one xDS resource), every
set field and every ``Any`` payload it can decode, and changes it in place:

1. a ``udpa.type.v1.TypedStruct`` or ``xds.type.v3.TypedStruct`` in an ``Any`` becomes
   the type it names, its ``value`` parsed as that type like a file (Envoy's
   ``translateOpaqueConfig``); an error inside names ``<path>.value.<field>``;
2. each deprecated field set is recorded (Envoy logs "Using deprecated option ...")
   and moved to its replacement (``proxyd.config.deprecated``); one marked
   ``disallowed_by_default`` is refused, as Envoy refuses it.

The returned :class:`Translation` holds the deprecations and the moves. Errors found
later, by the allow-list walk or the compilers, name paths in the translated message;
``with translation.file_paths():`` turns them back into paths as the file has them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from envoy.annotations import deprecation_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from proxyd.config.deprecated import FIXES, REPLACEMENTS
from proxyd.config.proto import (
    find_type,
    join,
    message_class,
    parse_message,
    unknown_type_reason,
)
from proxyd.errors import ConfigError
from proxyd.log import get_logger

log = get_logger("proxyd.config")

TYPED_STRUCTS = frozenset({"udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"})


@dataclass(frozen=True)
class Deprecation:
    """One deprecated field as the file has it, and what replaces it."""

    path: str
    option: str  # its full proto name, as Envoy names it in its warning
    replacement: str
    ignored_because: str = ""  # set when Envoy uses the replacement instead

    def message(self) -> str:
        text = f"Using deprecated option '{self.option}' at {self.path or '(top level)'}"
        if self.ignored_because:
            return f"{text}: ignored, as in Envoy, because {self.ignored_because}"
        return f"{text}; its replacement is {self.replacement}"


class Translation:
    """The deprecations met and the paths moved by :func:`translate`."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.deprecations: list[Deprecation] = []
        self._moves: list[tuple[str, str, bool]] = []  # (new path, file path, whole)

    def moved(self, new: str, old: str, *, whole: bool = True) -> None:
        """``new`` (and what is under it) is at ``old`` in the file; with ``whole``
        False only what is under ``new`` moved (a TypedStruct's payload)."""
        self._moves.append((new, old, whole))

    def read_as_lists(self, paths: Iterable[str]) -> None:
        """Each of ``paths`` was a single value in the file, read as a list of one."""
        for single in paths:
            self.moved(f"{single}[0]", single)

    def ignored(self, path: str, because: str) -> None:
        """A deprecated field Envoy does not use, ``because`` its replacement is set."""
        for i, d in enumerate(self.deprecations):
            if d.path == path:
                self.deprecations[i] = Deprecation(d.path, d.option, d.replacement, because)

    def file_path(self, path: str) -> str:
        """``path`` in the translated message → the same place as the file has it.

        The most specific move that covers ``path`` applies first; then only moves
        recorded before it (those made higher up the tree, earlier in the walk)."""
        end = len(self._moves)
        while True:
            best = -1
            for i in range(end):
                new, _old, whole = self._moves[i]
                if (path == new and whole) or path.startswith((new + ".", new + "[")):
                    if best < 0 or len(new) >= len(self._moves[best][0]):
                        best = i
            if best < 0:
                return path
            new, old, _whole = self._moves[best]
            path = old + path[len(new) :]
            end = best

    @contextmanager
    def file_paths(self) -> Iterator[None]:
        """Re-raise a ConfigError from the block with its path as the file has it."""
        try:
            yield
        except ConfigError as exc:
            path = self.file_path(exc.path)
            if path == exc.path:
                raise
            raise ConfigError(exc.file, path, exc.reason) from exc


def log_deprecations(translation: Translation) -> None:
    """Warn about each deprecated field, as Envoy does when it loads a config."""
    for d in translation.deprecations:
        extra = {"ignored_because": d.ignored_because} if d.ignored_because else {}
        log.warning(
            "deprecated field",
            file=translation.file,
            field=d.path,
            option=d.option,
            replacement=d.replacement,
            **extra,
        )


def translate(msg: Message, path: str, file: str, wrapped: Iterable[str] = ()) -> Translation:
    """Unwrap TypedStructs and move deprecated fields in ``msg``, in place. ``wrapped``
    are the paths of single values the parser read as lists of one (``parse_message``)."""
    t = Translation(file)
    t.read_as_lists(wrapped)
    _walk(msg, path, t)
    return t


def _walk(msg: Message, path: str, t: Translation) -> None:
    desc = msg.DESCRIPTOR
    for field, _value in msg.ListFields():
        options = field.GetOptions()
        if options.deprecated:
            option = field.full_name
            if options.Extensions[deprecation_pb2.disallowed_by_default]:
                raise ConfigError(
                    t.file,
                    join(path, field.name),
                    f"Using deprecated option '{option}', which is fatal by default in Envoy",
                )
            replacement = REPLACEMENTS.get(option, "described in Envoy's version history")
            t.deprecations.append(Deprecation(join(path, field.name), option, replacement))
    fix = FIXES.get(desc.full_name)
    if fix is not None:
        fix(msg, path, t)
    for field, value in msg.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        here = join(path, field.name)
        assert field.message_type is not None  # set on every message field
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                for key in sorted(value):
                    _walk_value(value[key], f"{here}[{key!r}]", t)
        elif field.is_repeated:
            for i, item in enumerate(value):
                _walk_value(item, f"{here}[{i}]", t)
        else:
            _walk_value(value, here, t)


def _walk_value(value: Any, path: str, t: Translation) -> None:
    if value.DESCRIPTOR.full_name == "google.protobuf.Any":
        _walk_any(value, path, t)
    else:
        _walk(value, path, t)


def _walk_any(any_msg: Any, path: str, t: Translation) -> None:
    type_name = any_msg.type_url.rsplit("/", 1)[-1]
    if type_name in TYPED_STRUCTS:
        _unwrap_typed_struct(any_msg, type_name, path, t)
    desc = find_type(any_msg.type_url) if any_msg.type_url else None
    if desc is None:
        return  # the allow-list walk refuses it by name
    inner = message_class(desc)()
    try:
        if not any_msg.Unpack(inner):
            return
    except DecodeError as exc:  # an xDS resource's bytes; a file's were parsed already
        raise ConfigError(t.file, path, f"cannot decode the {desc.full_name}: {exc}") from exc
    _walk(inner, path, t)
    any_msg.value = inner.SerializeToString()  # with whatever the walk changed


def _unwrap_typed_struct(any_msg: Any, type_name: str, path: str, t: Translation) -> None:
    desc = find_type(any_msg.type_url)
    assert desc is not None  # TYPED_STRUCTS are in xds-protos
    typed_struct: Any = message_class(desc)()  # xds-protos classes have no stubs
    try:
        any_msg.Unpack(typed_struct)
    except DecodeError as exc:
        raise ConfigError(t.file, path, f"cannot decode the {type_name}: {exc}") from exc
    type_url = typed_struct.type_url
    inner_desc = find_type(type_url) if type_url else None
    if inner_desc is None:
        reason = unknown_type_reason(type_url) if type_url else "a type_url is required"
        raise ConfigError(t.file, join(path, "type_url"), f"{type_name}: {reason}")
    data = json_format.MessageToDict(typed_struct.value)
    singles: list[str] = []
    inner = parse_message(data, message_class(inner_desc), t.file, join(path, "value"), singles)
    t.read_as_lists(singles)  # in the file's terms: before the TypedStruct's own move
    any_msg.type_url = type_url
    any_msg.value = inner.SerializeToString()
    t.moved(path, join(path, "value"), whole=False)
