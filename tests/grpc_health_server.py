"""A real grpcio server implementing grpc.health.v1.Health/Check, for health check tests.

grpcio-health-checking is not installed, so the two messages are built here from a
hand-written descriptor (``google.protobuf`` descriptor pool and message factory),
independently of proxyd's hand encoding in ``proxyd.master.health.grpc_check``. The
test flips a service's status with :meth:`HealthServer.set`; an unknown service gets
NOT_FOUND, as grpcio's own health servicer answers. Every call's request and metadata
are recorded.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVING, NOT_SERVING, UNKNOWN = 1, 2, 0


def _messages() -> tuple[type[Any], type[Any]]:
    f = descriptor_pb2.FileDescriptorProto(
        name="proxyd_tests/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3"
    )
    req = f.message_type.add(name="HealthCheckRequest")
    req.field.add(name="service", number=1, type=9, label=1)  # TYPE_STRING, OPTIONAL
    resp = f.message_type.add(name="HealthCheckResponse")
    enum = resp.enum_type.add(name="ServingStatus")
    for name, number in (("UNKNOWN", 0), ("SERVING", 1), ("NOT_SERVING", 2), ("SERVICE_UNKNOWN", 3)):  # fmt: skip
        enum.value.add(name=name, number=number)
    resp.field.add(
        name="status", number=1, type=14, label=1,  # TYPE_ENUM
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")),
    )  # fmt: skip


HealthCheckRequest, HealthCheckResponse = _messages()


class HealthServer:
    """``with HealthServer() as s:`` serves on 127.0.0.1:``s.port``."""

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, int] = {"": SERVING}
        self.calls: list[tuple[str, dict[str, str]]] = []  # (service, metadata)
        self.delay_s = 0.0  # how long each answer waits (until stop())
        self._stopped = threading.Event()
        self._server = grpc.server(ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self._check,
                    request_deserializer=HealthCheckRequest.FromString,
                    response_serializer=HealthCheckResponse.SerializeToString,
                )
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")

    def set(self, service: str, status: int) -> None:
        with self._lock:
            self._status[service] = status

    def _check(self, request: Any, context: grpc.ServicerContext) -> Any:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self._lock:
            self.calls.append((request.service, metadata))
            status = self._status.get(request.service)
        if self.delay_s:
            self._stopped.wait(self.delay_s)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return HealthCheckResponse(status=status)

    def start(self) -> HealthServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._server.stop(grace=0).wait(5)

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
