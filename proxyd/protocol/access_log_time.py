"""Envoy's time operators: ``START_TIME``, ``START_TIME_LOCAL``, ``EMIT_TIME`` and
``EMIT_TIME_LOCAL``, with or without a format.

The default renders ``2016-04-15T20:17:00.310Z`` (UTC; the local variants end with the
offset, ``+0100``). A format is strftime plus Envoy's ``%s`` (seconds since the epoch),
``%f`` / ``%1f`` … ``%9f`` (the fraction, truncated) and ``%E<n>S`` / ``%E*S`` (seconds
with n / as many fraction digits as needed). What does not change within a second is
rendered once per second.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

# Milliseconds suffixes for the default START_TIME, so rendering does no formatting.
_MS_SUFFIX = tuple(f".{i:03d}Z" for i in range(1000))


def _split_usec(t: float) -> tuple[int, int]:
    """Whole seconds and microseconds of a time.time() value (rounded to 1 µs)."""
    us = round(t * 1_000_000)
    return us // 1_000_000, us % 1_000_000


class _DefaultTime:
    """``2016-04-15T20:17:00.310Z``; the part up to the seconds is cached per second.
    Local time (``START_TIME_LOCAL``) ends with the offset as ``+0100`` instead of Z."""

    __slots__ = ("_sec", "_prefix", "_attr", "_local")
    text_safe = True  # always a str: the text plan calls it as it is

    def __init__(self, attr: str, local: bool) -> None:
        self._sec = -1
        self._prefix = ""
        self._attr = attr
        self._local = local

    def __call__(self, rec: Any) -> str:
        t = getattr(rec, self._attr) if self._attr else time.time()
        sec, us = _split_usec(t)
        if self._local:
            tm = time.localtime(sec)
            return (
                time.strftime("%Y-%m-%dT%H:%M:%S", tm)
                + f".{us // 1000:03d}"
                + (time.strftime("%z", tm))
            )
        if sec != self._sec:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._sec = sec
        return self._prefix + _MS_SUFFIX[us // 1000]


_STRFTIME, _EPOCH_SECONDS, _FRACTION, _SECONDS_FRACTION = range(4)
_TIME_SPEC = re.compile(r"%(?:(s)|([1-9]?)f|E([0-9]+|\*)S|(.))", re.DOTALL)


class _CustomTime:
    """strftime plus Envoy's ``%s``, ``%f`` / ``%1f`` … ``%9f``, ``%E<n>S`` and ``%E*S``."""

    __slots__ = ("_pieces", "_sec", "_rendered", "_attr", "_local")
    text_safe = True

    def __init__(self, fmt: str, attr: str, local: bool) -> None:
        pieces: list[tuple[int, Any]] = []
        text: list[str] = []

        def flush() -> None:
            if text:
                pieces.append((_STRFTIME, "".join(text)))
                text.clear()

        pos = 0
        for m in _TIME_SPEC.finditer(fmt):
            text.append(fmt[pos : m.start()])
            pos = m.end()
            epoch, frac, sec_frac, other = m.groups()
            if epoch:
                flush()
                pieces.append((_EPOCH_SECONDS, None))
            elif other is not None:
                text.append(m.group(0))  # plain strftime, "%%" included
            elif sec_frac is not None:
                flush()
                pieces.append((_SECONDS_FRACTION, None if sec_frac == "*" else int(sec_frac)))
            else:
                flush()
                pieces.append((_FRACTION, int(frac) if frac else 9))
        text.append(fmt[pos:])
        flush()
        self._pieces = tuple(pieces)
        self._sec = -1
        self._rendered: tuple[str, ...] = ()
        self._attr = attr
        self._local = local

    def _render_second(self, sec: int) -> tuple[str, ...]:
        tm = time.localtime(sec) if self._local else time.gmtime(sec)
        out = []
        for kind, arg in self._pieces:
            if kind == _STRFTIME:
                out.append(time.strftime(arg, tm))
            elif kind == _EPOCH_SECONDS:
                out.append(str(sec))
            elif kind == _SECONDS_FRACTION:
                out.append(f"{tm.tm_sec:02d}")
            else:
                out.append("")
        return tuple(out)

    def __call__(self, rec: Any) -> str:
        t = getattr(rec, self._attr) if self._attr else time.time()
        sec, us = _split_usec(t)
        if sec != self._sec:
            self._rendered = self._render_second(sec)
            self._sec = sec
        parts = []
        for (kind, arg), fixed in zip(self._pieces, self._rendered, strict=True):
            if kind == _FRACTION:
                parts.append(f"{us * 1000:09d}"[:arg])
            elif kind == _SECONDS_FRACTION:
                if arg is None:  # %E*S: as many digits as needed
                    digits = f"{us * 1000:09d}".rstrip("0")
                    parts.append(f"{fixed}.{digits}" if digits else fixed)
                elif arg == 0:
                    parts.append(fixed)
                else:
                    parts.append(f"{fixed}.{f'{us * 1000:09d}'[:arg].ljust(arg, '0')}")
            else:
                parts.append(fixed)
        return "".join(parts)


def time_getter(name: str, param: str | None) -> Callable[[Any], str]:
    attr = "start_time" if name.startswith("START") else ""  # EMIT_TIME: now
    local = name.endswith("_LOCAL")
    if param:
        return _CustomTime(param, attr, local)
    return _DefaultTime(attr, local)
