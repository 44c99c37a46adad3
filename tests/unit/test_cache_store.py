"""proxyd.filters.cache.store and .disk: the stores, without the filter."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest
import trio

from proxyd.filters.cache.disk import DiskStore, decode_entry, encode_entry, file_name
from proxyd.filters.cache.rules import response_rules
from proxyd.filters.cache.store import Entry, LookupFailed, Store, new_entry

KEY = ("http", "h.example", "/p?q=1")


def entry(body: bytes = b"body") -> Entry:
    lines = (("cache-control", "max-age=60"), ("etag", '"e"'))
    return Entry(200, lines, body, response_rules("max-age=60", None, None), 1.0e9)


def test_memory_store_keeps_variants() -> None:
    async def main() -> None:
        s = Store()
        await s.insert(KEY, entry(b"a"), ("x-v",), ("a",))
        await s.insert(KEY, entry(b"b"), ("x-v",), ("b",))
        got, variant = await s.lookup(KEY, lambda names: ("a",))
        assert got is not None and got.body == b"a" and variant == ("a",)
        got, _ = await s.lookup(KEY, lambda names: (None,))
        assert got is None
        await s.insert(KEY, entry(b"plain"), (), None)  # no longer varies
        got, variant = await s.lookup(KEY, lambda names: ("a",))
        assert got is not None and got.body == b"plain" and variant is None

    trio.run(main)


def test_disk_record_round_trip_and_refusals() -> None:
    e = entry()
    data = encode_entry(KEY, None, e)
    assert decode_entry(data, KEY, None) == e
    assert decode_entry(data, ("http", "other", "/"), None) is None  # another key
    assert decode_entry(data, KEY, ("a",)) is None  # another variant
    assert decode_entry(b"\xc1garbage", KEY, None) is None
    assert decode_entry(bytes(msgpack.packb([99, 1, 2])), KEY, None) is None
    assert decode_entry(bytes(msgpack.packb([1, "short"])), KEY, None) is None
    assert file_name(KEY) != file_name(KEY, ("a",))


def test_disk_store(tmp_path: Path) -> None:
    async def main() -> None:
        s = DiskStore({"path": str(tmp_path), "max_bytes": 0, "max_count": 0, "threads": 1})
        assert await s.lookup(KEY, lambda names: ()) == (None, None)
        await s.insert(KEY, entry(b"a"), ("x-v",), ("a",))
        got, variant = await s.lookup(KEY, lambda names: ("a",))
        assert got is not None and got.body == b"a" and variant == ("a",)
        assert sorted(os.listdir(tmp_path)) == sorted([file_name(KEY), file_name(KEY, ("a",))])
        # A file that is not a record of its key is a miss.
        (tmp_path / file_name(KEY)).write_bytes(b"junk")
        assert await s.lookup(KEY, lambda names: ("a",)) == (None, None)
        missing = DiskStore(
            {"path": str(tmp_path / "none"), "max_bytes": 0, "max_count": 0, "threads": 1}
        )
        with pytest.raises(LookupFailed):
            await missing.lookup(KEY, lambda names: ())
        await missing.insert(KEY, entry(), (), None)  # nothing stored, nothing raised
        assert not (tmp_path / "none").exists()

    trio.run(main)


def test_disk_store_evicts_by_size(tmp_path: Path) -> None:
    async def main() -> None:
        one = len(encode_entry(("http", "h", "/0"), None, entry(b"x" * 100)))
        s = DiskStore({"path": str(tmp_path), "max_bytes": one * 3, "max_count": 0, "threads": 1})
        for i in range(5):
            await s.insert(("http", "h", f"/{i}"), entry(b"x" * 100), (), None)
        names = set(os.listdir(tmp_path))
        assert names == {file_name(("http", "h", f"/{i}")) for i in (2, 3, 4)}

    trio.run(main)


def test_age() -> None:
    """The larger of (date to receipt) and the age line, plus the time stored."""
    date = "Fri, 04 Dec 2026 20:00:00 GMT"
    t = 1796414400.0  # that date
    lines = (("date", date), ("cache-control", "max-age=60"))
    assert new_entry(200, lines, b"", t + 7.9).age(t + 7.9) == 7
    assert new_entry(200, lines, b"", t - 5).age(t - 5) == 0  # a date in the future
    aged = new_entry(200, (*lines, ("age", "100")), b"", t + 10)
    assert aged.age(t + 12) == 102 and ("age", "100") not in aged.lines
    assert new_entry(200, (*lines, ("age", "x")), b"", t + 3).age(t + 3) == 3
    assert new_entry(200, (("cache-control", "max-age=60"),), b"", t).age(t + 4.5) == 4
