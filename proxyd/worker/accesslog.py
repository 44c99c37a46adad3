"""Access logs in the worker: writers (files, stdout, stderr) written in batches, the
per-epoch log plans with their filters, and the records of requests and connections.

A request appends its formatted line to :attr:`AccessLogWriter.pending`; the worker's
ticker calls :meth:`flush` about once a second, and a writer also flushes when a batch
grows past :data:`FLUSH_BYTES`. Files are opened in append mode, and reopened when an
epoch is applied (so an operator can rotate them with a reload).

Applying an epoch takes two steps, so nothing is opened or closed for an epoch that
does not compile: :func:`prepare_writers` gives the writers the epoch's plans are
compiled with (kept ones, and new ones not opened yet), and once the epoch compiled
:func:`open_writers` opens the new ones (a path that cannot be opened refuses the
epoch: :class:`AccessLogError`), reopens the kept ones and closes those it dropped.
"""

from __future__ import annotations

import os

import structlog

from proxyd.errors import ProxydError

log = structlog.get_logger()

FLUSH_BYTES = 64 * 1024
_STD_STREAMS = {"stdout:": 1, "stderr:": 2}


class AccessLogError(ProxydError):
    """An access-log file of a new epoch cannot be opened; the epoch is refused."""


class AccessLogWriter:
    """One access-log file, or the worker's stdout / stderr (``path`` "stdout:" /
    "stderr:", see :attr:`proxyd.epoch.AccessLog.writer_key`). Made closed;
    :meth:`open` opens it."""

    __slots__ = ("path", "pending", "size", "_fd")

    def __init__(self, path: str) -> None:
        self.path = path
        self.pending: list[str] = []
        self.size = 0
        self._fd = -1

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    def open(self) -> None:
        """Open the file for appending (OSError when it cannot be)."""
        self._fd = self._new_fd()

    def _new_fd(self) -> int:
        std = _STD_STREAMS.get(self.path)
        if std is not None:
            return os.dup(std)  # its own fd: closing it leaves the process's stream open
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _open(self) -> None:
        try:
            self.open()
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
        """Open the path again (an operator rotated the file); when that fails the old
        file stays in use, so no line is lost."""
        self.flush()
        if self.path in _STD_STREAMS and self._fd >= 0:
            return  # nothing to rotate
        try:
            fd = self._new_fd()
        except OSError as exc:
            log.error("access log cannot be reopened", path=self.path, error=str(exc))
            if self._fd < 0:
                self._open()
            return
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def prepare_writers(
    writers: dict[str, AccessLogWriter], paths: set[str]
) -> dict[str, AccessLogWriter]:
    """The writers an epoch with access logs at ``paths`` is compiled with: the kept
    ones, and new ones that are not opened yet (see :func:`open_writers`)."""
    return {path: writers.get(path) or AccessLogWriter(path) for path in paths}


def open_writers(old: dict[str, AccessLogWriter], new: dict[str, AccessLogWriter]) -> None:
    """The epoch compiled with ``new`` (from :func:`prepare_writers`) is about to
    replace the one with ``old``: open the new writers, then reopen the kept ones and
    close those the epoch dropped.

    A new path that cannot be opened raises :class:`AccessLogError` naming it; the
    writers opened by this call are closed again and ``old`` is untouched."""
    opened: list[AccessLogWriter] = []
    for path, writer in new.items():
        if old.get(path) is writer or writer.is_open:
            continue
        try:
            writer.open()
        except OSError as exc:
            for w in opened:
                w.close()
            raise AccessLogError(
                f"access log {path!r} cannot be opened: {exc.strerror or exc}"
            ) from exc
        opened.append(writer)
    for path, writer in old.items():
        if new.get(path) is writer:
            writer.reopen()
        else:
            writer.close()
