"""EncryptionService (data owners): the hashing/encryption step of the secure join.

PrepareEncryption reads and validates the owner's local CSV (it never leaves the org),
commits to it (HMAC under the owner's per-study secret, core/commitment.py) and makes an
ephemeral X25519 key; RunEncryption checks the other owner's Paillier key size, derives
the tag key with the other owner's X25519 key (HKDF info = study id + run id), shuffles the
rows once, and then, piece by piece of that order (PIECE_ROWS rows), builds the piece's
one-time randomness under the other owner's Paillier key — on the organisation's crypto
workers when it has them (services/join/workers.py), else on this server's own process
pool — tags,
encodes, packs and encrypts it, and streams its (tag, ciphertexts) rows to the helper in
chunks. So the server holds one piece of pool and ciphertexts at a time, whatever the
table's size, and the next piece is computed while the previous one is on the wire.
Progress: SETUP when RunEncryption starts and when the first piece's randomness is ready
(0 and 1 of 1), HASHING_ENCRYPTION per piece sent (rows of all), then when the helper
accepted the rows.

Offline pools (docs/adr/0013-offline-keys-and-pools.md). PreparePool makes, before the run,
the randomness pool for the key the other owner announced for the study's next run: as many
elements as this owner's CSV needs now (its rows counted from a stream, no value parsed:
`csvinput.count_owner_rows`; at most MAX_PREPARED_ELEMENTS), through the same
dispatch as a run's pieces (`make_pool`, OFFLINE_PIECE elements at a time, so that a pool no
run will use stops early when it is dropped), kept in memory only, one per study. RunEncryption
takes the study's pool when it was made for the peer key the run uses (waiting for it if it
is still being made) and forgets it: each element is used once, by this run; the pieces
take their elements from it first and make the rest (a grown input) in-run. A pool for
another key, older than PREPARED_POOL_TTL_S, or lost with a restart is not used.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from riskmesh.v1 import common_pb2, join_pb2, join_pb2_grpc
from services.join import codec
from services.join.common import chunked, join_errors
from services.join.core import keys
from services.join.core.commitment import input_commitment
from services.join.core.csvinput import OwnerTable, count_owner_rows, read_owner_csv
from services.join.core.errors import SpecError
from services.join.core.masking import random_permutation
from services.join.core.packing import SlotLayout
from services.join.core.paillier import (
    PublicKey,
    RandomnessPool,
    check_key_size,
    choose_window_bits,
    generate_pool,
)
from services.join.core.parallel import default_workers, process_executor, stop_executor
from services.join.core.protocol import encrypt_piece, prepare_layout
from services.join.rules import ENCRYPTION_RULES
from services.join.workers import CryptoWorkers
from services.mesh.config import OrgConfig
from services.mesh.peers import Channels
from services.mesh.process import run_server_process
from services.mesh.progress import progress
from services.mesh.server import MeshServer
from services.study.spec import owner_columns

log = logging.getLogger("riskmesh.encryption")
T = TypeVar("T")

UPLOAD_DEADLINE_S = 1800.0
# Rows per piece: its pool elements and ciphertexts are in memory at once (~8 MB at 3072
# bits); the workers keep their window table from piece to piece (paillier.pool_chunk).
PIECE_ROWS = 10_000
WARM_UP_S = 60.0
# This module, by its importable name (`__name__` is "__main__" under `python -m`): the pool's
# fork server preloads it, so its workers do not each import it again (core/parallel.py).
SERVER_MODULE = "services.join.encryption_server"
# A prepared run (the owner's validated table and its X25519 key) whose RunEncryption does not
# come is dropped after this long. The gateway sends it right after every party's setup, which
# has a 120 s deadline (gateway/pipeline.py).
PREPARED_TTL_S = 600.0
# The offline pool's size bound: 100,000 elements are 77 MB at 3072 bits (a larger input makes
# the rest in-run), and its age bound (as the prepared key pair's: resharing_server.py).
MAX_PREPARED_ELEMENTS = 100_000
# The offline pool is made this many elements at a time, so that a pool no run will use (its key
# was superseded, or a run came first with a fresh key) stops after the current piece.
OFFLINE_PIECE = 2_000
PREPARED_POOL_TTL_S = 12 * 3600.0


@dataclass
class PreparedRun:
    spec: common_pb2.StudySpec
    table: OwnerTable
    agreement_key: X25519PrivateKey


@dataclass
class PreparedPool:
    """A study's offline pool for the other owner's announced key, made (or being made) by `task`."""

    key_id: str
    made_at: float  # time.monotonic() when it was asked for
    task: asyncio.Task[RandomnessPool]


async def make_pool(
    crypto: CryptoWorkers | None,
    executor: ProcessPoolExecutor | None,
    workers: int,
    key: PublicKey,
    count: int,
    window: int | None,
) -> RandomnessPool:
    """`count` fresh pool elements for `key`: on the org's crypto workers, else this server's processes."""
    if crypto is not None:
        return await crypto.make_pool(key, count, window)
    return await asyncio.to_thread(generate_pool, key, count, window_bits=window, executor=executor, parts=workers)


async def make_offline_pool(
    crypto: CryptoWorkers | None,
    executor: ProcessPoolExecutor | None,
    workers: int,
    key: PublicKey,
    count: int,
    window: int | None,
) -> RandomnessPool:
    """`make_pool` piece by piece (OFFLINE_PIECE elements): cancelling it stops after the current piece."""
    elements: list[int] = []
    while len(elements) < count:
        piece = await make_pool(crypto, executor, workers, key, min(OFFLINE_PIECE, count - len(elements)), window)
        elements += piece.take(len(piece))
    return RandomnessPool(key.key_id, elements)


def pool_window(count: int, parts: int, key: PublicKey) -> int:
    """One window size for all of a pool's pieces: each worker builds its table once."""
    return choose_window_bits(-(-count // parts), key.exponent_bits, int(key.n2).bit_length())


class EncryptionServicer(join_pb2_grpc.EncryptionServiceServicer):
    def __init__(
        self,
        config: OrgConfig,
        channels: Channels,
        executor: ProcessPoolExecutor | None,
        workers: int,
        prepared_ttl_s: float = PREPARED_TTL_S,
        crypto: CryptoWorkers | None = None,
        prepared_pool_ttl_s: float = PREPARED_POOL_TTL_S,
    ) -> None:
        self.config = config
        self.channels = channels
        self.executor = executor
        self.workers = workers
        self.crypto = crypto  # the org's crypto workers, if it has them (then no executor)
        self.prepared: dict[str, PreparedRun] = {}
        self.prepared_ttl_s = prepared_ttl_s
        self.pools: dict[str, PreparedPool] = {}  # offline pools by study id; memory only
        self.prepared_pool_ttl_s = prepared_pool_ttl_s

    @property
    def parts(self) -> int:
        return self.crypto.parallelism if self.crypto else self.workers

    async def _read_csv(self, read: Callable[..., T], spec, source_path: str) -> T:
        """`read` (read_owner_csv, count_owner_rows) on this org's columns of the study, off the event loop."""
        owner = owner_columns(spec, self.config.org)
        target = codec.column_from_proto(owner.target) if owner.HasField("target") and owner.target.name else None
        return await asyncio.to_thread(
            read,
            source_path,
            birth_date_column=owner.birth_date_column,
            postal_code_column=owner.postal_code_column,
            features=[codec.column_from_proto(c) for c in owner.features],
            target=target,
        )

    async def PreparePool(self, request, context):
        async with join_errors(context, "offline randomness pool"):
            # Only the size is needed: rows counted from a stream, values left to PrepareEncryption.
            rows = await self._read_csv(count_owner_rows, request.spec, request.source_path)
            peer_key = codec.public_key_from_proto(request.peer_paillier_key)
            check_key_size(peer_key.bits, request.spec.paillier_bits, self.config.min_paillier_bits)
            columns = len(codec.column_names(owner_columns(request.spec, self.config.org)))
            count = min(rows * prepare_layout(columns, peer_key).ciphertexts_per_row, MAX_PREPARED_ELEMENTS)
            study_id = request.spec.study_id
            work = make_offline_pool(
                self.crypto, self.executor, self.workers, peer_key, count, pool_window(count, self.parts, peer_key)
            )
            entry = PreparedPool(peer_key.key_id, time.monotonic(), asyncio.ensure_future(work))
            older = self.pools.get(study_id)
            if older is not None:
                older.task.cancel()  # superseded: its key will not be used
            self.pools[study_id] = entry
            pool = await asyncio.shield(entry.task)
            log.info("study %s: offline pool of %d elements ready", study_id, len(pool))
            return join_pb2.PreparePoolResponse(elements=len(pool))

    def _take_pool(self, study_id: str, key_id: str) -> asyncio.Task[RandomnessPool] | None:
        """The study's offline pool if it is for `key_id` and fresh; forgotten here either way."""
        entry = self.pools.pop(study_id, None)
        if entry is None:
            return None
        if entry.key_id != key_id or time.monotonic() - entry.made_at > self.prepared_pool_ttl_s:
            entry.task.cancel()
            return None
        return entry.task

    def _expire(self, run_id: str, prepared: PreparedRun) -> None:
        if self.prepared.get(run_id) is prepared:
            del self.prepared[run_id]  # the plaintext table and the X25519 key go with it
            log.warning(
                "run %s: prepared %.0f s ago and never started; dropped its table and key", run_id, self.prepared_ttl_s
            )

    async def PrepareEncryption(self, request, context):
        async with join_errors(context, "hashing/encryption"):
            table = await self._read_csv(read_owner_csv, request.spec, request.source_path)
            agreement = keys.new_agreement_key()
            commitment = input_commitment(table, request.commitment_key) if request.commitment_key else ""
            prepared = self.prepared[request.run_id] = PreparedRun(request.spec, table, agreement)
            asyncio.get_running_loop().call_later(self.prepared_ttl_s, self._expire, request.run_id, prepared)
            log.info("run %s: %d rows validated", request.run_id, len(table.ids))
            return join_pb2.PrepareEncryptionResponse(
                x25519_public_key=keys.public_key_bytes(agreement), rows=len(table.ids), input_commitment=commitment
            )

    async def RunEncryption(self, request, context) -> AsyncIterator[join_pb2.RunEncryptionResponse]:
        prepared = self.prepared.pop(request.run_id, None)
        if prepared is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"hashing/encryption: run {request.run_id} was not prepared here (or already ran, or expired)",
            )
        org, run_id = self.config.org, request.run_id
        async with join_errors(context, "hashing/encryption"):
            tag_key = keys.derive_tag_key(
                prepared.agreement_key,
                request.peer_x25519_public_key,
                keys.tag_key_info(prepared.spec.study_id, run_id),
            )
            peer_key = codec.public_key_from_proto(request.peer_paillier_key)
            check_key_size(
                peer_key.bits, prepared.spec.paillier_bits, self.config.min_paillier_bits
            )  # before encrypting anything
            helper = self.config.helper_org
            if helper is None:
                raise SpecError("no helper organisation is configured")
            upload = PieceUpload(
                run_id,
                org,
                prepared.table,
                tag_key,
                peer_key,
                prepare_layout(len(prepared.table.columns), peer_key),
                self.executor,
                self.parts,
                self.crypto,
                self._take_pool(prepared.spec.study_id, peer_key.key_id),
            )
            stub = join_pb2_grpc.IntersectionServiceStub(self.channels.get(helper, "intersection"))
            offline = await upload.take_offline_pool()
            yield upload.progress(
                common_pb2.PHASE_SETUP,
                0,
                1,
                "randomness pool: made offline" if offline else "randomness pool: built piece by piece while sending",
            )
            await self.channels.ready(helper, "intersection")  # restarted: past its reconnect backoff
            call = asyncio.ensure_future(stub.UploadRows(upload.requests(), timeout=UPLOAD_DEADLINE_S))
            async for event in upload.events_until(call):
                yield event
            if upload.failure is not None:
                raise upload.failure
            try:
                reply = call.result()
            except grpc.aio.AioRpcError as exc:
                code = (
                    exc.code()
                    if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)
                    else grpc.StatusCode.UNAVAILABLE
                )
                await context.abort(
                    code, f"hashing/encryption: the helper did not accept the rows: {exc.code().name}: {exc.details()}"
                )
            yield upload.progress(
                common_pb2.PHASE_HASHING_ENCRYPTION, reply.rows, upload.rows, "rows accepted by the helper"
            )


