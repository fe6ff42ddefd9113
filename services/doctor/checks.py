"""The judgements of `riskmesh doctor`: facts in, findings out (no I/O, no network).

services/doctor/diagnose.py gathers the facts (files, certificates, peers, ports, disk);
each function here turns some of them into Findings, each failure with what to do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from services.mesh.identity import identity_of_certificate
from services.mesh.pki_layout import server_name

EXPIRY_WARNING = dt.timedelta(days=30)
MAX_CLOCK_SKEW_S = 30.0
MIN_FREE_BYTES = 1 << 30


@dataclass(frozen=True)
class Finding:
    area: str  # config, pki, peers, clock, ports, disk
    subject: str
    ok: bool
    detail: str
    fix: str = ""


def ok(area: str, subject: str, detail: str) -> Finding:
    return Finding(area, subject, True, detail)


def fail(area: str, subject: str, detail: str, fix: str) -> Finding:
    return Finding(area, subject, False, detail, fix)


def org_of(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(names[0].value) if names else None


def _validity(area: str, subject: str, cert: x509.Certificate, now: dt.datetime, renew: str) -> list[Finding]:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return [
            fail(
                area,
                subject,
                f"not valid before {start:%Y-%m-%d %H:%M} UTC (is this machine's clock right?)",
                f"check the clock, or {renew}",
            )
        ]
    if now > end:
        return [fail(area, subject, f"expired on {end:%Y-%m-%d %H:%M} UTC", renew)]
    if end - now < EXPIRY_WARNING:
        return [fail(area, subject, f"expires in {(end - now).days} days ({end:%Y-%m-%d} UTC)", renew)]
    return [ok(area, subject, f"valid until {end:%Y-%m-%d} UTC")]


def check_trust_bundle(
    org: str, peers: Sequence[str], bundle: Sequence[x509.Certificate], now: dt.datetime
) -> list[Finding]:
    """One CA per organisation of the mesh, each valid; no organisation claimed twice."""
    findings = []
    by_org: dict[str, list[x509.Certificate]] = {}
    for cert in bundle:
        by_org.setdefault(org_of(cert) or "?", []).append(cert)
    for name in [org, *peers]:
        cas = by_org.get(name, [])
        subject = f"trust.pem: CA of {name}"
        if not cas:
            fix = (
                "get this organisation's CA certificate (ca.pem) from it and add it to trust.pem"
                if name != org
                else "add your own CA (ca.pem) to trust.pem"
            )
            findings.append(fail("pki", subject, "missing", fix))
        elif len(cas) > 1:
            findings.append(
                fail(
                    "pki",
                    subject,
                    f"{len(cas)} CA certificates claim O={name}",
                    "keep exactly one CA per organisation in trust.pem (the one it sent you)",
                )
            )
        else:
            findings += _validity(
                "pki", subject, cas[0], now, f"ask {name} for its new CA certificate and replace it in trust.pem"
            )
    unknown = sorted(set(by_org) - {org, *peers})
    if unknown:
        findings.append(
            fail(
                "pki",
                "trust.pem",
                f"CAs of organisations not in the config: {', '.join(unknown)}",
                "remove them from trust.pem (every CA in it may sign peers' identities)",
            )
        )
    return findings


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate (DER), `AB:CD:…` as `openssl x509 -fingerprint -sha256` prints it."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def check_ca_pins(pins: Mapping[str, str], orgs: Sequence[str], bundle: Sequence[x509.Certificate]) -> list[Finding]:
    """Each organisation's CA in trust.pem is the one whose fingerprint the config pins."""
    findings = []
    for name in orgs:
        subject = f"CA pin of {name}"
        pin = re.sub(r"[\s:]", "", pins.get(name, "")).lower()
        cas = [c for c in bundle if org_of(c) == name]
        if not re.fullmatch(r"[0-9a-f]{64}", pin):
            detail = f"no SHA-256 fingerprint pinned (ca_sha256 = {pins.get(name, '')!r})"
            fix = f"put the fingerprint {name} sent you (`riskmesh pki fingerprints` at {name}) in ca_sha256"
            findings.append(fail("pki", subject, detail, fix))
        elif len(cas) != 1:
            continue  # check_trust_bundle reports a missing or doubled CA
        elif re.sub(":", "", fingerprint(cas[0])).lower() != pin:
            detail = f"trust.pem's CA of {name} is {fingerprint(cas[0])}, not the pinned one"
            fix = f"compare fingerprints with {name} over a second channel; fix trust.pem or the pin"
            findings.append(fail("pki", subject, detail, fix))
        else:
            findings.append(ok("pki", subject, "trust.pem's CA matches the pinned fingerprint"))
    return findings


