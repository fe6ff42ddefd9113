"""mTLS credentials and channels.

Servers require a client certificate chained to one of the pinned CAs (every org's CA,
taken from the trust bundle by the fingerprints in the org's config; see pki_layout).
A client dialling <org>'s <service> trusts only <org>'s CA and expects the DNS name
`<service>.<org>.riskmesh` in the server certificate, so a peer cannot impersonate
another organisation's server even though all CAs are in the bundle. TLS 1.3 is what
gRPC negotiates by default; grpcio exposes no minimum-version setting.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.mesh.config import ConfigError, OrgConfig
from services.mesh.identity import Identity, IdentityResolver
from services.mesh.pki_layout import OrgPaths, TrustError, load_org_cas, server_name

log = logging.getLogger("riskmesh.tls")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Certificate files are looked at on disk at most this often (every new connection asks).
RELOAD_CHECK_S = 1.0
# Connections are closed after this age (GOAWAY, ±10% jitter by gRPC), so rotated or revoked
# certificates take effect on open channels: every new connection is a new handshake. The
# grace lets RPCs in flight finish: longer than any phase deadline (gateway/pipeline.py, 30 min).
MAX_CONNECTION_AGE_MS = 15 * 60 * 1000
MAX_CONNECTION_AGE_GRACE_MS = 60 * 60 * 1000

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
    ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
    ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
]


@dataclass(frozen=True)
class Material:
    """One consistent reading of a service's certificate, key and trusted CAs."""

    cert_pem: bytes
    key_pem: bytes
    org_cas: dict[str, x509.Certificate]
    trust_pem: bytes  # the trusted CAs only (what client certificates must chain to)
    files: tuple[tuple[int, int, int], ...]  # (mtime_ns, size, inode) of cert, key, trust.pem


