"""k8s/: every kustomization renders and validates, and the rendered objects are the
hardened, role-correct deployment docs/design.md describes. No cluster, no network."""

from __future__ import annotations

import base64
import ipaddress
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from services.mesh.config import CRYPTO_WORKER, ROLE_SERVERS, parse_config
from services.mesh.pki_layout import TrustError
from services.mesh.tls import MeshCredentials
from services.tools.pki import ca_fingerprints, export_k8s, init_pki
from tests.k8s.manifests import (
    BASE_PORT,
    CONSOLE,
    CONSOLE_HEALTH_PORT,
    CONSOLE_HTTP_PORT,
    EXAMPLE_RANGES,
    K8S,
    OVERLAYS,
    PLACEHOLDER_CIDR,
    REPO,
    by_name,
    component,
    containers,
    cross_org_callees,
    cross_org_callers,
    deployed,
    expected_model,
    health_port,
    in_test_net,
    model,
    mtls_port,
    of_kind,
    render,
    render_text,
)

# Oldest and newest Kubernetes versions whose schemas the manifests are checked against.
K8S_VERSIONS = ("1.32.0", "1.37.0")
TARGETS = ["base", *(f"overlays/{org}" for org in OVERLAYS)]
KUBERNETES_VALIDATE = Path(sys.executable).with_name("kubernetes-validate")


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def namespace_of(org: str) -> str:
    return f"riskmesh-{org}"


