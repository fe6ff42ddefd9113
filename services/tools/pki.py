"""Development PKI: one CA per organisation, one certificate per service, a trust bundle.

Layout under the output directory (nothing of it is ever committed):

    <out>/<org>/ca.pem, ca.key              the org's CA
    <out>/<org>/<service>.pem, .key         spiffe://<org>/<service>, DNS SANs for localhost
    <out>/<org>/trust.pem                   CAs of every org in the mesh (own + peers)

Keys are written 0600. In Kubernetes the same files arrive as Secrets
(`riskmesh pki export-k8s`). Each org's config pins every org's CA by its SHA-256
fingerprint (`ca_fingerprints`, printed by `riskmesh pki fingerprints`).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.mesh.identity import SERVICES, Identity
from services.mesh.pki_layout import OrgPaths, ca_fingerprint, server_name

DEFAULT_ORGS = ("insurer", "hospital", "helper")


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(org: str, days: int = 365) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, f"riskmesh {org} CA"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    identity: Identity,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    extra_dns: tuple[str, ...] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server+client certificate for one service: URI SAN spiffe://<org>/<service>."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    dns = ["localhost", server_name(identity.org, identity.service), *extra_dns]
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    sans += [x509.DNSName(d) for d in dict.fromkeys(dns)]
    sans += [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.org),
                    x509.NameAttribute(NameOID.COMMON_NAME, identity.uri),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def write_leaf(paths: OrgPaths, service: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.cert(service).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths.key(service), _key_pem(key))


def init_pki(
    out: Path, orgs: tuple[str, ...] = DEFAULT_ORGS, extra_dns: tuple[str, ...] = (), force: bool = False
) -> list[Path]:
    """Create CAs, service certificates and trust bundles for `orgs` under `out`.

    Existing material is kept unless `force` (rotating keys under running services
    by accident would break them). Returns the org directories.
    """
    out = Path(out)
    cas: dict[str, x509.Certificate] = {}
    for org in orgs:
        paths = OrgPaths(out / org)
        if paths.ca_cert().exists() and paths.ca_key().exists() and not force:
            cas[org] = x509.load_pem_x509_certificate(paths.ca_cert().read_bytes())
            for service in SERVICES:  # a service added since the PKI was made (e.g. crypto-worker)
                if not paths.cert(service).exists():
                    issue_with_existing_ca(out, org, service, paths.root)
            continue
        ca_cert, ca_key = make_ca(org)
        paths.root.mkdir(parents=True, exist_ok=True)
        os.chmod(paths.root, 0o700)
        paths.ca_cert().write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        _write_private(paths.ca_key(), _key_pem(ca_key))
        for service in SERVICES:
            cert, key = make_leaf(Identity(org, service), ca_cert, ca_key, extra_dns)
            write_leaf(paths, service, cert, key)
        cas[org] = ca_cert
    bundle = b"".join(cas[o].public_bytes(serialization.Encoding.PEM) for o in orgs)
    for org in orgs:
        OrgPaths(out / org).trust().write_bytes(bundle)
    return [out / org for org in orgs]


def ca_fingerprints(pki_dir: Path, orgs: tuple[str, ...] = DEFAULT_ORGS) -> dict[str, str]:
    """Org → SHA-256 fingerprint of its CA certificate (`<pki>/<org>/ca.pem`): what the orgs exchange and pin."""
    out = {}
    for org in orgs:
        path = OrgPaths(Path(pki_dir) / org).ca_cert()
        if not path.exists():
            raise FileNotFoundError(f"no CA certificate for {org} at {path} (run `riskmesh pki init`)")
        out[org] = ca_fingerprint(x509.load_pem_x509_certificate(path.read_bytes()))
    return out


def issue_with_existing_ca(
    out: Path,
    org: str,
    service: str,
    dest: Path,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> None:
    """Issue one more certificate from an org's CA (tests: expired certs, odd identities)."""
    paths = OrgPaths(out / org)
    ca_cert = x509.load_pem_x509_certificate(paths.ca_cert().read_bytes())
    ca_key = serialization.load_pem_private_key(paths.ca_key().read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    cert, key = make_leaf(Identity(org, service), ca_cert, ca_key, not_before=not_before, not_after=not_after)
    write_leaf(OrgPaths(dest), service, cert, key)


def export_k8s(pki_dir: Path, org: str, out_dir: Path, namespace: str = "riskmesh") -> list[Path]:
    """Write one Secret manifest per service of `org` (tls.crt, tls.key, trust.pem, ca.pem)
    into out_dir. ca.pem (the org's own CA, public) is what a client such as
    `riskmesh.client.GatewayClient.from_pki` trusts; servers use trust.pem.

    These files hold private keys: out_dir must be outside the repository (or ignored).
    """
    paths = OrgPaths(Path(pki_dir) / org)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for service in SERVICES:
        if not paths.cert(service).exists():
            continue
        data = {
            "tls.crt": paths.cert(service).read_bytes(),
            "tls.key": paths.key(service).read_bytes(),
            "trust.pem": paths.trust().read_bytes(),
            "ca.pem": paths.ca_cert().read_bytes(),
        }
        lines = [
            "apiVersion: v1",
            "kind: Secret",
            "type: Opaque",
            "metadata:",
            f"  name: riskmesh-{service}-tls",
            f"  namespace: {namespace}",
            "data:",
        ] + [f"  {k}: {base64.b64encode(v).decode()}" for k, v in data.items()]
        dest = out_dir / f"{org}-{service}-tls.yaml"
        _write_private(dest, ("\n".join(lines) + "\n").encode())
        written.append(dest)
    return written
