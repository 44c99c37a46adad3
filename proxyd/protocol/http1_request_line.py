"""The HTTP/1 request line by Envoy's rules, and the limits of a request head.

Envoy 1.40's HTTP/1 codec (balsa) reads a request line differently from llhttp: it
splits on spaces and tabs, takes only the methods it knows, answers 426 to any version
but HTTP/1.1 (HTTP/1.0 unless ``accept_http_10``, HTTP/0.9 lines, ``HTTP/1.2``,
``HTTP/2.0``) and 400 to a malformed one, and refuses control, space, DEL and non-ASCII
bytes in the target. :func:`check_request_line` does the same, so the request parser
(:mod:`proxyd.protocol.http1`) can hand llhttp only the header lines.
"""

from __future__ import annotations

import re

from proxyd.errors import ProtocolError

# The methods Envoy's HTTP/1 codec (balsa) accepts; any other token is a 400.
METHODS = frozenset(
    b"ACL BIND CHECKOUT CONNECT COPY DELETE GET HEAD LINK LOCK MERGE MKACTIVITY "
    b"MKCALENDAR MKCOL MOVE MSEARCH NOTIFY OPTIONS PATCH POST PROPFIND PROPPATCH PURGE "
    b"PUT REBIND REPORT SEARCH SOURCE SUBSCRIBE TRACE UNBIND UNLINK UNLOCK "
    b"UNSUBSCRIBE".split()
)
# Requests that carry no body: any other method without one is sent upstream with
# "content-length: 0", as Envoy's encoder does.
BODILESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "TRACE", "CONNECT"})
# Envoy splits the request line on spaces and tabs, and allows them after the version.
_LINE = re.compile(rb"([^ \t]+)[ \t]+([^ \t]+)(?:[ \t]+([^ \t]+))?[ \t]*\Z")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")
# Bytes Envoy refuses anywhere in a request target: controls, space, DEL, non-ASCII.
BAD_TARGET = re.compile(rb"[\x00-\x20\x7f-\xff]")
# What an authority may hold (RFC 3986 §3.2, as nghttp2_check_authority and Envoy).
BAD_AUTHORITY = re.compile(rb"[^A-Za-z0-9\-._~!$&'()*+,;=:@\[\]%]")
# A method is a token (RFC 9110 §5.6.2).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
# Envoy's max_request_headers_count default (HttpProtocolOptions.max_headers_count).
MAX_HEADERS_COUNT = 100


def check_request_line(line: bytes, accept_http_10: bool = False) -> tuple[bytes, bytes]:
    """``(method, target)`` of a request line (without its line end), or the
    :class:`ProtocolError` Envoy answers it with: 426 for a version other than
    HTTP/1.1 (HTTP/1.0, a line with no version as in HTTP/0.9, ``HTTP/1.2``,
    ``HTTP/2.0``), 400 for anything else that is not ``method SP target SP HTTP/x.y``.
    With ``accept_http_10`` (Http1ProtocolOptions) each of those 426s is taken as an
    HTTP/1.0 request instead, as Envoy takes it (:func:`is_http10` tells them apart).

    The worker can call it as soon as the first line of a head is in, so that a
    request line that can never lead anywhere is answered without waiting for the rest.
    """
    m = _LINE.match(line)
    if m is None:
        raise ProtocolError("invalid request line", 400)
    method, target, version = m.groups()
    if method not in METHODS:
        raise ProtocolError("invalid method", 400)
    if version is None and target.startswith(b"HTTP/"):
        raise ProtocolError("no request target", 400)
    if version != b"HTTP/1.1":
        if version is None or _VERSION.match(version):
            if accept_http_10:
                # Envoy 1.40 then takes any other version (HTTP/0.9, 1.2, 2.0, a line
                # without one) as HTTP/1.0.
                return method, _checked_target(target)
            # Envoy refuses HTTP/1.0 unless accept_http_10 is set.
            raise ProtocolError("only HTTP/1.1 is accepted", 426)
        raise ProtocolError("invalid HTTP version", 400)
    return method, _checked_target(target)


def _checked_target(target: bytes) -> bytes:
    if BAD_TARGET.search(target):
        raise ProtocolError("invalid character in the request target", 400)
    return target


def check_http10_request_line(line: bytes) -> tuple[bytes, bytes]:
    """:func:`check_request_line` with ``accept_http_10``."""
    return check_request_line(line, True)


def is_http10(line: bytes) -> bool:
    """Whether a request line :func:`check_request_line` took is not HTTP/1.1."""
    m = _LINE.match(line)
    return m is not None and m[3] != b"HTTP/1.1"


def check_request_start(prefix: bytes) -> None:
    """The start of a request line whose end has not arrived: raise the 400 a method
    that is not a token gets at once (binary garbage is answered, not waited on)."""
    end = len(prefix)
    for sep in (b" ", b"\t"):
        i = prefix.find(sep)
        if 0 <= i < end:
            end = i
    if _TOKEN.fullmatch(prefix, 0, end) is None:
        raise ProtocolError("invalid method", 400)
