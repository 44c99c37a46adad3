"""An HTTP/2 tunnel upstream for the TCP proxy's tunneling tests (the ``h2`` library,
a thread per connection, plaintext prior knowledge): it records each stream's request
headers, answers by the first label of ``:authority`` (``deny``: 407 and the stream
ends; anything else: 200), then echoes each DATA frame prefixed with ``echo:`` and ends
its side when the client ends its own."""

from __future__ import annotations

import socket
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from tests.support import ThreadedTcpServer


class H2TunnelServer(ThreadedTcpServer):
    def __init__(self) -> None:
        self.heads: list[list[tuple[str, str]]] = []
        super().__init__()

    def _serve(self, s: socket.socket) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        modes: dict[int, Any] = {}
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        hd = dict(ev.headers)
                        self.heads.append(sorted(ev.headers))
                        mode = hd.get(":authority", "").split(".")[0].split(":")[0]
                        modes[ev.stream_id] = mode
                        if mode == "deny":
                            conn.send_headers(ev.stream_id, [(":status", "407")], end_stream=True)
                        else:
                            conn.send_headers(ev.stream_id, [(":status", "200")])
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        if ev.data and modes.get(ev.stream_id) != "deny":
                            out = b"echo:" + ev.data
                            size = conn.max_outbound_frame_size
                            for i in range(0, len(out), size):
                                conn.send_data(ev.stream_id, out[i : i + size])
                    elif isinstance(ev, h2.events.StreamEnded):
                        if modes.get(ev.stream_id) != "deny":
                            conn.end_stream(ev.stream_id)
                s.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.H2Error):
            pass
        finally:
            s.close()
