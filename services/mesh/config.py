"""Configuration of one organisation's servers: a TOML file plus `RISKMESH_*` overrides.

Read once per process (`load_config`) and passed to whatever needs it.

    org = "insurer"
    role = "data_owner"            # or "helper"
    bind_host = "127.0.0.1"
    base_port = 7100               # server ports are base + offset, health ports base + 10 + offset
    pki_dir = "/etc/riskmesh/pki"  # holds <org>/<service>.pem/.key and <org>/trust.pem
    state_dir = "/var/lib/riskmesh"

    [addresses]                    # optional: how this org's own servers are dialled
    encryption = "riskmesh-encryption:7101"

    [ports]                        # optional: a server's own ports instead of base + offset
    lasso = { mtls = 41233, health = 41871 }   # (base_port may be left out when every server has them)
    ca_sha256 = "AB:CD:…"          # this org's own CA: SHA-256 fingerprint of its certificate
    min_paillier_bits = 2048       # smallest Paillier key the join servers accept (test meshes: 1024)
    reflection = false             # gRPC server reflection (on in local development only)
    max_upload_rows = 500000       # helper: most rows one owner may upload for a study (memory bound)
    crypto_workers = 2             # data owners: crypto-worker slots for the encryption and resharing
                                   # servers (0 = their own in-process pool; docs/adr/0011-crypto-workers.md)

    [peers.hospital]
    role = "data_owner"
    host = "127.0.0.1"
    base_port = 7200
    ca_sha256 = "12:34:…"          # the hospital's CA, as the hospital sent it (pinned)
    [peers.hospital.addresses]     # optional per-server overrides
    gateway = "gw.hospital.example:443"

    [policy]                       # optional: this org's disclosure floors (services/study/policy.py)
    min_intersection = 100         # or policy_file = "policy.toml" (the same keys, at top level)

Environment overrides: RISKMESH_CONFIG (the file), RISKMESH_PKI_DIR, RISKMESH_STATE_DIR,
RISKMESH_BIND_HOST, and RISKMESH_ADDR_<ORG>_<SERVER> (e.g. RISKMESH_ADDR_HOSPITAL_GATEWAY,
RISKMESH_ADDR_INSURER_CRYPTO_WORKER: hyphens become underscores).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SERVER_OFFSETS = {"gateway": 0, "encryption": 1, "intersection": 2, "resharing": 3, "lasso": 4, "crypto-worker": 5}
HEALTH_OFFSET = 10
ROLES = ("data_owner", "helper")
# Smallest Paillier key accepted by default; a config may lower it to 1024 for a test mesh only.
MIN_PAILLIER_BITS = 2048
LOWEST_PAILLIER_BITS = 1024
# Rows one owner may upload to the helper for a study. The helper holds both uploads' tags in
# memory (32 bytes a row) until they are matched and spools their ciphertexts to its state
# directory (services/join/spool.py): ≈0.8 KB of disk a row at 3072 bits (one 6144-bit
# ciphertext for up to 14 values). Raise it together with the intersection pod's state volume.
MAX_UPLOAD_ROWS = 500_000
ROLE_SERVERS = {
    "data_owner": ("gateway", "encryption", "resharing", "lasso"),
    "helper": ("gateway", "intersection", "resharing", "lasso"),
}
# Crypto workers (docs/adr/0011-crypto-workers.md): a data owner's encryption and resharing
# servers hand Paillier chunks to `crypto_workers` of them. Not in ROLE_SERVERS: an org runs
# 0..N of them (local processes, or a Deployment's replicas), none of them reachable from
# another organisation. Local worker i listens on base + 5 + 20·i (health + 10), so at most
# MAX_LOCAL_WORKERS on the fixed base ports; reserved ports (`[ports] crypto-worker-<i>`) have no limit.
CRYPTO_WORKER = "crypto-worker"
ROLE_WORKERS = {"data_owner": (CRYPTO_WORKER,), "helper": ()}
WORKER_PORT_STRIDE = 20
MAX_LOCAL_WORKERS = 4
MAX_CRYPTO_WORKERS = 64


class ConfigError(ValueError):
    """The configuration is missing something or contradicts itself."""


@dataclass(frozen=True)
class ServerPorts:
    """A server's mTLS and health ports when they are not base_port + offset (the ports
    services/tools/launcher.py reserves for servers on one machine)."""

    mtls: int
    health: int


@dataclass(frozen=True)
class OrgEndpoint:
    """Where one organisation's servers are reached."""

    org: str
    role: str
    host: str
    base_port: int
    addresses: Mapping[str, str] = field(default_factory=dict)
    ca_sha256: str = ""  # the pinned fingerprint of this org's CA ("" = not pinned)

    def address(self, server: str) -> str:
        if server not in SERVER_OFFSETS:
            raise ConfigError(f"unknown server {server!r}")
        if server in self.addresses:
            return self.addresses[server]
        return f"{self.host}:{self.base_port + SERVER_OFFSETS[server]}"

    @property
    def servers(self) -> tuple[str, ...]:
        return ROLE_SERVERS[self.role]


