"""One error hierarchy for proxyd.

* :class:`ConfigError` carries the file, the field path and the reason; its message is
  what an operator sees from ``proxyd --mode validate`` and ``proxyctl reload``.
* :class:`ProtocolError` carries the HTTP status the peer gets (400, 431, ...).

Bad input raises only these; any other exception from a parser is a bug.
"""

from __future__ import annotations


class ProxydError(Exception):
    """Root of every error proxyd raises on purpose."""


class ConfigError(ProxydError):
    def __init__(self, file: str, path: str, reason: str) -> None:
        self.file = file
        self.path = path
        self.reason = reason
        where = f"{file}: {path}" if path else file
        super().__init__(f"{where}: {reason}")


class ProtocolError(ProxydError):
    """The peer broke the protocol; ``status`` is what it is answered with.

    ``body`` is the local reply's body: None for the status's reason phrase (what
    Envoy's codec answers), "" for the empty body of a request Envoy's connection
    manager refuses after the codec accepted it (no Host, a fragment in the target,
    an upgrade nothing is configured for).
    """

    # Set for an HTTP/1.0 request (accept_http_10): the answer's status line says so.
    http10 = False

    def __init__(self, reason: str, status: int = 400, body: str | None = None) -> None:
        self.reason = reason
        self.status = status
        self.body = body
        super().__init__(reason)
