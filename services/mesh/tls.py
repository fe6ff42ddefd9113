"""mTLS credentials and channels.

Servers require a client certificate chained to one of the pinned CAs (every org's CA,
taken from the trust bundle by the fingerprints in the org's config; see pki_layout).
A client dialling <org>'s <service> trusts only <org>'s CA and expects the DNS name
`<service>.<org>.riskmesh` in the server certificate, so a peer cannot impersonate
another organisation's server even though all CAs are in the bundle. TLS 1.3 is what
gRPC negotiates by default; grpcio exposes no minimum-version setting.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import grpc
from cryptography.hazmat.primitives import serialization

from services.mesh.config import ConfigError, OrgConfig
from services.mesh.identity import IdentityResolver
from services.mesh.pki_layout import OrgPaths, TrustError, load_org_cas, server_name

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Keepalive: detect a frozen peer within a few seconds; reconnect quickly at start-up.
CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 4000),
    ("grpc.http2.ping_timeout_ms", 4000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Not grpc.min_reconnect_backoff_ms: gRPC also uses it as the minimum time a connection
    # may take to come up (TCP + TLS + SETTINGS), and 100 ms broke links 20 ms+ apart.
]

SERVER_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 4000),
    # Without these the server waits 60 s (the default ping timeout) for a frozen client.
    ("grpc.http2.ping_timeout_ms", 4000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


class MeshCredentials:
    """One service's certificate and the org's trusted CAs, loaded from the PKI directory.

    `pins` (org → CA SHA-256 fingerprint, from the config) choose the CAs; servers always
    have them (`for_config`). Without pins the bundle's O= attributes are taken (tools
    and tests acting as an org without its config), still one CA per organisation.
    """

    def __init__(self, pki_dir, org: str, service: str, pins: Mapping[str, str] | None = None) -> None:
        paths = OrgPaths(pki_dir / org)
        try:
            self.cert_pem = paths.cert(service).read_bytes()
            self.key_pem = paths.key(service).read_bytes()
            bundle = paths.trust().read_bytes()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"certificate material missing for spiffe://{org}/{service}: {exc.filename} (run `riskmesh pki init`)") from None
        self.org = org
        self.service = service
        self.org_cas = load_org_cas(bundle, pins)
        if org not in self.org_cas:
            raise TrustError(f"trust bundle {paths.trust()} has no CA for {org!r}")
        # Client certificates are verified against the trusted CAs only, not the whole bundle.
        self.trust_pem = b"".join(ca.public_bytes(serialization.Encoding.PEM) for ca in self.org_cas.values())
        self.resolver = IdentityResolver(self.org_cas)

    @classmethod
    def for_config(cls, config: OrgConfig, service: str) -> "MeshCredentials":
        """A server's credentials: every organisation of the config must have a pinned CA."""
        pins = config.ca_pins
        missing = [org for org in (config.org, *config.peers) if org not in pins]
        if missing:
            raise ConfigError(
                f"{config.org}'s config pins no CA for {', '.join(missing)}: set ca_sha256 (own CA) and peers.<org>.ca_sha256 "
                "to the SHA-256 fingerprints `riskmesh pki fingerprints` prints (k8s/README.md)"
            )
        return cls(config.pki_dir, config.org, service, pins)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)], root_certificates=self.trust_pem, require_client_auth=True)

    def channel_credentials(self, peer_org: str) -> grpc.ChannelCredentials:
        ca = self.org_cas.get(peer_org)
        if ca is None:
            raise ValueError(f"no CA for organisation {peer_org!r} in the trust bundle")
        root = ca.public_bytes(serialization.Encoding.PEM)
        return grpc.ssl_channel_credentials(root_certificates=root, private_key=self.key_pem, certificate_chain=self.cert_pem)

    def channel(self, peer_org: str, service: str, address: str, interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None) -> grpc.aio.Channel:
        """An asyncio mTLS channel to <peer_org>'s <service> at `address`."""
        options = CHANNEL_OPTIONS + [("grpc.ssl_target_name_override", server_name(peer_org, service))]
        return grpc.aio.secure_channel(address, self.channel_credentials(peer_org), options=options, interceptors=interceptors)

    def sync_channel(self, peer_org: str, service: str, address: str) -> grpc.Channel:
        """A blocking mTLS channel (CLI and tests)."""
        options = CHANNEL_OPTIONS + [("grpc.ssl_target_name_override", server_name(peer_org, service))]
        return grpc.secure_channel(address, self.channel_credentials(peer_org), options=options)
