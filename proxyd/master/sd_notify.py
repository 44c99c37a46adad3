"""Telling systemd what the master is doing: the sd_notify protocol, written natively.

systemd's protocol is one datagram per notification to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``), holding
newline-separated ``KEY=VALUE`` assignments. The master sends:

* ``READY=1`` once every worker applied the first epoch (and, after a hot restart, from
  the new master together with ``MAINPID=<its pid>``);
* ``RELOADING=1`` with ``MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>`` when a reload (or a hot
  restart) begins, and ``READY=1`` when it is over, whatever the outcome;
* ``STOPPING=1`` when a graceful or fast stop begins;
* ``STATUS=<one line>`` with the epoch and how many workers are ready;
* ``WATCHDOG=1`` every ``$WATCHDOG_USEC / 2`` when ``$WATCHDOG_USEC`` is set and
  ``$WATCHDOG_PID`` is unset or names this process.

Without ``$NOTIFY_SOCKET`` every call does nothing. Formatting and the environment rules
are plain functions (:func:`format_message`, :func:`watchdog_interval_s`,
:func:`socket_address`); :class:`Notifier` sends.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from proxyd.log import get_logger

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

log = get_logger("proxyd.master.sd_notify")


class NotifyError(ValueError):
    """``$NOTIFY_SOCKET`` or a notification is malformed."""


def socket_address(value: str) -> str | bytes:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value.

    An abstract-namespace socket is written ``@name`` and addressed as ``b"\\0name"``;
    anything else must be an absolute path.
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    raise NotifyError(f"NOTIFY_SOCKET must be an absolute path or start with '@', not {value!r}")


def format_message(fields: Mapping[str, object]) -> bytes:
    """``{"READY": 1, "STATUS": "epoch 3"}`` → ``b"READY=1\\nSTATUS=epoch 3\\n"``.

    Values must be single lines (systemd splits assignments on newlines).
    """
    lines = []
    for key, value in fields.items():
        if not key or "=" in key or "\n" in key:
            raise NotifyError(f"bad notification key {key!r}")
        text = str(value)
        if "\n" in text:
            raise NotifyError(f"notification {key} must be one line, not {text!r}")
        lines.append(f"{key}={text}\n")
    return "".join(lines).encode()


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """How often to send ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``, or None when off.

    Off when ``$WATCHDOG_USEC`` is unset, not a positive integer, or ``$WATCHDOG_PID``
    is set to another process (as ``sd_watchdog_enabled`` decides).
    """
    usec = environ.get(WATCHDOG_USEC_ENV, "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    wanted_pid = environ.get(WATCHDOG_PID_ENV, "")
    if wanted_pid and (not wanted_pid.isdigit() or int(wanted_pid) != pid):
        return None
    return int(usec) / 2 / 1_000_000


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``MONOTONIC_USEC=`` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def child_environment(environ: Mapping[str, str], keep_notify: bool) -> dict[str, str]:
    """The environment for a process the master starts.

    Socket-activation variables never pass on (the master consumed the fds). Workers
    (``keep_notify=False``) lose ``NOTIFY_SOCKET`` and the watchdog too: only masters
    talk to systemd. A new master (hot restart) keeps ``NOTIFY_SOCKET`` and
    ``WATCHDOG_USEC`` but not ``WATCHDOG_PID``, which names the old master: the new one
    sends the watchdog pings once it is the main process.
    """
    drop = {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", WATCHDOG_PID_ENV}
    if not keep_notify:
        drop |= {NOTIFY_SOCKET_ENV, WATCHDOG_USEC_ENV}
    return {k: v for k, v in environ.items() if k not in drop}


class Notifier:
    """Sends notifications to ``$NOTIFY_SOCKET``; does nothing without one.

    Sending never blocks and never raises: a missing or full socket is logged once and
    the master carries on (systemd's ``sd_notify`` is best effort too).
    """

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        self.pid = os.getpid() if pid is None else pid
        self.address: str | bytes | None = None
        raw = env.get(NOTIFY_SOCKET_ENV, "")
        if raw:
            try:
                self.address = socket_address(raw)
            except NotifyError as exc:
                log.warning("sd_notify_disabled", error=str(exc))
        self.watchdog_s = watchdog_interval_s(env, self.pid) if self.address else None
        # Set after a hot restart handed the service over: systemd follows the new master.
        self.silenced = False
        self.sent = 0
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None and not self.silenced

    def notify(self, **fields: object) -> bool:
        """Send one notification; True when it went out."""
        if not self.enabled:
            return False
        assert self.address is not None
        data = format_message(fields)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.sendto(data, self.address)
        except OSError as exc:
            if not self._warned:  # once: a gone systemd must not flood the log
                log.warning("sd_notify_failed", socket=str(self.address), error=str(exc))
                self._warned = True
            return False
        finally:
            sock.close()
        self.sent += 1
        return True

    def ready(self, status: str, mainpid: int | None = None) -> bool:
        fields: dict[str, object] = {}
        if mainpid is not None:
            fields["MAINPID"] = mainpid
        fields["READY"] = 1
        fields["STATUS"] = status
        return self.notify(**fields)

    def reloading(self, status: str) -> bool:
        return self.notify(RELOADING=1, MONOTONIC_USEC=monotonic_usec(), STATUS=status)

    def stopping(self, status: str) -> bool:
        return self.notify(STOPPING=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def silence(self) -> None:
        """From now on say nothing: another master is the service's main process."""
        self.silenced = True
