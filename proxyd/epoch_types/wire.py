"""The wire form of epoch values: :func:`to_wire` / :func:`from_wire` turn any frozen
dataclass of :mod:`proxyd.epoch` into msgpack-ready nested lists and back, by its
fields (no per-class encoder); :class:`EpochWire` keeps the wire form of unchanged
listeners and clusters across successive epochs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any, TypeVar

from proxyd.epoch_types.model import Epoch

T = TypeVar("T")


def to_wire(value: Any) -> Any:
    """A dataclass from this module → nested lists of plain values (msgpack-ready)."""
    # Typed as plain ``type``: mypy does not see ``type[Any]`` as Hashable for @cache.
    cls: type = type(value)
    names = _field_names(cls)
    if names is not None:
        return [to_wire(getattr(value, name)) for name in names]
    if isinstance(value, tuple):
        return [to_wire(v) for v in value]
    return value


@cache
def _field_names(cls: type) -> tuple[str, ...] | None:
    if dataclasses.is_dataclass(cls):
        return tuple(f.name for f in dataclasses.fields(cls))
    return None


class EpochWire:
    """:func:`to_wire` for successive epochs of one master.

    Listeners and clusters are immutable and an epoch keeps the objects of the previous
    one that did not change (see ``proxyd.master.xds.state``), so their wire form is
    kept with them: an EDS update to one of 1,000 clusters encodes one cluster."""

    def __init__(self) -> None:
        self._parts: dict[int, tuple[Any, Any]] = {}

    def encode(self, epoch: Epoch) -> list[Any]:
        parts: dict[int, tuple[Any, Any]] = {}

        def part(obj: Any) -> Any:
            kept = self._parts.get(id(obj))
            wire = kept[1] if kept is not None and kept[0] is obj else to_wire(obj)
            parts[id(obj)] = (obj, wire)
            return wire

        out = [to_wire(getattr(epoch, name)) for name in _field_names(Epoch) or ()]
        index = {f.name: i for i, f in enumerate(dataclasses.fields(Epoch))}
        out[index["listeners"]] = [part(x) for x in epoch.listeners]
        out[index["clusters"]] = [part(c) for c in epoch.clusters]
        self._parts = parts
        return out


@cache
def _decoders(cls: type) -> tuple[Any, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(_decoder_for(hints[f.name]) for f in dataclasses.fields(cls))


def _decoder_for(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return lambda v, cls=tp: _decode(cls, v)
    if origin is tuple:
        inner = _decoder_for(typing.get_args(tp)[0])
        if inner is None:
            return tuple
        return lambda v: tuple(inner(x) for x in v)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _decoder_for(args[0])
        if inner is None:
            return None
        return lambda v: None if v is None else inner(v)
    return None  # a plain value: used as is


def _decode(cls: type[T], data: list[Any]) -> T:
    plain: type = cls  # mypy does not see ``type[T]`` as Hashable for @cache
    decs = _decoders(plain)
    args = [v if d is None else d(v) for d, v in zip(decs, data, strict=False)]
    return cls(*args)


def from_wire(cls: type[T], data: list[Any]) -> T:
    """The inverse of :func:`to_wire` for a dataclass ``cls`` from this module."""
    return _decode(cls, data)