@dataclass
class PieceUpload:
    """One run's upload to the helper (module docstring): the rows in one shuffled order,
    piece by piece — the piece's randomness on the worker processes, then its tags and
    ciphertexts — as the UploadRows request stream, with the progress it makes on the way."""

    run_id: str
    org: str
    table: OwnerTable
    tag_key: keys.TagKey
    peer_key: PublicKey
    layout: SlotLayout
    executor: ProcessPoolExecutor | None
    workers: int
    crypto: CryptoWorkers | None
    offline: asyncio.Task[RandomnessPool] | None = None  # the pool made before the run, for this peer key
    ready: RandomnessPool | None = None  # its elements, once `take_offline_pool` awaited it
    events: asyncio.Queue[join_pb2.RunEncryptionResponse] = field(default_factory=asyncio.Queue)
    failure: Exception | None = None  # what ended the stream early (the helper sees it short)

    @property
    def rows(self) -> int:
        return len(self.table.ids)

    def progress(self, phase: int, done: int, total: int, message: str) -> join_pb2.RunEncryptionResponse:
        return join_pb2.RunEncryptionResponse(progress=progress(self.run_id, self.org, phase, done, total, message))

    async def take_offline_pool(self) -> int:
        """Await the offline pool if it is still being made (none, or a failed one: empty); its size."""
        self.ready = RandomnessPool(self.peer_key.key_id, ())
        if self.offline is not None:
            try:
                pool = await self.offline
                if pool.key_id == self.peer_key.key_id:
                    self.ready = pool
            except Exception as exc:  # noqa: BLE001 - a failed offline pool only means making it in-run
                log.warning("run %s: the offline pool failed (%s); making it in-run", self.run_id, type(exc).__name__)
        return len(self.ready)

    async def _piece_pool(self, offline: RandomnessPool, count: int, window: int) -> RandomnessPool:
        """`count` elements for one piece: the offline pool's first, the rest made now."""
        ready = offline.take(min(count, len(offline)))
        if len(ready) == count:
            return RandomnessPool(self.peer_key.key_id, ready)
        made = await make_pool(self.crypto, self.executor, self.workers, self.peer_key, count - len(ready), window)
        return RandomnessPool(self.peer_key.key_id, ready + made.take(len(made)))

    async def _pieces(self) -> AsyncIterator[tuple[Sequence[int], tuple[list[bytes], list[list[int]]]]]:
        per_row, key = self.layout.ciphertexts_per_row, self.peer_key
        offline = self.ready if self.ready is not None else RandomnessPool(key.key_id, ())
        if self.offline is not None:
            log.info("run %s: %d offline pool elements for %d needed", self.run_id, len(offline), self.rows * per_row)
        window = pool_window(max(1, self.rows * per_row - len(offline)), self.workers, key)
        order = random_permutation(self.rows)  # hide the file's row order from the helper
        for number, piece in enumerate(chunked(order, PIECE_ROWS)):
            pool = await self._piece_pool(offline, len(piece) * per_row, window)
            if number == 0:
                self.events.put_nowait(
                    self.progress(common_pb2.PHASE_SETUP, 1, 1, "randomness pool: first piece ready")
                )
            yield piece, await asyncio.to_thread(encrypt_piece, self.table, self.tag_key, key, self.layout, piece, pool)

    async def requests(self) -> AsyncIterator[join_pb2.UploadRowsRequest]:
        columns = tuple(c.name for c in self.table.columns)
        yield join_pb2.UploadRowsRequest(
            header=join_pb2.UploadHeader(
                run_id=self.run_id,
                rows=self.rows,
                layout=codec.layout_to_proto(self.layout),
                columns=columns,
                key=codec.public_key_to_proto(self.peer_key),
            )
        )
        seq = sent = 0
        try:
            async for piece, (tags, ciphertexts) in self._pieces():
                for rows in chunked(range(len(piece))):
                    encoded = [self.peer_key.encode_ciphertext(c) for i in rows for c in ciphertexts[i]]
                    yield join_pb2.UploadRowsRequest(
                        chunk=join_pb2.RowChunk(seq=seq, tags=[tags[i] for i in rows], ciphertexts=encoded)
                    )
                    seq += 1
                sent += len(piece)
                self.events.put_nowait(
                    self.progress(
                        common_pb2.PHASE_HASHING_ENCRYPTION, sent, self.rows, "encrypting and sending to the helper"
                    )
                )
        except Exception as exc:  # kept for RunEncryption; the helper sees a stream that ends early
            self.failure = exc

    async def events_until(
        self, call: asyncio.Future[join_pb2.UploadRowsResponse]
    ) -> AsyncIterator[join_pb2.RunEncryptionResponse]:
        """The progress events, as they come, until `call` is done (cancelled if we go away)."""
        try:
            while not call.done() or not self.events.empty():
                waiting = asyncio.ensure_future(self.events.get())
                await asyncio.wait([waiting, call], return_when=asyncio.FIRST_COMPLETED)
                if waiting.done():
                    yield waiting.result()
                else:
                    waiting.cancel()
        finally:
            call.cancel()  # a no-op once it is done


