"""The file-system cache: stored responses as files in ``cache_path``.

Envoy's ``FileSystemHttpCache`` keeps one file per stored response in ``cache_path``
and evicts the least recently used when ``max_cache_size_bytes`` or
``max_cache_entry_count`` is passed. proxyd does the same with its own file format (a
msgpack record: Envoy's files and proxyd's cannot be read by the other): the files
outlive restarts, and all workers share them (each writes a new file and renames it
into place, so a reader sees a whole file or none). The file operations run on trio's
worker threads, at most ``manager_config.thread_pool.thread_count`` at a time per
worker (Envoy's async file manager's thread pool), never on the event loop.

A response that varies (``cache`` v3) has a small index file under its key naming the
varying headers, and a file per variant.

Eviction: each worker counts the files and bytes it has seen (a scan of the directory
when it first uses the cache, then its own writes); when a limit is passed it scans the
directory again (which also takes in other workers' writes) and removes the least
recently used files (by modification time; a hit touches its file) until both limits
hold.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import msgpack
import trio

from proxyd.filters.cache.store import Entry, Key, LookupFailed, Variant, rules_of

FORMAT = 1
PREFIX = "cache-"
_TMP = ".tmp-"
_counter = itertools.count()


def file_name(key: Key, variant: Variant | None = None) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(msgpack.packb([list(key), None if variant is None else list(variant)]))
    return PREFIX + h.hexdigest()


def encode_entry(key: Key, variant: Variant | None, entry: Entry) -> bytes:
    return bytes(
        msgpack.packb(
            [
                FORMAT,
                list(key),
                None if variant is None else list(variant),
                entry.status,
                [list(line) for line in entry.lines],
                entry.body,
                entry.response_time,
                entry.initial_age,
            ]
        )
    )


def decode_entry(data: bytes, key: Key, variant: Variant | None) -> Entry | tuple[str, ...] | None:
    """An entry, or the varying header names of an index file, or None when the file is
    not one of ``key`` (a hash collision, another format, a broken file)."""
    try:
        record = msgpack.unpackb(data)
    except (ValueError, msgpack.UnpackException):
        return None
    if not isinstance(record, list) or not record or record[0] != FORMAT:
        return None
    try:
        if len(record) == 3 and record[1] == list(key):  # an index of variants
            return tuple(str(n) for n in record[2])
        _, k, v, status, lines, body, response_time, initial_age = record
        if k != list(key) or v != (None if variant is None else list(variant)):
            return None
        pairs = tuple((str(n), str(val)) for n, val in lines)
        return Entry(
            int(status),
            pairs,
            bytes(body),
            rules_of(pairs),
            float(response_time),
            float(initial_age),
        )
    except (TypeError, ValueError):
        return None


def _touch(path: str) -> None:
    """Set ``path``'s modification time to now, to the nanosecond (``os.utime`` with no
    times takes the file system's coarser clock, which ties files used within a few
    milliseconds of each other)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


class DiskStore:
    """One ``cache_path`` as this worker sees it."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.path: str = settings["path"]
        self.max_bytes: int = settings["max_bytes"]
        self.max_count: int = settings["max_count"]
        self.limiter = trio.CapacityLimiter(max(1, settings["threads"]))
        self.marks: set[Key] = set()
        self.inflight: dict[Key, trio.Event] = {}
        # What this worker knows of the directory: file sizes by name (None until
        # first scanned) and their sum.
        self.sizes: dict[str, int] | None = None
        self.total = 0

    def take_mark(self, key: Key) -> bool:
        if key in self.marks:
            self.marks.discard(key)
            return True
        return False

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def lookup(
        self, key: Key, values: Callable[[tuple[str, ...]], Variant]
    ) -> tuple[Entry | None, Variant | None]:
        found = await self._run(self._read, key, None)
        if isinstance(found, tuple):  # an index: the entry is the request's variant's
            variant = values(found)
            entry = await self._run(self._read, key, variant)
            return (entry if isinstance(entry, Entry) else None), variant
        return found, None

    def _read(self, key: Key, variant: Variant | None) -> Entry | tuple[str, ...] | None:
        path = os.path.join(self.path, file_name(key, variant))
        try:
            with open(path, "rb") as f:
                data = f.read()
            found = decode_entry(data, key, variant)
            if isinstance(found, Entry):
                _touch(path)  # recently used
            return found
        except FileNotFoundError:  # a miss, unless the directory itself is missing
            if not os.path.isdir(self.path):
                raise LookupFailed(self.path) from None
            return None
        except OSError:  # unreadable: a miss
            return None

    async def insert(
        self, key: Key, entry: Entry, vary: tuple[str, ...], variant: Variant | None
    ) -> None:
        writes = []
        if vary:
            index = bytes(msgpack.packb([FORMAT, list(key), list(vary)]))
            writes.append((file_name(key), index))
            writes.append((file_name(key, variant), encode_entry(key, variant, entry)))
        else:
            writes.append((file_name(key), encode_entry(key, None, entry)))
        await self._run(self._write, writes)

    def _write(self, writes: list[tuple[str, bytes]]) -> None:
        if self.sizes is None:
            self.sizes = self._scan()
            self.total = sum(self.sizes.values())
        for name, data in writes:
            tmp = os.path.join(self.path, f"{_TMP}{os.getpid()}-{next(_counter)}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                _touch(tmp)
                os.replace(tmp, os.path.join(self.path, name))
            except OSError:  # no directory, disk full: the response is not stored
                try:
                    os.unlink(tmp)
                except OSError:
                    pass  # it was never created
                return
            self.total += len(data) - self.sizes.get(name, 0)
            self.sizes[name] = len(data)
        if self._over(len(self.sizes), self.total):
            self._evict()

    def _over(self, count: int, total: int) -> bool:
        return bool(
            (self.max_count and count > self.max_count)
            or (self.max_bytes and total > self.max_bytes)
        )

    def _scan(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        try:
            with os.scandir(self.path) as it:
                for e in it:
                    if e.name.startswith(PREFIX):
                        try:
                            sizes[e.name] = e.stat().st_size
                        except OSError:
                            pass  # removed by another worker meanwhile
        except OSError:
            pass  # no directory: nothing is stored
        return sizes

    def _evict(self) -> None:
        """Remove the least recently used files until both limits hold."""
        aged: list[tuple[float, str, int]] = []
        try:
            with os.scandir(self.path) as it:
                for e in it:
                    if e.name.startswith(PREFIX):
                        try:
                            st = e.stat()
                        except OSError:
                            continue  # removed by another worker meanwhile
                        aged.append((st.st_mtime, e.name, st.st_size))
        except OSError:
            return
        aged.sort()
        sizes = {name: size for _, name, size in aged}
        total = sum(sizes.values())
        for _, name, size in aged:
            if not self._over(len(sizes), total):
                break
            try:
                os.unlink(os.path.join(self.path, name))
            except OSError:
                pass  # another worker evicted it first
            del sizes[name]
            total -= size
        self.sizes = sizes
        self.total = total