class MeshCredentials:
    """One service's certificate and the org's trusted CAs, loaded from the PKI directory.

    `pins` (org → CA SHA-256 fingerprint, from the config) choose the CAs; servers always
    have them (`for_config`). Without pins the bundle's O= attributes are taken (tools
    and tests acting as an org without its config), still one CA per organisation.

    Rotation without restart: `reload_if_changed` re-reads the files when they changed on
    disk (checked at most every RELOAD_CHECK_S). The server credentials ask on every new
    connection (gRPC's certificate fetcher), `Channels` before handing out a channel; a
    replacement is taken only if the certificate matches the key and was issued by this
    org's pinned CA, else the current material stays and a warning is logged.
    """

    def __init__(self, pki_dir: str | Path, org: str, service: str, pins: Mapping[str, str] | None = None) -> None:
        self.org = org
        self.service = service
        self._paths = OrgPaths(Path(pki_dir) / org)
        self._pins = dict(pins) if pins is not None else None
        self._material = self._load()
        self.resolver = IdentityResolver(self._material.org_cas)
        self.generation = 0  # bumped on every reload
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._refused: tuple[tuple[int, int, int], ...] | None = None  # files of a replacement that did not check out

    @classmethod
    def for_config(cls, config: OrgConfig, service: str) -> MeshCredentials:
        """A server's credentials: every organisation of the config must have a pinned CA."""
        pins = config.ca_pins
        missing = [org for org in (config.org, *config.peers) if org not in pins]
        if missing:
            raise ConfigError(
                f"{config.org}'s config pins no CA for {', '.join(missing)}: "
                "set ca_sha256 (own CA) and peers.<org>.ca_sha256 "
                "to the SHA-256 fingerprints `riskmesh pki fingerprints` prints (k8s/README.md)"
            )
        return cls(config.pki_dir, config.org, service, pins)

    @property
    def cert_pem(self) -> bytes:
        return self._material.cert_pem

    @property
    def key_pem(self) -> bytes:
        return self._material.key_pem

    @property
    def trust_pem(self) -> bytes:
        return self._material.trust_pem

    @property
    def org_cas(self) -> dict[str, x509.Certificate]:
        return self._material.org_cas

    # ---- loading -------------------------------------------------------------------------

    def _files(self) -> tuple[Path, Path, Path]:
        return self._paths.cert(self.service), self._paths.key(self.service), self._paths.trust()

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        stats = [os.stat(path) for path in self._files()]  # follows symlinks (Kubernetes Secret volumes swap them)
        return tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in stats)

    def _load(self) -> Material:
        cert_path, key_path, trust_path = self._files()
        try:
            files = self._stat()
            cert_pem, key_pem, bundle = cert_path.read_bytes(), key_path.read_bytes(), trust_path.read_bytes()
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"certificate material missing for spiffe://{self.org}/{self.service}: {exc.filename} "
                "(run `riskmesh pki init`)"
            ) from None
        org_cas = load_org_cas(bundle, self._pins)
        if self.org not in org_cas:
            raise TrustError(f"trust bundle {trust_path} has no CA for {self.org!r}")
        # Client certificates are verified against the trusted CAs only, not the whole bundle.
        trust_pem = b"".join(ca.public_bytes(serialization.Encoding.PEM) for ca in org_cas.values())
        return Material(cert_pem, key_pem, org_cas, trust_pem, files)

    def _check_replacement(self, material: Material) -> None:
        """A replacement must be this service's certificate, issued by the same pinned CA, with its key."""
        cert = x509.load_pem_x509_certificate(material.cert_pem)
        key = serialization.load_pem_private_key(material.key_pem, password=None)
        if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
            raise ValueError("the new certificate does not match the new key")
        if material.org_cas != self._material.org_cas:
            raise ValueError("the trusted CAs changed (a CA rotation needs a restart with new pins)")
        if self.resolver.resolve(material.cert_pem) != Identity(self.org, self.service):
            raise ValueError(
                f"the new certificate is not spiffe://{self.org}/{self.service} issued by {self.org}'s pinned CA"
            )

    def reload_if_changed(self) -> bool:
        """Take new certificate material if the files changed (and it checks out); True when it did."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked < RELOAD_CHECK_S:
                return False
            self._checked = now
            files = None
            try:
                files = self._stat()
                if files in (self._material.files, self._refused):
                    return False
                material = self._load()
                self._check_replacement(material)
            except (OSError, ValueError) as exc:
                self._refused = files  # warn once per replacement
                log.warning(
                    "kept the current certificate of spiffe://%s/%s: the files changed but %s",
                    self.org,
                    self.service,
                    exc,
                )
                return False
            self._material = material
            self.generation += 1
        log.info("reloaded the certificate of spiffe://%s/%s from disk", self.org, self.service)
        return True

    # ---- credentials -----------------------------------------------------------------------

    def _server_configuration(self) -> grpc.ServerCertificateConfiguration:
        material = self._material
        return grpc.ssl_server_certificate_configuration(
            [(material.key_pem, material.cert_pem)], root_certificates=material.trust_pem
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up rotated files on the next connection."""
        served = [self.generation]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            try:
                self.reload_if_changed()
                if self.generation == served[0]:
                    return None
                served[0] = self.generation
                return self._server_configuration()
            except Exception:  # never fail a handshake over a reload: keep the current material
                log.exception("certificate reload failed for spiffe://%s/%s", self.org, self.service)
                return None

        return grpc.dynamic_ssl_server_credentials(
            self._server_configuration(), fetch, require_client_authentication=True
        )

    def channel_credentials(self, peer_org: str) -> grpc.ChannelCredentials:
        material = self._material
        ca = material.org_cas.get(peer_org)
        if ca is None:
            raise ValueError(f"no CA for organisation {peer_org!r} in the trust bundle")
        root = ca.public_bytes(serialization.Encoding.PEM)
        return grpc.ssl_channel_credentials(
            root_certificates=root, private_key=material.key_pem, certificate_chain=material.cert_pem
        )

    def channel(
        self,
        peer_org: str,
        service: str,
        address: str,
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
        extra_options: Sequence[tuple[str, int | str]] = (),
    ) -> grpc.aio.Channel:
        """An asyncio mTLS channel to <peer_org>'s <service> at `address` (`extra_options`: e.g. a
        load-balancing policy over the addresses a `dns:///` name resolves to)."""
        options = CHANNEL_OPTIONS + [("grpc.ssl_target_name_override", server_name(peer_org, service)), *extra_options]
        return grpc.aio.secure_channel(
            address, self.channel_credentials(peer_org), options=options, interceptors=interceptors
        )

    def sync_channel(self, peer_org: str, service: str, address: str) -> grpc.Channel:
        """A blocking mTLS channel (CLI and tests)."""
        options = CHANNEL_OPTIONS + [("grpc.ssl_target_name_override", server_name(peer_org, service))]
        return grpc.secure_channel(address, self.channel_credentials(peer_org), options=options)
