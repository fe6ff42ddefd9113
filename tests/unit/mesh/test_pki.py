import stat

from cryptography import x509

from services.mesh.identity import Identity, IdentityResolver, identity_of_certificate, parse_spiffe
from services.mesh.pki_layout import OrgPaths, load_org_cas
from services.tools.pki import init_pki


def test_pki_layout_identities_and_key_permissions(tmp_path):
    init_pki(tmp_path)
    for org in ("insurer", "hospital", "helper"):
        paths = OrgPaths(tmp_path / org)
        for service in ("gateway", "encryption", "intersection", "resharing", "lasso", "client", "crypto-worker"):
            cert = x509.load_pem_x509_certificate(paths.cert(service).read_bytes())
            assert identity_of_certificate(cert) == Identity(org, service)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert "localhost" in san.get_values_for_type(x509.DNSName)
            assert f"{service}.{org}.riskmesh" in san.get_values_for_type(x509.DNSName)
            assert stat.S_IMODE(paths.key(service).stat().st_mode) == 0o600
        assert stat.S_IMODE(paths.ca_key().stat().st_mode) == 0o600
        assert set(load_org_cas(paths.trust().read_bytes())) == {"insurer", "hospital", "helper"}


def test_init_keeps_existing_material_unless_forced(tmp_path):
    init_pki(tmp_path)
    before = OrgPaths(tmp_path / "insurer").ca_cert().read_bytes()
    init_pki(tmp_path)
    assert OrgPaths(tmp_path / "insurer").ca_cert().read_bytes() == before
    init_pki(tmp_path, force=True)
    assert OrgPaths(tmp_path / "insurer").ca_cert().read_bytes() != before


def test_init_issues_a_service_added_since_with_the_existing_ca(tmp_path):
    init_pki(tmp_path)
    paths = OrgPaths(tmp_path / "insurer")
    ca = paths.ca_cert().read_bytes()
    paths.cert("crypto-worker").unlink()  # a PKI made before the crypto workers existed
    paths.key("crypto-worker").unlink()
    init_pki(tmp_path)
    assert paths.ca_cert().read_bytes() == ca
    cert = x509.load_pem_x509_certificate(paths.cert("crypto-worker").read_bytes())
    assert identity_of_certificate(cert) == Identity("insurer", "crypto-worker")
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))


def test_resolver_binds_identity_to_its_orgs_ca(tmp_path):
    init_pki(tmp_path)
    resolver = IdentityResolver(load_org_cas(OrgPaths(tmp_path / "insurer").trust().read_bytes()))
    assert resolver.resolve(OrgPaths(tmp_path / "hospital").cert("lasso").read_bytes()) == Identity("hospital", "lasso")
    # A CA certificate, garbage and a cert from an unknown PKI give no identity.
    assert resolver.resolve(OrgPaths(tmp_path / "hospital").ca_cert().read_bytes()) is None
    assert resolver.resolve(b"not a certificate") is None
    other = tmp_path / "other"
    init_pki(other)
    assert resolver.resolve(OrgPaths(other / "hospital").cert("lasso").read_bytes()) is None


def test_parse_spiffe_accepts_only_known_services():
    assert parse_spiffe("spiffe://insurer/gateway") == Identity("insurer", "gateway")
    assert parse_spiffe("spiffe://insurer/root") is None
    assert parse_spiffe("https://insurer/gateway") is None
    assert parse_spiffe("spiffe://Insurer/gateway") is None
    assert parse_spiffe("spiffe://insurer/crypto-worker") == Identity("insurer", "crypto-worker")
    for odd in ("crypto-", "-worker", "crypto--worker", "crypto-workers"):
        assert parse_spiffe(f"spiffe://insurer/{odd}") is None
