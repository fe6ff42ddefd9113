"""PeerAnnounceKey between in-process gateways over mTLS (docs/adr/0013-offline-keys-and-pools.md):
only the other data owner's gateway may announce a next-run key, for the study's current digest,
of the study's key size; and a run's prepared key id is checked against the announcement."""

from __future__ import annotations

import time

import grpc
import pytest

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway.errors import RequestError
from services.gateway.offline import OFFLINE_TTL_S, OfflineMaterial, PeerKey
from services.gateway.server import build_server
from services.gateway.store import Store
from services.mesh.config import load_config
from services.mesh.identity import parse_spiffe
from services.mesh.tls import MeshCredentials
from services.study.spec import DEFAULT_PAILLIER_BITS, spec_digest
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data
from tests.conftest import start_in_process, stop_in_process

STUDY = "offline-announce"


@pytest.fixture(scope="module")
def mesh(loop_thread, mesh_configs):
    servers = start_in_process(loop_thread, mesh_configs, build_server)
    configs = {org: load_config(path, env={}) for org, path in mesh_configs.items()}
    clients = {
        org: GatewayClient.from_pki(c.self_endpoint.address("gateway"), org, c.pki_dir) for org, c in configs.items()
    }
    study = clients["insurer"].propose(spec_for(make_study_data(40), STUDY), source_path="/data/insurer.csv")
    clients["hospital"].approve(STUDY, study.spec_digest, "/data/hospital.csv")
    clients["helper"].approve(STUDY, study.spec_digest)
    yield configs, servers, study.spec_digest
    for c in clients.values():
        c.close()
    stop_in_process(loop_thread, servers)


def fake_key(key_id: str, bits: int = DEFAULT_PAILLIER_BITS) -> common_pb2.PaillierPublicKey:
    """A public key's shape (the gateway checks size and id; the servers check the maths)."""
    n = (1 << (bits - 1)) | 1
    return common_pb2.PaillierPublicKey(n=n.to_bytes(bits // 8, "big"), key_id=key_id, h_s=b"\x02" * (bits // 4))


def announce(configs, caller: tuple[str, str], digest: str, key: common_pb2.PaillierPublicKey, study: str = STUDY):
    config = configs[caller[0]]
    target = configs["insurer"]
    credentials = MeshCredentials(config.pki_dir, *caller)
    with credentials.sync_channel("insurer", "gateway", target.self_endpoint.address("gateway")) as channel:
        request = gateway_pb2.PeerAnnounceKeyRequest(study_id=study, spec_digest=digest, paillier_key=key)
        return gateway_pb2_grpc.GatewayServiceStub(channel).PeerAnnounceKey(request, timeout=10)


def refusal(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_the_other_owners_gateway_announces_its_next_run_key(mesh):
    configs, _, digest = mesh
    assert (
        announce(configs, ("hospital", "gateway"), digest, fake_key("a" * 32)) == gateway_pb2.PeerAnnounceKeyResponse()
    )


@pytest.mark.parametrize(
    "caller,expected",
    [
        (("helper", "gateway"), grpc.StatusCode.PERMISSION_DENIED),  # a party, but no data owner
        (("hospital", "client"), grpc.StatusCode.PERMISSION_DENIED),  # the owner's people, not its gateway
        (("hospital", "resharing"), grpc.StatusCode.PERMISSION_DENIED),
        (("insurer", "gateway"), grpc.StatusCode.PERMISSION_DENIED),  # its own gateway is no peer
    ],
    ids=lambda v: "/".join(v) if isinstance(v, tuple) else v.name,
)
def test_an_announcement_from_another_identity_is_refused(mesh, caller, expected):
    configs, _, digest = mesh
    assert refusal(lambda: announce(configs, caller, digest, fake_key("b" * 32))) == expected


def test_an_announcement_for_another_digest_size_or_study_is_refused(mesh):
    configs, _, digest = mesh
    hospital = ("hospital", "gateway")
    assert refusal(lambda: announce(configs, hospital, "0" * 64, fake_key("c" * 32))) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert refusal(lambda: announce(configs, hospital, digest, fake_key("c" * 32, bits=2048))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert refusal(lambda: announce(configs, hospital, digest, fake_key(""))) == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal(lambda: announce(configs, hospital, digest, fake_key("c" * 32), study="no-such-study")) == (
        grpc.StatusCode.NOT_FOUND
    )


def test_a_runs_prepared_key_id_must_be_the_announced_key(mesh_configs):
    """OfflineMaterial.check_peer at an owner, after the other owner announced key d…d."""
    offline = OfflineMaterial(load_config(mesh_configs["insurer"], env={}), None, None, None)  # type: ignore[arg-type]

    def check(key_id: str, prepared_id: str, announced: str | None = "d" * 32) -> bool:
        if announced is not None:
            offline.peer[STUDY] = PeerKey(announced, time.monotonic())
        return offline.check_peer(STUDY, prepared_id, fake_key(key_id))

    with pytest.raises(RequestError) as err:
        check("e" * 32, "e" * 32)  # a prepared key that is not the announced one
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(RequestError):
        check("d" * 32, "f" * 32)  # an id that is not the key's own
    assert check("d" * 32, "d" * 32) is True
    assert check("d" * 32, "d" * 32, announced=None) is False  # an announcement serves one run: then it is gone
    assert check("e" * 32, "") is False  # a run without a prepared key: nothing to check
    offline.peer[STUDY] = PeerKey("d" * 32, time.monotonic() - OFFLINE_TTL_S - 1)
    assert offline.check_peer(STUDY, "d" * 32, fake_key("d" * 32)) is False  # too old to count as prepared


def test_one_pool_at_a_time_per_study_for_the_other_owners_announcements(mesh_configs, tmp_path):
    """The other owner cannot make this owner compute pools back to back: while the pool for its
    last announcement is being made, a new announcement is refused."""
    config = load_config(mesh_configs["insurer"], env={})
    spec = spec_for(make_study_data(40), STUDY)
    with Store(tmp_path / "gateway.sqlite3") as store:
        study = store.put_study(spec, spec_digest(spec), proposed_by="insurer")  # no source_path: no pool made
        offline = OfflineMaterial(config, None, store, None)  # type: ignore[arg-type]
        hospital = parse_spiffe("spiffe://hospital/gateway")
        assert hospital is not None
        request = gateway_pb2.PeerAnnounceKeyRequest(
            study_id=STUDY, spec_digest=study.digest, paillier_key=fake_key("a" * 32)
        )
        offline.accept_announcement(request, hospital)
        offline.peer[STUDY].making = True  # as while its pool is being made
        with pytest.raises(RequestError) as err:
            offline.accept_announcement(request, hospital)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        offline.peer[STUDY].making = False
        offline.accept_announcement(request, hospital)
