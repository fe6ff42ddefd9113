"""The pure judgements of `riskmesh doctor` (services/doctor/checks.py)."""

from __future__ import annotations

import datetime as dt
import re

from cryptography.hazmat.primitives import serialization

from services.doctor import checks
from services.doctor.checks import PeerProbe
from services.mesh.identity import Identity
from services.tools.pki import make_ca, make_leaf


def public_der(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def leaf(ca, ca_key, org="insurer", service="gateway", **validity):
    return make_leaf(Identity(org, service), ca, ca_key, **validity)


def test_a_good_certificate_passes_every_check():
    now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)  # the checks run after the certificates exist
    ca, ca_key = make_ca("insurer")
    cert, key = leaf(ca, ca_key)
    findings = checks.check_certificate("insurer", "gateway", cert, public_der(key), ca, now)
    assert findings and all(f.ok for f in findings), findings


def test_expired_soon_expiring_and_not_yet_valid_certificates_fail_with_a_fix():
    now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)  # the checks run after the certificates exist
    ca, ca_key = make_ca("insurer")
    for validity, words in [
        ({"not_before": now - dt.timedelta(days=100), "not_after": now - dt.timedelta(days=1)}, "expired"),
        ({"not_after": now + dt.timedelta(days=10)}, "expires in"),
        ({"not_before": now + dt.timedelta(days=1), "not_after": now + dt.timedelta(days=90)}, "not valid before"),
    ]:
        cert, key = leaf(ca, ca_key, **validity)
        (bad,) = checks.failed(checks.check_certificate("insurer", "gateway", cert, public_der(key), ca, now))
        assert words in bad.detail and "issue a new certificate" in bad.fix, bad


def test_wrong_issuer_wrong_identity_and_mismatched_key_fail():
    now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)  # the checks run after the certificates exist
    ca, ca_key = make_ca("insurer")
    other_ca, other_key = make_ca("insurer")  # calls itself insurer, is not the CA in trust.pem
    cert, key = leaf(other_ca, other_key)
    (bad,) = checks.failed(checks.check_certificate("insurer", "gateway", cert, public_der(key), ca, now))
    assert bad.subject.endswith("chain") and "not issued by the CA of insurer" in bad.detail
    cert, key = leaf(ca, ca_key, service="lasso")
    (bad,) = checks.failed(checks.check_certificate("insurer", "gateway", cert, public_der(key), ca, now))
    assert "spiffe://insurer/lasso" in bad.detail
    _, stray_key = leaf(ca, ca_key)
    cert, _ = leaf(ca, ca_key)
    (bad,) = checks.failed(checks.check_certificate("insurer", "gateway", cert, public_der(stray_key), ca, now))
    assert "is not the key of this certificate" in bad.detail


def test_trust_bundle_needs_one_valid_ca_per_org_and_no_stranger():
    now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)  # the checks run after the certificates exist
    cas = {org: make_ca(org)[0] for org in ("insurer", "hospital", "helper")}
    assert all(f.ok for f in checks.check_trust_bundle("insurer", ["hospital", "helper"], list(cas.values()), now))
    missing = checks.failed(
        checks.check_trust_bundle("insurer", ["hospital", "helper"], [cas["insurer"], cas["helper"]], now)
    )
    assert [f.subject for f in missing] == ["trust.pem: CA of hospital"] and "ca.pem" in missing[0].fix
    twice = checks.failed(
        checks.check_trust_bundle("insurer", ["hospital", "helper"], [*cas.values(), make_ca("hospital")[0]], now)
    )
    assert "2 CA certificates claim O=hospital" in twice[0].detail
    stranger = checks.failed(
        checks.check_trust_bundle("insurer", ["hospital", "helper"], [*cas.values(), make_ca("mallory")[0]], now)
    )
    assert "mallory" in stranger[0].detail