def _worker_pid(delay_s: float) -> int:
    """Runs in a pool worker: it has started (and imported what it needs); its pid."""
    time.sleep(delay_s)
    return os.getpid()


_warming: set[asyncio.Task[None]] = set()  # the event loop keeps only weak references to tasks


async def _warm_up_in_background(executor: ProcessPoolExecutor, workers: int) -> None:
    try:
        ready = await asyncio.to_thread(warm_up, executor, workers)
    except Exception as exc:  # the server stopped while warming (pool shut down)
        log.info("pool warm-up ended early: %s", type(exc).__name__)
    else:
        log.info("%d of %d pool workers ready", ready, workers)


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
    crypto = CryptoWorkers.for_config(config, mesh.credentials)
    workers = default_workers()
    executor = process_executor(workers, preload=(SERVER_MODULE,)) if workers > 1 and crypto is None else None
    if executor is not None:
        mesh.on_stop(lambda: stop_executor(executor))
        # Warmed while the server already serves: the pool's fork server imports this module
        # (~0.4 CPU-s) at the same time as the mesh's other servers start, instead of before
        # this one answers its health checks. A pool request that comes first waits for the
        # workers, as it would for cold ones.
        warming = asyncio.create_task(_warm_up_in_background(executor, workers))
        _warming.add(warming)
        warming.add_done_callback(_warming.discard)
    servicer = EncryptionServicer(config, Channels(config, mesh.credentials), executor, workers, crypto=crypto)
    mesh.add_service(
        join_pb2_grpc.add_EncryptionServiceServicer_to_server,
        servicer,
        join_pb2.DESCRIPTOR.services_by_name["EncryptionService"],
    )
    return mesh


def main() -> int:
    return run_server_process("encryption", build_server)


if __name__ == "__main__":
    raise SystemExit(main())
