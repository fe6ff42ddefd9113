"""IntersectionService (helper): the TTP step of the secure join.

OpenIntersection (from the helper's own gateway) registers a run; each data owner's
encryption server streams its (tag, ciphertexts) rows with UploadRows. When both have
arrived, the helper matches tags, enforces the study's minimum intersection size and
draws a random permutation π (the checks and order of protocol.helper_match_and_mask).
Then, chunk by chunk in π order, it masks the matched ciphertexts with fresh per-slot
masks and streams them on: owner A's rows (under B's key) to B's resharing server, B's
rows to A's — so the owners decrypt the first chunks while later ones are masked. Its
own shares (−r) stream to its own resharing server alongside and are completed there
only once both deliveries are. The helper sees tags, ciphertexts and counts only: no ID,
no tag key, no plaintext value. Every status it returns names its phase ("intersection: ...").

Memory stays bounded by the tags: an upload's ciphertexts go to a spool file (unnamed,
in the state directory; services/join/spool.py) as they arrive, its tags into one byte
array; matching works on the tag arrays (services/join/core/matching.py), and masking
reads the matched ciphertexts back chunk by chunk in π order. The masked chunks wait in
small bounded queues, so the helper runs only a few chunks ahead of the slower of the
receiving owner's decryption and its own resharing server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from riskmesh.v1 import common_pb2, join_pb2, join_pb2_grpc
from services.join import codec
from services.join.common import chunked, status_for
from services.join.core.chunks import ChunkedRows, read_header
from services.join.core.errors import JoinError, KeySizeError, SpecError, WireFormatError
from services.join.core.masking import MaskedRows, mask_rows, random_permutation
from services.join.core.matching import check_minimum, match_tag_arrays, tag_array
from services.join.core.packing import SlotLayout
from services.join.core.paillier import PublicKey, check_key_size
from services.join.core.protocol import check_compatible
from services.join.core.shares import encode_shares, value_bytes
from services.join.rules import INTERSECTION_RULES
from services.join.spool import RowSpool
from services.mesh.authz import current_caller
from services.mesh.config import OrgConfig
from services.mesh.peers import Channels
from services.mesh.process import run_server_process
from services.mesh.progress import progress
from services.mesh.server import MeshServer
from services.study.spec import SpecError as StudySpecError
from services.study.spec import owner_columns

log = logging.getLogger("riskmesh.intersection")

DELIVERY_DEADLINE_S = 1800.0
QUEUED_CHUNKS = 4  # masked chunks waiting per queue: bounds what runs ahead of the receivers


@dataclass
class SpooledUpload:
    """One owner's upload at the helper: its tags (32 bytes each, concatenated, in upload
    order) in memory, its ciphertexts in a spool file, one row per upload position."""

    tags: bytes
    spool: RowSpool
    columns: tuple[str, ...]
    layout: SlotLayout
    key: PublicKey

    @property
    def rows(self) -> int:
        return self.spool.rows

    def ciphertexts(self, positions: Sequence[int]) -> list[list[int]]:
        """The rows at `positions` as ints (checked to lie in (0, N²) when they arrived)."""
        width, per_row = self.key.ciphertext_bytes, self.layout.ciphertexts_per_row
        return [
            [int.from_bytes(row[k * width : (k + 1) * width], "big") for k in range(per_row)]
            for row in self.spool.read(positions)
        ]

    def close(self) -> None:
        self.spool.close()


@dataclass
class IntersectionRun:
    spec: common_pb2.StudySpec
    uploads: dict[str, SpooledUpload] = field(default_factory=dict)
    events: list[join_pb2.AwaitIntersectionResponse] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    error: tuple[grpc.StatusCode, str] | None = None
    done: bool = False
    task: asyncio.Task | None = None

    def emit(self, reply: join_pb2.AwaitIntersectionResponse) -> None:
        self.events.append(reply)
        self.changed.set()
        self.changed = asyncio.Event()

    def fail(self, code: grpc.StatusCode, reason: str) -> None:
        self.error = (code, reason)
        self.changed.set()


def match_uploads(upload_a: SpooledUpload, upload_b: SpooledUpload, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    """protocol.helper_match_and_mask up to the masking, on spooled uploads: its checks, the
    matching, the minimum and π. Returns the matched A and B upload positions in π order."""
    for upload in (upload_a, upload_b):
        upload.layout.check_columns(len(upload.columns))
        upload.layout.check_modulus(upload.key.bits)
    check_compatible(upload_a, upload_b)
    index_a, index_b = match_tag_arrays(tag_array(upload_a.tags, "A"), tag_array(upload_b.tags, "B"))
    check_minimum(len(index_a), minimum)
    order = np.asarray(random_permutation(len(index_a)), dtype=np.int64)
    return index_a[order], index_b[order]


def upload_chunk(chunk: join_pb2.RowChunk, key: PublicKey, per_row: int) -> tuple[bytes, bytes]:
    """An upload chunk's tags and ciphertexts, each concatenated, after checking every
    tag's length and every ciphertext's width and range."""
    if len(chunk.ciphertexts) != len(chunk.tags) * per_row or any(len(t) != 32 for t in chunk.tags):
        raise WireFormatError("a chunk's tags and ciphertexts do not match its layout")
    for c in chunk.ciphertexts:
        key.decode_ciphertext(c)
    return b"".join(chunk.tags), b"".join(chunk.ciphertexts)


@dataclass
class MaskedStream:
    """One owner's matched rows on their way, masked chunk by chunk in π order: the masked
    ciphertexts to the other owner (`receiver`), the negated masks to the helper's resharing."""

    receiver: str
    upload: SpooledUpload
    positions: np.ndarray  # upload rows in π order
    to_receiver: asyncio.Queue[list[list[int]] | None] = field(default_factory=lambda: asyncio.Queue(QUEUED_CHUNKS))
    to_helper: asyncio.Queue[list[list[int]] | None] = field(default_factory=lambda: asyncio.Queue(QUEUED_CHUNKS))