def test_key_modes():
    assert all(f.ok for f in checks.check_key_mode("k", 0o100600))
    assert all(f.ok for f in checks.check_key_mode("k", 0o100440))  # k8s Secret with fsGroup
    for mode in (0o100644, 0o100604, 0o100660, 0o100666):
        (bad,) = checks.failed(checks.check_key_mode("k", mode))
        assert bad.fix == "chmod 600 k"


def test_peer_findings_name_the_cause():
    good = PeerProbe(
        "hospital",
        "h:7100",
        True,
        "",
        "spiffe://hospital/gateway",
        "",
        "hospital",
        "data_owner",
        "spiffe://insurer/gateway",
        0.01,
        0.002,
    )
    assert all(f.ok for f in checks.check_peer(good, "data_owner", "spiffe://insurer/gateway"))
    cases = {
        "unreachable": PeerProbe("hospital", "h:7100"),
        "did not verify": PeerProbe("hospital", "h:7100", True, tls_error="certificate verify failed"),
        "answered as spiffe://hospital/lasso": PeerProbe(
            "hospital", "h:7100", True, identity="spiffe://hospital/lasso"
        ),
        "GetInfo failed": PeerProbe(
            "hospital", "h:7100", True, identity="spiffe://hospital/gateway", rpc_error="UNAVAILABLE: x"
        ),
        "config says hospital (data_owner)": PeerProbe(
            "hospital",
            "h:7100",
            True,
            "",
            "spiffe://hospital/gateway",
            "",
            "hospital",
            "helper",
            "spiffe://insurer/gateway",
        ),
        "saw us as": PeerProbe(
            "hospital",
            "h:7100",
            True,
            "",
            "spiffe://hospital/gateway",
            "",
            "hospital",
            "data_owner",
            "spiffe://insurer/client",
        ),
    }
    for words, probe in cases.items():
        (bad,) = checks.failed(checks.check_peer(probe, "data_owner", "spiffe://insurer/gateway"))
        assert words in bad.detail and bad.fix, (words, bad)


def test_clock_skew_beyond_the_limit_fails_allowing_for_the_round_trip():
    probe = PeerProbe("helper", "x", True, skew_s=-120.0, rtt_s=0.02)
    (bad,) = checks.failed(checks.check_clock(probe))
    assert "behind" in bad.detail and "NTP" in bad.fix
    assert all(f.ok for f in checks.check_clock(PeerProbe("helper", "x", True, skew_s=30.5, rtt_s=2.0)))
    assert checks.check_clock(PeerProbe("helper", "x", True)) == []


def test_ports_and_disk():
    assert all(
        f.ok for f in checks.check_port("gateway", 7100, "free") + checks.check_port("gateway", 7100, "riskmesh")
    )
    (bad,) = checks.failed(checks.check_port("gateway", 7100, "other"))
    assert "base_port" in bad.fix
    assert checks.failed(checks.check_disk("/s", 10, True)) and checks.failed(checks.check_disk("/s", 1 << 40, False))
    assert all(f.ok for f in checks.check_disk("/s", 1 << 40, True))


def test_ca_pins_must_match_the_trust_bundle():
    cas = {org: make_ca(org)[0] for org in ("insurer", "hospital", "helper")}
    pins = {org: checks.fingerprint(ca) for org, ca in cas.items()}
    assert all(f.ok for f in checks.check_ca_pins(pins, list(cas), list(cas.values())))
    impostor = make_ca("hospital")[0]
    bad = checks.failed(checks.check_ca_pins(pins, list(cas), [cas["insurer"], impostor, cas["helper"]]))
    assert [f.subject for f in bad] == ["CA pin of hospital"] and "second channel" in bad[0].fix
    unfilled = {**pins, "helper": "FILL-IN-helper-ca-sha256"}
    (bad,) = checks.failed(checks.check_ca_pins(unfilled, list(cas), list(cas.values())))
    assert bad.subject == "CA pin of helper" and "riskmesh pki fingerprints" in bad.fix
    # The form openssl prints: `openssl x509 -fingerprint -sha256` → AB:CD:…
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", pins["insurer"])
