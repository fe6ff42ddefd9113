"""Where an organisation's certificate material lives, and how servers read it.

The runtime half of the PKI (the dev PKI that writes these files is services/tools/pki.py):

    <pki_dir>/<org>/ca.pem                  the org's CA
    <pki_dir>/<org>/<service>.pem, .key     spiffe://<org>/<service>
    <pki_dir>/<org>/trust.pem               CAs of every org in the mesh (own + peers)

Which CA speaks for which organisation is not read from the bundle: each org's config
pins every organisation's CA (its own included) by the SHA-256 fingerprint of the CA
certificate (`ca_sha256`, exchanged out of band: `riskmesh pki fingerprints`). A CA
that calls itself `O=insurer` but is not the pinned one speaks for nobody, and a bundle
with two CAs claiming one organisation is refused outright.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID


class TrustError(ValueError):
    """The trust bundle and the pinned fingerprints do not agree (refused at start-up)."""


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


def ca_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate (DER) as `AB:CD:…`, the form `openssl x509 -fingerprint -sha256` prints."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def normalise_fingerprint(text: str) -> str:
    """`AB:CD:…` or `abcd…` → 64 lowercase hex digits; TrustError for anything else."""
    digits = re.sub(r"[\s:]", "", text).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digits):
        raise TrustError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return digits


def claimed_org(cert: x509.Certificate) -> str | None:
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(orgs[0].value) if orgs else None


def load_org_cas(trust_pem: bytes, pins: Mapping[str, str] | None = None) -> dict[str, x509.Certificate]:
    """Org name → CA certificate from a trust bundle: the CA with the org's pinned fingerprint.

    Refuses (TrustError) a bundle in which two CAs claim one organisation, a pin that no
    CA in the bundle has, and a pinned CA whose O= names another organisation. Orgs
    without a pin get no CA. Without `pins` (tools and tests that have no config) the
    CAs' own O= attributes are taken, still one CA per organisation.
    """
    claimed: dict[str, x509.Certificate] = {}
    for cert in x509.load_pem_x509_certificates(trust_pem):
        org = claimed_org(cert)
        if org is None:
            continue
        if org in claimed:
            raise TrustError(
                f"the trust bundle holds two CAs claiming organisation {org!r} "
                f"({ca_fingerprint(claimed[org])} and {ca_fingerprint(cert)}); "
                "each organisation has exactly one"
            )
        claimed[org] = cert
    if pins is None:
        return claimed
    by_fingerprint = {normalise_fingerprint(ca_fingerprint(cert)): cert for cert in claimed.values()}
    cas: dict[str, x509.Certificate] = {}
    for org, pin in pins.items():
        try:
            pinned = by_fingerprint.get(normalise_fingerprint(pin))
        except TrustError as exc:
            raise TrustError(f"the CA pinned for {org}: {exc}") from None
        if pinned is None:
            raise TrustError(f"no CA in the trust bundle has the fingerprint pinned for {org} ({pin})")
        if claimed_org(pinned) != org:
            raise TrustError(f"the CA pinned for {org} names itself O={claimed_org(pinned)}")
        cas[org] = pinned
    return cas
