"""EncryptionService (data owners): the hashing/encryption step of the secure join.

PrepareEncryption reads and validates the owner's local CSV (it never leaves the org),
commits to it (HMAC under the owner's per-study secret, core/commitment.py) and makes an
ephemeral X25519 key; RunEncryption derives the tag key with the other
owner's X25519 key (HKDF info = study id + run id), tags, encodes, packs, builds the
randomness pool under the other owner's Paillier key (offline part), encrypts, shuffles
and streams (tag, ciphertexts) to the helper in chunks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from riskmesh.v1 import common_pb2, join_pb2, join_pb2_grpc
from services.join import codec
from services.join.common import chunked, join_errors
from services.join.core import keys
from services.join.core.commitment import input_commitment
from services.join.core.csvinput import OwnerTable, read_owner_csv
from services.join.core.errors import SpecError
from services.join.core.packing import SlotLayout
from services.join.core.paillier import RandomnessPool, check_key_size, generate_pool
from services.join.core.parallel import default_workers, process_executor, split_sizes
from services.join.core.protocol import owner_encrypt
from services.join.rules import ENCRYPTION_RULES
from services.mesh.config import OrgConfig
from services.mesh.peers import Channels
from services.mesh.process import run_server_process
from services.mesh.progress import progress
from services.mesh.server import MeshServer
from services.study.spec import owner_columns

log = logging.getLogger("riskmesh.encryption")

UPLOAD_DEADLINE_S = 1800.0
# Pool elements per progress step. Every piece costs each worker a window table (~0.2 s at
# 2048 bits), so pieces are large: 50,000 elements are ~6 s of work over 2 workers.
POOL_PIECE = 50_000
WARM_UP_S = 60.0
# A prepared run (the owner's validated table and its X25519 key) whose RunEncryption does not
# come is dropped after this long. The gateway sends it right after every party's setup, which
# has a 120 s deadline (gateway/pipeline.py).
PREPARED_TTL_S = 600.0


@dataclass
class PreparedRun:
    spec: common_pb2.StudySpec
    table: OwnerTable
    agreement_key: X25519PrivateKey


class EncryptionServicer(join_pb2_grpc.EncryptionServiceServicer):
    def __init__(self, config: OrgConfig, channels: Channels, executor: ProcessPoolExecutor | None, workers: int, prepared_ttl_s: float = PREPARED_TTL_S) -> None:
        self.config = config
        self.channels = channels
        self.executor = executor
        self.workers = workers
        self.prepared: dict[str, PreparedRun] = {}
        self.prepared_ttl_s = prepared_ttl_s

    def _expire(self, run_id: str, prepared: PreparedRun) -> None:
        if self.prepared.get(run_id) is prepared:
            del self.prepared[run_id]  # the plaintext table and the X25519 key go with it
            log.warning("run %s: prepared %.0f s ago and never started; dropped its table and key", run_id, self.prepared_ttl_s)

    async def PrepareEncryption(self, request, context):
        async with join_errors(context, "hashing/encryption"):
            owner = owner_columns(request.spec, self.config.org)
            target = codec.column_from_proto(owner.target) if owner.HasField("target") and owner.target.name else None
            table = await asyncio.to_thread(
                read_owner_csv,
                request.source_path,
                birth_date_column=owner.birth_date_column,
                postal_code_column=owner.postal_code_column,
                features=[codec.column_from_proto(c) for c in owner.features],
                target=target,
            )
            agreement = keys.new_agreement_key()
            commitment = input_commitment(table, request.commitment_key) if request.commitment_key else ""
            prepared = self.prepared[request.run_id] = PreparedRun(request.spec, table, agreement)
            asyncio.get_running_loop().call_later(self.prepared_ttl_s, self._expire, request.run_id, prepared)
            log.info("run %s: %d rows validated", request.run_id, len(table.ids))
            return join_pb2.PrepareEncryptionResponse(
                x25519_public_key=keys.public_key_bytes(agreement), rows=len(table.ids), input_commitment=commitment)

    async def RunEncryption(self, request, context) -> AsyncIterator[join_pb2.RunEncryptionResponse]:
        prepared = self.prepared.pop(request.run_id, None)
        if prepared is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"hashing/encryption: run {request.run_id} was not prepared here (or already ran, or expired)")
        org, run_id = self.config.org, request.run_id
        async with join_errors(context, "hashing/encryption"):
            tag_key = keys.derive_tag_key(prepared.agreement_key, request.peer_x25519_public_key, keys.tag_key_info(prepared.spec.study_id, run_id))
            peer_key = codec.public_key_from_proto(request.peer_paillier_key)
            check_key_size(peer_key.bits, prepared.spec.paillier_bits, self.config.min_paillier_bits)  # before encrypting anything
            layout = SlotLayout.for_columns(len(prepared.table.columns), peer_key.bits)
            count = len(prepared.table.ids) * layout.ciphertexts_per_row
            pool = RandomnessPool(peer_key.key_id, [])
            for piece in split_sizes(count, -(-count // POOL_PIECE)):
                yield join_pb2.RunEncryptionResponse(progress=progress(run_id, org, common_pb2.PHASE_SETUP, len(pool), count, "randomness pool (offline)"))
                part = await asyncio.to_thread(generate_pool, peer_key, piece, executor=self.executor, parts=self.workers)
                pool = RandomnessPool(peer_key.key_id, pool.take(len(pool)) + part.take(len(part)))
            yield join_pb2.RunEncryptionResponse(progress=progress(run_id, org, common_pb2.PHASE_SETUP, count, count, "randomness pool ready"))
            upload = await asyncio.to_thread(owner_encrypt, prepared.table, tag_key, peer_key, pool, layout)
            total = len(upload.tags)
            yield join_pb2.RunEncryptionResponse(progress=progress(run_id, org, common_pb2.PHASE_HASHING_ENCRYPTION, 0, total, "encrypted; sending to the helper"))

            def requests():
                yield join_pb2.UploadRowsRequest(header=join_pb2.UploadHeader(
                    run_id=run_id, rows=total, layout=codec.layout_to_proto(layout), columns=upload.columns, key=codec.public_key_to_proto(peer_key)))
                for seq, rows in enumerate(chunked(range(total))):
                    chunk = join_pb2.RowChunk(seq=seq, tags=[upload.tags[i] for i in rows],
                                              ciphertexts=[peer_key.encode_ciphertext(c) for i in rows for c in upload.ciphertexts[i]])
                    yield join_pb2.UploadRowsRequest(chunk=chunk)

            helper = self.config.helper_org
            if helper is None:
                raise SpecError("no helper organisation is configured")
            stub = join_pb2_grpc.IntersectionServiceStub(self.channels.get(helper, "intersection"))
            try:
                reply = await stub.UploadRows(requests(), timeout=UPLOAD_DEADLINE_S)
            except grpc.aio.AioRpcError as exc:
                code = exc.code() if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT) else grpc.StatusCode.UNAVAILABLE
                await context.abort(code, f"hashing/encryption: the helper did not accept the rows: {exc.code().name}: {exc.details()}")
            yield join_pb2.RunEncryptionResponse(progress=progress(run_id, org, common_pb2.PHASE_HASHING_ENCRYPTION, reply.rows, total, "rows accepted by the helper"))


def _worker_pid(delay_s: float) -> int:
    """Runs in a pool worker: it has started (and imported what it needs); its pid."""
    time.sleep(delay_s)
    return os.getpid()


def warm_up(executor: ProcessPoolExecutor, workers: int, timeout_s: float = WARM_UP_S) -> int:
    """Start every pool worker now rather than in the first run: a worker's first start
    imports this server's modules (~1 s of CPU each). Returns the workers seen ready."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < workers and time.monotonic() < deadline:
        seen |= {f.result() for f in [executor.submit(_worker_pid, 0.05) for _ in range(workers)]}
    return len(seen)


async def build_server(config: OrgConfig, port: int | None = None, health_port: int | None = None) -> MeshServer:
    mesh = MeshServer(config, "encryption", ENCRYPTION_RULES, port=port, health_port=health_port)
    workers = default_workers()
    executor = process_executor(workers) if workers > 1 else None
    if executor is not None:
        ready = await asyncio.to_thread(warm_up, executor, workers)
        log.info("%d of %d pool workers ready", ready, workers)
    servicer = EncryptionServicer(config, Channels(config, mesh.credentials), executor, workers)
    mesh.add_service(join_pb2_grpc.add_EncryptionServiceServicer_to_server, servicer, join_pb2.DESCRIPTOR.services_by_name["EncryptionService"])
    return mesh


def main() -> int:
    return run_server_process("encryption", build_server)


if __name__ == "__main__":
    raise SystemExit(main())