@dataclass(frozen=True)
class OrgConfig:
    org: str
    role: str
    bind_host: str
    base_port: int
    pki_dir: Path
    state_dir: Path
    addresses: Mapping[str, str]
    peers: Mapping[str, OrgEndpoint]
    ports: Mapping[str, ServerPorts] = field(
        default_factory=dict
    )  # base_port (then unused) is 0 when these cover every server
    # This org's disclosure policy as written (checked by services.study.policy); {} = the defaults.
    policy: Mapping[str, object] = field(default_factory=dict)
    ca_sha256: str = ""  # the pinned fingerprint of this org's own CA
    min_paillier_bits: int = MIN_PAILLIER_BITS
    reflection: bool = False  # serve gRPC reflection (local development)
    max_upload_rows: int = MAX_UPLOAD_ROWS  # the helper's intersection server: rows per owner upload
    crypto_workers: int = 0  # data owners: crypto-worker slots (0 = the servers' own in-process pool)

    @property
    def ca_pins(self) -> dict[str, str]:
        """Org → pinned CA fingerprint, for every org (own included) that has one."""
        pins = {self.org: self.ca_sha256} if self.ca_sha256 else {}
        pins.update({org: peer.ca_sha256 for org, peer in self.peers.items() if peer.ca_sha256})
        return pins

    @property
    def servers(self) -> tuple[str, ...]:
        return ROLE_SERVERS[self.role]

    def runs(self, server: str) -> bool:
        """This org's role runs `server` (one of its servers, or its crypto workers)."""
        return server in ROLE_SERVERS[self.role] or server in ROLE_WORKERS[self.role]

    def worker_ports(self, index: int) -> ServerPorts:
        """The ports of local crypto worker `index` (reserved ones, else base + 5 + 20·index)."""
        name = f"{CRYPTO_WORKER}-{index}"
        if name in self.ports:
            return self.ports[name]
        if index == 0 and CRYPTO_WORKER in self.ports:
            return self.ports[CRYPTO_WORKER]
        if index >= MAX_LOCAL_WORKERS:
            raise ConfigError(
                f"crypto worker {index}: give it ports ([ports] {name}); base ports fit {MAX_LOCAL_WORKERS}"
            )
        mtls = self.base_port + SERVER_OFFSETS[CRYPTO_WORKER] + WORKER_PORT_STRIDE * index
        return ServerPorts(mtls, mtls + HEALTH_OFFSET)

    def crypto_worker_targets(self) -> list[str]:
        """Where the servers reach their crypto workers: one balanced address when `[addresses]`
        names `crypto-worker` (Kubernetes: the headless Service, `dns:///…`), else one address
        per local worker; [] when the org has none."""
        if self.crypto_workers == 0:
            return []
        if CRYPTO_WORKER in self.addresses:
            return [self.addresses[CRYPTO_WORKER]]
        return [f"{self.bind_host}:{self.worker_ports(i).mtls}" for i in range(self.crypto_workers)]

    @property
    def self_endpoint(self) -> OrgEndpoint:
        own = {s: f"{self.bind_host}:{p.mtls}" for s, p in self.ports.items() if s in SERVER_OFFSETS}
        return OrgEndpoint(self.org, self.role, self.bind_host, self.base_port, {**own, **self.addresses})

    def endpoint(self, org: str) -> OrgEndpoint:
        if org == self.org:
            return self.self_endpoint
        if org not in self.peers:
            raise ConfigError(f"organisation {org!r} is not a configured peer of {self.org!r}")
        return self.peers[org]

    def port(self, server: str) -> int:
        if server in self.ports:
            return self.ports[server].mtls
        return self.base_port + SERVER_OFFSETS[server]

    def health_port(self, server: str) -> int:
        if server in self.ports:
            return self.ports[server].health
        return self.base_port + HEALTH_OFFSET + SERVER_OFFSETS[server]

    @property
    def ports_cover_servers(self) -> bool:
        """Every server of the role has its own ports, so base_port is not used."""
        return all(server in self.ports for server in self.servers)

    def role_of(self, org: str) -> str | None:
        if org == self.org:
            return self.role
        peer = self.peers.get(org)
        return peer.role if peer else None

    @property
    def helper_org(self) -> str | None:
        return next((o for o in [self.org, *self.peers] if self.role_of(o) == "helper"), None)

    @property
    def owner_orgs(self) -> list[str]:
        return [o for o in [self.org, *self.peers] if self.role_of(o) == "data_owner"]


