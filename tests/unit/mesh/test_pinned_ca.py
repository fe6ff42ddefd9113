"""Organisations are pinned by their CA's SHA-256 fingerprint, not named by the CA itself."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from services.cli.main import app
from services.lasso.rules import LASSO_RULES
from services.mesh.config import ConfigError, load_config
from services.mesh.identity import Identity, IdentityResolver
from services.mesh.pki_layout import OrgPaths, TrustError, ca_fingerprint, load_org_cas
from services.mesh.server import MeshServer
from services.mesh.tls import MeshCredentials
from services.tools.launcher import local_mesh_for
from services.tools.pki import ca_fingerprints, init_pki, make_ca, make_leaf

ORGS = ("insurer", "hospital", "helper")


def pem(cert) -> bytes:  # type: ignore[no-untyped-def]
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    init_pki(tmp_path / "pki")
    return tmp_path / "pki"


@pytest.fixture
def rogue() -> tuple[bytes, bytes]:
    """A CA that calls itself O=insurer (not the insurer's) and the spiffe://insurer/gateway it minted."""
    ca, key = make_ca("insurer")
    leaf, _ = make_leaf(Identity("insurer", "gateway"), ca, key)
    return pem(ca), pem(leaf)


def bundle(pki: Path) -> bytes:
    return OrgPaths(pki / "insurer").trust().read_bytes()


def test_pinned_ca_a_ca_calling_itself_insurer_cannot_mint_insurer_identities(
    pki: Path, rogue: tuple[bytes, bytes]
) -> None:
    rogue_ca, rogue_leaf = rogue
    pins = ca_fingerprints(pki)
    resolver = IdentityResolver(load_org_cas(bundle(pki), pins))
    assert resolver.resolve(OrgPaths(pki / "insurer").cert("gateway").read_bytes()) == Identity("insurer", "gateway")
    assert resolver.resolve(rogue_leaf) is None
    # Pinned, a bundle holding the rogue CA instead of the insurer's is refused, whatever it says of itself.
    swapped = rogue_ca + b"".join(pem(ca) for org, ca in load_org_cas(bundle(pki)).items() if org != "insurer")
    with pytest.raises(TrustError, match="no CA in the trust bundle has the fingerprint pinned for insurer"):
        load_org_cas(swapped, pins)


def test_pinned_ca_a_bundle_with_two_cas_for_one_org_is_refused(pki: Path, rogue: tuple[bytes, bytes]) -> None:
    with pytest.raises(TrustError, match="two CAs claiming organisation 'insurer'"):
        load_org_cas(bundle(pki) + rogue[0], ca_fingerprints(pki))
    with pytest.raises(TrustError, match="two CAs claiming organisation 'insurer'"):
        load_org_cas(bundle(pki) + rogue[0])  # also without pins (tools, tests)


def test_pinned_ca_a_pin_naming_another_orgs_ca_is_refused(pki: Path) -> None:
    pins = ca_fingerprints(pki)
    with pytest.raises(TrustError, match="the CA pinned for hospital names itself O=insurer"):
        load_org_cas(bundle(pki), {**pins, "hospital": pins["insurer"]})
    with pytest.raises(TrustError, match="is not a SHA-256 fingerprint"):
        load_org_cas(bundle(pki), {**pins, "helper": "FILL-IN: the helper's CA fingerprint"})


def test_pinned_ca_fingerprints_accept_both_spellings(pki: Path) -> None:
    pins = ca_fingerprints(pki)
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", pins["insurer"])
    plain = {org: fp.replace(":", "").lower() for org, fp in pins.items()}
    assert load_org_cas(bundle(pki), plain).keys() == set(ORGS)
    # Unpinned orgs get no CA: only what the config pins is trusted.
    assert load_org_cas(bundle(pki), {"insurer": pins["insurer"]}).keys() == {"insurer"}


def test_pinned_ca_the_launchers_configs_pin_every_org(tmp_path: Path) -> None:
    paths = local_mesh_for(tmp_path)
    pins = ca_fingerprints(load_config(paths["insurer"], env={}).pki_dir)
    for org in ORGS:
        config = load_config(paths[org], env={})
        assert config.ca_pins == pins
        credentials = MeshCredentials.for_config(config, "lasso")
        assert {ca_fingerprint(ca) for ca in credentials.org_cas.values()} == set(pins.values())


def test_pinned_ca_servers_refuse_to_start_without_pins_or_with_a_doubled_org(
    tmp_path: Path, rogue: tuple[bytes, bytes]
) -> None:
    paths = local_mesh_for(tmp_path)
    path = paths["hospital"]
    text = path.read_text()
    config = load_config(path, env={})
    path.write_text(re.sub(r'(?m)^ca_sha256 = ".*"\n', "", text, count=2))  # own pin and the first peer's
    with pytest.raises(ConfigError, match="pins no CA for hospital, insurer"):
        MeshServer(load_config(path, env={}), "lasso", LASSO_RULES)
    path.write_text(text)
    trust = OrgPaths(config.pki_dir / "hospital").trust()
    trust.write_bytes(trust.read_bytes() + rogue[0])
    with pytest.raises(TrustError, match="two CAs claiming organisation 'insurer'"):
        MeshServer(config, "lasso", LASSO_RULES)


def test_pinned_ca_servers_verify_clients_against_the_pinned_cas_only(pki: Path) -> None:
    extra, _ = make_ca("auditor")  # in the bundle, pinned by nobody
    trust = OrgPaths(pki / "insurer").trust()
    trust.write_bytes(trust.read_bytes() + pem(extra))
    credentials = MeshCredentials(pki, "insurer", "lasso", ca_fingerprints(pki))
    assert pem(extra) not in credentials.trust_pem
    assert credentials.trust_pem == b"".join(pem(ca) for ca in credentials.org_cas.values())


def test_pinned_ca_riskmesh_pki_prints_the_fingerprints(pki: Path) -> None:
    result = CliRunner().invoke(app, ["pki", "fingerprints", "--pki-dir", str(pki)])
    assert result.exit_code == 0, result.output
    for org, fingerprint in ca_fingerprints(pki).items():
        assert f"{org} {fingerprint}" in result.output
    result = CliRunner().invoke(app, ["pki", "init", "--out", str(pki.parent / "again")])
    assert result.exit_code == 0 and result.output.count(":") > 3 * 31