def check_certificate(
    org: str,
    service: str,
    cert: x509.Certificate,
    key_public_der: bytes,
    org_ca: x509.Certificate | None,
    now: dt.datetime,
) -> list[Finding]:
    """The certificate of spiffe://<org>/<service>: chain, validity, SANs, usage, key pair."""
    subject = f"{org}/{service}.pem"
    reissue = (
        f"issue a new certificate for spiffe://{org}/{service} from your CA (dev PKI: `riskmesh pki init --force`)"
    )
    findings = []
    if org_ca is None:
        findings.append(
            fail("pki", subject, f"no CA of {org} in trust.pem to check it against", "add your CA to trust.pem")
        )
    else:
        try:
            cert.verify_directly_issued_by(org_ca)
            findings.append(ok("pki", f"{subject} chain", f"issued by {org}'s CA"))
        except (InvalidSignature, ValueError, TypeError):
            findings.append(
                fail(
                    "pki",
                    f"{subject} chain",
                    f"not issued by the CA of {org} in trust.pem",
                    reissue + ", or put the CA that issued it in trust.pem",
                )
            )
    findings += _validity("pki", f"{subject} validity", cert, now, reissue)
    identity = identity_of_certificate(cert)
    try:
        dns = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value.get_values_for_type(
            x509.DNSName
        )
    except x509.ExtensionNotFound:
        dns = []
    wanted_dns = server_name(org, service) if service != "client" else None
    if identity is None or identity.uri != f"spiffe://{org}/{service}":
        findings.append(
            fail(
                "pki",
                f"{subject} identity",
                f"URI SAN is {identity.uri if identity else 'missing'}, not spiffe://{org}/{service}",
                reissue,
            )
        )
    elif wanted_dns and wanted_dns not in dns:
        findings.append(fail("pki", f"{subject} identity", f"DNS SAN {wanted_dns} missing (peers check it)", reissue))
    else:
        findings.append(
            ok("pki", f"{subject} identity", f"spiffe://{org}/{service}" + (f", {wanted_dns}" if wanted_dns else ""))
        )
    try:
        usages = set(cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value)
    except x509.ExtensionNotFound:
        usages = set()
    needed = {ExtendedKeyUsageOID.CLIENT_AUTH} | ({ExtendedKeyUsageOID.SERVER_AUTH} if service != "client" else set())
    if not needed <= usages:
        findings.append(
            fail(
                "pki",
                f"{subject} usage",
                "lacks " + " and ".join(sorted(u._name for u in needed - usages)),
                reissue + " with server and client auth",
            )
        )
    if (
        cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        != key_public_der
    ):
        findings.append(
            fail(
                "pki",
                f"{subject} key",
                f"{org}/{service}.key is not the key of this certificate",
                f"put the matching key in {org}/{service}.key, or reissue both",
            )
        )
    return findings


def check_key_mode(path: str, mode: int) -> list[Finding]:
    """A private key readable by the owner (and the pod's fsGroup at most), by nobody else."""
    bits = stat.S_IMODE(mode)
    if bits & 0o007:
        return [
            fail(
                "pki",
                f"{path} permissions",
                f"mode {bits:04o}: readable or writable by every user",
                f"chmod 600 {path}",
            )
        ]
    if bits & 0o030:
        return [
            fail("pki", f"{path} permissions", f"mode {bits:04o}: group may write or execute it", f"chmod 600 {path}")
        ]
    return [ok("pki", f"{path} permissions", f"mode {bits:04o}")]


@dataclass(frozen=True)
class PeerProbe:
    """What dialling one peer organisation's gateway showed."""

    org: str
    address: str
    reached: bool = False  # TCP connection made
    tls_error: str = ""  # our verification of their certificate failed
    identity: str = ""  # the spiffe identity in their certificate
    rpc_error: str = ""  # GetInfo failed after the handshake
    info_org: str = ""
    info_role: str = ""
    seen_as: str = ""  # our identity as they saw it
    rtt_s: float = 0.0
    skew_s: float | None = None  # their clock minus ours


