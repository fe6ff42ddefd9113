"""`riskmesh doctor` against running gateways over real mTLS, healthy and broken: an
expired certificate, a wrong CA, an unreachable peer, a world-readable key, a taken port."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.doctor.checks import failed
from services.doctor.diagnose import diagnose
from services.gateway.server import build_server
from services.mesh.config import load_config, render_config
from services.mesh.pki_layout import OrgPaths
from services.tools.launcher import local_mesh_for
from services.tools.pki import init_pki, issue_with_existing_ca
from tests.conftest import start_in_process, stop_in_process

NOW = dt.datetime.now(dt.UTC)
RISKMESH = Path(sys.executable).with_name("riskmesh")  # the console script


@pytest.fixture(scope="module")
def gateways(tmp_path_factory, loop_thread):
    configs = local_mesh_for(tmp_path_factory.mktemp("doctor-mesh"))
    servers = start_in_process(loop_thread, configs, build_server)
    yield configs
    stop_in_process(loop_thread, servers)


def insurer_copy(configs, tmp_path: Path) -> Path:
    """The insurer's config and PKI copied, to break without touching the running mesh."""
    config = load_config(configs["insurer"], env={})
    pki = tmp_path / "pki"
    shutil.copytree(config.pki_dir, pki)
    path = tmp_path / "riskmesh.toml"
    path.write_text(render_config(dataclasses.replace(config, pki_dir=pki)))
    return path


def failures(path: Path, env=None, **kw) -> dict[str, str]:
    return {f.subject: f"{f.detail} -> {f.fix}" for f in failed(diagnose("insurer", path, env or {}, **kw))}


def test_a_healthy_org_passes_and_the_cli_exits_zero(gateways):
    findings = diagnose("insurer", gateways["insurer"], {})
    assert not failed(findings), failed(findings)
    subjects = {f.subject for f in findings}
    assert {
        "insurer/gateway.pem chain",
        "insurer/lasso.pem validity",
        "clock vs hospital",
        "clock vs helper",
    } <= subjects
    assert any(f.area == "peers" and "hospital gateway" in f.subject and "mTLS ok" in f.detail for f in findings)
    assert any(f.subject.startswith("gateway port") and "running server" in f.detail for f in findings)
    done = subprocess.run(
        [str(RISKMESH), "doctor", "--org", "insurer", "--config", str(gateways["insurer"])],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 failed" in done.stdout


def test_expired_and_soon_expiring_certificates(gateways, tmp_path):
    path = insurer_copy(gateways, tmp_path)
    pki = load_config(path, env={}).pki_dir
    issue_with_existing_ca(
        pki,
        "insurer",
        "lasso",
        pki / "insurer",
        not_before=NOW - dt.timedelta(days=90),
        not_after=NOW - dt.timedelta(days=1),
    )
    issue_with_existing_ca(pki, "insurer", "resharing", pki / "insurer", not_after=NOW + dt.timedelta(days=7))
    bad = failures(path, peers=False)
    assert "expired on" in bad["insurer/lasso.pem validity"]
    assert "expires in" in bad["insurer/resharing.pem validity"]
    assert set(bad) == {"insurer/lasso.pem validity", "insurer/resharing.pem validity"}
    done = subprocess.run(
        [str(RISKMESH), "doctor", "--org", "insurer", "--config", str(path), "--no-peers"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1 and "expired on" in done.stdout and "→ issue a new certificate" in done.stdout


def test_a_wrong_ca_for_a_peer_or_for_ourselves(gateways, tmp_path):
    path = insurer_copy(gateways, tmp_path)
    pki = load_config(path, env={}).pki_dir
    foreign = tmp_path / "foreign"
    init_pki(foreign)  # CAs that call themselves insurer, hospital, helper but are nobody's
    # Our trust.pem holds a "hospital" CA that did not issue the hospital's gateway certificate.
    trust = OrgPaths(pki / "insurer").trust()
    bundle = trust.read_bytes().split(b"-----END CERTIFICATE-----\n")
    hospital_index = 1  # init_pki writes insurer, hospital, helper in that order
    bundle[hospital_index] = (
        OrgPaths(foreign / "hospital").ca_cert().read_bytes().removesuffix(b"-----END CERTIFICATE-----\n")
    )
    trust.write_bytes(b"-----END CERTIFICATE-----\n".join(bundle))
    bad = failures(path)
    (hospital,) = [v for k, v in bad.items() if k.startswith("hospital gateway")]
    assert "did not verify" in hospital and "exchange CA certificates" in hospital
    assert not [k for k in bad if k.startswith("helper gateway")]
    # Our own lasso certificate issued by a CA that is not the insurer CA in trust.pem.
    issue_with_existing_ca(foreign, "insurer", "lasso", pki / "insurer")
    assert "not issued by the CA of insurer" in failures(path, peers=False)["insurer/lasso.pem chain"]


def test_an_unreachable_peer(gateways, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    bad = failures(gateways["insurer"], env={"RISKMESH_ADDR_HELPER_GATEWAY": f"127.0.0.1:{closed}"})
    assert list(bad) == [f"helper gateway at 127.0.0.1:{closed}"]
    assert (
        "unreachable" in bad[f"helper gateway at 127.0.0.1:{closed}"]
        and "[peers.helper]" in bad[f"helper gateway at 127.0.0.1:{closed}"]
    )


def test_a_world_readable_key_and_a_port_taken_by_something_else(gateways, tmp_path):
    path = insurer_copy(gateways, tmp_path)
    config = load_config(path, env={})
    key = OrgPaths(config.pki_dir / "insurer").key("encryption")
    key.chmod(0o644)
    with socket.socket() as squatter:
        # SO_REUSEADDR, as any server sets it: the test mesh holds its ports reserved (launcher.reserve_port).
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((config.bind_host, config.port("lasso")))
        squatter.listen()
        bad = failures(path, peers=False)
    assert bad[f"{key} permissions"].startswith("mode 0644") and f"chmod 600 {key}" in bad[f"{key} permissions"]
    assert "not this riskmesh server" in bad[f"lasso port {config.port('lasso')}"]
    assert len(bad) == 2
