"""A one-shot HTTP/1.1 POST client for the master's REST-JSON xDS subscriptions.

The xDS client polls a management server with ``POST /v3/discovery:<type>`` and a JSON
``DiscoveryRequest``; :func:`post_json` sends one such request on a fresh connection and
returns the status and the whole body (content-length, chunked or read-until-close,
parsed by ``httptools``). Nothing here knows about xDS.

Every failure (connect refused, timeout, a malformed or truncated response, a body over
``max_response_bytes``) is an :class:`HttpClientError`; a non-2xx status is not an error
here, the caller decides what it means.
"""

from __future__ import annotations

import httptools
import trio

from proxyd import pipes
from proxyd.errors import ProxydError

DEFAULT_TIMEOUT_S = 15.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
RECEIVE_CHUNK_BYTES = 64 * 1024


class HttpClientError(ProxydError):
    """The request could not be made or the response could not be read."""


class _Response:
    """httptools callbacks: collects the status, framing headers and body."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.body = bytearray()
        self.headers_complete = False
        self.complete = False
        self.delimited = False  # content-length or chunked: EOF before the end is an error
        self.too_large = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (
            name == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self.delimited = True

    def on_headers_complete(self) -> None:
        self.headers_complete = True

    def on_body(self, data: bytes) -> None:
        if len(self.body) + len(data) > self.max_bytes:
            self.too_large = True
            return
        self.body += data

    def on_message_complete(self) -> None:
        self.complete = True


def _request_head(host: str, path: str, body: bytes) -> bytes:
    if not path.startswith("/") or any(c.isspace() for c in path + host):
        raise ValueError(f"invalid request target {host!r} {path!r}")
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        "Accept: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "User-Agent: proxyd",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _exchange(
    host: str, port: int, request: bytes, max_response_bytes: int
) -> tuple[int, bytes]:
    where = pipes.host_label(host, port)
    try:
        stream = await pipes.open_stream(host, port)
    except OSError as exc:
        raise HttpClientError(f"connect to {where} failed: {exc}") from exc
    async with stream:
        response = _Response(max_response_bytes)
        parser = httptools.HttpResponseParser(response)
        try:
            await stream.send_all(request)
            while not response.complete:
                data = await stream.receive_some(RECEIVE_CHUNK_BYTES)
                if not data:
                    if response.headers_complete and not response.delimited:
                        break  # the body ran until the server closed the connection
                    raise HttpClientError(f"{where} closed the connection mid-response")
                parser.feed_data(data)
                if response.too_large:
                    raise HttpClientError(
                        f"response from {where} is larger than {max_response_bytes} bytes"
                    )
        except trio.BrokenResourceError as exc:
            raise HttpClientError(f"connection to {where} lost: {exc}") from exc
        except httptools.HttpParserError as exc:
            raise HttpClientError(f"bad HTTP response from {where}: {exc}") from exc
        return parser.get_status_code(), bytes(response.body)


async def post_json(
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    authority: str = "",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> tuple[int, bytes]:
    """POST ``body`` (JSON) to ``http://host:port/path`` (the pipe ``host`` when ``port``
    is 0); return ``(status, body)``.

    ``authority`` is the Host header (default ``host:port``); ``timeout_s`` bounds the
    whole exchange, connect included.
    """
    request = _request_head(authority or f"{host}:{port}", path, body) + body
    try:
        with trio.fail_after(timeout_s):
            return await _exchange(host, port, request, max_response_bytes)
    except trio.TooSlowError:
        raise HttpClientError(
            f"POST {path} to {host}:{port} timed out after {timeout_s} s"
        ) from None
