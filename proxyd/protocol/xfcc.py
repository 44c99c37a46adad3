"""``x-forwarded-client-cert`` (XFCC): the connection manager's
``forward_client_cert_details`` and ``set_current_client_cert_details``, as Envoy applies
them to each request on its way upstream.

No I/O here. The modes (Envoy 1.40, compared by tests/compat/test_xfcc_compat.py):

* ``SANITIZE`` (the default): the header never goes upstream;
* ``FORWARD_ONLY``: it goes upstream as the client sent it when the connection is mTLS
  (TLS with a verified client certificate), else it is removed;
* ``APPEND_FORWARD``: on mTLS, this hop's element is appended to the client's value
  (``,`` between elements), else the header is removed;
* ``SANITIZE_SET``: on mTLS, the header is this hop's element alone, else removed;
* ``ALWAYS_FORWARD_ONLY``: it goes upstream as the client sent it, mTLS or not.

An element is ``By=<the URI SAN of the certificate this listener presented>;
Hash=<SHA-256 of the client certificate, hex>`` followed, as
``set_current_client_cert_details`` asks, by ``Cert="<URL-encoded PEM>"``,
``Subject="<RFC 2253 subject>"``, ``URI=<the client's URI SAN>`` and one ``DNS=<name>``
per DNS SAN, in that order (``By`` is left out when the local certificate has no URI SAN).
"""

from __future__ import annotations

import hashlib
import ssl
from typing import Any

from proxyd.protocol.access_log_tls import url_encode
from proxyd.protocol.tls_context import peer_subject

SANITIZE = "SANITIZE"
FORWARD_ONLY = "FORWARD_ONLY"
APPEND_FORWARD = "APPEND_FORWARD"
SANITIZE_SET = "SANITIZE_SET"
ALWAYS_FORWARD_ONLY = "ALWAYS_FORWARD_ONLY"
MODES = (SANITIZE, FORWARD_ONLY, APPEND_FORWARD, SANITIZE_SET, ALWAYS_FORWARD_ONLY)
# set_current_client_cert_details fields proxyd fills in (``chain`` is refused: CPython's
# ssl does not give the chain the client sent).
DETAILS = ("subject", "cert", "uri", "dns")

NAME = b"x-forwarded-client-cert"


class XfccPlan:
    """One connection manager's XFCC handling (compiled per epoch; a manager in the
    default SANITIZE mode has none, and a request there only loses the header)."""

    __slots__ = ("mode", "details")

    def __init__(self, mode: str, details: tuple[str, ...]) -> None:
        self.mode = mode
        self.details = frozenset(details)

    def edit(self, present: bytes, tls: Any) -> tuple[bool, bytes]:
        """For a request whose XFCC value is ``present`` (b"": none) on a connection
        whose TLS session is ``tls`` (None: plaintext): (remove the client's header, the
        line to add, b"" for none)."""
        mode = self.mode
        if mode == ALWAYS_FORWARD_ONLY:
            return False, b""
        mtls = tls is not None and bool(tls.peer)
        if not mtls or mode == SANITIZE:
            return bool(present), b""
        if mode == FORWARD_ONLY:
            return False, b""
        element = self.element(tls)
        if mode == APPEND_FORWARD and present:
            element = present + b"," + element
        return bool(present), NAME + b": " + element + b"\r\n"

    def element(self, tls: Any) -> bytes:
        """This hop's element for the mTLS session ``tls``."""
        der = tls.ssl.getpeercert(binary_form=True) or b""
        parts = []
        local = tls.local
        if local is not None and local.uri_sans:
            parts.append("By=" + local.uri_sans[0])
        parts.append("Hash=" + hashlib.sha256(der).hexdigest())
        details = self.details
        peer = tls.peer
        if "cert" in details and der:
            parts.append(f'Cert="{url_encode(ssl.DER_cert_to_PEM_cert(der))}"')
        if "subject" in details:
            parts.append(f'Subject="{peer_subject(peer)}"')
        sans = peer.get("subjectAltName", ())
        if "uri" in details:
            uri = next((v for k, v in sans if k == "URI"), None)
            if uri is not None:
                parts.append("URI=" + uri)
        if "dns" in details:
            parts.extend("DNS=" + v for k, v in sans if k == "DNS")
        return ";".join(parts).encode("latin-1", "replace")
