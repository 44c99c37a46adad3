"""Envoy's access-log filters (``config.accesslog.v3.AccessLogFilter``), compiled once
per epoch into a predicate over a :class:`~proxyd.protocol.access_log.LogRecord`.

Each kind means what it means in Envoy 1.40:

* ``status_code`` / ``duration``: the response code (0 when none was sent) / the
  duration in ms compared (EQ, GE, LE) with the runtime value of ``runtime_key`` when
  the runtime has one, else with ``default_value``.
* ``not_health_check``: true unless the request is a health check answered by the
  health_check HTTP filter; proxyd has no such filter, so always true.
* ``traceable``: true only for a request traced with reason "service forced" (the
  ``a`` in its x-request-id) on a listener with tracing.
* ``runtime``: samples ``percent_sampled`` (the runtime key's value overrides it: an
  integer is a percentage, over 100 always true). Unless ``use_independent_randomness``
  the sample is stable per request: the first 8 hex digits of x-request-id as an
  integer, modulo the denominator (Envoy's UUID request-id extension); a request
  without a usable id draws a random number.
* ``and`` / ``or``: every / any operand, evaluated in order, stopping early.
* ``response_flag``: any flag set (no flags listed), or any of the listed flags.
* ``header``: a ``HeaderMatcher`` on the request headers.
* ``grpc_status``: the gRPC status (grpc-status response header, else inferred from the
  HTTP status, else Unknown) is one of ``statuses`` (or is not, with ``exclude``).
* ``log_type``: the record's ACCESS_LOG_TYPE is one of ``types`` (or not, ``exclude``).

The runtime is a seam: :class:`Runtime` is what a filter asks of it; :data:`NO_RUNTIME`
(every key unset, so each default applies) is used until proxyd's layered runtime
passes its snapshot to :func:`compile_filter`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

from proxyd.epoch import AccessLogFilter
from proxyd.protocol.access_log import LogRecord
from proxyd.protocol.access_log_operators import grpc_status
from proxyd.protocol.routing import compile_headers, headers_match

Predicate = Callable[[LogRecord], bool]


class Runtime(Protocol):
    """What access-log filters read of the runtime (the shape of the runtime snapshot
    a worker builds per epoch, ``proxyd.protocol.runtime.Snapshot``)."""

    def integer(self, key: str, default: int) -> int:
        """Envoy's ``getInteger``: the key's unsigned integer value, else ``default``."""
        ...

    def fraction(self, key: str, numerator: int, denominator: int) -> tuple[int, int]:
        """The (numerator, denominator) ``featureEnabled`` compares a sample with: the
        key's fractional percent, or its integer value N as N/100 (over 100: always),
        else the default given."""
        ...


class _NoRuntime:
    def integer(self, key: str, default: int) -> int:
        return default

    def fraction(self, key: str, numerator: int, denominator: int) -> tuple[int, int]:
        return numerator, denominator


NO_RUNTIME: Runtime = _NoRuntime()


def _compare(op: str, left: int, right: int) -> bool:
    if op == "GE":
        return left >= right
    if op == "EQ":
        return left == right
    if op == "LE":
        return left <= right
    raise ValueError(f"unknown comparison {op!r}")


def request_id_sample(request_id: str | None) -> int | None:
    """Envoy's UUID request-id ``toInteger``: the first 8 characters as hex, or None."""
    if not request_id or len(request_id) < 8:
        return None
    try:
        return int(request_id[:8], 16)
    except ValueError:
        return None


def _runtime_filter(f: AccessLogFilter, runtime: Runtime, rng: random.Random) -> Predicate:
    key, numerator, denominator = f.runtime_key, f.value, f.denominator
    independent = f.independent

    def evaluate(rec: LogRecord) -> bool:
        sample = None if independent else request_id_sample(rec.request_id)
        value = rng.getrandbits(64) if sample is None else sample % denominator
        num, den = (
            runtime.fraction(key, numerator, denominator) if key else (numerator, denominator)
        )
        return value % den < num

    return evaluate


def compile_filter(
    f: AccessLogFilter, runtime: Runtime = NO_RUNTIME, rng: random.Random | None = None
) -> Predicate:
    """The predicate for ``f``; ``rng`` draws the runtime filter's independent samples."""
    kind = f.kind
    if kind in ("status_code", "duration"):
        attr = "response_code" if kind == "status_code" else "duration_ms"
        op, default, key = f.op, f.value, f.runtime_key

        def compare(rec: LogRecord) -> bool:
            target = runtime.integer(key, default) if key else default
            return _compare(op, getattr(rec, attr), target)

        return compare
    if kind == "not_health_check":
        return lambda rec: True
    if kind == "traceable":
        # Envoy's: traced with reason "service forced" (x-envoy-force-trace on an
        # internal request), the ``a`` in x-request-id; never without tracing.
        return lambda rec: rec.trace_id is not None and (rec.request_id or "")[14:15] == "a"
    if kind == "runtime":
        return _runtime_filter(f, runtime, rng or random.Random())
    if kind in ("and", "or"):
        parts = tuple(compile_filter(c, runtime, rng) for c in f.children)
        if kind == "and":
            return lambda rec: all(p(rec) for p in parts)
        return lambda rec: any(p(rec) for p in parts)
    if kind == "response_flag":
        wanted = frozenset(f.names)

        def flags(rec: LogRecord) -> bool:
            text = rec.response_flags
            if not text or text == "-":
                return False
            if not wanted:
                return True
            return any(flag in wanted for flag in text.split(","))

        return flags
    if kind == "header":
        assert f.header is not None
        tests = compile_headers((f.header,))

        def header(rec: LogRecord) -> bool:
            headers = dict(rec.req_headers)
            if rec.method is not None:
                headers.setdefault(":method", rec.method)
            if rec.scheme is not None:
                headers.setdefault(":scheme", rec.scheme)
            return headers_match(tests, headers, rec.authority or "", rec.path or "")

        return header
    if kind == "grpc_status":
        codes = frozenset(f.codes)
        exclude = f.exclude

        def grpc(rec: LogRecord) -> bool:
            status = grpc_status(rec)
            found = (2 if status is None else status) in codes
            return not found if exclude else found

        return grpc
    if kind == "log_type":
        types = frozenset(f.names)
        exclude = f.exclude
        return lambda rec: (rec.log_type in types) != exclude
    raise ValueError(f"unknown access log filter {kind!r}")


def filter_header_names(f: AccessLogFilter) -> frozenset[str]:
    """Request headers a filter reads (the worker must collect them)."""
    names: set[str] = set()
    if f.kind == "header" and f.header is not None:
        name = f.header.name.lower()
        if not name.startswith(":") and name != "host":
            names.add(name)
    for c in f.children:
        names |= filter_header_names(c)
    return frozenset(names)


def filter_reads_grpc_status(f: AccessLogFilter) -> bool:
    return f.kind == "grpc_status" or any(filter_reads_grpc_status(c) for c in f.children)
