"""TLS origination to a cluster's hosts: the client handshake after the TCP connect.

A cluster with ``transport_socket`` (UpstreamTlsContext) has an
:class:`UpstreamTlsPlan` on its :class:`~proxyd.worker.upstream.ClusterState`; a
plaintext cluster has None there and pays nothing. The SSLContext comes from
:func:`proxyd.protocol.upstream_tls_context.client_context`, cached on the cluster's
frozen UpstreamTls, so a worker builds it once however many epochs keep the cluster.

:func:`originate` runs the handshake within what is left of the cluster's connect
timeout (Envoy's connect timer runs until its TLS transport socket says "connected",
after the handshake), checks the SAN matchers, counts Envoy's
``cluster.<name>.ssl.*`` stats and hands back a :class:`~proxyd.worker.tls.TlsSocket`,
which the pool, the router and the TCP proxy use in place of the raw socket. Any
failure is a connect failure (503 ``UF``, retried as connect-failure, counted by
outlier detection as a connect failure).

Session resumption: the most recent session of each host is offered on the next
connection to it with the same SNI (``max_session_keys`` 0 turns it off).

``auto_sni`` / ``auto_san_validation``: the pool keeps a connection with the Host it was
opened for (:meth:`UpstreamTlsPlan.key_of` reads it from the upstream head, once per
request and only in such a cluster), and reuses it only for a request with that Host,
as Envoy keeps one pool per transport socket options.
"""

from __future__ import annotations

import re
import socket
import ssl
from typing import TYPE_CHECKING, Any

import trio

from proxyd.protocol.tls_context import SanChecker
from proxyd.protocol.upstream_tls_context import (
    client_context,
    dns_san_accepts,
    peer_certificate,
)
from proxyd.worker import io
from proxyd.worker.tls import TlsSocket, drive_handshake

if TYPE_CHECKING:
    from proxyd.epoch import UpstreamTls
    from proxyd.worker.stats import NamedStats, StatsStore

# Counters Envoy shows at 0 from the start in a TLS cluster's ssl. scope.
_SSL_COUNTERS = (
    "connection_error",
    "handshake",
    "session_reused",
    "no_certificate",
    "fail_verify_no_cert",
    "fail_verify_error",
    "fail_verify_san",
    "fail_verify_cert_hash",
)


def host_name(authority: str) -> str:
    """The host of a Host header value, without its port (and an IPv6 literal's
    brackets)."""
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    name, colon, port = authority.rpartition(":")
    return name if colon and port.isdigit() else authority


_UNREAD = object()  # the peer certificate not read yet


