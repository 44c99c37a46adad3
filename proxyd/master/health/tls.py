"""Active health checks of a TLS cluster go over TLS, as Envoy's do (its health
checkers connect through the cluster's transport socket): the handshake, the SAN
checks and the ``cluster.<name>.ssl.*`` counts a worker's connection would make
(:mod:`proxyd.worker.upstream_tls`), on a trio stream in the master.
"""

from __future__ import annotations

import trio

from proxyd.epoch import UpstreamTls
from proxyd.protocol.tls_context import SanChecker
from proxyd.protocol.upstream_tls_context import client_context, peer_certificate
from proxyd.stats import StatsStore


async def tls_handshake(
    stream: trio.SocketStream, tls: UpstreamTls, stats: StatsStore, cluster: str
) -> trio.SSLStream[trio.SocketStream]:
    """``stream`` after a client handshake with the cluster's settings; raises OSError
    (a network failure to the checker) when it fails, the stream closed."""
    prefix = f"cluster.{cluster}.ssl."
    if tls.sds_missing:  # an SDS secret it needs is not delivered: as the workers fail
        stats.add_counter(prefix + "connection_error")
        await stream.aclose()
        raise OSError("TLS handshake failed: Secret is not supplied by SDS")
    ssl_stream = trio.SSLStream(stream, client_context(tls), server_hostname=tls.sni or None)
    try:
        await ssl_stream.do_handshake()
        if tls.san_matchers and not SanChecker(tls.san_matchers).accepts(
            peer_certificate(ssl_stream)  # type: ignore[arg-type]
        ):
            stats.add_counter(prefix + "fail_verify_san")
            raise OSError("the upstream certificate's SANs do not match")
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        reason = getattr(cause, "reason", "") or ""
        if reason == "CERTIFICATE_VERIFY_FAILED":
            stats.add_counter(prefix + "fail_verify_error")
        else:
            stats.add_counter(prefix + "connection_error")
        await _close(ssl_stream)
        raise OSError(f"TLS handshake failed: {reason or cause}") from None
    except BaseException:
        await _close(ssl_stream)
        raise
    stats.add_counter(prefix + "handshake")
    if ssl_stream.session_reused:
        stats.add_counter(prefix + "session_reused")
    version = ssl_stream.version()
    if version:
        stats.add_counter(f"{prefix}versions.{version}")
    cipher = ssl_stream.cipher()
    if cipher:
        stats.add_counter(f"{prefix}ciphers.{cipher[0]}")
    return ssl_stream


async def _close(stream: trio.SSLStream[trio.SocketStream]) -> None:
    with trio.CancelScope(shield=True):
        await stream.transport_stream.aclose()