# --- rendering and schema validation --------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_kustomization_renders(target):
    assert render(target), f"k8s/{target} rendered nothing"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_validate_strictly(version, tmp_path):
    files = []
    for target in TARGETS:
        path = tmp_path / (target.replace("/", "-") + ".yaml")
        path.write_text(render_text(target))
        files.append(str(path))
    done = subprocess.run(
        [str(KUBERNETES_VALIDATE), "--strict", "--quiet", "-k", version, *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("org", OVERLAYS)
def test_overlay_has_no_placeholder_left(org):
    text = render_text(f"overlays/{org}")
    assert PLACEHOLDER_CIDR not in text, "a peer-range placeholder was not patched"
    assert "/pki/ORG" not in text, "a certificate mount path still has the ORG placeholder"


# --- servers per role ------------------------------------------------------------------


@pytest.mark.parametrize("org,role", OVERLAYS.items())
def test_one_deployment_per_server_of_the_role(org, role):
    docs = render(f"overlays/{org}")
    deployments = of_kind(docs, "Deployment")
    assert sorted(component(d) for d in deployments) == sorted(deployed(role))
    for dep in deployments:
        assert dep["metadata"]["name"] == f"riskmesh-{component(dep)}"
        if component(dep) != CRYPTO_WORKER:  # scaled by the overlay (test_crypto_workers_*)
            assert dep["spec"]["replicas"] == 1
        assert dep["metadata"]["namespace"] == namespace_of(org)


def test_helper_has_no_encryption_and_no_data_volume():
    docs = render("overlays/helper")
    assert "riskmesh-encryption" not in by_name(docs, "Deployment")
    assert "riskmesh-data" not in by_name(docs, "PersistentVolumeClaim")
    for dep in of_kind(docs, "Deployment"):
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in dep["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert "riskmesh-data" not in claims


@pytest.mark.parametrize("org,role", OVERLAYS.items())
def test_volumes_state_on_claims_data_read_only_in_encryption_only(org, role):
    docs = render(f"overlays/{org}")
    expected_claims = {"riskmesh-gateway-state", "riskmesh-resharing-state"} | (
        {"riskmesh-data"} if role == "data_owner" else set()
    )
    assert set(by_name(docs, "PersistentVolumeClaim")) == expected_claims
    for dep in of_kind(docs, "Deployment"):
        server = component(dep)
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        (container,) = containers(dep)
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        claims = {
            v["persistentVolumeClaim"]["claimName"]: name for name, v in volumes.items() if "persistentVolumeClaim" in v
        }
        # The gateway's SQLite and the resharing store survive restarts; the rest keep nothing.
        if server == CONSOLE:  # keeps nothing: sessions live in the process
            assert claims == {} and {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")} == {
                "/tmp"
            }
            continue
        if server in ("gateway", "resharing"):
            assert f"riskmesh-{server}-state" in claims
        if server == "encryption":
            name = claims["riskmesh-data"]
            assert volumes[name]["persistentVolumeClaim"]["readOnly"] is True
            assert mounts[name]["readOnly"] is True
        else:
            assert "riskmesh-data" not in claims
        # Read-only root filesystem: the state directory and /tmp are writable volumes.
        state_dir = env_of(container)["RISKMESH_STATE_DIR"]
        writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert {state_dir, "/tmp"} <= writable


# --- hardening, probes, resources --------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_is_hardened_probed_and_sized(target):
    docs = render(target)
    assert of_kind(docs, "Deployment")
    for dep in of_kind(docs, "Deployment"):
        server = component(dep)
        pod = dep["spec"]["template"]["spec"]
        where = f"{target}: {server}"
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in containers(dep):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["runAsUser"] == 10001, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
            assert "memory" in c["resources"]["limits"], where
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            if server == CONSOLE:
                # HTTP for the ingress; probes on a port that answers GET /healthz only.
                assert ports == {"http": CONSOLE_HTTP_PORT, "health": CONSOLE_HEALTH_PORT}, where
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    assert c[probe]["httpGet"] == {"path": "/healthz", "port": CONSOLE_HEALTH_PORT}, f"{where}: {probe}"
                continue
            assert ports == {"mtls": mtls_port(server), "health": health_port(server)}, where
            # Native gRPC probes on the plaintext health port (probes have no client cert).
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert c[probe]["grpc"]["port"] == health_port(server), f"{where}: {probe}"
                assert set(c[probe]) & {"httpGet", "tcpSocket", "exec"} == set(), f"{where}: {probe}"


@pytest.mark.parametrize("org", OVERLAYS)
def test_service_account_mounts_no_token(org):
    docs = render(f"overlays/{org}")
    (sa,) = of_kind(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    for dep in of_kind(docs, "Deployment"):
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


# --- Services ----------------------------------------------------------------------------


@pytest.mark.parametrize("org", OVERLAYS)
def test_services_cluster_ip_per_server_and_load_balancer_per_cross_org_callee(org):
    docs = render(f"overlays/{org}")
    services = by_name(docs, "Service")
    servers = ROLE_SERVERS[OVERLAYS[org]]
    for server in servers:
        svc = services[f"riskmesh-{server}"]
        assert svc["spec"]["type"] == "ClusterIP"
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
            "mtls": mtls_port(server),
            "health": health_port(server),
        }
        assert svc["spec"]["selector"]["app.kubernetes.io/component"] == server
    console = services[f"riskmesh-{CONSOLE}"]["spec"]
    assert console["type"] == "ClusterIP" and [(p["name"], p["port"]) for p in console["ports"]] == [
        ("http", CONSOLE_HTTP_PORT)
    ]
    callers = cross_org_callers(org)
    public = {n: s for n, s in services.items() if s["spec"]["type"] == "LoadBalancer"}
    assert set(public) == {f"riskmesh-{server}-public" for server in callers}
    for server, orgs in callers.items():
        spec = public[f"riskmesh-{server}-public"]["spec"]
        # L4 pass-through of the mTLS port only; the peers' source addresses are kept.
        assert [(p["port"], p["targetPort"], p["protocol"]) for p in spec["ports"]] == [
            (mtls_port(server), "mtls", "TCP")
        ]
        assert spec["externalTrafficPolicy"] == "Local"
        assert set(spec["loadBalancerSourceRanges"]) == {EXAMPLE_RANGES[o] for o in orgs}


# --- NetworkPolicies: exactly the paths of docs/design.md -----------------------------------


@pytest.mark.parametrize("org", OVERLAYS)
def test_network_policies_deny_all_then_admit_exactly_the_design_paths(org):
    docs = render(f"overlays/{org}")
    policies = by_name(docs, "NetworkPolicy")
    deny = policies["default-deny-all"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    got, want = model(docs), expected_model(org)
    assert got.isolated_ingress == want.isolated_ingress
    assert got.isolated_egress == want.isolated_egress
    assert sorted(got.ingress - want.ingress, key=str) == [], "ingress admitted beyond the design"
    assert sorted(want.ingress - got.ingress, key=str) == [], "ingress the design needs is not admitted"
    assert sorted(got.egress - want.egress, key=str) == [], "egress admitted beyond the design"
    assert sorted(want.egress - got.egress, key=str) == [], "egress the design needs is not admitted"


def test_the_model_catches_an_extra_edge():
    """Guard for the test above: an allow-all policy must show up as extra edges."""
    docs = render("overlays/insurer")
    leak = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "leak"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
    }
    got = model([*docs, leak])
    assert got.egress - expected_model("insurer").egress


@pytest.mark.parametrize("org", OVERLAYS)
def test_every_address_is_documentation_only(org):
    """No real address in the repository: every range and peer address is TEST-NET."""
    docs = render(f"overlays/{org}")
    for policy in of_kind(docs, "NetworkPolicy"):
        for rule in [*policy["spec"].get("ingress", []), *policy["spec"].get("egress", [])]:
            for peer in [*rule.get("from", []), *rule.get("to", [])]:
                if "ipBlock" in peer:
                    assert in_test_net(peer["ipBlock"]["cidr"]), policy["metadata"]["name"]
    for svc in of_kind(docs, "Service"):
        for cidr in svc["spec"].get("loadBalancerSourceRanges", []):
            assert in_test_net(cidr), svc["metadata"]["name"]
    config = tomllib.loads((K8S / "overlays" / org / "riskmesh.toml").read_text())
    for peer in config["peers"].values():
        assert in_test_net(peer["host"])
        for address in peer.get("addresses", {}).values():
            assert in_test_net(address.rsplit(":", 1)[0])


# --- the org config and the certificate mounts --------------------------------------------


def overlay_config(org: str, docs: list[dict]) -> tuple[dict, str]:
    (cm,) = of_kind(docs, "ConfigMap")
    assert cm["metadata"]["name"].startswith("riskmesh-config-")  # generated: a change rolls the pods
    return cm, cm["data"]["riskmesh.toml"]


@pytest.mark.parametrize("org,role", OVERLAYS.items())
def test_config_map_is_the_orgs_config_and_agrees_with_the_manifests(org, role):
    docs = render(f"overlays/{org}")
    cm, text = overlay_config(org, docs)
    assert cm["data"]["org"] == org
    (ns,) = of_kind(docs, "Namespace")
    assert ns["metadata"]["name"] == namespace_of(org)
    assert ns["metadata"]["labels"]["riskmesh.io/org"] == org
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    services = by_name(docs, "Service")
    for dep in of_kind(docs, "Deployment"):
        (container,) = containers(dep)
        env = env_of(container)
        config = parse_config(tomllib.loads(text), env, Path("/"))
        assert (config.org, config.role, config.base_port) == (org, role, BASE_PORT)
        assert config.bind_host == "0.0.0.0"
        assert component(dep) == CONSOLE or config.runs(component(dep))
        # The config file is where the Deployment says, from this ConfigMap.
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        mount = next(m for m in container["volumeMounts"] if env["RISKMESH_CONFIG"].startswith(m["mountPath"] + "/"))
        assert volumes[mount["name"]]["configMap"]["name"] == cm["metadata"]["name"]
        # This org's own servers are dialled through their ClusterIP Services.
        for server in config.servers:
            host, port = config.self_endpoint.address(server).rsplit(":", 1)
            assert int(port) == mtls_port(server)
            assert services[host]["spec"]["type"] == "ClusterIP"
    # Every cross-org server this org dials has an explicit address in the peer's range
    # (the range this org's egress NetworkPolicies admit).
    config = parse_config(tomllib.loads(text), {}, Path("/"))
    for src, targets in cross_org_callees(org).items():
        for peer, server in targets:
            listed = config.peers[peer].addresses
            assert server in listed, f"{org} dials {peer}'s {server} ({src}) but has no address for it"
            host, port = listed[server].rsplit(":", 1)
            assert ipaddress.ip_address(host) in ipaddress.ip_network(EXAMPLE_RANGES[peer])
            assert int(port) == mtls_port(server)


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("k8s-pki")
    init_pki(out, tuple(OVERLAYS))
    return out


@pytest.mark.parametrize("org", OVERLAYS)
def test_secrets_from_export_k8s_mount_where_the_servers_read_them(org, dev_pki, tmp_path):
    """Lay out each pod's certificate mount from the Secrets `riskmesh pki export-k8s`
    writes, then load the server's credentials from it as the server does."""
    secrets = {}
    for path in export_k8s(dev_pki, org, tmp_path / "secrets", namespace_of(org)):
        secret = yaml.safe_load(path.read_text())
        assert secret["metadata"]["namespace"] == namespace_of(org)
        secrets[secret["metadata"]["name"]] = secret
    docs = render(f"overlays/{org}")
    for dep in of_kind(docs, "Deployment"):
        server = component(dep)
        (container,) = containers(dep)
        root = tmp_path / "pods" / server
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        secret_mounts = [m for m in container["volumeMounts"] if "secret" in volumes[m["name"]]]
        assert len(secret_mounts) == 1, f"{server}: one certificate Secret per server"
        (mount,) = secret_mounts
        assert mount["readOnly"] is True
        source = volumes[mount["name"]]["secret"]
        assert source["secretName"] == f"riskmesh-{server}-tls"
        data = secrets[source["secretName"]]["data"]
        for item in source["items"]:
            dest = root / mount["mountPath"].lstrip("/") / item["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(base64.b64decode(data[item["key"]]))
        pki_dir = root / env_of(container)["RISKMESH_PKI_DIR"].lstrip("/")
        credentials = MeshCredentials(pki_dir, org, server, ca_fingerprints(dev_pki, tuple(OVERLAYS)))
        assert credentials.org_cas.keys() == set(OVERLAYS)


@pytest.mark.parametrize("org", OVERLAYS)
def test_the_overlay_config_pins_every_orgs_ca_and_refuses_to_start_until_filled_in(
    org, dev_pki
):  # and keeps reflection off
    """Each org fills in the three CA fingerprints it was sent; unfilled, no server starts."""
    docs = render(f"overlays/{org}")
    _, text = overlay_config(org, docs)
    config = parse_config(tomllib.loads(text), {"RISKMESH_PKI_DIR": str(dev_pki)}, Path("/"))
    assert config.ca_pins == {name: f"FILL-IN-{name}-ca-sha256" for name in OVERLAYS}
    assert config.reflection is False and config.min_paillier_bits == 2048  # deployed: no reflection, no small keys
    with pytest.raises(TrustError, match="is not a SHA-256 fingerprint"):
        MeshCredentials.for_config(config, "gateway")
    filled = text
    for name, fingerprint in ca_fingerprints(dev_pki, tuple(OVERLAYS)).items():
        filled = filled.replace(f"FILL-IN-{name}-ca-sha256", fingerprint)
    config = parse_config(tomllib.loads(filled), {"RISKMESH_PKI_DIR": str(dev_pki)}, Path("/"))
    assert MeshCredentials.for_config(config, "gateway").org_cas.keys() == set(OVERLAYS)


def test_no_secret_or_key_material_in_the_manifests():
    for target in TARGETS:
        docs = render(target)
        assert of_kind(docs, "Secret") == [], f"k8s/{target} renders a Secret"
        assert "PRIVATE KEY" not in render_text(target) and "BEGIN CERTIFICATE" not in render_text(target)
    for path in [*K8S.rglob("*"), REPO / "Dockerfile"]:
        if path.is_file():
            text = path.read_text()
            assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text, path
            if path.suffix in (".yaml", ".yml"):
                assert all(doc.get("kind") != "Secret" for doc in yaml.safe_load_all(text) if isinstance(doc, dict)), (
                    path
                )


# --- crypto workers (docs/adr/0011-crypto-workers.md) -------------------------------------------


@pytest.mark.parametrize("org", [o for o, role in OVERLAYS.items() if role == "data_owner"])
def test_crypto_workers_scale_by_the_overlay_and_the_servers_reach_every_replica(org):
    docs = render(f"overlays/{org}")
    _, text = overlay_config(org, docs)
    config = parse_config(tomllib.loads(text), {}, Path("/"))
    deployment = by_name(docs, "Deployment")[f"riskmesh-{CRYPTO_WORKER}"]
    # The servers keep as many chunks computing as there are replicas.
    assert config.crypto_workers == deployment["spec"]["replicas"] >= 1
    # One balanced target: the headless Service's name, every ready replica's address.
    assert config.crypto_worker_targets() == [f"dns:///riskmesh-{CRYPTO_WORKER}:{mtls_port(CRYPTO_WORKER)}"]
    service = by_name(docs, "Service")[f"riskmesh-{CRYPTO_WORKER}"]["spec"]
    assert service["clusterIP"] == "None" and service["selector"]["app.kubernetes.io/component"] == CRYPTO_WORKER
    assert {p["name"]: p["port"] for p in service["ports"]} == {
        "mtls": mtls_port(CRYPTO_WORKER),
        "health": health_port(CRYPTO_WORKER),
    }
    # Its own identity (certificate spiffe://<org>/crypto-worker), no public Service, no telemetry egress.
    pod = deployment["spec"]["template"]
    (secret,) = [v["secret"] for v in pod["spec"]["volumes"] if "secret" in v]
    assert secret["secretName"] == f"riskmesh-{CRYPTO_WORKER}-tls"
    assert "riskmesh.io/telemetry" not in pod["metadata"]["labels"]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env_of(containers(deployment)[0])
    assert f"riskmesh-{CRYPTO_WORKER}-public" not in by_name(docs, "Service")


def test_the_helper_runs_no_crypto_workers():
    docs = render("overlays/helper")
    assert f"riskmesh-{CRYPTO_WORKER}" not in by_name(docs, "Deployment")
    _, text = overlay_config("helper", docs)
    assert parse_config(tomllib.loads(text), {}, Path("/")).crypto_workers == 0