class HandshakeFailed(Exception):
    """The TLS handshake with an upstream host failed or timed out; ``detail`` is
    OpenSSL's reason ("" for a timeout)."""

    def __init__(self, detail: str, timeout: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.timeout = timeout


class UpstreamTlsPlan:
    """One TLS cluster compiled for a worker: its SSLContext, SNI, SAN checks, stats."""

    __slots__ = (
        "context", "sni", "sans", "stats", "resume", "keyed", "auto_sni", "auto_san", "_key_re",
        "ready",
    )  # fmt: skip

    def __init__(self, tls: UpstreamTls, cluster_name: str, stats: StatsStore) -> None:
        self.context = client_context(tls)
        # False while an SDS secret it needs is not delivered: connections fail.
        self.ready = not tls.sds_missing
        self.sni = tls.sni or None
        self.sans = SanChecker(tls.san_matchers)
        self.resume = tls.max_session_keys > 0
        # auto_sni / auto_san_validation: each request's Host (or sni_header) is the
        # key its connection is opened and pooled by.
        self.auto_sni = tls.auto_sni
        self.auto_san = tls.auto_san_validation
        self.keyed = tls.auto_sni or tls.auto_san_validation
        header = (tls.sni_header or "host").encode()
        self._key_re = re.compile(
            rb"\r\n" + re.escape(header) + rb"[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r\n", re.IGNORECASE
        )
        self.stats: NamedStats = stats.named(f"cluster.{cluster_name}.ssl.")
        for name in _SSL_COUNTERS:
            self.stats.inc(name, 0)

    def key_of(self, head: bytes) -> str | None:
        """The request's Host (without port) from its upstream head, or None."""
        m = self._key_re.search(head)
        if m is None:
            return None
        return host_name(m.group(1).decode("latin-1")) or None


async def originate(
    sock: socket.socket, plan: UpstreamTlsPlan, host: Any, limit_s: float, key: str | None = None
) -> TlsSocket:
    """The client handshake on the connected ``sock``; raises :class:`HandshakeFailed`
    (the socket is closed then). ``limit_s`` 0 = no time limit; ``key``: the
    request's Host in a keyed (auto_sni / auto_san_validation) pool."""
    stats = plan.stats
    if not plan.ready:
        io.close(sock)
        stats.inc("connection_error")
        raise HandshakeFailed("Secret is not supplied by SDS")
    sni = key if plan.auto_sni and key else plan.sni
    session = None
    if plan.resume and host.tls_session is not None and host.tls_session[0] == sni:
        session = host.tls_session[1]
    if sni is not None:
        try:
            sni.encode("idna")  # (ssl's check, made before the socket is handed over)
        except UnicodeError:
            io.close(sock)
            stats.inc("connection_error")
            raise HandshakeFailed("invalid server name") from None
    try:
        ssock = plan.context.wrap_socket(
            sock, server_side=False, do_handshake_on_connect=False, server_hostname=sni,
            session=session,
        )  # fmt: skip
    except (ssl.SSLError, ValueError, OSError) as exc:
        io.close(sock)
        stats.inc("connection_error")
        raise HandshakeFailed(str(exc)) from None
    ok = False
    try:
        with trio.move_on_after(limit_s if limit_s > 0 else float("inf")):
            await drive_handshake(ssock)
            ok = True
        if not ok:
            raise HandshakeFailed("", timeout=True)
        peer: Any = _UNREAD
        if plan.auto_san and key:
            # (Envoy's auto_san_validation replaces the configured SAN matchers.)
            peer = peer_certificate(ssock)
            if not dns_san_accepts(peer, key):
                ok = False
                stats.inc("fail_verify_san")
                raise HandshakeFailed("CERTIFICATE_VERIFY_FAILED")
        elif plan.sans and not plan.sans.accepts(peer := peer_certificate(ssock)):
            ok = False
            stats.inc("fail_verify_san")
            raise HandshakeFailed("CERTIFICATE_VERIFY_FAILED")
        conn = TlsSocket(ssock, sni or "")
        # The host's certificate, for the access log's UPSTREAM_PEER_* (read now: the
        # socket may be closed when the line is written).
        conn.peer = peer if peer is not _UNREAD else peer_certificate(ssock)
        stats.inc("handshake")
        if ssock.session_reused:
            stats.inc("session_reused")
        stats.inc(f"versions.{conn.version}")
        if conn.cipher:
            stats.inc(f"ciphers.{conn.cipher}")
        if plan.resume:
            host.tls_session = (sni, ssock.session)
        return conn
    except ssl.SSLError as exc:
        ok = False
        reason = exc.reason or ""
        if reason == "CERTIFICATE_VERIFY_FAILED":
            stats.inc("fail_verify_error")
        else:
            stats.inc("connection_error")
        raise HandshakeFailed(reason or str(exc)) from None
    except OSError as exc:
        ok = False
        stats.inc("connection_error")
        raise HandshakeFailed(exc.strerror or "") from None
    finally:
        if not ok:
            io.close(ssock)


def remember_session(plan: UpstreamTlsPlan, conn: TlsSocket, host: Any) -> None:
    """Keep the session of a connection that is closing (a TLS 1.3 ticket arrives after
    the handshake, so the one seen at the handshake may not be resumable yet)."""
    if plan.resume:
        session = conn.ssl.session if conn.ssl.fileno() >= 0 else None
        if session is not None:
            host.tls_session = (conn.sni or None, session)
