"""sd_notify's message format and environment rules, as values (no sockets)."""

from __future__ import annotations

import time

import pytest

from proxyd.master.sd_notify import (
    NotifyError,
    child_environment,
    format_message,
    monotonic_usec,
    socket_address,
    watchdog_interval_s,
)
from proxyd.master.socket_activation import PassedFd, parse_listen_env


def test_format_message() -> None:
    assert format_message({"READY": 1, "STATUS": "epoch 3, 2/2 workers ready"}) == (
        b"READY=1\nSTATUS=epoch 3, 2/2 workers ready\n"
    )
    assert format_message({"MAINPID": 42, "READY": 1}) == b"MAINPID=42\nREADY=1\n"
    with pytest.raises(NotifyError):
        format_message({"STATUS": "two\nlines"})
    with pytest.raises(NotifyError):
        format_message({"A=B": 1})


def test_socket_address() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract/name") == b"\0abstract/name"
    for bad in ("relative/path", "@", ""):
        with pytest.raises(NotifyError):
            socket_address(bad)


def test_watchdog_interval() -> None:
    assert watchdog_interval_s({}, 10) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, 10) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "10"}, 10) == 15.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "11"}, 10) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}, 10) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}, 10) is None


def test_monotonic_usec_is_clock_monotonic() -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    value = monotonic_usec()
    assert before <= value <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_child_environment() -> None:
    env = {
        "PATH": "/bin", "NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "7",
        "LISTEN_PID": "7", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "ingress",
    }  # fmt: skip
    # A worker talks to nobody; a new master keeps the socket and the watchdog period.
    assert child_environment(env, keep_notify=False) == {"PATH": "/bin"}
    assert child_environment(env, keep_notify=True) == {
        "PATH": "/bin", "NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "1",
    }  # fmt: skip


def test_parse_listen_env() -> None:
    env = {"LISTEN_PID": "99", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "ingress"}
    assert parse_listen_env(env, 99) == [PassedFd(3, "ingress"), PassedFd(4, "")]
    assert parse_listen_env(env, 100) == []  # meant for another process
    assert parse_listen_env({"LISTEN_PID": "99", "LISTEN_FDS": "0"}, 99) == []
    assert parse_listen_env({"LISTEN_PID": "99", "LISTEN_FDS": "x"}, 99) == []