def _require(table: Mapping[str, object], key: str, where: str) -> object:
    if key not in table:
        raise ConfigError(f"{where}: missing required key {key!r}")
    return table[key]


def _role(value: object, where: str) -> str:
    if value not in ROLES:
        raise ConfigError(f"{where}: role must be one of {ROLES}, got {value!r}")
    return str(value)


def _addresses(org: str, table: Mapping[str, object], env: Mapping[str, str]) -> dict[str, str]:
    out = {str(k): str(v) for k, v in dict(table).items()}
    for server in SERVER_OFFSETS:
        key = f"RISKMESH_ADDR_{org.upper().replace('-', '_')}_{server.upper().replace('-', '_')}"
        if env.get(key):
            out[server] = env[key]
    for server in out:
        if server not in SERVER_OFFSETS:
            raise ConfigError(f"{org}: unknown server {server!r} in addresses")
    return out


def _port(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ConfigError(f"{where}: a port must be an integer from 1 to 65535, got {value!r}")
    return value


def _ports(table: Mapping[str, object]) -> dict[str, ServerPorts]:
    out = {}
    for server, raw in dict(table).items():
        where = f"ports.{server}"
        if server not in SERVER_OFFSETS and not _is_worker_name(server):
            raise ConfigError(f"ports: unknown server {server!r}")
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a table with mtls and health")
        out[server] = ServerPorts(
            _port(_require(raw, "mtls", where), where), _port(_require(raw, "health", where), where)
        )
    return out


def _is_worker_name(name: str) -> bool:
    """`crypto-worker-<i>`: the ports of local crypto worker i."""
    prefix = f"{CRYPTO_WORKER}-"
    return name.startswith(prefix) and name[len(prefix) :].isdigit()


def _policy(data: Mapping[str, object], base: Path) -> dict[str, object]:
    """The `[policy]` table, or the top level of the TOML file `policy_file` names (not both)."""
    if "policy" in data and "policy_file" in data:
        raise ConfigError("config: give either a [policy] table or policy_file, not both")
    if "policy_file" in data:
        path = Path(str(data["policy_file"]))
        path = path if path.is_absolute() else base / path
        try:
            return dict(tomllib.loads(path.read_text()))
        except FileNotFoundError:
            raise ConfigError(f"policy file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from None
    table = data.get("policy", {})
    if not isinstance(table, dict):
        raise ConfigError("config: policy must be a table")
    return dict(table)


def _count(value: object, key: str, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise ConfigError(f"config: {key} must be an integer from 0 to {maximum}, got {value!r}")
    return value


def _flag(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"config: {key} must be true or false, got {value!r}")
    return value


def parse_config(data: Mapping[str, object], env: Mapping[str, str], base: Path) -> OrgConfig:
    org = str(_require(data, "org", "config"))
    role = _role(_require(data, "role", "config"), "config")
    peers: dict[str, OrgEndpoint] = {}
    peer_tables = data.get("peers", {})
    if not isinstance(peer_tables, Mapping):
        raise ConfigError("config: peers must be a table of organisations")
    for name, raw in peer_tables.items():
        where = f"peers.{name}"
        peers[name] = OrgEndpoint(
            org=name,
            role=_role(_require(raw, "role", where), where),
            host=str(raw.get("host", "127.0.0.1")),
            base_port=int(raw.get("base_port", 0)),
            addresses=_addresses(name, raw.get("addresses", {}), env),
            ca_sha256=str(raw.get("ca_sha256", "")),
        )
    ports = _ports(data.get("ports", {}))  # type: ignore[arg-type]
    if not all(server in ports for server in ROLE_SERVERS[role]):
        _require(data, "base_port", "config")
    pki_dir = Path(env.get("RISKMESH_PKI_DIR") or str(_require(data, "pki_dir", "config")))
    state_dir = Path(env.get("RISKMESH_STATE_DIR") or str(data.get("state_dir", "state")))
    config = OrgConfig(
        org=org,
        role=role,
        bind_host=env.get("RISKMESH_BIND_HOST") or str(data.get("bind_host", "127.0.0.1")),
        base_port=int(data.get("base_port", 0)),  # type: ignore[call-overload]
        pki_dir=pki_dir if pki_dir.is_absolute() else base / pki_dir,
        state_dir=state_dir if state_dir.is_absolute() else base / state_dir,
        addresses=_addresses(org, data.get("addresses", {}), env),  # type: ignore[arg-type]
        peers=peers,
        ports=ports,
        policy=_policy(data, base),
        ca_sha256=str(data.get("ca_sha256", "")),
        min_paillier_bits=int(data.get("min_paillier_bits", MIN_PAILLIER_BITS)),  # type: ignore[call-overload]
        reflection=_flag(data.get("reflection", False), "reflection"),
        max_upload_rows=int(data.get("max_upload_rows", MAX_UPLOAD_ROWS)),  # type: ignore[call-overload]
        crypto_workers=_count(data.get("crypto_workers", 0), "crypto_workers", MAX_CRYPTO_WORKERS),
    )
    if config.crypto_workers and role != "data_owner":
        raise ConfigError("config: crypto_workers is for data owners (the helper does no Paillier work)")
    if config.max_upload_rows < 1:
        raise ConfigError("config: max_upload_rows must be positive")
    if config.min_paillier_bits < LOWEST_PAILLIER_BITS:
        raise ConfigError(f"config: min_paillier_bits must be at least {LOWEST_PAILLIER_BITS}")
    roles = [config.role_of(o) for o in [org, *peers]]
    if roles.count("helper") > 1:
        raise ConfigError("config: at most one helper organisation")
    return config


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> OrgConfig:
    env = os.environ if env is None else env
    path = path or (Path(env["RISKMESH_CONFIG"]) if env.get("RISKMESH_CONFIG") else None)
    if path is None:
        raise ConfigError("no configuration: pass --config or set RISKMESH_CONFIG")
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    return parse_config(data, env, Path(path).resolve().parent)


def render_config(config: OrgConfig) -> str:
    """TOML text of a config (used by the launcher to write per-org files)."""
    lines = [
        f'org = "{config.org}"',
        f'role = "{config.role}"',
        f'bind_host = "{config.bind_host}"',
        *([] if config.ports_cover_servers and not config.base_port else [f"base_port = {config.base_port}"]),
        f'pki_dir = "{config.pki_dir}"',
        f'state_dir = "{config.state_dir}"',
    ]
    if config.ca_sha256:
        lines.append(f'ca_sha256 = "{config.ca_sha256}"')
    if config.reflection:
        lines.append("reflection = true")
    if config.max_upload_rows != MAX_UPLOAD_ROWS:
        lines.append(f"max_upload_rows = {config.max_upload_rows}")
    if config.crypto_workers:
        lines.append(f"crypto_workers = {config.crypto_workers}")
    if config.min_paillier_bits != MIN_PAILLIER_BITS:
        lines.append(f"min_paillier_bits = {config.min_paillier_bits}  # a test mesh: fast keys")
    if config.addresses:
        lines += ["", "[addresses]"] + [f'{k} = "{v}"' for k, v in config.addresses.items()]
    if config.ports:
        lines += ["", "[ports]"] + [
            f"{k} = {{ mtls = {p.mtls}, health = {p.health} }}" for k, p in config.ports.items()
        ]
    for peer in config.peers.values():
        lines += [
            "",
            f"[peers.{peer.org}]",
            f'role = "{peer.role}"',
            f'host = "{peer.host}"',
            f"base_port = {peer.base_port}",
        ]
        if peer.ca_sha256:
            lines.append(f'ca_sha256 = "{peer.ca_sha256}"')
        if peer.addresses:
            lines += [f"[peers.{peer.org}.addresses]"] + [f'{k} = "{v}"' for k, v in peer.addresses.items()]
    if config.policy:
        lines += ["", "[policy]"] + [f"{k} = {_toml_value(v)}" for k, v in config.policy.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    """A policy value as TOML: a number, a string, or a list of strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    raise ConfigError(f"policy value {value!r} cannot be written as TOML")
