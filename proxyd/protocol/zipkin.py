"""Zipkin tracing as Envoy 1.40 does it, without I/O: B3 propagation, the sampling
decision kept in x-request-id, and the Zipkin v2 JSON of a span.

* :func:`extract_b3` reads an incoming context from ``x-b3-*`` or the single ``b3``
  header; :func:`inject_b3` writes the lines that go upstream (the single form when
  the context came in that form, as Envoy does).
* :func:`trace_decision` is Envoy's ``mutateTracingRequestHeader``: the trace reason
  lives in the version digit of the x-request-id uuid (``9`` sampled, ``a`` forced by
  x-envoy-force-trace, ``b`` forced by x-client-trace-id, anything else not traced),
  chosen from the first 8 hex digits of the id modulo 10,000 against random_sampling
  and overall_sampling.
* :func:`span_json` is a finished span as Envoy's Zipkin HTTP_JSON reporter posts it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

B3_NAMES = (
    b"x-b3-traceid",
    b"x-b3-spanid",
    b"x-b3-parentspanid",
    b"x-b3-sampled",
    b"x-b3-flags",
    b"b3",
)
B3_KEYS = tuple(n.decode() for n in B3_NAMES)

NOT_TRACED, SAMPLED, SERVICE_FORCED, CLIENT_FORCED = "4", "9", "a", "b"
_TRACED = frozenset((SAMPLED, SERVICE_FORCED, CLIENT_FORCED))
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class Incoming:
    """A B3 context that came with the request. ``trace_id`` is "" when only a
    sampling state came (``b3: 0``); ``sampled`` is None when none was given."""

    trace_id: str
    span_id: str
    parent_id: str
    sampled: bool | None
    single: bool


def _is_hex(s: str, sizes: tuple[int, ...]) -> bool:
    return len(s) in sizes and all(c in _HEX for c in s)


def _sampled(value: str | None) -> bool | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("1", "true", "d"):
        return True
    if v in ("0", "false"):
        return False
    return None


def extract_b3(headers: dict[str, str]) -> Incoming | None:
    """The incoming B3 context, or None (then a new trace starts)."""
    single = headers.get("b3")
    if single is not None:
        parts = single.strip().split("-")
        if len(parts) == 1:
            s = _sampled(parts[0])
            return Incoming("", "", "", s, True) if s is not None else None
        if len(parts) >= 2 and _is_hex(parts[0], (16, 32)) and _is_hex(parts[1], (16,)):
            s = _sampled(parts[2]) if len(parts) > 2 else None
            parent = parts[3] if len(parts) > 3 and _is_hex(parts[3], (16,)) else ""
            return Incoming(parts[0].lower(), parts[1].lower(), parent.lower(), s, True)
        return None
    flags = headers.get("x-b3-flags")
    sampled = (
        True
        if flags is not None and flags.strip() == "1"
        else _sampled(headers.get("x-b3-sampled"))
    )
    trace_id = headers.get("x-b3-traceid", "").strip()
    span_id = headers.get("x-b3-spanid", "").strip()
    if _is_hex(trace_id, (16, 32)) and _is_hex(span_id, (16,)):
        parent = headers.get("x-b3-parentspanid", "").strip()
        parent = parent.lower() if _is_hex(parent, (16,)) else ""
        return Incoming(trace_id.lower(), span_id.lower(), parent, sampled, False)
    if sampled is not None and not trace_id and not span_id:
        return Incoming("", "", "", sampled, False)
    return None


def inject_b3(trace_id: str, span_id: str, parent_id: str, sampled: bool, single: bool) -> bytes:
    """The header lines (CRLF-ended) that carry the context upstream."""
    s = "1" if sampled else "0"
    if single:
        value = f"{trace_id}-{span_id}-{s}" + (f"-{parent_id}" if parent_id else "")
        return f"b3: {value}\r\n".encode()
    out = f"x-b3-traceid: {trace_id}\r\nx-b3-spanid: {span_id}\r\n"
    if parent_id:
        out += f"x-b3-parentspanid: {parent_id}\r\n"
    return (out + f"x-b3-sampled: {s}\r\n").encode()


def new_id() -> str:
    """A random 64-bit id as 16 hex digits (never all zeros)."""
    while True:
        v = os.urandom(8)
        if any(v):
            return v.hex()


def trace_decision(
    request_id: str,
    client_trace_id: bool,
    force_trace: bool,
    random_sampling: tuple[int, int],
    client_sampling: tuple[int, int],
    overall_sampling: tuple[int, int],
    rand: int,
) -> tuple[str, bool]:
    """``(request_id, traced)``: the x-request-id with its trace reason set as Envoy
    sets it, and whether the request is traced. ``rand`` is a random integer (for
    client_sampling, which Envoy draws at random); samplings are (numerator,
    denominator), evaluated as Envoy's FractionalPercent: ``value % denominator <
    numerator``."""
    if len(request_id) != 36 or not _is_hex(request_id[:8], (8,)):
        return request_id, False  # Envoy leaves a corrupt or missing id alone
    result = int(request_id[:8], 16) % 10000
    reason = request_id[14]
    if reason not in _TRACED:
        if client_trace_id and rand % client_sampling[1] < client_sampling[0]:
            reason = CLIENT_FORCED
        elif force_trace:
            reason = SERVICE_FORCED
        elif result % random_sampling[1] < random_sampling[0]:
            reason = SAMPLED
    if result % overall_sampling[1] >= overall_sampling[0]:
        reason = NOT_TRACED
    if reason != request_id[14] and (reason in _TRACED or request_id[14] in _TRACED):
        request_id = request_id[:14] + reason + request_id[15:]
    return request_id, reason in _TRACED


def span_json(record: tuple[Any, ...], service_name: str, local_ip: str) -> dict[str, Any]:
    """One span record (see proxyd.worker.tracing.SPAN_FIELDS) as Zipkin v2 JSON."""
    trace_id, span_id, parent_id, name, kind, shared, start_us, duration_us, tags = record[:9]
    span: dict[str, Any] = {"traceId": trace_id, "id": span_id}
    if parent_id:
        span["parentId"] = parent_id
    span["name"] = name
    span["kind"] = kind
    span["timestamp"] = start_us
    span["duration"] = duration_us
    endpoint: dict[str, Any] = {"serviceName": service_name, "port": 0}
    if ":" in local_ip:
        endpoint["ipv6"] = local_ip
    elif local_ip:
        endpoint["ipv4"] = local_ip
    span["localEndpoint"] = endpoint
    span["annotations"] = [
        {"timestamp": start_us + duration_us, "value": "ss" if kind == "SERVER" else "cr"}
    ]
    span["tags"] = dict(tags)
    if shared:
        span["shared"] = True
    return span
