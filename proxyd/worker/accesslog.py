"""Access-log files, written in batches.

A request appends its formatted line to :attr:`AccessLogWriter.pending`; the worker's
ticker calls :meth:`flush` about once a second, and a writer also flushes when a batch
grows past :data:`FLUSH_BYTES`. Files are opened in append mode, and reopened when an
epoch is applied (so an operator can rotate them with a reload).
"""

from __future__ import annotations

import os

import structlog

log = structlog.get_logger()

FLUSH_BYTES = 64 * 1024


class AccessLogWriter:
    __slots__ = ("path", "pending", "size", "_fd")

    def __init__(self, path: str) -> None:
        self.path = path
        self.pending: list[str] = []
        self.size = 0
        self._fd = -1
        self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            self._fd = -1
            log.error("access log cannot be opened", path=self.path, error=str(exc))

    def write(self, line: str) -> None:
        self.pending.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        data = "".join(self.pending).encode("utf-8", "replace")
        self.pending.clear()
        self.size = 0
        if self._fd < 0:
            # Closed by an epoch that dropped this path, and a request that started on
            # the old epoch logged after it: reopen rather than lose the line.
            self._open()
            if self._fd < 0:
                return
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            log.error("access log write failed", path=self.path, error=str(exc))

    def reopen(self) -> None:
        self.flush()
        self.close()
        self._open()

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def update_writers(
    writers: dict[str, AccessLogWriter], paths: set[str]
) -> dict[str, AccessLogWriter]:
    """Writers for ``paths`` after an epoch: kept ones reopened, new ones opened, the
    rest closed."""
    out: dict[str, AccessLogWriter] = {}
    for path in paths:
        w = writers.get(path)
        if w is None:
            w = AccessLogWriter(path)
        else:
            w.reopen()
        out[path] = w
    for path, w in writers.items():
        if path not in out:
            w.close()
    return out