class IntersectionServicer(join_pb2_grpc.IntersectionServiceServicer):
    def __init__(self, config: OrgConfig, channels: Channels) -> None:
        self.config = config
        self.channels = channels
        self.runs: dict[str, IntersectionRun] = {}

    async def OpenIntersection(self, request, context):
        if request.run_id in self.runs:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"intersection: run {request.run_id} is already open")
        owners = [o.org for o in request.spec.owners]
        if len(owners) != 2:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "intersection: a study needs exactly two data owners")
        self.runs[request.run_id] = IntersectionRun(request.spec)
        return join_pb2.OpenIntersectionResponse()

    async def UploadRows(self, request_iterator, context):
        caller = current_caller.get()
        try:
            header = await read_header(request_iterator)
        except JoinError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"intersection: {exc}")
        run = self.runs.get(header.run_id)
        if run is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"intersection: run {header.run_id} is not open at the helper"
            )
        if caller is None or caller.org not in [o.org for o in run.spec.owners]:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "intersection: only the study's data owners upload rows"
            )
        if caller.org in run.uploads or run.task is not None:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"intersection: {caller.org} has already uploaded rows for this run"
            )
        if header.rows > self.config.max_upload_rows:  # the helper's memory bound (config max_upload_rows)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"intersection: an upload may hold at most {self.config.max_upload_rows} rows",
            )
        try:
            layout = codec.layout_from_proto(header.layout)
            key = codec.public_key_from_proto(header.key)
            check_key_size(key.bits, run.spec.paillier_bits, self.config.min_paillier_bits)  # before masking under it
            layout.check_columns(len(header.columns))
            layout.check_modulus(key.bits)
            if tuple(header.columns) != codec.column_names(owner_columns(run.spec, caller.org)):
                raise SpecError(f"the upload's columns are not the study's columns of {caller.org} in slot order")
        except KeySizeError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"intersection: {exc}")
        except (JoinError, StudySpecError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"intersection: {exc}")
        try:
            upload = await self._spool(request_iterator, header, layout, key)
        except JoinError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"intersection: {exc}")
        if caller.org in run.uploads or run.task is not None:  # a second upload raced this one
            upload.close()
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"intersection: {caller.org} has already uploaded rows for this run"
            )
        run.uploads[caller.org] = upload
        log.info("run %s: upload from %s complete (%d rows)", header.run_id, caller.org, upload.rows)
        run.emit(
            join_pb2.AwaitIntersectionResponse(
                progress=progress(
                    header.run_id,
                    self.config.org,
                    common_pb2.PHASE_INTERSECTION,
                    len(run.uploads),
                    2,
                    f"upload from {caller.org} received",
                )
            )
        )
        if len(run.uploads) == 2 and run.task is None:
            run.task = asyncio.create_task(self._match_and_deliver(header.run_id, run))
        return join_pb2.UploadRowsResponse(rows=upload.rows)

    async def _spool(
        self,
        stream: AsyncIterator[join_pb2.UploadRowsRequest],
        header: join_pb2.UploadHeader,
        layout: SlotLayout,
        key: PublicKey,
    ) -> SpooledUpload:
        """The rows after the header: tags kept in memory, ciphertexts checked and spooled."""
        per_row = layout.ciphertexts_per_row
        upload = SpooledUpload(
            b"",
            RowSpool(self.config.state_dir / "spool", per_row * key.ciphertext_bytes),
            tuple(header.columns),
            layout,
            key,
        )
        tags = bytearray()
        try:
            rows: ChunkedRows[None] = ChunkedRows(header.rows)
            async for item in stream:
                chunk = rows.chunk(item)
                chunk_tags, ciphertexts = upload_chunk(chunk, key, per_row)
                rows.count(len(chunk.tags))
                tags += chunk_tags
                upload.spool.append(ciphertexts)
            rows.finish()
        except BaseException:
            upload.close()
            raise
        upload.tags = bytes(tags)
        return upload

    async def _match_and_deliver(self, run_id: str, run: IntersectionRun) -> None:
        owner_a, owner_b = [o.org for o in run.spec.owners]
        upload_a, upload_b = run.uploads[owner_a], run.uploads[owner_b]
        run.uploads.clear()  # held here until delivered
        try:
            await self._deliver_uploads(run_id, run, upload_a, upload_b)
        finally:
            upload_a.close()
            upload_b.close()

    async def _deliver_uploads(
        self, run_id: str, run: IntersectionRun, upload_a: SpooledUpload, upload_b: SpooledUpload
    ) -> None:
        org = self.config.org
        owner_a, owner_b = [o.org for o in run.spec.owners]
        try:
            positions_a, positions_b = await asyncio.to_thread(
                match_uploads, upload_a, upload_b, run.spec.min_intersection or 1
            )
        except JoinError as exc:
            run.fail(status_for(exc), f"intersection: {exc}")
            return
        except Exception as exc:  # a bug must still end the run (the type only: no data)
            log.error("run %s: matching failed unexpectedly (%s)", run_id, type(exc).__name__)
            run.fail(grpc.StatusCode.INTERNAL, f"intersection: internal error ({type(exc).__name__})")
            return
        joined = len(positions_a)
        run.emit(
            join_pb2.AwaitIntersectionResponse(
                progress=progress(
                    run_id, org, common_pb2.PHASE_INTERSECTION, joined, joined, "matched; masking and delivering"
                ),
                joined=joined,
            )
        )
        streams = [MaskedStream(owner_b, upload_a, positions_a), MaskedStream(owner_a, upload_b, positions_b)]
        # The helper's own shares stream to its resharing server alongside the deliveries, but
        # their last chunk (which completes them there) is sent only once both owners hold
        # their shares; if a delivery fails, the stores are cancelled and the helper's
        # resharing drops what it got. So a broken delivery leaves no complete shares anywhere.
        delivered = asyncio.Event()
        stores = [asyncio.create_task(self._store_own(run_id, joined, stream, delivered)) for stream in streams]
        try:
            async with asyncio.TaskGroup() as group:  # the first failure cancels the rest
                for stream in streams:
                    group.create_task(self._mask(stream))
                    group.create_task(self._deliver(run_id, joined, stream))
        except ExceptionGroup as failed:
            for store in stores:
                store.cancel()
            await asyncio.gather(*stores, return_exceptions=True)
            run.fail(*self._failure(run_id, failed.exceptions[0], "delivering masked rows failed"))
            return
        delivered.set()
        try:
            await asyncio.gather(*stores)
        except Exception as exc:
            run.fail(*self._failure(run_id, exc, "storing the helper's shares failed"))
            return
        run.done = True
        run.emit(
            join_pb2.AwaitIntersectionResponse(
                progress=progress(
                    run_id,
                    org,
                    common_pb2.PHASE_INTERSECTION,
                    joined,
                    joined,
                    "masked rows delivered",
                    common_pb2.RUN_STATE_RUNNING,
                ),
                joined=joined,
            )
        )

    @staticmethod
    def _failure(run_id: str, exc: BaseException, what: str) -> tuple[grpc.StatusCode, str]:
        """Status and reason of a failed delivery or store (peer statuses carry no patient data)."""
        if isinstance(exc, grpc.aio.AioRpcError):
            return grpc.StatusCode.UNAVAILABLE, f"intersection: {what}: {exc.code().name}: {exc.details()}"
        if isinstance(exc, JoinError):
            return status_for(exc), f"intersection: {what}: {exc}"
        log.error("run %s: %s unexpectedly (%s)", run_id, what, type(exc).__name__)  # the type only: no data
        return grpc.StatusCode.INTERNAL, f"intersection: {what}: internal error ({type(exc).__name__})"

    @staticmethod
    async def _mask(stream: MaskedStream) -> None:
        """Mask the stream's rows chunk by chunk (fresh masks per value), feeding both queues."""
        upload = stream.upload

        def masked_chunk(positions: Sequence[int]) -> MaskedRows:
            return mask_rows(upload.key, upload.layout, upload.ciphertexts(positions), len(upload.columns))

        for part in chunked(stream.positions):
            masked = await asyncio.to_thread(masked_chunk, part.tolist())
            await stream.to_helper.put(masked.helper_shares)
            await stream.to_receiver.put(masked.ciphertexts)
        await stream.to_helper.put(None)
        await stream.to_receiver.put(None)

    async def _deliver(self, run_id: str, joined: int, stream: MaskedStream) -> None:
        upload = stream.upload
        width = upload.key.ciphertext_bytes  # the rows are under the receiver's key

        async def requests() -> AsyncIterator[join_pb2.DeliverMaskedRowsRequest]:
            yield join_pb2.DeliverMaskedRowsRequest(
                header=join_pb2.MaskedRowsHeader(
                    run_id=run_id,
                    joined=joined,
                    layout=codec.layout_to_proto(upload.layout),
                    columns=upload.columns,
                    key_id=upload.key.key_id,
                )
            )
            seq = 0
            while (rows := await stream.to_receiver.get()) is not None:
                flat = [c.to_bytes(width, "big") for row in rows for c in row]
                yield join_pb2.DeliverMaskedRowsRequest(chunk=join_pb2.MaskedRowsChunk(seq=seq, ciphertexts=flat))
                seq += 1

        await self.channels.ready(stream.receiver, "resharing")  # restarted: past its reconnect backoff
        stub = join_pb2_grpc.ResharingServiceStub(self.channels.get(stream.receiver, "resharing"))
        await stub.DeliverMaskedRows(requests(), timeout=DELIVERY_DEADLINE_S)

    async def _store_own(self, run_id: str, joined: int, stream: MaskedStream, delivered: asyncio.Event) -> None:
        layout = stream.upload.layout
        width = value_bytes(layout)

        async def requests() -> AsyncIterator[join_pb2.StoreHelperSharesRequest]:
            yield join_pb2.StoreHelperSharesRequest(
                header=join_pb2.SharesHeader(
                    run_id=run_id,
                    rows=joined,
                    columns=stream.upload.columns,
                    value_bytes=width,
                    layout=codec.layout_to_proto(layout),
                )
            )
            seq = 0
            held = await stream.to_helper.get()
            while held is not None:
                following = await stream.to_helper.get()
                if following is None:
                    await delivered.wait()  # the last chunk completes the shares at resharing
                yield join_pb2.StoreHelperSharesRequest(
                    chunk=join_pb2.SharesChunk(seq=seq, rows=len(held), values=encode_shares(held, width))
                )
                seq += 1
                held = following

        await self.channels.ready(self.config.org, "resharing")
        stub = join_pb2_grpc.ResharingServiceStub(self.channels.get(self.config.org, "resharing"))
        await stub.StoreHelperShares(requests(), timeout=DELIVERY_DEADLINE_S)

    async def AwaitIntersection(self, request, context) -> AsyncIterator[join_pb2.AwaitIntersectionResponse]:
        run = self.runs.get(request.run_id)
        if run is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"intersection: run {request.run_id} is not open at the helper"
            )
        sent = 0
        try:
            while True:
                changed = run.changed
                while sent < len(run.events):
                    yield run.events[sent]
                    sent += 1
                if run.error:
                    await context.abort(*run.error)
                if run.done:
                    return
                await changed.wait()
        finally:
            if run.done or run.error:
                self.runs.pop(request.run_id, None)


async def build_server(config: OrgConfig, port: int | None = None, health_port: int | None = None) -> MeshServer:
    mesh = MeshServer(config, "intersection", INTERSECTION_RULES, port=port, health_port=health_port)
    servicer = IntersectionServicer(config, Channels(config, mesh.credentials))
    mesh.add_service(
        join_pb2_grpc.add_IntersectionServiceServicer_to_server,
        servicer,
        join_pb2.DESCRIPTOR.services_by_name["IntersectionService"],
    )
    return mesh


def main() -> int:
    return run_server_process("intersection", build_server)


if __name__ == "__main__":
    raise SystemExit(main())
