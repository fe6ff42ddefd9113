"""Service identities: spiffe://<org>/<service> URI SANs, and reading them from a peer.

The identity of a caller always comes from its verified client certificate (the gRPC
auth context), never from a request field. A certificate only speaks for an
organisation when that organisation's own CA issued it — the CA pinned for it by
fingerprint in the config (pki_layout.load_org_cas) — so hospital's CA cannot mint
`spiffe://insurer/gateway`, nor can a CA that merely calls itself `O=insurer`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature

# The servers of docs/design.md, `client` (the identity of an org's own systems and operators),
# `console` (the org's web console, services/console, a client of its own gateway) and
# `crypto-worker` (a data owner's crypto workers, services/join/crypto_worker_server.py).
SERVICES = ("gateway", "encryption", "intersection", "resharing", "lasso", "client", "console", "crypto-worker")
ORG_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


@dataclass(frozen=True)
class Identity:
    org: str
    service: str

    @property
    def uri(self) -> str:
        return f"spiffe://{self.org}/{self.service}"

    def __str__(self) -> str:
        return self.uri


def parse_spiffe(uri: str) -> Identity | None:
    """Identity from `spiffe://<org>/<service>`; None for anything else."""
    match = re.fullmatch(r"spiffe://([a-z][a-z0-9-]{0,30})/([a-z]+(?:-[a-z]+)*)", uri)
    if not match or match.group(2) not in SERVICES:
        return None
    return Identity(match.group(1), match.group(2))


def identity_of_certificate(cert: x509.Certificate) -> Identity | None:
    """The single spiffe URI SAN of a certificate, or None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    ids = [parse_spiffe(uri) for uri in san.get_values_for_type(x509.UniformResourceIdentifier)]
    ids = [i for i in ids if i is not None]
    return ids[0] if len(ids) == 1 else None


class IdentityResolver:
    """Turns a verified peer certificate (PEM) into an Identity, checking that the
    certificate was issued by the CA of the organisation it claims to belong to."""

    def __init__(self, org_cas: dict[str, x509.Certificate]) -> None:
        self._org_cas = dict(org_cas)
        # Per resolver (a cache on the method would keep every resolver alive): the same
        # peer certificate arrives with every call on a connection.
        self.resolve = functools.lru_cache(maxsize=1024)(self._resolve)

    def _resolve(self, pem: bytes) -> Identity | None:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            return None
        identity = identity_of_certificate(cert)
        if identity is None:
            return None
        ca = self._org_cas.get(identity.org)
        if ca is None:
            return None
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            return None
        return identity


def peer_certificate_pem(auth_context: dict[str, list[bytes]]) -> bytes | None:
    """The caller's PEM certificate from a gRPC auth context (None without mTLS)."""
    values = auth_context.get("x509_pem_cert") or []
    return values[0] if values else None
