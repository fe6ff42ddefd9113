"""Refusals by identity at the servers of the three organisations' processes.

TLS: no client certificate, a certificate of a CA nobody trusts, an expired
certificate of the org's own CA — the handshake refuses them (the client sees
UNAVAILABLE); no RPC reaches the server, so nothing can be audited there.

Identity: a certificate of another organisation or of another service of the same
organisation → PERMISSION_DENIED; a certificate whose identity its CA may not issue
(hospital's CA naming spiffe://insurer/client) → UNAUTHENTICATED; a helper asking for a
result and an organisation asking for another organisation's shares → PERMISSION_DENIED.
A gateway audits each refusal as `rpc.refused` (method and code) in its hash-chained
log. The join and lasso servers keep no audit log of their own (in Kubernetes their
state is an emptyDir): their authorisation interceptor logs each refusal as a WARNING
line naming the method, the caller's identity and the code, which is what is checked.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from riskmesh.v1 import gateway_pb2, gateway_pb2_grpc, join_pb2, join_pb2_grpc, lasso_pb2, lasso_pb2_grpc
from services.mesh.identity import Identity
from services.reliability.ledger import Ledger
from services.tools.pki import OrgPaths, init_pki, issue_with_existing_ca, make_leaf, server_name, write_leaf
from tests.reliability.harness import Mesh, audit_rows

pytestmark = pytest.mark.e2e

CALL_S = 10.0
STUBS: dict[str, Any] = {
    "gateway": gateway_pb2_grpc.GatewayServiceStub,
    "resharing": join_pb2_grpc.ResharingServiceStub,
    "intersection": join_pb2_grpc.IntersectionServiceStub,
    "encryption": join_pb2_grpc.EncryptionServiceStub,
    "lasso": lasso_pb2_grpc.LassoServiceStub,
}


@dataclass(frozen=True)
class Credentials:
    """What a caller presents: a certificate and key (None: no client certificate)."""

    label: str
    cert_pem: bytes | None
    key_pem: bytes | None
    identity: str  # as the server would name it in its audit row ("unidentified" if none)


def channel_as(mesh: Mesh, creds: Credentials, org: str, server: str) -> grpc.Channel:
    root = OrgPaths(Path(mesh.orgs[org].pki_dir) / org).ca_cert().read_bytes()
    ssl = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=creds.key_pem, certificate_chain=creds.cert_pem
    )
    address = mesh.orgs[org].self_endpoint.address(server)
    return grpc.secure_channel(address, ssl, options=[("grpc.ssl_target_name_override", server_name(org, server))])


def call(stub: Any, method: str) -> None:
    """One request of `method` (streaming ones consumed); raises the RpcError."""
    requests: dict[str, Callable[[], Any]] = {
        "GetInfo": lambda: stub.GetInfo(gateway_pb2.GetInfoRequest(), timeout=CALL_S),
        "ListStudies": lambda: stub.ListStudies(gateway_pb2.ListStudiesRequest(), timeout=CALL_S),
        "StartRun": lambda: stub.StartRun(gateway_pb2.StartRunRequest(study_id="leak-study"), timeout=CALL_S),
        "PeerStartRun": lambda: stub.PeerStartRun(
            gateway_pb2.PeerStartRunRequest(run_id="refused-run", study_id="leak-study"), timeout=CALL_S
        ),
        "GetResult": lambda: stub.GetResult(gateway_pb2.GetResultRequest(run_id=LEAK_RUN[0]), timeout=CALL_S),
        "GetShares": lambda: list(stub.GetShares(join_pb2.GetSharesRequest(run_id=LEAK_RUN[0]), timeout=CALL_S)),
        "UploadRows": lambda: stub.UploadRows(
            iter([join_pb2.UploadRowsRequest(header=join_pb2.UploadHeader(run_id="refused-run"))]), timeout=CALL_S
        ),
        "DeliverMaskedRows": lambda: stub.DeliverMaskedRows(
            iter([join_pb2.DeliverMaskedRowsRequest(header=join_pb2.MaskedRowsHeader(run_id="refused-run"))]),
            timeout=CALL_S,
        ),
        "PrepareEncryption": lambda: stub.PrepareEncryption(
            join_pb2.PrepareEncryptionRequest(run_id="refused-run"), timeout=CALL_S
        ),
        "RunLasso": lambda: list(stub.RunLasso(lasso_pb2.RunLassoRequest(run_id="refused-run"), timeout=CALL_S)),
        "Exchange": lambda: list(
            stub.Exchange(
                iter([lasso_pb2.ExchangeRequest(hello=lasso_pb2.MpcHello(run_id="refused-run", pid=0))]), timeout=CALL_S
            )
        ),
    }
    requests[method]()


LEAK_RUN: list[str] = []  # the leak study's run id, set by the fixture below


@pytest.fixture(scope="module")
def leak_run(mesh: Mesh) -> str:
    runs = mesh.gateway("insurer").ListRuns(gateway_pb2.ListRunsRequest(study_id="leak-study"), timeout=CALL_S).runs
    assert runs, "suite_1_leak_study.py runs first"
    LEAK_RUN[:] = [runs[0].run_id]
    return runs[0].run_id


@pytest.fixture(scope="module")
def certs(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Credentials]:
    pki = Path(mesh.orgs["insurer"].pki_dir)
    out = tmp_path_factory.mktemp("refusal-certs")

    def leaf(org: str, service: str, root: Path = pki) -> Credentials:
        return Credentials(
            f"{org}/{service}",
            (root / org / f"{service}.pem").read_bytes(),
            (root / org / f"{service}.key").read_bytes(),
            f"spiffe://{org}/{service}",
        )

    untrusted = out / "untrusted"
    init_pki(untrusted)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    issue_with_existing_ca(
        pki, "insurer", "client", out / "expired" / "insurer", not_before=past - dt.timedelta(days=1), not_after=past
    )
    hospital_ca = OrgPaths(pki / "hospital")
    ca_cert = x509.load_pem_x509_certificate(hospital_ca.ca_cert().read_bytes())
    ca_key = serialization.load_pem_private_key(hospital_ca.ca_key().read_bytes(), password=None)
    cert, key = make_leaf(Identity("insurer", "client"), ca_cert, ca_key)  # type: ignore[arg-type]
    write_leaf(OrgPaths(out / "forged" / "insurer"), "client", cert, key)
    creds = {
        f"{org}/{service}": leaf(org, service)
        for org in ("insurer", "hospital", "helper")
        for service in ("client", "gateway", "encryption", "intersection", "resharing", "lasso")
        if (pki / org / f"{service}.pem").exists()
    }
    creds["no certificate"] = Credentials("no certificate", None, None, "unidentified")
    creds["unknown CA"] = dataclass_replace(leaf("insurer", "client", untrusted), "unknown CA")
    creds["expired"] = dataclass_replace(leaf("insurer", "client", out / "expired"), "expired")
    creds["forged insurer/client"] = Credentials(
        "forged insurer/client",
        (out / "forged" / "insurer" / "client.pem").read_bytes(),
        (out / "forged" / "insurer" / "client.key").read_bytes(),
        "unidentified",
    )
    return creds


def dataclass_replace(creds: Credentials, label: str) -> Credentials:
    return Credentials(label, creds.cert_pem, creds.key_pem, creds.identity)


# (caller credentials, target org, target server, method, expected code)
TLS_REFUSALS = [
    (caller, org, server, method, grpc.StatusCode.UNAVAILABLE)
    for caller in ("no certificate", "unknown CA", "expired")
    for org, server, method in (
        ("insurer", "gateway", "GetInfo"),
        ("helper", "intersection", "UploadRows"),
        ("hospital", "resharing", "GetShares"),
        ("helper", "lasso", "Exchange"),
    )
]
IDENTITY_REFUSALS = [
    ("hospital/client", "insurer", "gateway", "GetInfo", grpc.StatusCode.PERMISSION_DENIED),  # another org's client
    ("insurer/lasso", "insurer", "gateway", "GetInfo", grpc.StatusCode.PERMISSION_DENIED),  # another service of the org
    ("hospital/gateway", "insurer", "gateway", "StartRun", grpc.StatusCode.PERMISSION_DENIED),  # a peer on a client RPC
    (
        "insurer/client",
        "insurer",
        "gateway",
        "PeerStartRun",
        grpc.StatusCode.PERMISSION_DENIED,
    ),  # a client on a peer RPC
    (
        "helper/gateway",
        "insurer",
        "gateway",
        "GetResult",
        grpc.StatusCode.PERMISSION_DENIED,
    ),  # the helper asks an owner for a result
    (
        "helper/client",
        "helper",
        "gateway",
        "GetResult",
        grpc.StatusCode.PERMISSION_DENIED,
    ),  # the helper asks its own gateway
    ("hospital/encryption", "helper", "gateway", "ListStudies", grpc.StatusCode.PERMISSION_DENIED),
    (
        "forged insurer/client",
        "insurer",
        "gateway",
        "GetInfo",
        grpc.StatusCode.UNAUTHENTICATED,
    ),  # a CA naming another org
    ("hospital/lasso", "insurer", "resharing", "GetShares", grpc.StatusCode.PERMISSION_DENIED),  # another org's shares
    ("helper/lasso", "hospital", "resharing", "GetShares", grpc.StatusCode.PERMISSION_DENIED),
    ("insurer/lasso", "helper", "resharing", "GetShares", grpc.StatusCode.PERMISSION_DENIED),
    (
        "insurer/gateway",
        "insurer",
        "resharing",
        "GetShares",
        grpc.StatusCode.PERMISSION_DENIED,
    ),  # shares go to the lasso only
    ("insurer/gateway", "helper", "intersection", "UploadRows", grpc.StatusCode.PERMISSION_DENIED),
    ("hospital/encryption", "insurer", "resharing", "DeliverMaskedRows", grpc.StatusCode.PERMISSION_DENIED),
    ("helper/client", "insurer", "encryption", "PrepareEncryption", grpc.StatusCode.PERMISSION_DENIED),
    ("hospital/gateway", "insurer", "lasso", "RunLasso", grpc.StatusCode.PERMISSION_DENIED),
    ("insurer/gateway", "hospital", "lasso", "Exchange", grpc.StatusCode.PERMISSION_DENIED),
    ("forged insurer/client", "helper", "intersection", "UploadRows", grpc.StatusCode.UNAUTHENTICATED),
]


def _refused(mesh: Mesh, creds: Credentials, org: str, server: str, method: str) -> grpc.RpcError:
    channel = channel_as(mesh, creds, org, server)
    try:
        call(STUBS[server](channel), method)
    except grpc.RpcError as err:
        return err
    finally:
        channel.close()
    raise AssertionError(f"{creds.label} → {org}/{server}.{method} was not refused")


def _log_lines(mesh: Mesh, org: str, server: str, method: str, code: grpc.StatusCode, identity: str) -> int:
    """Lines of the server's log recording a refusal of exactly this call."""
    who = identity if identity != "unidentified" else "unidentified caller"
    text = (mesh.orgs[org].state_dir / "logs" / f"{server}.log").read_text(errors="replace")
    return text.count(f"refused {method} for {who}: {code.name}")


