"""Envoy's HTTP/2 flood limits for one downstream connection (no I/O here).

Envoy's codec keeps a ``ProtocolConstraints`` beside each HTTP/2 connection; the fields
of ``http2_protocol_options`` set its limits (Envoy's defaults apply when they are
absent), and the first limit a client passes ends the connection, counted in the
``http2.*`` stat this module names:

* frames proxyd queued that the client has not read: more than ``max_outbound_frames``
  (``http2.outbound_flood``), or more than ``max_outbound_control_frames`` of PING
  and SETTINGS acknowledgements and RST_STREAM (``http2.outbound_control_flood``);
* consecutive DATA, HEADERS or CONTINUATION frames with an empty payload and no
  END_STREAM, more than ``max_consecutive_inbound_frames_with_empty_payload``
  (``http2.inbound_empty_frames_flood``);
* PRIORITY frames, more than ``max_inbound_priority_frames_per_stream`` for each stream
  the client opened, plus one (``http2.inbound_priority_frames_flood``);
* WINDOW_UPDATE frames, more than 5 + 2 × (streams opened +
  ``max_inbound_window_update_frames_per_data_frame_sent`` × DATA frames sent)
  (``http2.inbound_window_update_frames_flood``).

:class:`FloodGuard` counts; the codec (:mod:`proxyd.worker.h2_downstream`) tells it what
crossed the wire and acts on the stat name a check returns.
"""

from __future__ import annotations

from proxyd.epoch import Http2Options

OUTBOUND_FLOOD = "outbound_flood"
OUTBOUND_CONTROL_FLOOD = "outbound_control_flood"
EMPTY_FRAMES_FLOOD = "inbound_empty_frames_flood"
PRIORITY_FLOOD = "inbound_priority_frames_flood"
WINDOW_UPDATE_FLOOD = "inbound_window_update_frames_flood"

# The WINDOW_UPDATE allowance every connection has (Envoy's constant).
_WINDOW_UPDATE_BASE = 5


class FloodGuard:
    """The counters of one connection against its limits. Each ``*_frame`` method is
    called once per frame of its kind and returns the name of the flood stat when the
    frame passes a limit, else None."""

    __slots__ = (
        "max_out",
        "max_control",
        "max_empty",
        "max_priority",
        "max_wu_per_data",
        "out_frames",
        "out_control",
        "empty_run",
        "streams",
        "priority",
        "window_updates",
        "data_sent",
    )

    def __init__(self, options: Http2Options) -> None:
        self.max_out = options.max_outbound_frames
        self.max_control = options.max_outbound_control_frames
        self.max_empty = options.max_consecutive_inbound_frames_with_empty_payload
        self.max_priority = options.max_inbound_priority_frames_per_stream
        self.max_wu_per_data = options.max_inbound_window_update_frames_per_data_frame_sent
        # Queued, not yet written to the socket.
        self.out_frames = 0
        self.out_control = 0
        self.empty_run = 0
        self.streams = 0
        self.priority = 0
        self.window_updates = 0
        self.data_sent = 0

    # -- inbound ------------------------------------------------------------------------

    def headers_frame(self) -> None:
        """A request's header block (a stream opened; its payload is not empty)."""
        self.streams += 1
        self.empty_run = 0

    def empty_frame(self) -> str | None:
        """A DATA, HEADERS or CONTINUATION frame with no payload and no END_STREAM (any
        other such frame sets ``empty_run`` back to 0)."""
        self.empty_run += 1
        return EMPTY_FRAMES_FLOOD if self.empty_run > self.max_empty else None

    def priority_frame(self) -> str | None:
        self.priority += 1
        if self.priority > self.max_priority * (1 + self.streams):
            return PRIORITY_FLOOD
        return None

    def window_update_frame(self) -> str | None:
        self.window_updates += 1
        allowed = _WINDOW_UPDATE_BASE + 2 * (self.streams + self.max_wu_per_data * self.data_sent)
        return WINDOW_UPDATE_FLOOD if self.window_updates > allowed else None

    # -- outbound -----------------------------------------------------------------------

    def control_frame(self) -> None:
        """A PING or SETTINGS acknowledgement or an RST_STREAM queued."""
        self.out_control += 1
        self.out_frames += 1

    def check_outbound(self) -> str | None:
        """After frames were queued: whether the queue has passed a limit."""
        if self.out_frames > self.max_out:
            return OUTBOUND_FLOOD
        if self.out_control > self.max_control:
            return OUTBOUND_CONTROL_FLOOD
        return None

    def written(self) -> None:
        """Everything queued went out to the socket."""
        self.out_frames = 0
        self.out_control = 0
