"""Envoy's request path normalisation, sans-IO: ``normalize_path``, ``merge_slashes`` and
``path_with_escaped_slashes_action`` of the HTTP connection manager.

Envoy (``ConnectionManagerUtility::maybeNormalizePath``) runs three steps on the path
part of ``:path`` (the query string, from the first ``?``, is left as it is):

1. ``path_with_escaped_slashes_action`` other than ``KEEP_UNCHANGED``: ``%2F``/``%2f``
   become ``/`` and ``%5C``/``%5c`` become ``\\`` (:func:`unescape_slashes`); when any
   was found the request is rejected (``REJECT_REQUEST``), redirected to the new path
   (``UNESCAPE_AND_REDIRECT``) or forwarded (``UNESCAPE_AND_FORWARD``);
2. ``normalize_path``: the RFC 3986 path canonicalisation Envoy takes from Chromium's
   URL library (:func:`canonical_path`): dot segments resolved (``%2e`` counts as a
   dot), backslashes made slashes, percent-escapes of unreserved characters decoded,
   characters that must be escaped escaped (upper-case hex), other escapes kept as
   they came; an escaped NUL (``%00``) makes it fail, and the request is rejected;
3. ``merge_slashes``: runs of slashes become one (:func:`merge_slashes`).

:class:`PathNormalizer` is the three compiled for one connection manager; its
``normalize(path)`` gives ``(new_path, action)``.
"""

from __future__ import annotations

import enum

# Chromium's kPathCharLookup (url_canon_path.cc), as Envoy vendors it: what happens to
# each byte of a path. PASS: copied; ESCAPE: written as %XX; UNESCAPE: copied, and
# decoded when it came escaped; INVALID: NUL, the path fails; SPECIAL: ".", "/", "\\"
# and "%", handled by the walk.
_PASS, _ESCAPE, _UNESCAPE, _INVALID, _SPECIAL = 0, 1, 2, 3, 4


def _table() -> list[int]:
    t = [_ESCAPE] * 256  # controls, space, and everything above 0x7e
    t[0] = _INVALID
    for c in b"!$&'()*+,:;=@[]":
        t[c] = _PASS
    for c in b"-_~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
        t[c] = _UNESCAPE
    for c in b"./\\%":
        t[c] = _SPECIAL
    return t


_LOOKUP = _table()
_HEX = b"0123456789abcdefABCDEF"


class PathAction(enum.Enum):
    """What the connection manager does with a request after normalising its path."""

    CONTINUE = "continue"
    REJECT = "reject"  # 400, details path_normalization_failed
    REDIRECT = "redirect"  # 307 to the unescaped path


class EscapedSlashes(enum.Enum):
    """Envoy's HttpConnectionManager.PathWithEscapedSlashesAction."""

    KEEP_UNCHANGED = "KEEP_UNCHANGED"
    REJECT_REQUEST = "REJECT_REQUEST"
    UNESCAPE_AND_REDIRECT = "UNESCAPE_AND_REDIRECT"
    UNESCAPE_AND_FORWARD = "UNESCAPE_AND_FORWARD"


def _split(path: str) -> tuple[str, str]:
    q = path.find("?")
    return (path, "") if q < 0 else (path[:q], path[q:])


def unescape_slashes(path: str) -> tuple[str, bool]:
    """``%2F``/``%2f`` → ``/`` and ``%5C``/``%5c`` → ``\\`` in the path part (Envoy's
    ``PathUtil::unescapeSlashes``, one replacement after the other); True when any was
    found."""
    part, query = _split(path)
    if "%" not in part:
        return path, False
    new = part.replace("%2F", "/").replace("%2f", "/").replace("%5C", "\\").replace("%5c", "\\")
    if len(new) == len(part):
        return path, False
    return new + query, True


def _is_dot(s: bytes, i: int, end: int) -> int:
    """Length of a dot at ``s[i]`` ("." is 1, "%2e"/"%2E" is 3), else 0."""
    c = s[i]
    if c == 46:
        return 1
    if c == 37 and i + 3 <= end and s[i + 1] == 50 and s[i + 2] in (101, 69):
        return 3
    return 0


def _is_slash(c: int) -> bool:
    return c == 47 or c == 92


