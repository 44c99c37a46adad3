"""proxyd.protocol.h2_flood: Envoy's HTTP/2 flood limits, counted frame by frame."""

from __future__ import annotations

from proxyd.epoch import Http2Options
from proxyd.protocol.h2_flood import (
    EMPTY_FRAMES_FLOOD,
    OUTBOUND_CONTROL_FLOOD,
    OUTBOUND_FLOOD,
    PRIORITY_FLOOD,
    WINDOW_UPDATE_FLOOD,
    FloodGuard,
)


def test_envoy_defaults_apply_without_configuration():
    g = FloodGuard(Http2Options())
    assert (g.max_out, g.max_control, g.max_empty, g.max_priority, g.max_wu_per_data) == (
        10000, 1000, 1, 100, 10,
    )  # fmt: skip


def test_consecutive_empty_frames():
    g = FloodGuard(Http2Options())
    assert g.empty_frame() is None
    g.empty_run = 0  # a frame with a payload between them
    assert g.empty_frame() is None
    assert g.empty_frame() == EMPTY_FRAMES_FLOOD


def test_priority_frames_grow_with_the_streams_opened():
    g = FloodGuard(Http2Options(max_inbound_priority_frames_per_stream=2))
    assert [g.priority_frame() for _ in range(3)] == [None, None, PRIORITY_FLOOD]
    g = FloodGuard(Http2Options(max_inbound_priority_frames_per_stream=2))
    g.headers_frame()
    assert [g.priority_frame() for _ in range(5)] == [None] * 4 + [PRIORITY_FLOOD]


def test_window_updates_grow_with_streams_and_data_sent():
    g = FloodGuard(Http2Options())
    assert [g.window_update_frame() for _ in range(6)] == [None] * 5 + [WINDOW_UPDATE_FLOOD]
    g = FloodGuard(Http2Options(max_inbound_window_update_frames_per_data_frame_sent=3))
    g.headers_frame()  # +2
    g.data_sent = 1  # +2*3
    assert [g.window_update_frame() for _ in range(14)] == [None] * 13 + [WINDOW_UPDATE_FLOOD]


def test_outbound_queue_until_written():
    g = FloodGuard(Http2Options(max_outbound_frames=5, max_outbound_control_frames=2))
    g.control_frame()
    g.control_frame()
    assert g.check_outbound() is None
    g.control_frame()
    assert g.check_outbound() == OUTBOUND_CONTROL_FLOOD
    g.written()
    g.out_frames = 6
    assert g.check_outbound() == OUTBOUND_FLOOD
    g.written()
    assert g.check_outbound() is None
