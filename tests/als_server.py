"""A gRPC access log service (``envoy.service.accesslog.v3.AccessLogService``) for the
tests: grpcio with the xds-protos messages. It keeps, per stream, the identifier that
came on the first message and every HTTP / TCP entry (as dicts, from
``MessageToDict``), so that what Envoy and proxyd stream can be compared field by
field."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import json_format

SERVICE = "envoy.service.accesslog.v3.AccessLogService"


class AccessLogServer:
    def __init__(self, port: int = 0, end_after: int = 0) -> None:
        """``end_after``: answer (ending the call) after that many messages (0: never)."""
        self.lock = threading.Lock()
        # One dict per stream: {"identifiers": [...], "http": [...], "tcp": [...],
        # "messages": n, "sizes": [each message's size]}.
        self.streams: list[dict[str, Any]] = []

        def stream_logs(requests: Any, context: Any) -> Any:
            got: dict[str, Any] = {
                "identifiers": [], "http": [], "tcp": [], "messages": 0, "sizes": []
            }  # fmt: skip
            with self.lock:
                self.streams.append(got)
            for message in requests:
                with self.lock:
                    got["messages"] += 1
                    got["sizes"].append(message.ByteSize())
                    if message.HasField("identifier"):
                        got["identifiers"].append(_dict(message.identifier))
                    for entry in message.http_logs.log_entry:
                        got["http"].append(_dict(entry))
                    for entry in message.tcp_logs.log_entry:
                        got["tcp"].append(_dict(entry))
                    if end_after and got["messages"] >= end_after:
                        break
            return als_pb2.StreamAccessLogsResponse()

        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "StreamAccessLogs": grpc.stream_unary_rpc_method_handler(
                    stream_logs,
                    request_deserializer=als_pb2.StreamAccessLogsMessage.FromString,
                    response_serializer=als_pb2.StreamAccessLogsResponse.SerializeToString,
                )
            },
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    def http_entries(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for s in self.streams for e in s["http"]]

    def tcp_entries(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for s in self.streams for e in s["tcp"]]

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(s) for s in self.streams]

    def reset(self) -> None:
        with self.lock:
            self.streams = []

    def close(self) -> None:
        self.server.stop(grace=None)


def _dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
