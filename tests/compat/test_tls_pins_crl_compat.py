"""Client certificate revocation (CRL) and pinning (verify_certificate_hash,
verify_certificate_spki): real Envoy and real proxyd, same YAML, same clients.

Listeners, each TLS with the test CA and a direct response:

* ``crl`` / ``crl_leaf``: a CRL from the CA that revokes the ``revoked`` client
  certificate (the whole chain checked, then only the leaf);
* ``hash``: the SHA-256 of the ``client`` certificate, in upper case with colons;
* ``spki``: the base64 SHA-256 of the ``client2`` certificate's public key;
* ``both``: the hash of ``client`` and the SPKI of ``client2`` (either passes).

Clients: ``client``, ``client2``, ``revoked`` and none. What each saw (a response, or a
failed handshake) and the listeners' ssl.* counters must be the same for both.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import PortOf, run_pair
from tests.compat.test_chain_match_compat import _read_all
from tests.compat.test_tls_compat import answering_chain
from tests.tls_certs import _leaf

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

TIMEOUT_S = 5.0
NAMES = ("crl", "crl_leaf", "hash", "spki", "both")


def make_crl(certs: Any, revoked: str) -> str:
    """A CRL from the test CA revoking the certificate in the file ``revoked``."""
    ca_cert = x509.load_pem_x509_certificate(Path(certs.ca).read_bytes())
    ca_key = serialization.load_pem_private_key(Path(certs.path("ca.key")).read_bytes(), None)
    serial = x509.load_pem_x509_certificate(Path(revoked).read_bytes()).serial_number
    now = datetime.datetime.now(datetime.UTC)
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(now - datetime.timedelta(minutes=1))
        .build()
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - datetime.timedelta(minutes=1))
        .next_update(now + datetime.timedelta(days=1))
        .add_revoked_certificate(entry)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    path = certs.path("revoked.crl.pem")
    Path(path).write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def cert_hash(pem: str) -> str:
    der = x509.load_pem_x509_certificate(Path(pem).read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def spki_hash(pem: str) -> str:
    key = x509.load_pem_x509_certificate(Path(pem).read_bytes()).public_key()
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def config(certs: Any, crl: str) -> str:
    def tls(**validation: Any) -> dict[str, Any]:
        return {
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": certs.server},
                        "private_key": {"filename": certs.server_key},
                    }
                ],
                "validation_context": {"trusted_ca": {"filename": certs.ca}, **validation},
            }
        }

    client, client2 = certs.client, certs.path("client2.pem")
    contexts = {
        "crl": tls(crl={"filename": crl}),
        "crl_leaf": tls(crl={"filename": crl}, only_verify_leaf_cert_crl=True),
        "hash": tls(verify_certificate_hash=[cert_hash(client)]),
        "spki": tls(verify_certificate_spki=[spki_hash(client2)]),
        "both": tls(
            verify_certificate_hash=[cert_hash(client)],
            verify_certificate_spki=[spki_hash(client2)],
        ),
    }
    listeners = [
        {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [answering_chain(name, contexts[name], None)],
        }
        for name in NAMES
    ]
    doc = {
        "static_resources": {"listeners": listeners},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _ask(port: int, ca: str, cert: tuple[str, str] | None) -> str:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(*cert)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw:
            with ctx.wrap_socket(raw, server_hostname="example.com") as s:
                s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                out = _read_all(s)
    except (ssl.SSLError, OSError):
        return "refused"
    if not out or out.endswith(b"<reset>"):
        return "refused"  # (TLS 1.3: the client's certificate is judged after its Finished)
    head, _, body = out.partition(b"\r\n\r\n")
    return f"{head.split(b' ')[1].decode()} {body.decode()}"


def test_crl_and_certificate_pins_match_envoy(tmp_path: Path, certs: Any) -> None:
    d = certs.dir
    _leaf("client2", "ca", "client2", "URI:spiffe://test/client2", "clientAuth", d)
    _leaf("revoked", "ca", "revoked", "URI:spiffe://test/revoked", "clientAuth", d)
    crl = make_crl(certs, certs.path("revoked.pem"))
    clients = {
        "client": (certs.client, certs.client_key),
        "client2": (certs.path("client2.pem"), certs.path("client2.key")),
        "revoked": (certs.path("revoked.pem"), certs.path("revoked.key")),
        "none": None,
    }

    def play(port_of: PortOf) -> dict[str, Any]:
        return {
            f"{name} {who}": _ask(port_of(name), certs.ca, cert)
            for name in NAMES
            for who, cert in clients.items()
        }

    def pick(stats: dict[str, int]) -> dict[str, int]:
        keep = (
            "fail_verify_error", "fail_verify_cert_hash", "fail_verify_no_cert",
            "no_certificate", "handshake",
        )  # fmt: skip
        out: dict[str, int] = {}
        for k, v in stats.items():
            if k.startswith("listener.127.0.0.1_") and ".ssl." in k and k.rsplit(".", 1)[1] in keep:
                out[k.rsplit(".", 1)[1]] = out.get(k.rsplit(".", 1)[1], 0) + v
        return out

    pair = run_pair(config(certs, crl), tmp_path, play, pick)
    envoy, proxyd = pair.envoy.replies, pair.proxyd.replies
    # What Envoy did is what the listeners are for (so the match below means something).
    assert envoy["crl client"] == "200 crl"
    assert envoy["crl revoked"] == "refused"
    assert envoy["hash client"] == "200 hash"
    assert envoy["hash client2"] == "refused"
    assert envoy["both client2"] == "200 both"
    assert {k: (v, envoy[k]) for k, v in proxyd.items() if v != envoy[k]} == {}
    assert pair.proxyd.stats == pair.envoy.stats
