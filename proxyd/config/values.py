"""Small conversions shared by the compilers: durations, wrappers, addresses, regexes."""

from __future__ import annotations

import ipaddress
import re
import warnings
from dataclasses import dataclass

# Python's regex parser (3.11+) tells RE2 syntax apart from what only Python accepts.
from re import _constants as _re_constants  # type: ignore[attr-defined]
from re import _parser as _re_parser  # type: ignore[attr-defined]
from typing import Any

from google.protobuf.message import Message

from proxyd import pipes
from proxyd.config.proto import join
from proxyd.errors import ConfigError


def seconds(duration: Any) -> float:
    """A google.protobuf.Duration as float seconds."""
    return duration.seconds + duration.nanos / 1e9


def duration_or(msg: Message, field: str, default: float) -> float:
    """``msg.field`` in seconds, or ``default`` when it is not set."""
    if msg.HasField(field):
        return seconds(getattr(msg, field))
    return default


def wrapped_or(msg: Message, field: str, default: Any) -> Any:
    """The value of a wrapper field (UInt32Value, BoolValue, ...) or ``default``."""
    if msg.HasField(field):
        return getattr(msg, field).value
    return default


def feature_flag(msg: Message, field: str) -> dict[str, Any]:
    """A ``RuntimeFeatureFlag`` field as ``{"default": bool, "runtime_key": str}``
    (unset: enabled, no key), for ``Snapshot.feature_flag`` on the worker."""
    if not msg.HasField(field):
        return {"default": True, "runtime_key": ""}
    flag = getattr(msg, field)
    return {"default": wrapped_or(flag, "default_value", True), "runtime_key": flag.runtime_key}


def enum_name(msg: Message, field: str) -> str:
    desc = msg.DESCRIPTOR.fields_by_name[field].enum_type
    assert desc is not None, f"{field} is not an enum field"
    number = getattr(msg, field)
    value = desc.values_by_number.get(number)
    return value.name if value is not None else str(number)


def socket_address(address: Any, path: str, file: str) -> tuple[str, int]:
    """(address, port) from a core.v3.Address that holds a socket_address."""
    if not address.HasField("socket_address"):
        raise ConfigError(file, path, "a socket_address is required")
    sa = address.socket_address
    return sa.address, sa.port_value


@dataclass(frozen=True, slots=True)
class Address:
    """A core.v3.Address: a socket address, or a pipe (Unix socket) at ``address``."""

    address: str  # an IP literal or host name; for a pipe its path ("@name": abstract)
    port: int  # 0 for a pipe
    pipe: bool = False
    mode: int = 0  # a pipe's file mode (Pipe.mode), 0 = as bind() leaves it


def compile_address(address: Any, path: str, file: str) -> Address:
    """A core.v3.Address holding a socket_address or a pipe (the coverage tree decides
    where a pipe is allowed), with the checks Envoy makes on a pipe."""
    if address.HasField("pipe"):
        p = address.pipe
        reason = pipes.check(p.path, p.mode)
        if reason:
            field = "mode" if p.mode and pipes.is_abstract(p.path) else "path"
            raise ConfigError(file, join(path, f"pipe.{field}"), reason)
        return Address(p.path, 0, pipe=True, mode=p.mode)
    if not address.HasField("socket_address"):
        raise ConfigError(file, path, "a socket_address or a pipe is required")
    sa = address.socket_address
    return Address(sa.address, sa.port_value)


def is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def require_ip(text: str, path: str, file: str) -> None:
    if not is_ip_literal(text):
        raise ConfigError(file, join(path, "address"), f"malformed IP address: {text}")


# Regex opcodes Python accepts but RE2 (Envoy's engine) does not.
_NOT_RE2 = {
    _re_constants.ASSERT: "lookaround assertions",
    _re_constants.ASSERT_NOT: "negative lookaround assertions",
    _re_constants.GROUPREF: "backreferences",
    _re_constants.GROUPREF_EXISTS: "conditional groups",
}
for _name, _what in (
    ("ATOMIC_GROUP", "atomic groups"),
    ("POSSESSIVE_REPEAT", "possessive repeats"),
):
    if hasattr(_re_constants, _name):
        _NOT_RE2[getattr(_re_constants, _name)] = _what


def check_regex(pattern: str, path: str, file: str) -> None:
    """Reject a pattern that does not compile, or uses syntax RE2 does not have."""
    try:
        with warnings.catch_warnings():
            # Python warns where RE2 syntax means something else, e.g. "[[:alpha:]]".
            warnings.simplefilter("error", FutureWarning)
            re.compile(pattern)
            parsed = _re_parser.parse(pattern)
    except re.error as exc:
        raise ConfigError(file, path, f"invalid regex {pattern!r}: {exc}") from exc
    except FutureWarning as exc:
        raise ConfigError(
            file,
            path,
            f"invalid regex {pattern!r}: {exc} (POSIX classes are not supported by proxyd)",
        ) from exc
    unsupported = _find_not_re2(parsed)
    if unsupported:
        raise ConfigError(
            file, path, f"invalid regex {pattern!r}: {unsupported} are not supported by RE2"
        )


def _find_not_re2(parsed: Any) -> str:
    stack = [parsed]
    while stack:
        for op, arg in stack.pop():
            what = _NOT_RE2.get(op)
            if what:
                return what
            _push_subpatterns(arg, stack)
    return ""


def _push_subpatterns(arg: Any, stack: list[Any]) -> None:
    if isinstance(arg, _re_parser.SubPattern):
        stack.append(arg)
    elif isinstance(arg, (list, tuple)):
        for item in arg:
            _push_subpatterns(item, stack)


def data_source(ds: Any, path: str, file: str) -> bytes:
    """A core.v3.DataSource's bytes: the file read now, or the inline value."""
    which = ds.WhichOneof("specifier")
    if which == "filename":
        try:
            with open(ds.filename, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ConfigError(
                file, join(path, "filename"), f"cannot read '{ds.filename}': {exc.strerror}"
            ) from None
    elif which == "inline_string":
        data = ds.inline_string.encode()
    elif which == "inline_bytes":
        data = bytes(ds.inline_bytes)
    else:
        raise ConfigError(file, path, f"{which or 'a value'} not supported by proxyd")
    if not data.strip():
        raise ConfigError(file, path, "is empty")
    return data


def data_source_text(ds: Any, path: str, file: str) -> str:
    """A core.v3.DataSource as text (inline, or the file read now, undecodable bytes
    replaced); a file that cannot be read is a ConfigError naming it."""
    which = ds.WhichOneof("specifier")
    if which == "inline_string":
        return str(ds.inline_string)
    if which == "inline_bytes":
        return bytes(ds.inline_bytes).decode("utf-8", "replace")
    if which == "filename":
        try:
            with open(ds.filename, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError as exc:
            raise ConfigError(
                file, join(path, "filename"), f"cannot read {ds.filename!r}: {exc.strerror or exc}"
            ) from exc
    raise ConfigError(file, path, "one of inline_string, inline_bytes or filename is required")