def canonical_path(path: str) -> str | None:
    """The path part of ``path`` canonicalised as Envoy's ``PathUtil::canonicalPath``
    does (the query kept as it is), or None when it cannot be (an escaped NUL)."""
    part, query = _split(path)
    s = part.encode("latin-1")
    end = len(s)
    out = bytearray()
    ok = True
    if not end:
        out.append(47)
    else:
        if not _is_slash(s[0]):
            out.append(47)
        i = 0
        while i < end:
            c = s[i]
            flags = _LOOKUP[c]
            if flags == _SPECIAL:
                dot = _is_dot(s, i, end)
                if dot:
                    if out and out[-1] == 47:
                        kind, consumed = _after_dot(s, i + dot, end)
                        if kind == 0:
                            out.append(46)
                            i += dot
                        else:
                            if kind == 2:
                                _back_to_previous_slash(out)
                            i += dot + consumed
                    else:
                        out.append(46)
                        i += dot
                    continue
                if c == 92:
                    out.append(47)
                elif c == 37:
                    if i + 2 < end and s[i + 1] in _HEX and s[i + 2] in _HEX:
                        value = int(s[i + 1 : i + 3], 16)
                        vflags = _LOOKUP[value]
                        if vflags == _UNESCAPE:
                            out.append(value)
                        else:
                            if vflags == _INVALID:
                                ok = False
                            out += s[i : i + 3]  # kept as it came, hex case and all
                        i += 3
                        continue
                    out.append(37)  # not an escape: the "%" passes alone
                else:
                    out.append(c)
            elif flags == _INVALID:
                out += b"%%%02X" % c
                ok = False
            elif flags == _ESCAPE:
                out += b"%%%02X" % c
            else:
                out.append(c)
            i += 1
    if not ok:
        return None
    return out.decode("latin-1") + query


def _after_dot(s: bytes, after: int, end: int) -> tuple[int, int]:
    """What a dot after a slash means: (0 a file name, 1 the current directory, 2 the
    parent directory; how many more bytes the dot segment takes)."""
    if after == end:
        return 1, 0
    if _is_slash(s[after]):
        return 1, 1
    second = _is_dot(s, after, end)
    if second:
        after_second = after + second
        if after_second == end:
            return 2, second
        if _is_slash(s[after_second]):
            return 2, second + 1
    return 0, 0


def _back_to_previous_slash(out: bytearray) -> None:
    """Chromium's ``BackUpToPreviousSlash``: drop the last segment (``out`` ends in
    "/"); at the first slash there is nothing to drop."""
    i = len(out) - 1
    if i == 0:
        return
    i -= 1
    while out[i] != 47 and i > 0:
        i -= 1
    del out[i + 1 :]


def merge_slashes(path: str) -> str:
    """Runs of "/" in the path part become one (Envoy's ``PathUtil::mergeSlashes``: the
    path split on "/" without empty parts, joined again, with the leading and trailing
    "/" it had)."""
    part, query = _split(path)
    if "//" not in part:
        return path
    prefix = "/" if part.startswith("/") else ""
    suffix = "/" if part.endswith("/") else ""
    return prefix + "/".join(p for p in part.split("/") if p) + suffix + query


class PathNormalizer:
    """The path steps of one connection manager (at least one is on)."""

    __slots__ = ("escaped_slashes", "normalize", "merge")

    def __init__(self, escaped_slashes: EscapedSlashes, normalize: bool, merge: bool) -> None:
        self.escaped_slashes = escaped_slashes
        self.normalize = normalize
        self.merge = merge

    def __bool__(self) -> bool:
        return (
            self.escaped_slashes is not EscapedSlashes.KEEP_UNCHANGED
            or self.normalize
            or self.merge
        )

    def apply(self, path: str) -> tuple[str, PathAction]:
        action = PathAction.CONTINUE
        esc = self.escaped_slashes
        if esc is not EscapedSlashes.KEEP_UNCHANGED:
            path, found = unescape_slashes(path)
            if found:
                if esc is EscapedSlashes.REJECT_REQUEST:
                    return path, PathAction.REJECT
                if esc is EscapedSlashes.UNESCAPE_AND_REDIRECT:
                    action = PathAction.REDIRECT
        if self.normalize:
            canon = canonical_path(path)
            if canon is None:
                return path, PathAction.REJECT
            path = canon
        if self.merge:
            path = merge_slashes(path)
        return path, action
