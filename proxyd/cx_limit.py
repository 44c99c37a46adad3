"""The global downstream connection count, shared by the master and its workers.

Envoy enforces ``max_active_downstream_connections`` (and the older runtime key) over
all its worker threads with one atomic counter. proxyd's workers are processes, so the
master creates one small shared-memory file (``memfd``) and hands it to every worker
process at start (an inherited fd, ``--cx-limit-fd``). It holds one 64-bit count per
process (a *cell*), and each process changes only its own:

* taking a connection (:meth:`SharedConnectionCount.try_take`) holds an exclusive
  ``fcntl`` lock on the file, sums the cells, and adds one to its own cell when the sum
  is below the limit; so two workers cannot both take the last slot, and the limit is
  exact, as Envoy's is;
* giving one back (:meth:`give`) subtracts one from its own cell without the lock: a
  reader that sees the old value only refuses a little early, never admits too many;
* a process that exits (or is killed) holds nothing anymore: the kernel closed its
  connections, the kernel released its lock, and the master zeroes its cell
  (:meth:`CellAllocator.release`) before the cell is given to another worker.

The lock is taken without waiting: if another process holds it (for the few
microseconds of a sum, or longer if it was stopped right then), the check is made
without it, which may let one connection too many in rather than stall the accept loop.
The cost per accepted connection is two ``fcntl`` calls and a sum over the cells; none
at all when no limit is configured.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct

CELL = struct.Struct("=q")
# The master's own cell (admin connections under the runtime key); workers get the rest.
MASTER_CELL = 0
_LOCK_TRIES = 3


class SharedConnectionCount:
    """One process's view of the shared counts: ``cell`` is the one it writes."""

    def __init__(self, fd: int, cell: int, cells: int) -> None:
        self.fd = fd
        self.cell = cell
        self.cells = cells
        self._map = mmap.mmap(
            fd, cells * CELL.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self._offset = cell * CELL.size
        self._view = memoryview(self._map).cast("q")

    @classmethod
    def create(cls, cells: int) -> SharedConnectionCount:
        """A new zeroed file of ``cells`` counts; this process writes :data:`MASTER_CELL`."""
        fd = os.memfd_create("proxyd-cx-limit")  # close-on-exec: workers get it by pass_fds
        os.ftruncate(fd, cells * CELL.size)
        return cls(fd, MASTER_CELL, cells)

    def total(self) -> int:
        return sum(self._view)

    def held(self) -> int:
        """What this process holds."""
        return int(self._view[self.cell])

    def try_take(self, limit: int) -> bool:
        """Count one more connection of this process if the total is below ``limit``."""
        locked = self._lock()
        try:
            if sum(self._view) >= limit:
                return False
            self._view[self.cell] += 1
            return True
        finally:
            if locked:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def take(self) -> None:
        """Count one more connection whatever the total (a connection that is not
        limited but counts, as with the runtime key)."""
        self._view[self.cell] += 1

    def give(self) -> None:
        """One connection of this process closed."""
        view = self._view
        if view[self.cell] > 0:
            view[self.cell] -= 1

    def zero(self, cell: int) -> None:
        """The process that wrote ``cell`` has exited: its connections are gone."""
        self._view[cell] = 0

    def _lock(self) -> bool:
        for _ in range(_LOCK_TRIES):
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                continue  # another process is summing: a few microseconds
        return False

    def close(self) -> None:
        self._view.release()
        self._map.close()
        os.close(self.fd)


class CellAllocator:
    """The master's record of which cell each worker process writes."""

    def __init__(self, counts: SharedConnectionCount) -> None:
        self.counts = counts
        self._free = list(range(counts.cells - 1, MASTER_CELL, -1))

    def acquire(self) -> int:
        """A zeroed cell for a new worker process; -1 when none is left (the worker
        then counts nothing, see ``proxyd.worker.overload``)."""
        if not self._free:
            return -1
        cell = self._free.pop()
        self.counts.zero(cell)
        return cell

    def release(self, cell: int) -> None:
        """The process writing ``cell`` exited."""
        if cell > MASTER_CELL:
            self.counts.zero(cell)
            self._free.append(cell)
