"""Gather the facts `riskmesh doctor` judges (services/doctor/checks.py): the config, the
PKI files, each peer gateway over mTLS, the clock against them, ports and disk."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.doctor import checks
from services.doctor.checks import Finding, PeerProbe
from services.mesh.config import ConfigError, OrgConfig, load_config
from services.mesh.identity import identity_of_certificate
from services.mesh.pki_layout import OrgPaths, server_name

PEER_TIMEOUT_S = 5.0
ROLE_NAMES = {common_pb2.ROLE_DATA_OWNER: "data_owner", common_pb2.ROLE_HELPER: "helper"}


def diagnose_config(path: Path | None, org: str, env: Mapping[str, str]) -> tuple[OrgConfig | None, list[Finding]]:
    try:
        config = load_config(path, env)
    except (ConfigError, OSError, ValueError, KeyError) as exc:
        return None, [
            checks.fail(
                "config",
                str(path or env.get("RISKMESH_CONFIG", "")),
                str(exc),
                "fix riskmesh.toml (format: services/mesh/config.py), or point --config / RISKMESH_CONFIG at it",
            )
        ]
    if config.org != org:
        return None, [
            checks.fail(
                "config",
                str(path),
                f"is the config of {config.org!r}, not {org!r}",
                "pass this organisation's riskmesh.toml",
            )
        ]
    peers = ", ".join(f"{p} ({e.role})" for p, e in config.peers.items()) or "none"
    findings = [checks.ok("config", "riskmesh.toml", f"{config.org} ({config.role}), peers: {peers}")]
    if config.helper_org is None:
        findings.append(
            checks.fail(
                "config", "peers", "no helper organisation configured", 'add [peers.<helper>] with role = "helper"'
            )
        )
    if len(config.owner_orgs) != 2:
        findings.append(
            checks.fail(
                "config",
                "peers",
                f"{len(config.owner_orgs)} data owners configured, a study needs 2",
                "add the other data owner under [peers]",
            )
        )
    return config, findings


def diagnose_pki(config: OrgConfig, servers: Sequence[str], now: dt.datetime) -> list[Finding]:
    paths = OrgPaths(config.pki_dir / config.org)
    try:
        bundle = x509.load_pem_x509_certificates(paths.trust().read_bytes())
    except (OSError, ValueError) as exc:
        return [
            checks.fail(
                "pki",
                str(paths.trust()),
                f"unreadable: {exc}",
                "assemble trust.pem from the CA certificates of every organisation",
            )
        ]
    findings = checks.check_trust_bundle(config.org, list(config.peers), bundle, now)
    # Servers refuse to start without a pin for every org (MeshCredentials.for_config).
    findings += checks.check_ca_pins(config.ca_pins, [config.org, *config.peers], bundle)
    own_cas = [c for c in bundle if checks.org_of(c) == config.org]
    org_ca = own_cas[0] if len(own_cas) == 1 else None
    for service in servers:
        cert_path, key_path = paths.cert(service), paths.key(service)
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            findings.append(
                checks.fail(
                    "pki",
                    f"{config.org}/{service}",
                    f"cannot read certificate or key: {exc}",
                    f"install the certificate and key of spiffe://{config.org}/{service} in {paths.root}",
                )
            )
            continue
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        findings += checks.check_certificate(config.org, service, cert, public, org_ca, now)
        findings += checks.check_key_mode(str(key_path), key_path.stat().st_mode)
    return findings


def probe_peer(config: OrgConfig, peer: str, timeout: float = PEER_TIMEOUT_S) -> PeerProbe:
    """Dial <peer>'s gateway as this org's gateway does: TCP, then TLS with our gateway
    certificate (verifying theirs against their CA only), then GetInfo over gRPC."""
    address = config.endpoint(peer).address("gateway")
    host, port = address.rsplit(":", 1)
    paths = OrgPaths(config.pki_dir / config.org)
    peer_cas = [c for c in x509.load_pem_x509_certificates(paths.trust().read_bytes()) if checks.org_of(c) == peer]
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError:
        return PeerProbe(peer, address)
    if len(peer_cas) != 1:
        sock.close()
        return PeerProbe(peer, address, reached=True, tls_error=f"not exactly one CA of {peer} in trust.pem")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    context.load_verify_locations(cadata=peer_cas[0].public_bytes(serialization.Encoding.PEM).decode())
    context.load_cert_chain(paths.cert("gateway"), paths.key("gateway"))
    try:
        with context.wrap_socket(sock, server_hostname=server_name(peer, "gateway")) as tls:
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        return PeerProbe(peer, address, reached=True, tls_error=exc.verify_message or str(exc))
    except (ssl.SSLError, OSError) as exc:
        return PeerProbe(peer, address, reached=True, rpc_error=f"TLS handshake failed: {exc}")
    identity = identity_of_certificate(x509.load_der_x509_certificate(der)) if der else None
    probe = PeerProbe(peer, address, reached=True, identity=identity.uri if identity else "")
    # The peer's CA alone, as for the handshake above: a wrong CA of a third org in trust.pem
    # (which the pin check reports) must not hide this peer's state.
    credentials = grpc.ssl_channel_credentials(
        root_certificates=peer_cas[0].public_bytes(serialization.Encoding.PEM),
        private_key=paths.key("gateway").read_bytes(),
        certificate_chain=paths.cert("gateway").read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", server_name(peer, "gateway"))]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        before = time.time()
        try:
            info = gateway_pb2_grpc.GatewayServiceStub(channel).GetInfo(gateway_pb2.GetInfoRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return PeerProbe(
                peer, address, True, identity=probe.identity, rpc_error=f"{exc.code().name}: {exc.details()}"
            )
        after = time.time()
    skew = info.server_time_unix_ms / 1000 - (before + after) / 2 if info.server_time_unix_ms else None
    return PeerProbe(
        peer,
        address,
        True,
        "",
        probe.identity,
        "",
        info.org,
        ROLE_NAMES.get(info.role, "?"),
        info.caller_identity,
        after - before,
        skew,
    )


def port_state(host: str, port: int, health_port: int) -> str:
    """'free', 'riskmesh' (taken, and our health port answers SERVING) or 'other'."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Bound as the servers bind (gRPC sets SO_REUSEADDR): a port in TIME_WAIT, or held
        # unlistened for a server (services/tools/launcher.py reserve_port), is free for it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return "free"
        except OSError:
            pass
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    try:
        with grpc.insecure_channel(f"{probe_host}:{health_port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return "riskmesh" if reply.status == health_pb2.HealthCheckResponse.SERVING else "other"
    except grpc.RpcError:
        return "other"


def diagnose_host(config: OrgConfig, servers: Sequence[str]) -> list[Finding]:
    findings = []
    for server in servers:
        if server == "client":
            continue
        findings += checks.check_port(
            server, config.port(server), port_state(config.bind_host, config.port(server), config.health_port(server))
        )
    state = Path(config.state_dir)
    existing = next((p for p in [state, *state.parents] if p.exists()), Path("/"))
    writable = os.access(existing, os.W_OK)
    findings += checks.check_disk(str(state), shutil.disk_usage(existing).free, writable)
    return findings


def diagnose(
    org: str,
    config_path: Path | None,
    env: Mapping[str, str],
    servers: Sequence[str] | None = None,
    peers: bool = True,
    now: dt.datetime | None = None,
) -> list[Finding]:
    """Every check for <org>; `servers` limits the certificate and port checks (a pod
    holds only its own server's certificate)."""
    now = now or dt.datetime.now(dt.UTC)
    config, findings = diagnose_config(config_path, org, env)
    if config is None:
        return findings
    servers = list(servers or config.servers)
    findings += diagnose_pki(config, servers, now)
    if peers:
        for peer, endpoint in config.peers.items():
            if "gateway" not in servers:
                break  # peers are dialled with the gateway's certificate
            probe = probe_peer(config, peer)
            findings += checks.check_peer(probe, endpoint.role, f"spiffe://{config.org}/gateway")
            findings += checks.check_clock(probe)
    findings += diagnose_host(config, servers)
    return findings
