"""Messages between the master and its workers (and proxyctl), and how they travel.

One place for the wire: every message is a frozen dataclass; a frame is a 4-byte
big-endian length followed by ``msgpack([tag, field, field, ...])``. File descriptors
(listening sockets) ride along a frame as SCM_RIGHTS ancillary data; a message that
carries them says how many in its ``fd_count`` field, and the receiver takes that many
from the queue of fds that arrived with the bytes, in order.

The framing (:class:`FrameDecoder`, :func:`encode`) is sans-IO. :class:`Channel` is the
thin trio layer over a connected ``AF_UNIX`` stream socket.
"""

from __future__ import annotations

import array
import socket
import struct
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

import msgpack
import trio

from proxyd.epoch import Epoch, EpochWire, from_wire

# Bump whenever a message or the epoch changes incompatibly; Hello carries it so an old
# and a new process can tell that they disagree.
WIRE_VERSION = 1

MAX_FRAME = 256 * 1024 * 1024
MAX_FDS_PER_FRAME = 1024
_LEN = struct.Struct(">I")


class IpcError(Exception):
    """The peer sent something that is not a valid frame or message."""


# -- master → worker ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First message to a worker. Carries its listening sockets, one per name."""

    worker_id: int
    wire_version: int
    listener_names: tuple[str, ...]
    fd_count: int


@dataclass(frozen=True, slots=True)
class AddSockets:
    """More listening sockets (a listener added by a reload); precedes the Epoch."""

    listener_names: tuple[str, ...]
    fd_count: int


@dataclass(frozen=True, slots=True)
class EpochMsg:
    epoch: Epoch


@dataclass(frozen=True, slots=True)
class Drain:
    """Stop accepting, finish in-flight requests within ``deadline_s``, then exit 0."""

    deadline_s: float


@dataclass(frozen=True, slots=True)
class Stop:
    """Exit now."""


@dataclass(frozen=True, slots=True)
class OverloadActions:
    """The overload manager's actions in force (proxyd.master.overload): sent when one
    changes, and to a new worker after its first epoch when any is active."""

    stop_accepting_connections: bool = False
    reject_incoming_connections: bool = False
    disable_http_keepalive: bool = False
    stop_accepting_requests: bool = False
    shrink_heap: bool = False


# -- worker → master ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker applied epoch ``epoch`` and is accepting on its sockets."""

    worker_id: int
    pid: int
    epoch: int


