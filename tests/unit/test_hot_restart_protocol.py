"""The hot-restart handshake as a state machine, fed messages (no sockets)."""

from __future__ import annotations

import itertools

import pytest

from proxyd import ipc
from proxyd.master.hot_restart_protocol import (
    CLOSED,
    DRAINING,
    FAILED,
    STARTING,
    TRANSITIONS,
    Handshake,
    HotRestartProtocolError,
    check_hello,
    successor_argv,
)

HELLO = ipc.HotRestartHello(ipc.WIRE_VERSION, 1, 200)
WELCOME = ipc.HotRestartWelcome(True, "", ipc.WIRE_VERSION, 0, 1, 100, 0.0)
SOCKS = ipc.PassListenSockets("listener", "ingress", "127.0.0.1", 80, False, 2, False)
LAST = ipc.PassListenSockets("control", "control", "/run/proxyd/control.sock", 0, False, 1, True)
HAPPY = [
    ("new", HELLO), ("old", WELCOME), ("new", ipc.PassListenSocketsRequest()),
    ("old", SOCKS), ("old", LAST), ("old", ipc.StatsTransfer({"a": 1})),
    ("new", ipc.DrainListeners()), ("old", ipc.DrainListenersReply(600.0)),
    ("old", ipc.StatsTransfer({"a": 2})), ("new", ipc.Terminate()),
]  # fmt: skip
ALL = [m for _, m in HAPPY] + [ipc.HotRestartFailed("bad config"), ipc.HotRestartWelcome(False, "no", 1, 0, 1, 1, 0.0)]  # fmt: skip


def play(role: str, steps) -> Handshake:
    hs = Handshake(role)
    for sender, msg in steps:
        (hs.sent if sender == role else hs.received)(msg)
    return hs


@pytest.mark.parametrize("role", ["old", "new"])
def test_happy_path_both_sides(role: str) -> None:
    hs = Handshake(role)
    for i, (sender, msg) in enumerate(HAPPY):
        (hs.sent if sender == role else hs.received)(msg)
        assert hs.handed_off == (i >= 6)
    assert hs.state == DRAINING


def test_failure_before_handoff() -> None:
    hs = play("old", HAPPY[:6])
    assert hs.state == STARTING
    hs.received(ipc.HotRestartFailed("static_resources.clusters[0].lb_polcy: unknown field"))
    assert hs.state == FAILED and not hs.handed_off
    with pytest.raises(HotRestartProtocolError):
        hs.received(ipc.DrainListeners())


def test_refused_hello_closes() -> None:
    hs = play("new", HAPPY[:1])
    hs.received(ipc.HotRestartWelcome(False, "wire version mismatch", 2, 0, 1, 100, 0.0))
    assert hs.state == CLOSED


def test_messages_from_the_wrong_side_are_refused() -> None:
    with pytest.raises(HotRestartProtocolError, match="cannot come from the old master"):
        Handshake("new").received(HELLO)  # the old master never says Hello
    with pytest.raises(HotRestartProtocolError, match="cannot come from the new master"):
        play("old", HAPPY[:3]).received(SOCKS)


def test_every_state_and_message_either_moves_or_raises() -> None:
    # Like h2's state-machine tests: from every reachable state, every message is either
    # a transition in the table or a HotRestartProtocolError, never anything else.
    reachable = {}
    for n in range(len(HAPPY) + 1):
        hs = play("old", HAPPY[:n])
        reachable[hs.state] = HAPPY[:n]
    for (state, prefix), msg in itertools.product(reachable.items(), ALL):
        hs = play("old", prefix)
        try:
            nxt = hs.next_state(msg)
        except HotRestartProtocolError:
            assert (state, type(msg)) not in TRANSITIONS
        else:
            assert (state, type(msg)) in TRANSITIONS and isinstance(nxt, str)


def test_check_hello() -> None:
    assert check_hello(HELLO, 0) == ""
    assert "wire version mismatch" in check_hello(
        ipc.HotRestartHello(ipc.WIRE_VERSION + 1, 1, 2), 0
    )
    assert "does not follow" in check_hello(ipc.HotRestartHello(ipc.WIRE_VERSION, 3, 2), 0)


def test_successor_argv_keeps_options_and_replaces_config_and_epoch() -> None:
    argv = ["-c", "old.yaml", "--concurrency", "4", "--restart-epoch", "2",
            "--hot-restart-socket", "/run/x.sock", "--drain-time-s=30", "--config-path=o.yaml",
            "-cother.yaml", "--log-format", "json"]  # fmt: skip
    out = successor_argv(argv, "/etc/proxyd/new.yaml", 3, "/run/proxyd/hot-restart.3.sock", ["proxyd"])  # fmt: skip
    assert out == [
        "proxyd", "--concurrency", "4", "--drain-time-s=30", "--log-format", "json",
        "-c", "/etc/proxyd/new.yaml", "--restart-epoch", "3",
        "--hot-restart-socket", "/run/proxyd/hot-restart.3.sock",
    ]  # fmt: skip
