"""proxyd.protocol.http1_framing: heads and bodies out of one buffer, whole and byte by byte."""

from __future__ import annotations

import pytest

from proxyd.errors import ProtocolError
from proxyd.protocol.http1_framing import BodyReader, ReceiveBuffer

REQ = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"
POST_LEN = b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello"
POST_CHUNKED = (
    b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\ntrailer: t\r\n\r\n"
)


def feed_in(data: bytes, step: int, size: int = 64) -> list[tuple[str, bytes]]:
    """Feed ``data`` ``step`` bytes at a time; collect heads and the body of each
    request as the framing hands them out (framing taken from the head's first line)."""
    rb = ReceiveBuffer(max_head=1024, size=size)
    out: list[tuple[str, bytes]] = []
    body: BodyReader | None = None
    for i in range(0, len(data), step):
        rb.feed(data[i : i + step])
        while True:
            if body is None:
                head = rb.next_head()
                if head is None:
                    break
                raw = bytes(head)
                out.append(("head", raw))
                low = raw.lower()
                if b"chunked" in low:
                    body = BodyReader(chunked=True)
                elif b"content-length: " in low:
                    n = int(low.split(b"content-length: ")[1].split(b"\r\n")[0])
                    body = BodyReader(length=n)
                else:
                    continue
            pieces = body.read(rb)
            data_out = b"".join(bytes(p) for p in pieces)
            if data_out:
                out.append(("data", data_out))
            if body.done:
                out.append(("end", b""))
                body = None
                continue
            break
    return out


def merged(events: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Adjacent data events joined (byte-at-a-time feeding splits them)."""
    out: list[tuple[str, bytes]] = []
    for kind, value in events:
        if kind == "data" and out and out[-1][0] == "data":
            out[-1] = ("data", out[-1][1] + value)
        else:
            out.append((kind, value))
    return out


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_pipelined_messages_whole_and_in_pieces(step: int) -> None:
    data = REQ + POST_LEN + POST_CHUNKED + b"\r\n" + REQ
    assert merged(feed_in(data, step)) == [
        ("head", REQ),
        ("head", POST_LEN[: POST_LEN.index(b"hello")]),
        ("data", b"hello"),
        ("end", b""),
        ("head", POST_CHUNKED[: POST_CHUNKED.index(b"3\r\n")]),
        ("data", b"abcde"),
        ("end", b""),
        ("head", REQ),
    ]


def test_leading_empty_lines_are_skipped_and_bare_lf_heads_end() -> None:
    rb = ReceiveBuffer(max_head=1024)
    rb.feed(b"\r\n\r\nGET / HTTP/1.1\nhost: x\n\n")
    head = rb.next_head()
    assert head is not None and bytes(head) == b"GET / HTTP/1.1\nhost: x\n\n"


def test_head_too_large_is_431_byte_by_byte() -> None:
    rb = ReceiveBuffer(max_head=100, size=32)
    data = b"GET / HTTP/1.1\r\n" + b"x-long: " + b"a" * 200 + b"\r\n\r\n"
    with pytest.raises(ProtocolError) as info:
        for i in range(len(data)):
            rb.feed(data[i : i + 1])
            assert rb.next_head() is None
    assert info.value.status == 431


def test_response_head_too_large_uses_its_status() -> None:
    rb = ReceiveBuffer(max_head=50, too_large_status=502, skip_crlf=False)
    rb.feed(b"HTTP/1.1 200 OK\r\n" + b"x: " + b"b" * 100 + b"\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        rb.next_head()
    assert info.value.status == 502


def test_buffer_grows_for_a_large_head_and_compacts() -> None:
    rb = ReceiveBuffer(max_head=4096, size=32)
    big = b"GET / HTTP/1.1\r\nx: " + b"c" * 500 + b"\r\n\r\n"
    rb.feed(REQ[:10])
    rb.feed(REQ[10:] + big)
    assert bytes(rb.next_head() or b"") == REQ
    assert bytes(rb.next_head() or b"") == big
    assert rb.buffered == 0


def test_release_only_when_empty_and_space_retakes() -> None:
    given: list[int] = []
    rb = ReceiveBuffer(max_head=1024, size=64, free=lambda b, v: given.append(len(b)))
    rb.feed(REQ[:5])
    rb.release()
    assert rb.holds_buffer  # unconsumed bytes keep it
    rb.feed(REQ[5:])
    assert rb.next_head() is not None
    rb.release()
    assert not rb.holds_buffer and given == [64]
    assert len(rb.space()) == 64 and rb.holds_buffer


@pytest.mark.parametrize(
    "body",
    [
        b"3\nabc\r\n0\r\n\r\n",  # bare LF after a size
        b"zz\r\nabc\r\n0\r\n\r\n",  # not hex
        b"3\r\nabcd\r\n0\r\n\r\n",  # data longer than its size
        b"3\r\nabc\n0\r\n\r\n",  # bare LF after data
    ],
)
@pytest.mark.parametrize("step", [1, 1000])
def test_chunk_framing_errors_are_400(body: bytes, step: int) -> None:
    rb = ReceiveBuffer(max_head=1024)
    reader = BodyReader(chunked=True)
    with pytest.raises(ProtocolError) as info:
        for i in range(0, len(body), step):
            rb.feed(body[i : i + step])
            reader.read(rb)
    assert info.value.status == 400


def test_length_body_with_a_limit_and_truncation() -> None:
    rb = ReceiveBuffer(max_head=1024)
    reader = BodyReader(length=10)
    rb.feed(b"0123456")
    assert [bytes(p) for p in reader.read(rb, limit=4)] == [b"0123"]
    assert [bytes(p) for p in reader.read(rb)] == [b"456"]
    assert not reader.done and reader.left == 3
    with pytest.raises(ProtocolError):
        reader.end_of_stream()


def test_until_close_body_ends_at_eof() -> None:
    rb = ReceiveBuffer(max_head=1024, skip_crlf=False)
    reader = BodyReader(until_close=True)
    rb.feed(b"abc")
    assert [bytes(p) for p in reader.read(rb)] == [b"abc"]
    assert not reader.done
    reader.end_of_stream()
    assert reader.done


def test_a_first_line_is_checked_before_the_head_is_complete() -> None:
    from proxyd.protocol.http1_request_line import check_request_line, check_request_start

    def framing() -> ReceiveBuffer:
        return ReceiveBuffer(
            max_head=1024, check_first_line=check_request_line, check_line_start=check_request_start
        )

    # An HTTP/0.9 request line has no empty line to wait for: 426 at once.
    rb = framing()
    rb.feed(b"GET /\r\n")
    with pytest.raises(ProtocolError) as info:
        rb.next_head()
    assert info.value.status == 426
    # Binary garbage without any line end: 400 at once, byte by byte too.
    rb = framing()
    with pytest.raises(ProtocolError) as info:
        for b in b"\x00\xff" * 100:
            rb.feed(bytes([b]))
            rb.next_head()
    assert info.value.status == 400
    # A good head arriving byte by byte is not refused on the way.
    rb = framing()
    for b in REQ:
        rb.feed(bytes([b]))
        head = rb.next_head()
    assert head is not None and bytes(head) == REQ