@dataclass(frozen=True, slots=True)
class EpochRefused:
    """The worker could not apply epoch ``epoch`` and goes on running the one it had
    (or, for its first epoch, exits with "cannot start" after saying so). ``reason``
    is readable: the listener or cluster, the part of it and why."""

    worker_id: int
    pid: int
    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class StatsReport:
    """Counter deltas since the last report, and gauges as absolute values.

    Keys are Envoy stat names ("cluster.up.upstream_rq_total"). Sent about once a
    second; it doubles as the worker's heartbeat. ``histograms`` (appended last, so an
    older peer reads the rest) holds each histogram's bins recorded since the last
    report, ``{bin key: count}`` (:mod:`proxyd.protocol.histogram`).
    """

    worker_id: int
    counters: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, int] = field(default_factory=dict)
    histograms: dict[str, dict[int, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HostOutcomes:
    """Request outcomes per upstream host since the last report, for outlier detection.

    ``outcomes[cluster][host]`` is ``[kind, count, kind, count, ...]`` in order, with
    ``host`` as /clusters prints it and the kinds of :mod:`proxyd.worker.outcomes`.
    Sent with the StatsReport, only when a cluster with outlier_detection had traffic.
    """

    worker_id: int
    outcomes: dict[str, dict[str, list[int]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The worker's event loop is running: sent every half watchdog interval (see
    proxyd.master.watchdog), besides the StatsReport once a second."""

    worker_id: int


# -- proxyctl ↔ master (control socket) -----------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """``command`` is "status", "reload", "hot-restart" or "stop"."""

    command: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ControlReply:
    ok: bool
    # A readable error when not ok; the result (plain data) when ok.
    error: str = ""
    result: dict[str, Any] = field(default_factory=dict)


# -- proxyctl explain: the host each worker's balancer would pick next ---------------------


@dataclass(frozen=True, slots=True)
class PeekPicks:
    """master → worker: the host each of ``clusters`` would pick next, without taking
    the pick (proxyd.worker.peek); answered with :class:`PicksPeeked`."""

    token: int
    clusters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PicksPeeked:
    """worker → master: cluster → host label ("" when no host) for each cluster of the
    worker's epoch ``epoch`` that :class:`PeekPicks` named."""

    worker_id: int
    token: int
    epoch: int
    picks: dict[str, str] = field(default_factory=dict)


# -- new master ↔ old master (hot restart) ----------------------------------------------
#
# On the old master's hot-restart socket, in this order (see proxyd.master.hot_restart):
# new → old HotRestartHello; old → new HotRestartWelcome; new → old
# PassListenSocketsRequest; old → new PassListenSockets (one per listener, admin and
# control socket, the last with ``last``), then StatsTransfer (counter totals); new → old
# DrainListeners (its workers are ready) or HotRestartFailed; old → new
# DrainListenersReply; later new → old Terminate (parent shutdown time reached), and old
# → new a last StatsTransfer (deltas counted while draining) before it exits.


@dataclass(frozen=True, slots=True)
class HotRestartHello:
    """New master → old: who it is. ``restart_epoch`` is the new one's."""

    wire_version: int
    restart_epoch: int
    pid: int


@dataclass(frozen=True, slots=True)
class HotRestartWelcome:
    """Old master → new: the answer to HotRestartHello. Not ``ok`` ends the handshake."""

    ok: bool
    error: str
    wire_version: int
    restart_epoch: int  # the old master's
    generation: int  # the old master's hot_restart_generation
    pid: int
    first_started_at: float  # wall clock when the first master of the line started


@dataclass(frozen=True, slots=True)
class PassListenSocketsRequest:
    """New master → old: send me every listening socket."""


@dataclass(frozen=True, slots=True)
class PassListenSockets:
    """Old master → new: the sockets of one listener (every worker slot's), or the admin
    or control socket (``kind``), by SCM_RIGHTS; ``last`` on the final one."""

    kind: str  # "listener", "admin" or "control"
    name: str
    address: str
    port: int
    shared: bool  # one socket for all slots (from systemd)
    fd_count: int
    last: bool


@dataclass(frozen=True, slots=True)
class StatsTransfer:
    """Old master → new: counter totals (first) or deltas since the last transfer.

    The first also carries what xDS delivered to the old master
    (``XdsClient.export()``), so the new one starts with it instead of waiting for the
    management servers (appended field: an older master sends none)."""

    counters: dict[str, int] = field(default_factory=dict)
    xds: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class DrainListeners:
    """New master → old: my workers are ready; stop accepting and drain."""


@dataclass(frozen=True, slots=True)
class DrainListenersReply:
    """Old master → new: no longer accepting (listeners, admin, control); draining."""

    drain_time_s: float


@dataclass(frozen=True, slots=True)
class HotRestartFailed:
    """New master → old: it gives up (an invalid config, a worker that cannot start)."""

    error: str


@dataclass(frozen=True, slots=True)
class Terminate:
    """New master → old: the parent shutdown time is over; exit now."""


MESSAGES: tuple[type, ...] = (
    Hello,
    AddSockets,
    EpochMsg,
    Drain,
    Stop,
    Ready,
    StatsReport,
    ControlRequest,
    ControlReply,
    # Appended for hot restart (tags of the messages above are unchanged).
    HotRestartHello,
    HotRestartWelcome,
    PassListenSocketsRequest,
    PassListenSockets,
    StatsTransfer,
    DrainListeners,
    DrainListenersReply,
    HotRestartFailed,
    Terminate,
    # Appended for outlier detection.
    HostOutcomes,
    # Appended for refused epochs. Appending keeps every tag, so WIRE_VERSION (which
    # also gates hot restart between versions) stays; only a worker refusing an epoch
    # sends it.
    EpochRefused,
    # Appended for the overload manager and the watchdog (tags above unchanged).
    OverloadActions,
    Heartbeat,
    # Appended for proxyctl explain (tags above unchanged).
    PeekPicks,
    PicksPeeked,
)
_TAG_OF = {cls: i for i, cls in enumerate(MESSAGES)}


# -- sans-IO framing ------------------------------------------------------------------


class _EpochFrames:
    """The frame of the latest epoch, encoded once for all workers (EpochWire keeps
    unchanged listeners and clusters encoded between epochs)."""

    def __init__(self) -> None:
        self.wire = EpochWire()
        self.epoch: Epoch | None = None
        self.frame = b""

    def encode(self, epoch: Epoch) -> bytes:
        if epoch is not self.epoch:
            body = [_TAG_OF[EpochMsg], self.wire.encode(epoch)]
            payload = msgpack.packb(body, use_bin_type=True)
            self.epoch, self.frame = epoch, _LEN.pack(len(payload)) + payload
        return self.frame


_EPOCH_FRAMES = _EpochFrames()


def encode(msg: Any) -> bytes:
    tag = _TAG_OF[type(msg)]
    if isinstance(msg, EpochMsg):
        return _EPOCH_FRAMES.encode(msg.epoch)
    body = [tag, *(_plain(getattr(msg, f.name)) for f in fields(msg))]
    payload = msgpack.packb(body, use_bin_type=True)
    return _LEN.pack(len(payload)) + payload


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def decode(payload: bytes) -> Any:
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        tag, *values = body
        cls = MESSAGES[tag]
    except Exception as exc:  # msgpack raises several unrelated types
        raise IpcError(f"undecodable frame: {exc}") from exc
    if cls is EpochMsg:
        return EpochMsg(from_wire(Epoch, values[0]))
    kwargs = {}
    for f, v in zip(fields(cls), values, strict=False):
        kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


class FrameDecoder:
    """Bytes in, messages out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_message(self) -> Any | None:
        if len(self._buf) < 4:
            return None
        (n,) = _LEN.unpack_from(self._buf)
        if n > MAX_FRAME:
            raise IpcError(f"frame of {n} bytes is over the limit")
        if len(self._buf) < 4 + n:
            return None
        payload = bytes(self._buf[4 : 4 + n])
        del self._buf[: 4 + n]
        return decode(payload)


# -- trio transport -------------------------------------------------------------------


class Channel:
    """Messages (with optional fds) over a connected AF_UNIX stream socket."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self._decoder = FrameDecoder()
        self._fds: deque[int] = deque()
        self._send_lock = trio.Lock()

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        s = socket.socket(fileno=fd)
        return cls(trio.socket.from_stdlib_socket(s))

    async def send(self, msg: Any, fds: list[int] | tuple[int, ...] = ()) -> None:
        await self.send_frame(encode(msg), fds)

    async def send_frame(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        """Send a frame :func:`encode` made (a message sent often is encoded once)."""
        async with self._send_lock:
            if fds:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                sent = await self.sock.sendmsg([data], anc)
                data = data[sent:]
            view = memoryview(data)
            while view:
                sent = await self.sock.send(view)
                view = view[sent:]

    async def receive(self) -> tuple[Any, list[int]]:
        """The next message and the fds it carries. Raises EOFError at end of stream."""
        while True:
            msg = self._decoder.next_message()
            if msg is not None:
                n = getattr(msg, "fd_count", 0)
                if len(self._fds) < n:
                    raise IpcError(f"{type(msg).__name__} announced {n} fds, got {len(self._fds)}")
                return msg, [self._fds.popleft() for _ in range(n)]
            data, anc, _flags, _addr = await self.sock.recvmsg(
                65536, socket.CMSG_SPACE(MAX_FDS_PER_FRAME * 4)
            )
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % 4])
                    self._fds.extend(fds)
            if not data:
                raise EOFError("peer closed the channel")
            self._decoder.feed(data)

    def close(self) -> None:
        self.sock.close()