def _logged(mesh: Mesh, org: str, server: str, method: str, code: grpc.StatusCode, identity: str, before: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if _log_lines(mesh, org, server, method, code, identity) > before:
            return True
        time.sleep(0.1)
    return False


def _audited(mesh: Mesh, org: str, after_seq: int, method: str, code: grpc.StatusCode, identity: str) -> bool:
    """An `rpc.refused` row for exactly this call was appended to the org's audit log."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for _, actor, action, details in audit_rows(mesh.orgs[org], after_seq):
            fields = json.loads(details)
            if (
                action == "rpc.refused"
                and fields.get("method") == method
                and fields.get("code") == code.name
                and actor == identity
            ):
                return True
        time.sleep(0.1)
    return False


@pytest.mark.reliability("refusals", "TLS handshake")
@pytest.mark.parametrize(
    "caller,org,server,method,code", TLS_REFUSALS, ids=[f"{c}->{o}.{s}.{m}" for c, o, s, m, _ in TLS_REFUSALS]
)
def test_tls_refusal(
    mesh: Mesh,
    certs: dict[str, Credentials],
    leak_run: str,
    ledger: Ledger,
    caller: str,
    org: str,
    server: str,
    method: str,
    code: grpc.StatusCode,
) -> None:
    with ledger.check("refusals", "TLS handshake", f"{caller} → {org}/{server}.{method}") as item:
        before = audit_rows(mesh.orgs[org])[-1][0]
        err = _refused(mesh, certs[caller], org, server, method)
        assert err.code() == code, f"{err.code().name}: {err.details()}"
        assert len(audit_rows(mesh.orgs[org], before)) == 0 or all(
            a != "rpc.refused" for _, _, a, _ in audit_rows(mesh.orgs[org], before)
        )
        item.detail = f"{err.code().name} at the handshake (nothing reaches the server to audit)"


@pytest.mark.reliability("refusals", "identity and role")
@pytest.mark.parametrize(
    "caller,org,server,method,code", IDENTITY_REFUSALS, ids=[f"{c}->{o}.{s}.{m}" for c, o, s, m, _ in IDENTITY_REFUSALS]
)
def test_identity_refusal_is_audited(
    mesh: Mesh,
    certs: dict[str, Credentials],
    leak_run: str,
    ledger: Ledger,
    error_messages: list[tuple[str, str]],
    caller: str,
    org: str,
    server: str,
    method: str,
    code: grpc.StatusCode,
) -> None:
    full = f"/riskmesh.v1.{STUBS[server].__name__.removesuffix('Stub')}/{method}"
    with ledger.check("refusals", "identity and role", f"{caller} → {org}/{server}.{method}") as item:
        identity = certs[caller].identity
        before = audit_rows(mesh.orgs[org])[-1][0]
        lines = _log_lines(mesh, org, server, full, code, identity)
        err = _refused(mesh, certs[caller], org, server, method)
        error_messages.append((f"refusal {caller} → {org}/{server}.{method}", err.details() or ""))
        assert err.code() == code, f"{err.code().name}: {err.details()}"
        if server == "gateway":
            assert _audited(mesh, org, before, full, code, identity), (
                f"no rpc.refused row for {full} ({code.name}, {identity}) in {org}'s audit log"
            )
            item.detail = f"{code.name}, audited (rpc.refused) at {org}"
        else:
            assert _logged(mesh, org, server, full, code, identity, lines), (
                f"no refusal line for {full} ({code.name}, {identity}) in {org}'s {server} log"
            )
            item.detail = f"{code.name}, logged by {org}/{server}"
