"""A connection manager's ``http_protocol_options`` on HTTP/1 heads, as Envoy 1.40 applies
them (checked against it in tests/compat/test_http1_options_compat.py).

* ``accept_http_10``: an HTTP/1.0 request (or a request line with no version) is
  proxied instead of answered 426. It goes upstream as HTTP/1.1; without a Host it
  takes ``default_host_for_http_10`` (none: 400). The response's status line says
  ``HTTP/1.0``; it carries ``connection: close`` and the connection closes, unless the
  request asked for ``connection: keep-alive`` (then the response says so and the
  connection stays). A body of unknown length is not chunked: it ends with the
  connection.
* ``header_key_format.proper_case_words``: every response header name written
  downstream (proxied responses and local replies alike) in Proper-Case: the first
  letter and each letter after a character that is neither a letter nor a digit upper
  case (``x-envoy-upstream-service-time`` → ``X-Envoy-Upstream-Service-Time``,
  ``x_a`` → ``X_A``). Upstream requests keep lower-case names.
* ``header_key_format.stateful_formatter`` (``preserve_case``): each request header
  name goes upstream as it arrived (the first spelling, when one name came in several),
  a header proxyd adds under a name the client sent included; the names proxyd adds
  (``x-forwarded-proto``, ``x-request-id``, ...) stay lower case, or in Proper-Case with
  ``formatter_type_on_envoy_headers: PROPER_CASE``. Responses keep lower-case names
  (the response's names belong to the cluster's codec, whose options proxyd does not
  take).

A cluster's ``http_protocol_options.header_key_format`` (its codec's):
``proper_case_words`` writes the request header names upstream in Proper-Case
(:func:`proper_case_head`), unless the listener has ``preserve_case``, whose names win
(Envoy's request carries the listener's formatter); ``preserve_case`` changes no request
name (a response's names already go downstream as the upstream wrote them, and the
listener's ``proper_case_words`` is not applied to them: Envoy's response carries the
cluster's formatter, which wins).

The worker keeps one :class:`Http1Format` per listener that sets any of these (None
otherwise), so a listener without them pays one ``is None`` per response.
"""

from __future__ import annotations

import re

from proxyd.epoch import Http1Options

# Header names as they arrived: a line start, then the name up to its colon (llhttp
# has already refused whitespace before a colon).
_NAMES = re.compile(rb"\n([^:\r\n]+):")
# A letter that starts a Proper-Case word: the first character, or one after a
# character that is neither a letter nor a digit.
_WORD_START = re.compile(rb"(?:^|(?<=[^A-Za-z0-9]))[a-z]")
CRLF2 = b"\r\n\r\n"


def proper_case(name: bytes) -> bytes:
    """Envoy's ProperCaseHeaderKeyFormatter: ``content-type`` → ``Content-Type``."""
    return _WORD_START.sub(_upper, name)


def _upper(m: re.Match[bytes]) -> bytes:
    return m[0].upper()


def original_names(head: bytes | memoryview) -> dict[bytes, bytes]:
    """Lower-case name → the spelling it first arrived in, for the header lines of
    ``head`` (a request head as received)."""
    out: dict[bytes, bytes] = {}
    for m in _NAMES.finditer(head):
        name = m[1]
        out.setdefault(name.lower(), name)
    return out


def _recase(head: bytes, rename: dict[bytes, bytes], proper_rest: bool) -> bytes:
    """``head`` (lower-case names, as proxyd writes them; it may go on with a body)
    with each header name in ``rename`` spelled as it says there, and, with
    ``proper_rest``, each other name in Proper-Case."""
    end = head.find(CRLF2)
    if end < 0:
        end = len(head)
    lines = head[:end].split(b"\r\n")
    for i in range(1, len(lines)):
        line = lines[i]
        colon = line.find(b":")
        if colon <= 0:
            continue
        name = line[:colon]
        low = name.lower()
        new = rename.get(low)
        if new is None:
            if not proper_rest:
                continue
            new = proper_case(low)
        if new != name:
            lines[i] = new + line[colon:]
    return b"\r\n".join(lines) + head[end:]


def proper_case_head(head: bytes) -> bytes:
    """A request head (perhaps followed by body bytes) with every header name in
    Proper-Case, as a cluster's ``proper_case_words`` codec writes it."""
    return _recase(head, {}, True)


class Http1Format:
    """One listener's :class:`~proxyd.epoch.Http1Options`, compiled for the worker."""

    __slots__ = (
        "accept_http_10",
        "default_host",
        "proper_case_responses",
        "preserve_request_case",
        "envoy_headers_proper_case",
    )

    def __init__(self, options: Http1Options) -> None:
        self.accept_http_10 = options.accept_http_10
        self.default_host = options.default_host_for_http_10.encode("latin-1")
        self.proper_case_responses = options.header_key_format == "proper_case_words"
        self.preserve_request_case = options.header_key_format == "preserve_case"
        self.envoy_headers_proper_case = options.envoy_headers_proper_case

    def upstream_head(self, raw: bytes, names: dict[bytes, bytes] | None) -> bytes:
        """The request head ``raw`` as it goes upstream: with preserve_case, the names
        the client sent spelled as it sent them (``names``, from
        :func:`original_names`)."""
        if not self.preserve_request_case or names is None:
            return raw
        return _recase(raw, names, self.envoy_headers_proper_case)

    def downstream_head(
        self, data: bytes, http10: bool, keep_alive: bool, proper: bool = True
    ) -> bytes:
        """A response head (perhaps followed by body bytes) as written downstream: an
        ``HTTP/1.0`` status line for an HTTP/1.0 request, ``connection: keep-alive``
        when such a request asked to keep the connection, names in Proper-Case (not
        when ``proper`` is false: a response from a cluster with ``preserve_case``)."""
        if http10:
            data = b"HTTP/1.0" + data[8:]
            if keep_alive:
                end = data.find(CRLF2) + 2
                data = data[:end] + b"connection: keep-alive\r\n" + data[end:]
        if self.proper_case_responses and proper:
            data = _recase(data, {}, True)
        return data
