"""One HTTP/1.1 GET from a worker to a host of a cluster, for filters that fetch
something through a cluster (the jwt_authn filter's ``remote_jwks``): the host is the
one the cluster's balancer picks, the connection a new one (``connection: close``; such
fetches are rare: once per cache period), the response read whole with llhttp up to
:data:`MAX_BODY`. Given to filters as :attr:`proxyd.filters.api.EpochFacts.http_get`."""

from __future__ import annotations

from collections.abc import Mapping

import httptools
import trio

from proxyd.worker import io
from proxyd.worker.upstream import ClusterState

MAX_BODY = 1 << 20


class FetchError(Exception):
    """The fetch did not give a complete response (the message says why)."""


class _Response:
    """httptools' callbacks: the status, the body, and whether the message ended."""

    on_message_begin = on_header = on_status = on_chunk_header = on_chunk_complete = None

    def __init__(self) -> None:
        self.body = bytearray()
        self.head_done = False
        self.done = False

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, data: bytes) -> None:
        self.body += data
        if len(self.body) > MAX_BODY:
            raise FetchError("response body too large")

    def on_message_complete(self) -> None:
        self.done = True


async def http_get(
    clusters: Mapping[str, ClusterState], cluster: str, authority: str, path: str, timeout_s: float
) -> tuple[int, bytes]:
    """(status, body) of ``GET path`` with Host ``authority`` from a host of ``cluster``
    within ``timeout_s`` seconds. Raises :class:`FetchError`."""
    state = clusters.get(cluster)
    if state is None:
        raise FetchError(f"no cluster {cluster!r}")
    host = state.balancer.pick()
    if host is None:
        raise FetchError(f"no host in cluster {cluster!r}")
    request = (f"GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n").encode(
        "latin-1", "replace"
    )
    response = _Response()
    parser = httptools.HttpResponseParser(response)
    with trio.move_on_after(timeout_s) as scope:
        try:
            sock = await io.connect(host.address, host.port, state.cluster.connect_timeout_s)
        except (OSError, io.Timeout) as exc:
            raise FetchError(f"connect to {host.label} failed: {exc!r}") from None
        try:
            await io.send_all(sock, request)
            buf = bytearray(65536)
            view = memoryview(buf)
            while not response.done:
                n = await io.recv_into(sock, view)
                if n == 0:
                    break
                parser.feed_data(bytes(view[:n]))
        except (OSError, httptools.HttpParserError) as exc:
            raise FetchError(f"fetch from {host.label} failed: {exc!r}") from None
        finally:
            io.close(sock)
    if scope.cancelled_caught:
        raise FetchError("timed out")
    if not response.head_done:
        raise FetchError("the connection closed before a response")
    # Without a length the body ends with the connection (the loop's EOF).
    return parser.get_status_code(), bytes(response.body)