def check_peer(probe: PeerProbe, expected_role: str, own_identity: str) -> list[Finding]:
    subject = f"{probe.org} gateway at {probe.address}"
    if not probe.reached:
        return [
            fail(
                "peers",
                subject,
                "unreachable (no TCP connection)",
                f"check [peers.{probe.org}] in riskmesh.toml against the address {probe.org} sent you, "
                "your egress NetworkPolicy/firewall, and that their gateway runs",
            )
        ]
    if probe.tls_error:
        return [
            fail(
                "peers",
                subject,
                f"their certificate did not verify: {probe.tls_error}",
                f"the CA of {probe.org} in your trust.pem must be the one that issued their gateway certificate "
                f"(with DNS name gateway.{probe.org}.riskmesh): exchange CA certificates again",
            )
        ]
    if probe.rpc_error:
        return [
            fail(
                "peers",
                subject,
                f"GetInfo failed: {probe.rpc_error}",
                f"{probe.org} may not trust your CA or admit {own_identity}: send them your ca.pem",
            )
        ]
    if probe.identity != f"spiffe://{probe.org}/gateway":
        return [
            fail(
                "peers",
                subject,
                f"answered as {probe.identity or 'no identity'}, not spiffe://{probe.org}/gateway",
                "the address points at another server: check the address in riskmesh.toml",
            )
        ]
    if probe.info_org != probe.org or probe.info_role != expected_role:
        return [
            fail(
                "peers",
                subject,
                f"says it is {probe.info_org} ({probe.info_role}), config says {probe.org} ({expected_role})",
                f"fix [peers.{probe.org}] role/address in riskmesh.toml",
            )
        ]
    if probe.seen_as != own_identity:
        return [
            fail(
                "peers",
                subject,
                f"saw us as {probe.seen_as or 'nobody'}, not {own_identity}",
                "check the certificate this org's gateway uses",
            )
        ]
    return [
        ok("peers", subject, f"mTLS ok, spiffe://{probe.org}/gateway, {probe.info_role}, {probe.rtt_s * 1000:.0f} ms")
    ]


def check_clock(probe: PeerProbe, max_skew_s: float = MAX_CLOCK_SKEW_S) -> list[Finding]:
    if probe.skew_s is None:
        return []
    subject = f"clock vs {probe.org}"
    # The answer was made somewhere within the round trip: only skew beyond half of it counts.
    skew = abs(probe.skew_s) - probe.rtt_s / 2
    if skew > max_skew_s:
        ahead = "ahead of" if probe.skew_s > 0 else "behind"
        return [
            fail(
                "clock",
                subject,
                f"{probe.org}'s clock is {abs(probe.skew_s):.1f} s {ahead} ours (limit {max_skew_s:.0f} s)",
                "run NTP (chrony/systemd-timesyncd) on both sides: certificate validity and run deadlines depend on it",
            )
        ]
    return [ok("clock", subject, f"{probe.skew_s:+.2f} s (± {probe.rtt_s / 2:.2f} s)")]


def check_port(server: str, port: int, state: str) -> list[Finding]:
    """state: 'free', 'riskmesh' (in use by this org's running server) or 'other'."""
    subject = f"{server} port {port}"
    if state == "other":
        return [
            fail(
                "ports",
                subject,
                "in use by something that is not this riskmesh server",
                "stop it, or change base_port in riskmesh.toml (every org's peers must then be told the new ports)",
            )
        ]
    return [ok("ports", subject, "free" if state == "free" else "in use by the running server (health SERVING)")]


def check_disk(path: str, free_bytes: int, writable: bool, min_free: int = MIN_FREE_BYTES) -> list[Finding]:
    if not writable:
        return [
            fail(
                "disk",
                path,
                "state directory not writable",
                "create it and make it writable by the servers' user (k8s: the state volume)",
            )
        ]
    if free_bytes < min_free:
        return [
            fail(
                "disk",
                path,
                f"{free_bytes / 2**30:.2f} GiB free (need {min_free / 2**30:.0f} GiB)",
                "free space or grow the volume",
            )
        ]
    return [ok("disk", path, f"{free_bytes / 2**30:.1f} GiB free")]


def failed(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if not f.ok]


def summary(findings: Sequence[Finding]) -> Mapping[str, int]:
    return {"ok": sum(f.ok for f in findings), "failed": len(failed(findings))}
