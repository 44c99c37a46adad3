"""Network RBAC filters (``envoy.filters.network.rbac``) on a connection, before its
connection manager or TCP proxy.

Compiled once per epoch and filter chain (:class:`NetworkRbacPlan`, with the HTTP RBAC
filter's engines, :mod:`proxyd.filters.rbac.filter`). A connection is judged once, when
its first bytes arrive (after its TLS handshake): each filter in order counts its shadow
rules (``shadow_allowed`` / ``shadow_denied``), then its rules (``allowed`` /
``denied``); the first that denies closes the connection, and the filters after it do
not run, as in Envoy. What a rule reads of a connection: its peer (``remote_ip``,
``direct_remote_ip``, ``source_ip`` alike), the address and port it came to, the SNI and
the verified client certificate of a TLS one; there is no request, so ``header`` and
``url_path`` see none. Stats: ``<stat_prefix>.rbac.[<shadow_rules_stat_prefix>.]...``.
"""

from __future__ import annotations

from typing import Any

from proxyd.epoch import NetworkRbac
from proxyd.filters.rbac.filter import Engine, Needs, Request, _ip
from proxyd.worker import io
from proxyd.worker.stats import NamedStats, StatsStore


def _join(prefix: str, name: str) -> str:
    """Envoy's statPrefixJoin."""
    return prefix + name if prefix.endswith(".") else f"{prefix}.{name}"


class _Filter:
    __slots__ = ("engine", "shadow", "stats", "allowed", "denied", "shadow_allowed",
                 "shadow_denied")  # fmt: skip

    def __init__(self, f: NetworkRbac, stats: StatsStore) -> None:
        needs = Needs()
        config = f.config
        self.engine = Engine(config["rules"], needs) if config["rules"] is not None else None
        self.shadow = Engine(config["shadow"], needs) if config["shadow"] is not None else None
        self.stats: NamedStats = stats.named("")
        prefix = _join(f.stat_prefix, "rbac.")
        shadow_prefix = prefix
        if config["shadow_rules_stat_prefix"]:
            shadow_prefix = _join(prefix + config["shadow_rules_stat_prefix"], "")
        self.allowed = prefix + "allowed"
        self.denied = prefix + "denied"
        self.shadow_allowed = shadow_prefix + "shadow_allowed"
        self.shadow_denied = shadow_prefix + "shadow_denied"
        for name in (self.allowed, self.denied, self.shadow_allowed, self.shadow_denied):
            self.stats.inc(name, 0)  # shown at 0 from the start, as Envoy does


class NetworkRbacPlan:
    """A filter chain's network RBAC filters, in order."""

    __slots__ = ("filters",)

    def __init__(self, filters: tuple[NetworkRbac, ...], stats: StatsStore) -> None:
        self.filters = tuple(_Filter(f, stats) for f in filters)

    async def admit(self, sock: Any, tls: Any) -> bool:
        """Wait for the connection's first bytes (or its end), then judge it: False when
        a filter denies it (the caller closes it)."""
        if tls is None or not tls.ssl.pending():
            await io.wait_readable(sock)
        r = _connection_request(sock, tls)
        for f in self.filters:
            if f.shadow is not None:
                allowed, _ = f.shadow.allows(r)
                f.stats.inc(f.shadow_allowed if allowed else f.shadow_denied)
            if f.engine is None:
                continue
            allowed, _ = f.engine.allows(r)
            if not allowed:
                f.stats.inc(f.denied)
                _drain(sock)
                return False
            f.stats.inc(f.allowed)
        return True


def _drain(sock: Any) -> None:
    """Read what the client sent before the connection is closed, as Envoy has read it
    (closing with unread bytes would make the kernel reset the connection)."""
    buf = memoryview(bytearray(16384))
    try:
        while sock.recv_into(buf) > 0:
            pass
    except OSError:  # BlockingIOError: nothing more now
        pass


def _connection_request(sock: Any, tls: Any) -> Request:
    """What the rules read of a connection, in the HTTP filter's Request shape."""
    r = Request.__new__(Request)
    r.headers = {}
    r.host = ""
    r.path = ""
    r.metadata = {}
    r.tls = tls
    try:
        peer = sock.getpeername()
        local = sock.getsockname()
    except OSError:
        peer = local = ("", 0)
    remote = _ip(peer[0]) if isinstance(peer, tuple) else None
    r.remote = r.direct = remote
    if isinstance(local, tuple):
        r.local_ip, r.local_port = _ip(local[0]), local[1]
    else:
        r.local_ip, r.local_port = None, 0
    return r
