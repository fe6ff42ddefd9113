"""Offline keys and pools at the join servers (docs/adr/0013-offline-keys-and-pools.md), in this
process over mTLS: a prepared key pair serves exactly one run, an unknown id is refused, a run
with no prepared material makes it in-run, a fresh (restarted) server has none, and only the
organisation's own gateway may ask for any of it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from riskmesh.v1 import join_pb2, join_pb2_grpc
from services.bench.drive import Harness, collect_shares, plaintext_join, prepare_offline, reconstruct_table, run_join
from services.bench.drive import same_rows as same_join_rows
from services.join import encryption_server, resharing_server
from services.join.core.paillier import RandomnessPool, generate_keypair
from services.mesh.config import load_config
from tests.integration.test_join_services import BITS, JoinMesh, Study, join_mesh, make_study

__all__ = ["join_mesh"]  # the module-scoped mesh of three orgs' join servers (test_join_services.py)

RECORDS = 120


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    return make_study(tmp_path_factory.mktemp("offline-study"), RECORDS, study_id="offline-it")


def _sources(study: Study) -> dict[str, str]:
    return {o: str(p) for o, p in study.sources.items()}


def _run(mesh: JoinMesh, study: Study, run_id: str, prepared: dict | None) -> tuple[object, bool]:
    """One join; its timings and whether its shares equal the plaintext join."""
    harness = Harness(mesh.configs)

    async def go() -> tuple[object, dict]:
        try:
            timings = await run_join(harness, study.spec, _sources(study), run_id, prepared)
            return timings, await collect_shares(harness, study.spec, run_id)
        finally:
            await harness.close()

    timings, shares = mesh.loop.run(go(), timeout=120)
    columns, expected = plaintext_join(study.data, study.sources)
    return timings, same_join_rows(reconstruct_table(shares), columns, expected)


def _prepare(mesh: JoinMesh, study: Study) -> dict:
    harness = Harness(mesh.configs)

    async def go() -> dict:
        try:
            return await prepare_offline(harness, study.spec, _sources(study))
        finally:
            await harness.close()

    return mesh.loop.run(go(), timeout=120)


def test_a_run_uses_the_prepared_keys_and_pools_and_a_key_serves_one_run_only(join_mesh: JoinMesh, study: Study):
    prepared = _prepare(join_mesh, study)
    assert all(prepared[f"{o}/pool"].elements > 0 for o in ("insurer", "hospital"))
    timings, correct = _run(join_mesh, study, "offline-1", prepared)
    assert correct and timings.offline_pools == 2  # both owners encrypted with their offline pool
    # The run's keys were the prepared ones: each owner received rows under it and decrypted them.
    assert {k.public.key_id for k in join_mesh.paillier_keys} >= {prepared["insurer"], prepared["hospital"]}
    # Used once: a second run naming the same prepared keys is refused before any work.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _run(join_mesh, study, "offline-2", prepared)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no prepared key" in err.value.details()


def test_without_prepared_material_the_run_makes_keys_and_pools_in_run(join_mesh: JoinMesh, study: Study):
    timings, correct = _run(join_mesh, study, "offline-none", None)
    assert correct and timings.offline_pools == 0


def test_a_pool_for_another_key_is_not_used(join_mesh: JoinMesh, study: Study):
    """Pools made for the announced keys, but the run uses fresh keys: the pools are dropped, not used."""
    _prepare(join_mesh, study)
    timings, correct = _run(join_mesh, study, "offline-other-key", None)
    assert correct and timings.offline_pools == 0


def test_an_unknown_prepared_key_id_is_refused_and_the_real_one_stays(join_mesh: JoinMesh):
    resharing = join_mesh.gateway("insurer", "resharing")
    key = resharing.PrepareKey(join_pb2.PrepareKeyRequest(study_id="offline-ids", bits=BITS), timeout=60).key

    def create(run_id: str, key_id: str) -> join_pb2.CreateKeyResponse:
        request = join_pb2.CreateKeyRequest(run_id=run_id, bits=BITS, study_id="offline-ids", prepared_key_id=key_id)
        return resharing.CreateKey(request, timeout=60)

    for wrong in ("0" * 32, "not-a-key"):
        with pytest.raises(grpc.RpcError) as err:
            create(f"offline-wrong-{wrong}", wrong)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Another study's id does not reach this study's key either.
    with pytest.raises(grpc.RpcError) as err:
        resharing.CreateKey(
            join_pb2.CreateKeyRequest(run_id="offline-x", bits=BITS, study_id="other", prepared_key_id=key.key_id),
            timeout=60,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert create("offline-right", key.key_id).key == key


def test_a_prepared_key_of_another_size_is_refused(join_mesh: JoinMesh):
    resharing = join_mesh.gateway("hospital", "resharing")
    key = resharing.PrepareKey(join_pb2.PrepareKeyRequest(study_id="offline-size", bits=BITS), timeout=60).key
    request = join_pb2.CreateKeyRequest(run_id="offline-size-1", bits=2048, study_id="offline-size")
    request.prepared_key_id = key.key_id
    with pytest.raises(grpc.RpcError) as err:
        resharing.CreateKey(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


REFUSED = [
    (("hospital", "gateway"), ("insurer", "resharing"), "PrepareKey"),
    (("insurer", "encryption"), ("insurer", "resharing"), "PrepareKey"),
    (("helper", "gateway"), ("insurer", "encryption"), "PreparePool"),
    (("insurer", "lasso"), ("insurer", "encryption"), "PreparePool"),
]


@pytest.mark.parametrize("caller,target,method", REFUSED, ids=[f"{c}->{t}.{m}" for c, t, m in REFUSED])
def test_only_the_own_gateway_asks_for_offline_material(
    join_mesh: JoinMesh, caller: tuple[str, str], target: tuple[str, str], method: str
):
    if method == "PrepareKey":
        stub = join_mesh.stub(caller, target, join_pb2_grpc.ResharingServiceStub)
        call = lambda: stub.PrepareKey(join_pb2.PrepareKeyRequest(study_id="s", bits=BITS), timeout=10)  # noqa: E731
    else:
        stub = join_mesh.stub(caller, target, join_pb2_grpc.EncryptionServiceStub)
        call = lambda: stub.PreparePool(join_pb2.PreparePoolRequest(), timeout=10)  # noqa: E731
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_helper_prepares_no_key(join_mesh: JoinMesh):
    with pytest.raises(grpc.RpcError) as err:
        join_mesh.gateway("helper", "resharing").PrepareKey(
            join_pb2.PrepareKeyRequest(study_id="s", bits=BITS), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# --- the servers' own bookkeeping: a fresh (restarted) server, expiry, one use ------------------


def _servicers(mesh: JoinMesh) -> tuple[resharing_server.ResharingServicer, encryption_server.EncryptionServicer]:
    config = load_config(Path(mesh.configs["insurer"]), env={})
    return (
        resharing_server.ResharingServicer(config, threads=1, prepared_key_ttl_s=0.05),
        encryption_server.EncryptionServicer(config, channels=None, executor=None, workers=1, prepared_pool_ttl_s=0.05),  # type: ignore[arg-type]
    )


def test_a_restarted_server_holds_nothing_prepared_and_old_material_expires(join_mesh: JoinMesh):
    resharing, encryption = _servicers(join_mesh)  # as a restarted server starts: memory only
    key = generate_keypair(BITS)
    assert resharing._take_prepared("s", key.public.key_id, BITS) is None
    assert encryption._take_pool("s", key.public.key_id) is None
    resharing.prepared_keys["s"] = resharing_server.PreparedKey(key, time.monotonic() - 1.0)  # older than the limit
    assert resharing._take_prepared("s", key.public.key_id, BITS) is None
    assert "s" not in resharing.prepared_keys  # an expired key is forgotten once asked for


def test_an_offline_pool_is_handed_to_one_run_only(join_mesh: JoinMesh):
    _, encryption = _servicers(join_mesh)
    key = generate_keypair(BITS).public

    async def scenario() -> tuple[bool, bool, bool]:
        made = asyncio.get_running_loop().create_future()
        made.set_result(RandomnessPool(key.key_id, [1, 2, 3]))
        encryption.pools["s"] = encryption_server.PreparedPool(key.key_id, time.monotonic(), made)  # type: ignore[arg-type]
        first = encryption._take_pool("s", key.key_id)
        second = encryption._take_pool("s", key.key_id)
        other = asyncio.get_running_loop().create_future()
        encryption.pools["s"] = encryption_server.PreparedPool("another-key", time.monotonic(), other)  # type: ignore[arg-type]
        mismatched = encryption._take_pool("s", key.key_id)
        return first is made, second is None, mismatched is None and other.cancelled()

    assert join_mesh.loop.run(scenario()) == (True, True, True)


def test_a_pool_smaller_than_the_input_is_topped_up_in_run(
    join_mesh: JoinMesh, study: Study, monkeypatch: pytest.MonkeyPatch
):
    """A grown input (here: a pool capped below the input's size) uses the offline elements first
    and makes the rest in-run; the shares are still the plaintext join's."""
    monkeypatch.setattr(encryption_server, "MAX_PREPARED_ELEMENTS", 7)
    prepared = _prepare(join_mesh, study)
    assert all(prepared[f"{o}/pool"].elements == 7 for o in ("insurer", "hospital"))
    timings, correct = _run(join_mesh, study, "offline-topped-up", prepared)
    assert correct and timings.offline_pools == 2
