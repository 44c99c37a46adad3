"""Header map sizes as Envoy counts them, from HTTP/1 heads; sans-IO.

Envoy's ``track_cluster_stats.request_response_sizes`` records a header map's
``byteSize()`` (the lengths of every name and value, pseudo-headers included) and its
number of entries. proxyd forwards heads as HTTP/1 bytes, so the same numbers come from
the head: the request line stands for ``:method`` and ``:path``, ``host`` for
``:authority``, the scheme adds ``:scheme``, and a response's status line for
``:status``. Values are counted without the whitespace around them, as the codec
stores them.
"""

from __future__ import annotations

_METHOD_PATH = len(":method") + len(":path")
_AUTHORITY_EXTRA = len(":authority") - len("host")


def _lines(head: bytes) -> tuple[bytes, list[bytes]]:
    end = head.find(b"\r\n\r\n")
    text = head[:end] if end >= 0 else head
    first, *lines = text.split(b"\r\n")
    return first, lines


def _field_sizes(lines: list[bytes]) -> tuple[int, int, bool]:
    size = 0
    has_host = False
    for line in lines:
        name, _, value = line.partition(b":")
        size += len(name) + len(value.strip(b" \t"))
        if len(name) == 4 and name.lower() == b"host":
            has_host = True
    return size, len(lines), has_host


def request_map_size(head: bytes, tls: bool) -> tuple[int, int]:
    """``(byteSize, entries)`` of the upstream request header map ``head`` stands for."""
    first, lines = _lines(head)
    size, count, has_host = _field_sizes(lines)
    method, _, rest = first.partition(b" ")
    path = rest.rpartition(b" ")[0]
    size += _METHOD_PATH + len(method) + len(path)
    size += len(":scheme") + (5 if tls else 4)
    count += 3  # :method, :path, :scheme
    if has_host:
        size += _AUTHORITY_EXTRA
    return size, count


def response_map_size(head: bytes) -> tuple[int, int]:
    """``(byteSize, entries)`` of the response header map ``head`` stands for."""
    _first, lines = _lines(head)
    size, count, _ = _field_sizes(lines)
    return size + len(":status") + 3, count + 1
