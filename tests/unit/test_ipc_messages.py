"""IPC messages on the wire: EpochRefused round trips, and appending it kept every tag."""

from __future__ import annotations

from proxyd import ipc


def _frames(msg: object) -> bytes:
    return ipc.encode(msg)


def test_epoch_refused_round_trips_whole_and_byte_at_a_time() -> None:
    msg = ipc.EpochRefused(3, 4242, 17, "access log '/var/log/x' cannot be opened: ☃")
    data = _frames(msg) + _frames(ipc.Ready(3, 4242, 16))
    whole = ipc.FrameDecoder()
    whole.feed(data)
    assert whole.next_message() == msg
    assert whole.next_message() == ipc.Ready(3, 4242, 16)
    assert whole.next_message() is None
    one = ipc.FrameDecoder()
    got = []
    for i in range(len(data)):
        one.feed(data[i : i + 1])
        while (m := one.next_message()) is not None:
            got.append(m)
    assert got == [msg, ipc.Ready(3, 4242, 16)]
    assert isinstance(got[0], ipc.EpochRefused) and got[0].reason.endswith("☃")


def test_epoch_refused_is_appended_and_older_tags_are_unchanged() -> None:
    # A master and a worker (or two masters in a hot restart) of the previous version
    # still agree on every message they both know: WIRE_VERSION stays.
    assert ipc.WIRE_VERSION == 1
    assert ipc.MESSAGES.index(ipc.EpochRefused) == 19
    assert ipc.MESSAGES.index(ipc.Ready) == 5
    assert ipc.MESSAGES.index(ipc.HostOutcomes) == 18
    assert ipc.MESSAGES.index(ipc.Terminate) == 17


def test_overload_and_heartbeat_messages_are_appended_and_round_trip() -> None:
    assert ipc.MESSAGES[20:22] == (ipc.OverloadActions, ipc.Heartbeat)
    msgs = [ipc.OverloadActions(True, False, True), ipc.Heartbeat(1), ipc.OverloadActions()]
    data = b"".join(_frames(m) for m in msgs)
    one = ipc.FrameDecoder()
    got = []
    for i in range(len(data)):
        one.feed(data[i : i + 1])
        while (m := one.next_message()) is not None:
            got.append(m)
    assert got == msgs


def test_explain_peek_messages_are_appended_and_round_trip() -> None:
    assert ipc.MESSAGES[22:] == (ipc.PeekPicks, ipc.PicksPeeked)
    msgs = [
        ipc.PeekPicks(7, ("web", "api")),
        ipc.PicksPeeked(1, 7, 12, {"web": "127.0.0.1:9001", "api": ""}),
        ipc.PicksPeeked(0, 8, 12),
    ]
    data = b"".join(_frames(m) for m in msgs)
    one = ipc.FrameDecoder()
    got = []
    for i in range(len(data)):
        one.feed(data[i : i + 1])
        while (m := one.next_message()) is not None:
            got.append(m)
    assert got == msgs
