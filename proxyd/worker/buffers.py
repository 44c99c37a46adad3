"""Receive buffers of one size, reused across the connections of a worker.

A downstream connection takes one when bytes are about to arrive and gives it back while
it waits idle (:class:`proxyd.protocol.http1_framing.ReceiveBuffer`), so an idle
keep-alive connection holds no buffer.
"""

from __future__ import annotations

INITIAL_BUFFER = 16 * 1024


class BufferPool:
    """Receive buffers of one size, reused across the connections of a worker."""

    __slots__ = ("size", "_free", "limit")

    def __init__(self, size: int = INITIAL_BUFFER, limit: int = 256) -> None:
        self.size = size
        self.limit = limit
        self._free: list[tuple[bytearray, memoryview]] = []

    def take(self) -> tuple[bytearray, memoryview]:
        if self._free:
            return self._free.pop()
        buf = bytearray(self.size)
        return buf, memoryview(buf)

    def give(self, buf: bytearray, view: memoryview) -> None:
        if len(buf) == self.size and len(self._free) < self.limit:
            self._free.append((buf, view))
