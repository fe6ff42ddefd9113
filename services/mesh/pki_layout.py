"""Where an organisation's certificate material lives, and how servers read it.

The runtime half of the PKI (the dev PKI that writes these files is services/tools/pki.py):

    <pki_dir>/<org>/ca.pem                  the org's CA
    <pki_dir>/<org>/<service>.pem, .key     spiffe://<org>/<service>
    <pki_dir>/<org>/trust.pem               CAs of every org in the mesh (own + peers)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID


def server_name(org: str, service: str) -> str:
    """The DNS name a client expects in the certificate of <org>'s <service>."""
    return f"{service}.{org}.riskmesh"


@dataclass(frozen=True)
class OrgPaths:
    root: Path

    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    def ca_key(self) -> Path:
        return self.root / "ca.key"

    def cert(self, service: str) -> Path:
        return self.root / f"{service}.pem"

    def key(self, service: str) -> Path:
        return self.root / f"{service}.key"

    def trust(self) -> Path:
        return self.root / "trust.pem"



def load_org_cas(trust_pem: bytes) -> dict[str, x509.Certificate]:
    """Org name → CA certificate, from a trust bundle (the org is the CA's O= attribute)."""
    cas: dict[str, x509.Certificate] = {}
    for cert in x509.load_pem_x509_certificates(trust_pem):
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if orgs:
            cas[str(orgs[0].value)] = cert
    return cas
