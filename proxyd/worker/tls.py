"""Downstream TLS termination on the worker: the handshake, and the socket adapter the
request path uses afterwards.

A plaintext connection keeps its raw socket and pays nothing here. A connection
accepted on a TLS filter chain runs :func:`handshake` before the HTTP codec starts
(bounded by the chain's ``transport_socket_connect_timeout``, else the connection
manager's idle timeout, as Envoy's idle timer already runs during the handshake); then
:class:`TlsSocket` stands in for the raw socket, with the methods the request path
calls (:mod:`proxyd.worker.io`, :mod:`proxyd.worker.downstream`).

Waiting: the request path waits on the fd only after a read said "would block"
(``SSLWantReadError`` → ``BlockingIOError``), and OpenSSL's read-ahead is off, so no
decrypted bytes can sit in the ``SSLSocket`` unseen when it waits (``pending()`` is 0
then; :meth:`TlsSocket.recv_into` drains a record across calls without waiting).

Writing: OpenSSL (without partial writes, as CPython sets it) must be given the same
bytes again after ``SSLWantWriteError``. ``send`` is retried with the same bytes by
its callers; ``sendmsg`` joins its parts into one write, and when that would block it
keeps the joined bytes and reports 0 sent: the caller (:func:`proxyd.worker.io.send_parts`)
then sends the parts one by one, and :meth:`TlsSocket.send` finishes the kept bytes
first and counts the parts as sent from them.
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING, Any, Protocol

import trio

from proxyd.protocol.tls_context import (
    PinChecker,
    SanChecker,
    pick_certificate,
    server_context,
    server_contexts,
)
from proxyd.worker import io

if TYPE_CHECKING:
    from proxyd.epoch import DownstreamTls, TlsCertificate
    from proxyd.worker.stats import NamedStats, StatsStore

# Envoy's names for the versions (ssl.versions.<name> and %DOWNSTREAM_TLS_VERSION%).
_VERSION_NAMES = {
    "TLSv1": "TLSv1",
    "TLSv1.1": "TLSv1.1",
    "TLSv1.2": "TLSv1.2",
    "TLSv1.3": "TLSv1.3",
}
# Counters Envoy shows at 0 from the start in a TLS listener's ssl. scope.
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


# Where the SNI callback leaves the name a client asked for, on its SSLSocket.
SNI_ATTRIBUTE = "proxyd_sni"
# ... and the index of the certificate it chose, when there are several.
CERT_ATTRIBUTE = "proxyd_cert"


def _remember_sni(ssock: Any, server_name: str | None, ctx: Any) -> None:
    if server_name:
        setattr(ssock, SNI_ATTRIBUTE, server_name)


class TlsPlan:
    """One TLS filter chain compiled for a worker: its SSLContext, SAN checks, stats."""

    def __init__(
        self,
        tls: DownstreamTls,
        stats: StatsStore,
        listener_stat: str,
        http_prefix: str,
        idle_timeout: float,
        sni_known: bool = True,
    ) -> None:
        # False while an SDS secret the chain needs is not delivered: its connections
        # are closed at once (Envoy's handshake fails without the secret).
        self.ready = not tls.sds_missing
        contexts = server_contexts(tls) if self.ready else [server_context(tls)]
        self.context = contexts[0]
        # The certificates, by context: the connection's local certificate.
        self.certificates = tls.certificates
        # The requested server name is recorded only where Envoy's TLS inspector runs
        # (the listener has it); the handshake itself does not record it in Envoy.
        # Several certificates: the SNI chooses one (its context) during the handshake.
        if len(contexts) > 1:
            names = [c.dns_names for c in tls.certificates]

            def choose(ssock: Any, server_name: str | None, ctx: Any) -> None:
                i = pick_certificate(names, server_name or "")
                if i:
                    ssock.context = contexts[i]
                    setattr(ssock, CERT_ATTRIBUTE, i)
                if sni_known and server_name:
                    setattr(ssock, SNI_ATTRIBUTE, server_name)

            self.context.sni_callback = choose
        elif sni_known:
            self.context.sni_callback = _remember_sni
        self.sans = SanChecker(tls.san_matchers)
        # verify_certificate_hash / _spki (None: no pins).
        self.pins = (
            PinChecker(tls.hash_pins, tls.spki_pins) if tls.hash_pins or tls.spki_pins else None
        )
        self.timeout = tls.handshake_timeout_s or idle_timeout
        self.stats: NamedStats = stats.named(f"listener.{listener_stat}.ssl.")
        for name in _SSL_COUNTERS:
            self.stats.inc(name, 0)
        # http.<stat_prefix>.downstream_cx_ssl_total / _active.
        self.http_stats: NamedStats = stats.named(f"http.{http_prefix}.")


async def drive_handshake(ssock: ssl.SSLSocket) -> None:
    """Run a non-blocking socket's TLS handshake, waiting as OpenSSL asks (ssl.SSLError
    goes to the caller, which bounds it in time). Both sides use it: the downstream
    termination here, the upstream connections in proxyd.worker.upstream_tls."""
    while True:
        try:
            ssock.do_handshake()
            return
        except ssl.SSLWantReadError:
            await io.wait_readable(ssock)
        except ssl.SSLWantWriteError:
            await io.wait_writable(ssock)


class TlsSocket:
    """An established server-side ``SSLSocket`` with the raw socket's non-blocking
    behaviour: "would block" is ``BlockingIOError``, end of stream is 0."""

    __slots__ = ("ssl", "_kept", "_credit", "version", "cipher", "alpn", "sni", "peer", "local")

    def __init__(self, ssock: ssl.SSLSocket, sni: str) -> None:
        self.ssl = ssock
        self._kept: bytes | None = None  # a joined sendmsg that would have blocked
        self._credit = 0  # bytes of the caller's parts already sent with _kept
        self.version = _VERSION_NAMES.get(ssock.version() or "", ssock.version() or "")
        cipher = ssock.cipher()
        self.cipher = cipher[0] if cipher else ""
        self.alpn = ssock.selected_alpn_protocol() or ""
        self.sni = sni
        self.peer: dict[str, Any] | None = None
        # The local certificate the handshake presented (its identity fields).
        self.local: TlsCertificate | None = None

    def fileno(self) -> int:
        return self.ssl.fileno()

    def recv_into(self, view: memoryview) -> int:
        try:
            return self.ssl.recv_into(view)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError() from None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return 0
        except ssl.SSLError:
            raise ConnectionResetError() from None

    def send(self, data: Any) -> int:
        if self._kept is not None:
            self._send_kept()
        if self._credit:
            n = min(len(data), self._credit)
            self._credit -= n
            return n
        try:
            return self.ssl.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            raise BlockingIOError() from None
        except ssl.SSLError:
            raise ConnectionResetError() from None

    def _send_kept(self) -> None:
        kept = self._kept
        assert kept is not None
        try:
            self.ssl.send(kept)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            raise BlockingIOError() from None
        except ssl.SSLError:
            raise ConnectionResetError() from None
        self._kept = None
        self._credit = len(kept)

    def sendmsg(self, parts: list) -> int:
        if self._kept is not None or self._credit:
            raise BlockingIOError()  # finish the kept bytes first (send does)
        data = b"".join(parts)
        try:
            return self.ssl.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            self._kept = data
            return 0
        except ssl.SSLError:
            raise ConnectionResetError() from None

    def getsockname(self) -> Any:
        return self.ssl.getsockname()

    def recv(self, n: int, flags: int = 0) -> bytes:
        """The raw socket's recv (io.peer_closed peeks with it): stray bytes on an idle
        TLS connection (an alert, a close_notify) mean it is done, as in plaintext."""
        if self.ssl.pending():
            return b"x"
        return socket.socket.recv(self.ssl, n, flags)

    def shutdown(self, how: int) -> None:
        """Half-close the TCP connection (the TCP proxy passes an end of stream on);
        ``SSLSocket.shutdown`` would drop the TLS state the other direction still
        reads with."""
        socket.socket.shutdown(self.ssl, how)

    def getsockopt(self, *args: Any) -> Any:
        return self.ssl.getsockopt(*args)

    def setsockopt(self, *args: Any) -> None:
        self.ssl.setsockopt(*args)

    def close(self) -> None:
        # No close_notify: Envoy closes the TCP connection without waiting for one
        # either, and an unread alert must never block the worker.
        self.ssl.close()


class TlsConnection(Protocol):
    """What :func:`terminate` sets on a downstream connection."""

    sock: Any
    tls: TlsSocket | None
    tls_http_stats: NamedStats | None


async def terminate(conn: TlsConnection, plan: TlsPlan) -> bool:
    """TLS termination before the codec starts: the handshake on ``conn.sock``, which
    becomes the :class:`TlsSocket`; False when it failed (the socket is closed then)."""
    # Counted from the start, as Envoy counts them (its handshake runs after the
    # connection manager is made); the connection takes ssl_active off when it closes.
    conn.tls_http_stats = named = plan.http_stats
    named.inc("downstream_cx_ssl_total")
    named.gauge_add("downstream_cx_ssl_active", 1)
    session = await handshake(conn.sock, plan)
    if session is None:  # (the SSLSocket took the descriptor, and closed it)
        return False
    conn.sock = conn.tls = session  # the request path's socket methods
    return True


async def handshake(sock: socket.socket, plan: TlsPlan) -> TlsSocket | None:
    """Run the server handshake on the accepted ``sock``; the adapter, or None when the
    handshake failed or timed out (counted in ``listener.<name>.ssl.``, the socket
    closed)."""
    stats = plan.stats
    if not plan.ready:
        stats.inc("connection_error")
        io.close(sock)
        return None
    ctx = plan.context
    ssock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    ok = False
    try:
        with trio.move_on_after(plan.timeout):
            await drive_handshake(ssock)
            ok = True
        if not ok:
            return None  # timed out: Envoy closes without counting an ssl error
        conn = TlsSocket(ssock, getattr(ssock, SNI_ATTRIBUTE, ""))
        peer = ssock.getpeercert() if ctx.verify_mode != ssl.CERT_NONE else None
        if plan.sans and not plan.sans.accepts(peer):
            ok = False
            stats.inc("fail_verify_san")  # (Envoy counts no connection_error for these)
            return None
        if plan.pins is not None:  # (pins ask for a certificate, as in Envoy)
            der = ssock.getpeercert(binary_form=True) if peer else None
            if not der or not plan.pins.accepts(der):
                ok = False
                stats.inc("fail_verify_cert_hash" if der else "fail_verify_no_cert")
                return None
        conn.peer = peer
        conn.local = plan.certificates[getattr(ssock, CERT_ATTRIBUTE, 0)]
        stats.inc("handshake")
        if ssock.session_reused:
            stats.inc("session_reused")
        if not peer:
            stats.inc("no_certificate")
        stats.inc(f"versions.{conn.version}")
        if conn.cipher:
            stats.inc(f"ciphers.{conn.cipher}")
        return conn
    except ssl.SSLError as exc:
        ok = False
        reason = exc.reason or ""
        # A certificate that failed verification has its own counter; Envoy counts
        # connection_error only for the other failures.
        if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"):
            stats.inc("fail_verify_no_cert")
        elif reason in ("CERTIFICATE_VERIFY_FAILED", "TLSV1_ALERT_UNKNOWN_CA"):
            stats.inc("fail_verify_error")
        else:
            stats.inc("connection_error")
        return None
    except OSError:
        ok = False
        stats.inc("connection_error")
        return None
    finally:
        if not ok:
            io.close(ssock)
