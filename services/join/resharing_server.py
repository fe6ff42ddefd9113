"""ResharingService (every org): turns masked ciphertexts into this org's additive shares.

A data owner generates a fresh Paillier key pair per run (CreateKey), receives the
other owner's masked rows from the helper (DeliverMaskedRows) and decrypts them, chunk
by chunk as they arrive, into x' + r. The helper stores its own shares −r
(StoreHelperShares). Shares are complete only when every announced row has arrived and
been decrypted; AwaitShares reports that, and GetShares hands complete shares to the
same organisation's lasso server only. Nothing partial is ever served.

Failure. Once a stream's header is accepted, a stream that ends early, breaks off (the
sender went away) or turns out malformed fails the run at this org: the partial rows,
every block and the key are dropped, and AwaitShares ends with the status and a reason
that names the resharing phase. DropRun fails a run that is still incomplete, so no
waiter hangs on a run that will never complete.

Offline keys (docs/adr/0013-offline-keys-and-pools.md). PrepareKey makes a study's next-run
key pair ahead of the run and keeps it in memory only (one per study; a newer one replaces
it). CreateKey with that key's id hands it to exactly one run and forgets it here; an unknown
or mismatched id, a key older than PREPARED_KEY_TTL_S, or one lost with a restart is refused
(FAILED_PRECONDITION), and the gateway then asks for a fresh key pair as before.

Decryption runs on the organisation's crypto workers when it has them (services/join/workers.py;
up to one chunk per worker in flight, in order), else on this server's threads.

Memory: shares are kept as their wire encoding (`shares.encode_shares`, 14 bytes a value),
chunk by chunk as they arrive, and GetShares serves those chunks as they are — never as
lists of Python ints (~5× the bytes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import grpc

from riskmesh.v1 import common_pb2, join_pb2, join_pb2_grpc
from services.join import codec
from services.join.core.chunks import ChunkedRows, EndedEarly, read_header
from services.join.core.errors import JoinError, SpecError
from services.join.core.packing import SlotLayout
from services.join.core.paillier import DEFAULT_MODULUS_BITS, PrivateKey, generate_keypair
from services.join.core.parallel import default_workers
from services.join.core.shares import (
    check_share_bytes,
    decrypts_below_p,
    encode_shares,
    flatten_masked,
    owner_shares,
    shares_from_plaintexts,
    value_bytes,
)
from services.join.rules import RESHARING_RULES
from services.join.workers import CryptoWorkers
from services.mesh.config import OrgConfig
from services.mesh.decoding import MalformedRequest
from services.mesh.process import run_server_process
from services.mesh.progress import progress
from services.mesh.server import MeshServer
from services.mesh.status import StatusError

log = logging.getLogger("riskmesh.resharing")

ALLOWED_BITS = (1024, 2048, 3072)  # 1024 only where the config lowers min_paillier_bits (test meshes)
BROKE_OFF = "resharing: the stream from the helper broke off before every row arrived"
ENDED_EARLY = "resharing: the stream from the helper ended before every announced row arrived"
# A prepared key pair not used by a run within this long is not used at all (the gateway's
# prepared material expires at the same age: services/gateway/offline.py).
PREPARED_KEY_TTL_S = 12 * 3600.0


@dataclass
class PreparedKey:
    """A study's next-run key pair, made ahead of the run (PrepareKey)."""

    key: PrivateKey
    made_at: float  # time.monotonic()


@dataclass
class Block:
    """A complete block of shares: some columns, all joined rows, in the helper's order,
    as encoded chunks (`width` bytes per value, row-major, as `shares.encode_shares`)."""

    columns: tuple[str, ...]
    rows: int
    layout: SlotLayout
    width: int
    chunks: list[bytes]

    def chunk_rows(self, chunk: bytes) -> int:
        return len(chunk) // (len(self.columns) * self.width)


@dataclass
class ResharingRun:
    key: PrivateKey | None = None
    blocks: list[Block] = field(default_factory=list)
    expected_blocks: int = 1
    rows_done: int = 0
    rows_total: int = 0
    receiving: int = 0  # accepted streams still arriving
    error: tuple[grpc.StatusCode, str] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def fail(self, code: grpc.StatusCode, reason: str) -> None:
        """End the run here: drop the key and every block, wake the waiters (the first reason stays)."""
        if self.error is None:
            self.error = (code, reason)
        self.key = None
        self.blocks.clear()
        self.notify()

    @property
    def complete(self) -> bool:
        return self.error is None and len(self.blocks) >= self.expected_blocks


class StreamRefused(StatusError):
    """A stream is refused with this status; the message names the phase and holds no patient data."""


async def _read_header(stream: AsyncIterator[Any]) -> Any:
    try:
        return await read_header(stream)
    except JoinError as exc:
        raise StreamRefused(grpc.StatusCode.INVALID_ARGUMENT, f"resharing: {exc}") from None


