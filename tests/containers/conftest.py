"""The image and the three organisations' overlays under podman (services/tools/containers.py).

The image is built once per session (podman's layer cache makes an unchanged rebuild take
seconds; the Debian base is built once per machine). Pods, volumes and the network carry
a per-run prefix, so that two runs on one host do not meet."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from services.doctor.checks import fingerprint
from services.mesh.pki_layout import OrgPaths
from services.tools import containers
from services.tools.kubeplay import PlayBundle, translate
from services.tools.pki import export_k8s, init_pki
from tests.k8s.manifests import OVERLAYS, render

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "containers"
IMAGE = "localhost/riskmesh:test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def image() -> str:
    containers.ensure_tools()
    return containers.build_image(IMAGE)


@dataclass
class PlayedMesh:
    prefix: str
    network: str
    pki: Path
    bundles: dict[str, PlayBundle]
    gateway_ports: dict[str, int]  # loopback ports published for each org's gateway (port-forward)

    def container(self, pod: str) -> str:
        return f"{pod}-server"  # kube play names a container <pod>-<container name>


def play_overlays(image: str, root: Path, extra_env: dict[str, str] | None = None) -> PlayedMesh:
    prefix = f"rt{os.getpid()}-"
    pki = root / "pki"
    init_pki(pki, tuple(OVERLAYS))
    # What the organisations exchange: CA fingerprints, for the configs' pins (where they have any).
    cas = {org: x509.load_pem_x509_certificate(OrgPaths(pki / org).ca_cert().read_bytes()) for org in OVERLAYS}
    pins = {org: fingerprint(ca) for org, ca in cas.items()}
    mesh = PlayedMesh(prefix, f"{prefix}net", pki, {}, {})
    containers.network_create(mesh.network)
    for org in OVERLAYS:
        paths = export_k8s(pki, org, root / "k8s-secrets" / org, f"riskmesh-{org}")
        secrets = {d["metadata"]["name"]: d for d in (yaml.safe_load(p.read_text()) for p in paths)}
        mesh.gateway_ports[org] = free_port()
        mesh.bundles[org] = translate(
            render(f"overlays/{org}"),
            org,
            secrets,
            image,
            root / "host-files" / org,
            publish={("riskmesh-gateway", "mtls"): mesh.gateway_ports[org]},
            extra_env=extra_env,
            prefix=prefix,
            ca_pins=pins,
        )
    for bundle in mesh.bundles.values():
        containers.play(bundle, mesh.network, root)
    return mesh


def tear_down(mesh: PlayedMesh) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for bundle in mesh.bundles.values():
        for pod in bundle.pods:
            (ARTIFACTS / f"{pod.removeprefix(mesh.prefix)}.log").write_text(containers.logs(mesh.container(pod)))
        containers.remove(bundle)
    containers.remove_prefixed(mesh.prefix)
    containers.network_remove(mesh.network)


@pytest.fixture(scope="module")
def played(image, tmp_path_factory) -> Iterator[PlayedMesh]:
    # No OpenTelemetry Collector runs here: telemetry goes to JSON lines in the state volumes.
    mesh = play_overlays(image, tmp_path_factory.mktemp("play"), extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": ""})
    yield mesh
    tear_down(mesh)
