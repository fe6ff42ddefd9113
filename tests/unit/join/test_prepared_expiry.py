"""A prepared encryption run that never starts is dropped, with its table and X25519 key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from riskmesh.v1 import join_pb2
from services.join import codec
from services.join.core.paillier import generate_keypair
from services.join.encryption_server import PREPARED_TTL_S, EncryptionServicer
from services.mesh.config import load_config
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data
from services.tools.launcher import local_mesh_for


class Aborted(Exception):
    pass


class FakeContext:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def test_a_prepared_run_that_never_starts_is_dropped_after_its_ttl(tmp_path: Path) -> None:
    assert PREPARED_TTL_S <= 600  # minutes, not forever: setup has a 120 s deadline
    config = load_config(local_mesh_for(tmp_path / "mesh", min_paillier_bits=1024)["insurer"], env={})
    data = make_study_data(30, features=4)
    spec = spec_for(data, "expiry-study")
    spec.paillier_bits = 1024
    source = data.insurer.write_csv(tmp_path / "insurer.csv")

    async def main() -> None:
        servicer = EncryptionServicer(config, channels=None, executor=None, workers=1, prepared_ttl_s=0.2)  # type: ignore[arg-type]
        context = FakeContext()
        for run_id in ("kept", "expires"):
            await servicer.PrepareEncryption(
                join_pb2.PrepareEncryptionRequest(run_id=run_id, spec=spec, source_path=str(source)), context
            )
        kept = servicer.prepared.pop("kept")  # as RunEncryption does when it starts
        assert "expires" in servicer.prepared
        await asyncio.sleep(0.4)
        assert servicer.prepared == {}  # the table and the X25519 key are gone with it
        key = generate_keypair(1024).public
        request = join_pb2.RunEncryptionRequest(run_id="expires", peer_paillier_key=codec.public_key_to_proto(key))
        with pytest.raises(Aborted) as err:
            await anext(servicer.RunEncryption(request, context))
        assert err.value.args == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "hashing/encryption: run expires was not prepared here (or already ran, or expired)",
        )
        assert kept.table is not None  # a started run is not touched by the expiry

    asyncio.run(main())