class ResharingServicer(join_pb2_grpc.ResharingServiceServicer):
    def __init__(
        self,
        config: OrgConfig,
        threads: int,
        crypto: CryptoWorkers | None = None,
        prepared_key_ttl_s: float = PREPARED_KEY_TTL_S,
    ) -> None:
        self.config = config
        self.threads = threads
        self.crypto = crypto  # the org's crypto workers, if it has them
        self.runs: dict[str, ResharingRun] = {}
        self.prepared_keys: dict[str, PreparedKey] = {}  # by study id; memory only (a restart forgets them)
        self.prepared_key_ttl_s = prepared_key_ttl_s

    def _run(self, run_id: str) -> ResharingRun:
        # The helper holds two blocks (−r for each owner's columns); an owner holds one.
        expected = 2 if self.config.role == "helper" else 1
        return self.runs.setdefault(run_id, ResharingRun(expected_blocks=expected))

    async def _check_key_request(self, bits: int, context: grpc.aio.ServicerContext) -> int:
        """The requested modulus size (the default when 0), or the request is refused."""
        if self.config.role != "data_owner":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "resharing: only data owners hold Paillier keys")
        bits = bits or DEFAULT_MODULUS_BITS
        if bits not in ALLOWED_BITS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"resharing: the Paillier modulus must be one of {ALLOWED_BITS} bits"
            )
        if bits < self.config.min_paillier_bits:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"resharing: this server creates no Paillier key below {self.config.min_paillier_bits} bits",
            )
        return bits

    async def CreateKey(self, request, context):
        bits = await self._check_key_request(request.bits, context)
        run = self._run(request.run_id)
        if run.key is not None:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"resharing: run {request.run_id} already has a key")
        if request.prepared_key_id:
            run.key = self._take_prepared(request.study_id, request.prepared_key_id, bits)
            if run.key is None:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"resharing: no prepared key {request.prepared_key_id} for study {request.study_id} here "
                    "(used, expired, replaced or lost on a restart)",
                )
            log.info("run %s: uses the key pair prepared for study %s", request.run_id, request.study_id)
        else:
            run.key = await asyncio.to_thread(generate_keypair, bits)
        return join_pb2.CreateKeyResponse(key=codec.public_key_to_proto(run.key.public))

    def _take_prepared(self, study_id: str, key_id: str, bits: int) -> PrivateKey | None:
        """The study's prepared key pair if it has this id and size and is fresh; it is forgotten
        here either way once a run asked for it (a key serves one run at most)."""
        prepared = self.prepared_keys.get(study_id)
        if prepared is None or prepared.key.public.key_id != key_id:
            return None  # an unknown id leaves the study's real prepared key for its run
        del self.prepared_keys[study_id]
        fresh = time.monotonic() - prepared.made_at <= self.prepared_key_ttl_s
        return prepared.key if fresh and prepared.key.public.bits == bits else None

    async def PrepareKey(self, request, context):
        bits = await self._check_key_request(request.bits, context)
        if not request.study_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "resharing: a prepared key needs a study id")
        key = await asyncio.to_thread(generate_keypair, bits)
        self.prepared_keys[request.study_id] = PreparedKey(key, time.monotonic())  # replaces an older one
        log.info("study %s: next run's key pair prepared", request.study_id)
        return join_pb2.PrepareKeyResponse(key=codec.public_key_to_proto(key.public))

    async def DeliverMaskedRows(self, request_iterator, context):
        try:
            run, header, layout = await self._accept_delivery(request_iterator)
        except StreamRefused as refused:
            await context.abort(refused.code, refused.message)
        chunks = await self._receive(run, context, self._decrypt_chunks(request_iterator, run, header, layout))
        if run.error is not None:  # failed or dropped while the rows arrived
            await context.abort(*run.error)
        run.blocks.append(Block(tuple(header.columns), header.joined, layout, value_bytes(layout), chunks))
        run.key = None  # the run's private key is not needed any more
        run.notify()
        log.info("run %s: %d masked rows decrypted into shares", header.run_id, header.joined)
        return join_pb2.DeliverMaskedRowsResponse(rows=header.joined)

    async def _accept_delivery(
        self, stream: AsyncIterator[join_pb2.DeliverMaskedRowsRequest]
    ) -> tuple[ResharingRun, join_pb2.MaskedRowsHeader, SlotLayout]:
        header = await _read_header(stream)
        run = self.runs.get(header.run_id)
        if run is None or run.key is None:
            raise StreamRefused(grpc.StatusCode.FAILED_PRECONDITION, f"resharing: run {header.run_id} has no key here")
        if run.receiving:
            raise StreamRefused(
                grpc.StatusCode.ALREADY_EXISTS, f"resharing: masked rows of run {header.run_id} are already arriving"
            )
        if header.key_id != run.key.public.key_id:
            raise StreamRefused(
                grpc.StatusCode.INVALID_ARGUMENT, "resharing: the masked rows are encrypted under another key"
            )
        try:
            layout = codec.layout_from_proto(header.layout)
            layout.check_columns(len(header.columns))
            layout.check_modulus(run.key.public.bits)
        except JoinError as exc:
            raise StreamRefused(grpc.StatusCode.INVALID_ARGUMENT, f"resharing: {exc}") from None
        run.rows_total = header.joined
        return run, header, layout

    async def _decrypt_chunks(
        self,
        stream: AsyncIterator[join_pb2.DeliverMaskedRowsRequest],
        run: ResharingRun,
        header: join_pb2.MaskedRowsHeader,
        layout: SlotLayout,
    ) -> list[bytes]:
        key = run.key
        assert key is not None  # checked in _accept_delivery
        per_row, width = layout.ciphertexts_per_row, value_bytes(layout)
        rows: ChunkedRows[None] = ChunkedRows(header.joined)
        chunks: list[bytes] = []
        crypto = self.crypto

        def decrypt(masked: list[list[int]]) -> bytes:
            return encode_shares(owner_shares(key, layout, masked, header.columns, threads=self.threads).values, width)

        async def decrypt_on_workers(masked: list[list[int]]) -> bytes:
            assert crypto is not None
            plain = await crypto.decrypt(key, flatten_masked(layout, masked), below_p=decrypts_below_p(key, layout))
            return encode_shares(shares_from_plaintexts(layout, plain, header.columns).values, width)

        # Chunks decrypting at once, in order: one at a time here (gmpy2 releases the GIL, so the
        # next chunk streams in meanwhile), one per worker with crypto workers.
        ahead = crypto.parallelism if crypto is not None else 0
        pending: deque[tuple[asyncio.Future[bytes], int]] = deque()

        async def settle(keep: int) -> None:
            while len(pending) > keep:
                task, received = pending.popleft()
                chunks.append(await task)
                run.rows_done = received
                run.notify()

        try:
            async for item in stream:
                cts = [key.public.decode_ciphertext(c) for c in rows.chunk(item).ciphertexts]
                if len(cts) % per_row:
                    raise SpecError("a chunk holds a partial row")
                masked = [cts[k : k + per_row] for k in range(0, len(cts), per_row)]
                rows.count(len(masked))
                work = decrypt_on_workers(masked) if crypto is not None else asyncio.to_thread(decrypt, masked)
                pending.append((asyncio.ensure_future(work), rows.received))
                await settle(ahead)
            rows.finish()
            await settle(0)
        finally:
            for task, _ in pending:  # a failure: nothing decrypts on for a failed run
                task.cancel()
        return chunks

    async def _receive(
        self, run: ResharingRun, context: grpc.aio.ServicerContext, body: Awaitable[list[list[int]]]
    ) -> list[list[int]]:
        """Run an accepted stream's body; any way it fails, fail the run (never keep partial rows)."""
        run.receiving += 1
        try:
            return await body
        except EndedEarly:
            # A lost connection may end the stream like a half-close before the call is marked cancelled.
            code, message = (
                (grpc.StatusCode.UNAVAILABLE, BROKE_OFF)
                if context.cancelled()
                else (grpc.StatusCode.INVALID_ARGUMENT, ENDED_EARLY)
            )
            run.fail(code, message)
            await context.abort(code, message)
        except JoinError as exc:  # a chunk out of place, or one that does not decode
            run.fail(grpc.StatusCode.INVALID_ARGUMENT, f"resharing: {exc}")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"resharing: {exc}")
        except asyncio.CancelledError:  # the sender went away mid-stream
            run.fail(grpc.StatusCode.UNAVAILABLE, BROKE_OFF)
            raise
        except MalformedRequest as exc:  # a message of the stream did not parse (the sender gets INVALID_ARGUMENT)
            run.fail(grpc.StatusCode.INVALID_ARGUMENT, f"resharing: {exc}")
            raise
        except StatusError as exc:  # e.g. no crypto worker answered (services/join/workers.py)
            run.fail(exc.code, f"resharing: {exc.message}")
            await context.abort(exc.code, f"resharing: {exc.message}")
        except Exception as exc:
            log.error("a stream failed unexpectedly (%s)", type(exc).__name__)  # the type only: no data
            run.fail(grpc.StatusCode.INTERNAL, f"resharing: internal error ({type(exc).__name__})")
            raise
        finally:
            run.receiving -= 1

    async def StoreHelperShares(self, request_iterator, context):
        try:
            run, header, layout = await self._accept_helper_shares(request_iterator)
        except StreamRefused as refused:
            await context.abort(refused.code, refused.message)
        chunks = await self._receive(run, context, self._share_chunks(request_iterator, header))
        if run.error is not None:  # failed or dropped while the rows arrived
            await context.abort(*run.error)
        run.rows_total = run.rows_done = header.rows
        run.blocks.append(Block(tuple(header.columns), header.rows, layout, header.value_bytes, chunks))
        run.notify()
        return join_pb2.StoreHelperSharesResponse(rows=header.rows)

    async def _accept_helper_shares(
        self, stream: AsyncIterator[join_pb2.StoreHelperSharesRequest]
    ) -> tuple[ResharingRun, join_pb2.SharesHeader, SlotLayout]:
        if self.config.role != "helper":
            raise StreamRefused(
                grpc.StatusCode.FAILED_PRECONDITION, "resharing: only the helper stores its own masks as shares"
            )
        header = await _read_header(stream)
        try:
            layout = codec.layout_from_proto(header.layout)
            layout.check_columns(len(header.columns))
        except JoinError as exc:
            raise StreamRefused(grpc.StatusCode.INVALID_ARGUMENT, f"resharing: {exc}") from None
        run = self._run(header.run_id)
        if run.error is not None:
            raise StreamRefused(grpc.StatusCode.FAILED_PRECONDITION, f"resharing: run {header.run_id} has failed here")
        if len(run.blocks) + run.receiving >= run.expected_blocks:
            raise StreamRefused(
                grpc.StatusCode.ALREADY_EXISTS, f"resharing: run {header.run_id} already holds all its shares"
            )
        return run, header, layout

    async def _share_chunks(
        self, stream: AsyncIterator[join_pb2.StoreHelperSharesRequest], header: join_pb2.SharesHeader
    ) -> list[bytes]:
        rows: ChunkedRows[None] = ChunkedRows(header.rows)
        chunks: list[bytes] = []
        async for item in stream:
            chunk = rows.chunk(item)
            rows.count(check_share_bytes(chunk.values, len(header.columns), header.value_bytes))
            chunks.append(chunk.values)
        rows.finish()
        return chunks

    async def AwaitShares(self, request, context) -> AsyncIterator[join_pb2.AwaitSharesResponse]:
        run = self._run(request.run_id)
        org, phase = self.config.org, common_pb2.PHASE_RESHARING
        reported = -1
        while True:
            changed = run.changed
            if run.error is not None:
                await context.abort(*run.error)
            if run.complete:
                joined = run.blocks[0].rows
                yield join_pb2.AwaitSharesResponse(
                    progress=progress(request.run_id, org, phase, joined, joined, "shares stored"), joined=joined
                )
                return
            if run.rows_done != reported:
                reported = run.rows_done
                yield join_pb2.AwaitSharesResponse(
                    progress=progress(
                        request.run_id,
                        org,
                        phase,
                        run.rows_done,
                        run.rows_total,
                        "decrypting masked rows" if run.rows_total else "waiting for the helper",
                    )
                )
            await changed.wait()

    async def GetShares(self, request, context) -> AsyncIterator[join_pb2.GetSharesResponse]:
        run = self.runs.get(request.run_id)
        if run is None or not run.complete:
            failed = run is not None and run.error is not None
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"resharing: the shares of run {request.run_id} are "
                f"{'not kept: the run failed' if failed else 'not complete'} here",
            )
        for block in run.blocks:
            yield join_pb2.GetSharesResponse(
                header=join_pb2.SharesHeader(
                    run_id=request.run_id,
                    rows=block.rows,
                    columns=block.columns,
                    value_bytes=block.width,
                    layout=codec.layout_to_proto(block.layout),
                )
            )
            for seq, chunk in enumerate(block.chunks):
                yield join_pb2.GetSharesResponse(
                    chunk=join_pb2.SharesChunk(seq=seq, rows=block.chunk_rows(chunk), values=chunk)
                )

    async def DropRun(self, request, context):
        run = self.runs.pop(request.run_id, None)
        if run is not None and not run.complete:
            run.fail(grpc.StatusCode.ABORTED, "resharing: the run was dropped before its shares were complete")
        return join_pb2.DropRunResponse()


async def build_server(config: OrgConfig, port: int | None = None, health_port: int | None = None) -> MeshServer:
    mesh = MeshServer(config, "resharing", RESHARING_RULES, port=port, health_port=health_port)
    servicer = ResharingServicer(
        config, threads=default_workers(), crypto=CryptoWorkers.for_config(config, mesh.credentials)
    )
    mesh.add_service(
        join_pb2_grpc.add_ResharingServiceServicer_to_server,
        servicer,
        join_pb2.DESCRIPTOR.services_by_name["ResharingService"],
    )
    return mesh


def main() -> int:
    return run_server_process("resharing", build_server)


if __name__ == "__main__":
    raise SystemExit(main())
