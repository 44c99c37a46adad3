"""What a worker does with failures: catch-alls counted and logged once, access-log
files opened only for an epoch that compiled."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from proxyd.worker.accesslog import AccessLogError, open_writers, prepare_writers
from proxyd.worker.stats import WORKER_EXCEPTIONS_STAT, StatsStore, note_unexpected


def _raise(exc: Exception) -> Exception:
    try:
        raise exc
    except Exception as caught:  # a real traceback, as a handler has one
        return caught


def test_note_unexpected_counts_each_and_logs_once_per_place_and_type() -> None:
    stats = StatsStore()
    with capture_logs() as logs:
        note_unexpected(stats, _raise(KeyError("a")), "accept")
        note_unexpected(stats, _raise(KeyError("b")), "accept")
        note_unexpected(stats, _raise(ValueError("c")), "accept")
        note_unexpected(stats, _raise(KeyError("d")), "connection")
    assert [(e["where"], e["error"]) for e in logs] == [
        ("accept", "KeyError('a')"),
        ("accept", "ValueError('c')"),
        ("connection", "KeyError('d')"),
    ]
    assert all(e["log_level"] == "error" and e["exc_info"][2] is not None for e in logs)
    counters, _ = stats.report()
    assert counters[WORKER_EXCEPTIONS_STAT] == 4
    note_unexpected(stats, _raise(KeyError("e")), "accept")
    assert stats.report()[0] == {WORKER_EXCEPTIONS_STAT: 1}  # a delta, as reports are


def test_prepared_writers_open_nothing(tmp_path: Path) -> None:
    writers = prepare_writers({}, {str(tmp_path / "a.log"), str(tmp_path / "b.log")})
    assert sorted(writers) == [str(tmp_path / "a.log"), str(tmp_path / "b.log")]
    assert not any(w.is_open for w in writers.values())
    assert list(tmp_path.iterdir()) == []


def test_open_writers_opens_new_reopens_kept_closes_dropped(tmp_path: Path) -> None:
    kept, dropped, new = (str(tmp_path / n) for n in ("kept.log", "dropped.log", "new.log"))
    old = prepare_writers({}, {kept, dropped})
    open_writers({}, old)
    writers = prepare_writers(old, {kept, new})
    assert writers[kept] is old[kept]
    Path(kept).rename(tmp_path / "kept.log.1")  # rotated by an operator
    open_writers(old, writers)
    assert writers[new].is_open and writers[kept].is_open and not old[dropped].is_open
    writers[kept].write("after rotation\n")
    writers[kept].flush()
    assert Path(kept).read_text() == "after rotation\n"
    for w in writers.values():
        w.close()


def test_a_path_that_cannot_be_opened_refuses_and_changes_nothing(tmp_path: Path) -> None:
    running = str(tmp_path / "running.log")
    old = prepare_writers({}, {running})
    open_writers({}, old)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    good, bad = str(tmp_path / "good.log"), str(blocker / "x.log")
    writers = prepare_writers(old, {good, bad})
    with pytest.raises(AccessLogError, match=f"access log '{bad}' cannot be opened"):
        open_writers(old, writers)
    assert not writers[good].is_open and not writers[bad].is_open
    assert old[running].is_open  # the running epoch's file was not closed
    old[running].close()
