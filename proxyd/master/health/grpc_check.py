"""Envoy's gRPC health check without I/O: the grpc.health.v1 messages and the verdict.

The check is one unary ``grpc.health.v1.Health/Check`` call (``checker.py`` makes it
with :mod:`proxyd.master.xds.grpc`). Envoy's rules (``GrpcHealthCheckerImpl``):

* the request is a ``HealthCheckRequest`` naming ``service_name`` (none: the server
  as a whole), with ``:authority`` = ``authority`` or else the cluster's name, and
  ``initial_metadata`` added as request headers;
* the host passes only when the call ends with grpc-status OK after exactly one
  ``HealthCheckResponse`` whose status is ``SERVING``; any other answer (NOT_SERVING,
  UNKNOWN, a non-OK grpc-status, a non-200 HTTP status, not gRPC, a second response,
  a payload that does not parse) is an active failure, which takes a healthy host
  out at once; empty messages are skipped, as Envoy's decoder skips them;
* a call that never got an answer (connection refused, lost, GOAWAY: grpc-status
  UNAVAILABLE from the transport) is a network failure, counted toward
  ``unhealthy_threshold``; the timeout is handled by the caller.

The two messages are tiny, so they are encoded and parsed here by hand
(``HealthCheckRequest``: field 1, string ``service``; ``HealthCheckResponse``: field
1, enum ``status``); parsing skips unknown fields as protobuf does.
"""

from __future__ import annotations

import enum

from proxyd.epoch import HealthCheck
from proxyd.master.health.probes import add_header
from proxyd.master.health.state import Result
from proxyd.master.xds.grpc import Status

METHOD = "/grpc.health.v1.Health/Check"


class ServingStatus(enum.IntEnum):
    """grpc.health.v1.HealthCheckResponse.ServingStatus."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3  # Watch only


# -- protobuf wire format ------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int32/int64: ten bytes, two's complement
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    """(value, next offset); ValueError when truncated or longer than ten bytes."""
    value = shift = 0
    for i in range(at, min(at + 10, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value & ((1 << 64) - 1), i + 1
        shift += 7
    raise ValueError("truncated or overlong varint")


def encode_request(service: str) -> bytes:
    """A serialized HealthCheckRequest (proto3: an empty service is not written)."""
    if not service:
        return b""
    raw = service.encode("utf-8")
    return b"\x0a" + _varint(len(raw)) + raw


def decode_response(data: bytes) -> int:
    """The ``status`` of a serialized HealthCheckResponse (0, UNKNOWN, when absent; the
    last one wins, as in protobuf). Raises ValueError when ``data`` does not parse."""
    status = ServingStatus.UNKNOWN.value
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, at = _read_varint(data, at)
            if field == 1:
                status = value - (1 << 64) if value >= 1 << 63 else value
        elif wire == 1:
            at += 8
        elif wire == 2:
            length, at = _read_varint(data, at)
            at += length
        elif wire == 5:
            at += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if at > len(data):
            raise ValueError("truncated field")
    return status


# -- one call ------------------------------------------------------------------------------


def authority(hc: HealthCheck, cluster_name: str) -> str:
    return hc.grpc_authority or cluster_name


def metadata(hc: HealthCheck) -> list[tuple[str, str]]:
    """initial_metadata as request headers, append actions applied in order."""
    headers: list[tuple[str, str]] = []
    for h in hc.grpc_metadata:
        add_header(headers, h.name, h.value, h.action)
    return headers


class CheckReply:
    """The answer to one Check call: feed it each message, then how the call ended."""

    def __init__(self) -> None:
        self.response: bytes | None = None

    def message(self, data: bytes) -> Result | None:
        """Take one response message; a failure already when it is a second one
        (Envoy's "unexpected streaming"), else None."""
        if not data:
            return None  # Envoy skips empty frames
        if self.response is not None:
            return Result.ACTIVE_FAILURE
        self.response = data
        return None

    def end(self, grpc_status: int) -> Result:
        """The verdict once the call ended with ``grpc_status``."""
        if grpc_status == Status.UNAVAILABLE:
            return Result.NETWORK_FAILURE
        if grpc_status != Status.OK or self.response is None:
            return Result.ACTIVE_FAILURE
        try:
            status = decode_response(self.response)
        except ValueError:
            return Result.ACTIVE_FAILURE
        return Result.SUCCESS if status == ServingStatus.SERVING else Result.ACTIVE_FAILURE
