"""The generated clients (clients/typescript, clients/python) against live gateways.

The three organisations' gateways run as real processes over mTLS; each example dials the
insurer's gateway at 127.0.0.1 with a client certificate, expecting the server name
gateway.insurer.riskmesh. The TypeScript client is built by `make clients-ts` (npm ci +
ts-proto generation + tsc), which `make test` runs first.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.mesh.config import load_config
from services.tools.launcher import LocalMesh, local_mesh_for

ROOT = Path(__file__).resolve().parents[2]
TS_DIR = ROOT / "clients" / "typescript"
TS_EXAMPLE = TS_DIR / "dist" / "example.js"
PY_EXAMPLE = ROOT / "clients" / "python" / "example.py"
NODE = shutil.which("node") or "node"
TIMEOUT_S = 30


@dataclass(frozen=True)
class Gateway:
    address: str
    pki: Path


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str


def run(command: list[str], cwd: Path = ROOT) -> Ran:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    return Ran(done.returncode, done.stdout, done.stderr)


def facts(stdout: str, kind: str) -> list[dict[str, str]]:
    """The `kind k=v k=v ...` lines of an example's output, as dicts."""
    return [
        dict(field.split("=", 1) for field in line.split()[1:])
        for line in stdout.splitlines()
        if line.split()[:1] == [kind]
    ]


def ts_example(*args: str) -> Ran:
    return run([NODE, str(TS_EXAMPLE), *args])


def py_example(*args: str) -> Ran:
    return run([sys.executable, str(PY_EXAMPLE), *args])


@pytest.fixture(scope="module")
def typescript_built() -> None:
    """The TypeScript client is built and not older than its sources (else: run `make clients-ts`)."""
    assert (TS_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(), "npm dependencies missing: run `make clients-ts`"
    sources = [p for p in (TS_DIR / "src").rglob("*.ts")]
    assert sources and TS_EXAMPLE.exists(), "TypeScript client not built: run `make clients-ts`"
    for source in sources:
        built = TS_DIR / "dist" / source.relative_to(TS_DIR / "src").with_suffix(".js")
        assert built.exists() and built.stat().st_mtime >= source.stat().st_mtime, (
            f"{built} is stale: run `make clients-ts`"
        )


@pytest.fixture(scope="module")
def insurer_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    configs = local_mesh_for(tmp_path_factory.mktemp("clients-mesh"))
    mesh = LocalMesh(configs, only_servers=("gateway",)).start()
    try:
        insurer = load_config(configs["insurer"], env={})
        yield Gateway(insurer.self_endpoint.address("gateway"), insurer.pki_dir)
    finally:
        mesh.stop()


def test_generated_typescript_is_fresh_against_proto(typescript_built: None) -> None:
    checked = run([NODE, "scripts/generate.mjs", "--check"], cwd=TS_DIR)
    assert checked.code == 0, checked.stderr
    assert "generated TypeScript is fresh" in checked.stdout


def test_generation_check_fails_when_a_proto_changes(typescript_built: None, tmp_path: Path) -> None:
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    gateway_proto = tmp_path / "proto" / "riskmesh" / "v1" / "gateway.proto"
    text = gateway_proto.read_text()
    marker = "  string caller_identity = 4;\n"
    assert marker in text
    gateway_proto.write_text(text.replace(marker, marker + "  // Added by the staleness test.\n  string extra = 5;\n"))
    checked = run([NODE, "scripts/generate.mjs", "--check", "--workspace", str(tmp_path)], cwd=TS_DIR)
    assert checked.code == 1, (checked.stdout, checked.stderr)
    assert "stale" in checked.stderr and "riskmesh/v1/gateway.ts" in checked.stderr


def assert_insurer_view(ran: Ran) -> None:
    assert ran.code == 0, (ran.stdout, ran.stderr)
    [gateway] = facts(ran.stdout, "gateway")
    assert gateway["org"] == "insurer"
    assert gateway["role"] == "ROLE_DATA_OWNER"
    assert gateway["caller"] == "spiffe://insurer/client"
    peers = {p["org"]: p for p in facts(ran.stdout, "peer")}
    assert set(peers) == {"hospital", "helper"}
    assert all(p["reachable"] == "true" for p in peers.values()), peers
    assert peers["hospital"]["role"] == "ROLE_DATA_OWNER"
    assert peers["helper"]["role"] == "ROLE_HELPER"
    assert facts(ran.stdout, "studies") == [{"count": "0"}]


@pytest.mark.e2e
def test_typescript_example_reads_the_insurer_gateway_over_mtls(
    typescript_built: None, insurer_gateway: Gateway
) -> None:
    assert_insurer_view(
        ts_example("--address", insurer_gateway.address, "--org", "insurer", "--pki", str(insurer_gateway.pki))
    )


@pytest.mark.e2e
def test_python_example_reads_the_insurer_gateway_over_mtls(insurer_gateway: Gateway) -> None:
    assert_insurer_view(
        py_example("--address", insurer_gateway.address, "--org", "insurer", "--pki", str(insurer_gateway.pki))
    )


def refused_status(ran: Ran) -> str:
    assert ran.code == 1, (ran.stdout, ran.stderr)
    match = re.search(r"^error status=(\w+) ", ran.stderr, re.MULTILINE)
    assert match, ran.stderr
    return match.group(1)


@pytest.mark.e2e
@pytest.mark.parametrize("example", [ts_example, py_example], ids=["typescript", "python"])
def test_hospital_client_cert_is_refused_by_the_insurer_gateway(
    typescript_built: None, insurer_gateway: Gateway, example
) -> None:
    pki = insurer_gateway.pki
    ran = example(
        "--address",
        insurer_gateway.address,
        "--org",
        "insurer",
        "--ca",
        str(pki / "insurer" / "ca.pem"),
        "--cert",
        str(pki / "hospital" / "client.pem"),
        "--key",
        str(pki / "hospital" / "client.key"),
    )
    assert refused_status(ran) == "PERMISSION_DENIED"
    assert "gateway org=" not in ran.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("example", [ts_example, py_example], ids=["typescript", "python"])
def test_unknown_run_is_not_found(typescript_built: None, insurer_gateway: Gateway, example) -> None:
    ran = example(
        "--address",
        insurer_gateway.address,
        "--org",
        "insurer",
        "--pki",
        str(insurer_gateway.pki),
        "--run",
        "no-such-run",
    )
    assert refused_status(ran) == "NOT_FOUND"
    assert facts(ran.stdout, "studies") == [{"count": "0"}]


@pytest.mark.e2e
def test_typescript_client_trusting_another_org_ca_refuses_the_gateway(
    typescript_built: None, insurer_gateway: Gateway
) -> None:
    # The hospital's CA (and server name) cannot verify the insurer's gateway: the TLS handshake fails.
    ran = ts_example("--address", insurer_gateway.address, "--org", "hospital", "--pki", str(insurer_gateway.pki))
    assert refused_status(ran) == "UNAVAILABLE"


def test_python_client_needs_only_grpc_and_protobuf() -> None:
    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='example');"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    ran = run([sys.executable, "-c", probe, str(PY_EXAMPLE)])
    assert ran.code == 0, ran.stderr
    loaded = set(ran.stdout.split())
    assert {"grpc", "google", "riskmesh"} <= loaded
    assert not loaded & {"services", "numpy", "mpyc", "cryptography", "opentelemetry", "phe", "gmpy2"}, loaded
