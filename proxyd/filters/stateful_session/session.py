"""The session states' encodings, as Envoy 1.40 writes and reads them (no I/O here).

* Header (``HeaderBasedSessionState``): the value is the base64 of the host's address
  (``ip:port``, ``[v6]:port``, or a pipe's path).
* Cookie (``CookieBasedSessionState``): the value is the base64 of a small protobuf
  message, Envoy's internal ``envoy.Cookie { string address = 1; uint64 expires = 2; }``.
  ``expires`` (only with a ttl) is the wall clock's Unix time in whole seconds plus
  the ttl (checked against Envoy 1.40); a cookie past it is ignored. A value that is not such a message is read as the address itself (Envoy's
  old format, still accepted).

Base64 is Envoy's strict decoder: padded to a multiple of 4, canonical; anything else
decodes to nothing (no session).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Envoy's ``Base64::decode``: b"" for anything but canonical, padded base64."""
    if not text or len(text) % 4:
        return b""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""
    # Non-zero bits after the last whole byte, or padding in the middle: not canonical.
    if base64.b64encode(raw).decode("ascii") != text:
        return b""
    return raw


# -- the cookie's protobuf message --------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_cookie(address: str, expires: int) -> str:
    """The cookie value for ``address`` (``expires`` 0: none, as without a ttl)."""
    raw = address.encode("utf-8")
    msg = b"\x0a" + _varint(len(raw)) + raw
    if expires:
        msg += b"\x10" + _varint(expires)
    return b64encode(msg)


class _Malformed(Exception):
    """The bytes are not a protobuf message (parse fails)."""


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise _Malformed
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n & 0xFFFFFFFFFFFFFFFF, i
        shift += 7


def _skip(data: bytes, i: int, wire: int, field: int) -> int:
    """Skip an unknown field's value of wire type ``wire`` at ``i``."""
    if wire == 0:
        return _read_varint(data, i)[1]
    if wire == 1:
        i += 8
    elif wire == 5:
        i += 4
    elif wire == 2:
        size, i = _read_varint(data, i)
        i += size
    elif wire == 3:  # a group: fields up to its end-group tag
        while True:
            key, i = _read_varint(data, i)
            if key & 7 == 4:
                if key >> 3 != field:
                    raise _Malformed
                return i
            if key >> 3 == 0:
                raise _Malformed
            i = _skip(data, i, key & 7, key >> 3)
    else:  # an end-group without its start, or wire types 6 and 7
        raise _Malformed
    if i > len(data):
        raise _Malformed
    return i


def parse_cookie_message(data: bytes) -> tuple[str, int] | None:
    """(address, expires) of an ``envoy.Cookie`` message, None when ``data`` does not
    parse as one (a proto3 string must be UTF-8). The last occurrence of a field wins;
    a known field with another wire type is an unknown field, as protobuf reads it."""
    address = ""
    expires = 0
    i = 0
    n = len(data)
    try:
        while i < n:
            key, i = _read_varint(data, i)
            field, wire = key >> 3, key & 7
            if field == 0:
                return None
            if field == 1 and wire == 2:
                size, i = _read_varint(data, i)
                if i + size > n:
                    return None
                address = data[i : i + size].decode("utf-8")
                i += size
            elif field == 2 and wire == 0:
                expires, i = _read_varint(data, i)
            else:
                i = _skip(data, i, wire, field)
    except (_Malformed, UnicodeDecodeError):
        return None
    return address, expires


def cookie_address(value: str, now_s: int) -> str | None:
    """The host a session cookie's value names (None: no session): ``now_s`` is the
    Unix time in whole seconds."""
    decoded = b64decode(value)
    if not decoded:
        return None
    parsed = parse_cookie_message(decoded)
    if parsed is None:
        # Envoy's old format: the address itself.
        return decoded.decode("latin-1")
    address, expires = parsed
    if not address:
        return None
    if expires and now_s > expires:
        return None
    return address


def header_address(value: str) -> str | None:
    """The host a session header's value names (None: no session)."""
    decoded = b64decode(value)
    return decoded.decode("latin-1") if decoded else None


# -- the cookie's path ---------------------------------------------------------------------


def path_matcher(path: str) -> Callable[[str], bool] | None:
    """Which request paths (with their query) the cookie's ``path`` covers, as Envoy
    decides whether a request has a session at all; None: every path."""
    if not path or path == "/":
        return None
    if path.endswith("/"):
        return lambda request_path: request_path.startswith(path)
    size = len(path)

    def matches(request_path: str) -> bool:
        if not request_path.startswith(path):
            return False
        return len(request_path) == size or request_path[size] in "/?#"

    return matches
