"""Header values with Envoy's ``%OPERATOR%`` substitutions (route header mutations).

Envoy evaluates ``request_headers_to_add`` / ``response_headers_to_add`` values with its
substitution formatter, the access log's. proxyd does the same: a value is split by the
access log's parser and each operator is compiled by the access log's
:func:`~proxyd.protocol.access_log_operators.compile_operator` into a getter over a
:class:`~proxyd.protocol.access_log.LogRecord` that the worker fills for the stream
when (and only when) a value needs one. A value without an operator is plain bytes,
compiled once per epoch, and costs nothing per request.

Where a header value differs from an access-log line (Envoy 1.40, checked against the
binary by tests/compat/test_header_formatters_compat.py):

* a value that is not there is the empty string, not ``-`` (and a header whose whole
  value comes out empty is not added unless ``keep_empty_value``); values Envoy renders
  as the text ``-`` stay so: ``%RESPONSE_FLAGS%`` with no flag, a missing
  ``%ENVIRONMENT(X)%``;
* a reply the proxy makes itself (no healthy upstream, direct_response, a timeout, ...)
  has ``%RESPONSE_CODE%`` 0 and no response headers but ``:status`` when its header
  mutations are evaluated (Envoy runs them before it sets the code and the body's
  headers): the record then carries ``resp_headers == {":status": "503"}``;
* request headers are evaluated before an upstream host is picked, so
  ``%UPSTREAM_REMOTE_ADDRESS%`` / ``%UPSTREAM_HOST%`` are empty there, and
  ``%RESPONSE_CODE%`` is 0.
"""

from __future__ import annotations

import os
from typing import Any

from proxyd.protocol.access_log_operators import (
    Getter,
    OperatorError,
    Value,
    compile_operator,
    parse,
)

__all__ = ["OperatorError", "ValueFormat", "compile_value"]


def _status(rec: Any) -> Value:
    """``:status`` of the response being formatted (a local reply carries its own)."""
    s = rec.resp_headers.get(":status")
    if s is not None:
        return s
    return str(rec.response_code) if rec.response_code else None


def _response_code(rec: Any) -> Value:
    # A local reply's code is set after its header mutations (see the module docstring).
    return 0 if ":status" in rec.resp_headers else rec.response_code


def _headers(name: str, param: str | None, length: str | None, req: set, resp: set) -> Getter:
    names = (param or "").split("?")
    if name in ("REQ", "REQUEST_HEADER") and "user-agent" in (n.lower() for n in names):
        req.add("user-agent")  # a LogRecord field, filled from the collected headers
    if name in ("RESP", "RESPONSE_HEADER") and ":status" in (n.lower() for n in names):
        # Alternatives with :status: each in turn, through _status for that one.
        getters = [
            _status if n.lower() == ":status" else compile_operator(name, n, None, req, resp)
            for n in names
            if n
        ]
        limit = int(length) if length is not None else None

        def get(rec: Any) -> Value:
            for g in getters:
                v = g(rec)
                if v is not None:
                    return v[:limit] if limit is not None and isinstance(v, str) else v
            return None

        compile_operator(name, param, length, set(), set())  # Envoy's checks
        return get
    return compile_operator(name, param, length, req, resp)


def _compile(name: str, param: str | None, length: str | None, req: set, resp: set) -> Getter:
    if name in ("REQ", "REQUEST_HEADER", "RESP", "RESPONSE_HEADER"):
        return _headers(name, param, length, req, resp)
    getter = compile_operator(name, param, length, req, resp)
    if name == "RESPONSE_CODE":
        return _response_code
    if name == "ENVIRONMENT":
        value = os.environ.get(param or "")
        text = "-" if value is None else value
        if length is not None:
            text = text[: int(length)]
        return lambda rec: text
    return getter


class ValueFormat:
    """One header value with operators, compiled; ``fmt(rec)`` is its text."""

    __slots__ = ("parts", "request_headers", "response_headers", "source")

    def __init__(self, value: str) -> None:
        req: set[str] = set()
        resp: set[str] = set()
        parts: list[str | Getter] = []
        for piece in parse(value):
            if isinstance(piece, str):
                parts.append(piece)
            else:
                parts.append(_compile(*piece, req, resp))
        self.parts = tuple(parts)
        self.request_headers = frozenset(req)
        self.response_headers = frozenset(resp)
        self.source = value

    def __call__(self, rec: Any) -> str:
        out = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
            else:
                v = p(rec)
                if v is not None:
                    out.append(v if isinstance(v, str) else str(v))
        return "".join(out)


def compile_value(value: str) -> bytes | ValueFormat:
    """``value`` as bytes when it has no operator (``%%`` resolved), else compiled.
    Raises :class:`OperatorError` (a ValueError) with Envoy's reason, or proxyd's for an
    operator it refuses."""
    pieces = parse(value)
    if all(isinstance(p, str) for p in pieces):
        return "".join(pieces).encode("latin-1", "replace")  # type: ignore[arg-type]
    return ValueFormat(value)
