"""The hot-restart handshake between an old and a new master, without I/O.

The conversation (messages from :mod:`proxyd.ipc`) goes through these states; every
message has one direction and is valid in one state only, so either side can check the
other with one table (:data:`TRANSITIONS`), as h11 does:

=================  ===========================  =====  =================
state              message                      from   next state
=================  ===========================  =====  =================
START              HotRestartHello              new    HELLO
HELLO              HotRestartWelcome (ok)       old    WELCOMED
HELLO              HotRestartWelcome (not ok)   old    CLOSED
WELCOMED           PassListenSocketsRequest     new    PASSING
PASSING            PassListenSockets            old    PASSING (LISTED when last)
LISTED             StatsTransfer                old    STARTING
STARTING           DrainListeners               new    DRAIN_REQUESTED
DRAIN_REQUESTED    DrainListenersReply          old    DRAINING
DRAINING           StatsTransfer                old    DRAINING
DRAINING           Terminate                    new    DRAINING
(WELCOMED..START-  HotRestartFailed             new    FAILED
 ING)
=================  ===========================  =====  =================

The handoff succeeded once DRAIN_REQUESTED is reached: from then on the old master has
stopped accepting (or is about to), and the new one owns the service. The end of the
connection before that is a failure of the new master.

Also here: :func:`check_hello` (the old master's decision on a Hello) and
:func:`successor_argv` (the new master's command line).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from proxyd import ipc
from proxyd.errors import ProxydError

START, HELLO, WELCOMED, PASSING, LISTED, STARTING = "START", "HELLO", "WELCOMED", "PASSING", "LISTED", "STARTING"  # fmt: skip
DRAIN_REQUESTED, DRAINING, FAILED, CLOSED = "DRAIN_REQUESTED", "DRAINING", "FAILED", "CLOSED"

_FROM_NEW = (ipc.HotRestartHello, ipc.PassListenSocketsRequest, ipc.DrainListeners, ipc.HotRestartFailed, ipc.Terminate)  # fmt: skip

# (state, message type) → next state. PassListenSockets and HotRestartWelcome are
# refined in Handshake.next_state (``last`` and ``ok`` decide).
TRANSITIONS: dict[tuple[str, type], str] = {
    (START, ipc.HotRestartHello): HELLO,
    (HELLO, ipc.HotRestartWelcome): WELCOMED,
    (WELCOMED, ipc.PassListenSocketsRequest): PASSING,
    (PASSING, ipc.PassListenSockets): PASSING,
    (LISTED, ipc.StatsTransfer): STARTING,
    (STARTING, ipc.DrainListeners): DRAIN_REQUESTED,
    (DRAIN_REQUESTED, ipc.DrainListenersReply): DRAINING,
    (DRAINING, ipc.StatsTransfer): DRAINING,
    (DRAINING, ipc.Terminate): DRAINING,
    (WELCOMED, ipc.HotRestartFailed): FAILED,
    (PASSING, ipc.HotRestartFailed): FAILED,
    (LISTED, ipc.HotRestartFailed): FAILED,
    (STARTING, ipc.HotRestartFailed): FAILED,
}


class HotRestartError(ProxydError):
    """The hot restart cannot go on; the message says why."""


class HotRestartProtocolError(HotRestartError):
    """A message out of order, or from the wrong side."""


class Handshake:
    """One side's view of the conversation: feed it every message sent and received."""

    def __init__(self, role: str) -> None:
        if role not in ("old", "new"):
            raise ValueError(f"role is 'old' or 'new', not {role!r}")
        self.role = role
        self.state = START

    def next_state(self, msg: Any) -> str:
        """The state after ``msg``; raises HotRestartProtocolError when it is not valid."""
        nxt = TRANSITIONS.get((self.state, type(msg)))
        if nxt is None:
            raise HotRestartProtocolError(
                f"unexpected {type(msg).__name__} in hot-restart state {self.state}"
            )
        if isinstance(msg, ipc.HotRestartWelcome) and not msg.ok:
            return CLOSED
        if isinstance(msg, ipc.PassListenSockets) and msg.last:
            return LISTED
        return nxt

    def _step(self, msg: Any, from_new: bool) -> None:
        if isinstance(msg, _FROM_NEW) != from_new:
            side = "new" if from_new else "old"
            raise HotRestartProtocolError(f"{type(msg).__name__} cannot come from the {side} master")  # fmt: skip
        self.state = self.next_state(msg)

    def sent(self, msg: Any) -> None:
        self._step(msg, from_new=self.role == "new")

    def received(self, msg: Any) -> None:
        self._step(msg, from_new=self.role == "old")

    @property
    def handed_off(self) -> bool:
        """The new master asked the old one to stop accepting: it owns the service now."""
        return self.state in (DRAIN_REQUESTED, DRAINING)


def check_hello(hello: ipc.HotRestartHello, restart_epoch: int) -> str:
    """The old master's verdict on a Hello: "" to go on, else why not."""
    if hello.wire_version != ipc.WIRE_VERSION:
        return (
            f"wire version mismatch: the new master speaks {hello.wire_version}, this one "
            f"{ipc.WIRE_VERSION}; stop and start proxyd instead of a hot restart"
        )
    if hello.restart_epoch != restart_epoch + 1:
        return (
            f"restart epoch {hello.restart_epoch} does not follow this master's "
            f"{restart_epoch} (expected {restart_epoch + 1})"
        )
    return ""


# Options the old master sets itself on the new master's command line.
_REPLACED = {
    "-c": True, "--config": True, "--config-path": True,
    "--restart-epoch": True, "--hot-restart-socket": True,
}  # fmt: skip


def successor_argv(
    argv: Sequence[str], config: str, restart_epoch: int, socket_path: str,
    command: Sequence[str],
) -> list[str]:  # fmt: skip
    """The new master's command line: ``command`` (how to run the installed proxyd),
    the old master's arguments without ``-c``/``--restart-epoch``/``--hot-restart-socket``,
    then ``-c CONFIG --restart-epoch N --hot-restart-socket PATH``.

    ``argv`` is what the old master got after its program name (the parser does not
    accept abbreviated options, so the names below are the only spellings).
    """
    kept: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
            continue
        name, eq, _value = arg.partition("=")
        if arg in _REPLACED:
            skip_value = True
            continue
        if eq and name in _REPLACED:
            continue
        if arg.startswith("-c") and not arg.startswith("--") and len(arg) > 2:
            continue  # -cFILE
        kept.append(arg)
    return [
        *command, *kept,
        "-c", os.path.abspath(config),
        "--restart-epoch", str(restart_epoch),
        "--hot-restart-socket", socket_path,
    ]  # fmt: skip
