"""IntersectionService (helper): the TTP step of the secure join.

OpenIntersection (from the helper's own gateway) registers a run; each data owner's
encryption server streams its (tag, ciphertexts) rows with UploadRows. When both have
arrived, the helper matches tags, enforces the study's minimum intersection size,
draws a random permutation, masks every matched ciphertext with fresh per-slot masks
and forwards the masked rows: owner A's rows (under B's key) to B's resharing server,
B's rows to A's; its own shares (−r) stream to its own resharing server alongside, and
are completed there only once both deliveries are. The helper sees tags, ciphertexts and counts only: no ID, no tag key,
no plaintext value. Every status it returns names its phase ("intersection: ...").
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import AsyncIterator

import grpc

from riskmesh.v1 import common_pb2, join_pb2, join_pb2_grpc
from services.join import codec
from services.join.common import chunked, progress, status_for
from services.join.core.errors import JoinError, SpecError
from services.join.core.protocol import EncryptedUpload, HelperResult, MaskedDelivery, helper_match_and_mask
from services.join.core.shares import ShareMatrix, encode_shares, value_bytes
from services.join.rules import INTERSECTION_RULES
from services.mesh.authz import current_caller
from services.mesh.config import OrgConfig
from services.mesh.peers import Channels
from services.mesh.process import run_server_process
from services.mesh.server import MeshServer

log = logging.getLogger("riskmesh.intersection")

DELIVERY_DEADLINE_S = 1800.0
MAX_ROWS = 10_000_000


@dataclass
class IntersectionRun:
    spec: common_pb2.StudySpec
    uploads: dict[str, EncryptedUpload] = field(default_factory=dict)
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
        header = None
        tags: list[bytes] = []
        ciphertexts: list[list[int]] = []
        run: IntersectionRun | None = None
        next_seq = 0
        async for item in request_iterator:
            if header is None:
                if not item.HasField("header"):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "intersection: the first message of an upload must be its header")
                header = item.header
                run = self.runs.get(header.run_id)
                if run is None:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"intersection: run {header.run_id} is not open at the helper")
                if caller is None or caller.org not in [o.org for o in run.spec.owners]:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "intersection: only the study's data owners upload rows")
                if caller.org in run.uploads:
                    await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"intersection: {caller.org} has already uploaded rows for this run")
                if header.rows > MAX_ROWS:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"intersection: an upload may hold at most {MAX_ROWS} rows")
                try:
                    layout = codec.layout_from_proto(header.layout)
                    key = codec.public_key_from_proto(header.key)
                    layout.check_columns(len(header.columns))
                    layout.check_modulus(key.bits)
                    if tuple(header.columns) != codec.column_names(codec.owner_columns(run.spec, caller.org)):
                        raise SpecError(f"the upload's columns are not the study's columns of {caller.org} in slot order")
                except JoinError as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"intersection: {exc}")
                per_row = layout.ciphertexts_per_row
                continue
            if not item.HasField("chunk") or item.chunk.seq != next_seq:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "intersection: upload chunks must follow the header in sequence")
            next_seq += 1
            chunk = item.chunk
            if len(chunk.ciphertexts) != len(chunk.tags) * per_row or any(len(t) != 32 for t in chunk.tags):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "intersection: a chunk's tags and ciphertexts do not match its layout")
            tags.extend(chunk.tags)
            try:
                values = [key.decode_ciphertext(c) for c in chunk.ciphertexts]
            except JoinError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"intersection: {exc}")
            ciphertexts.extend(values[k : k + per_row] for k in range(0, len(values), per_row))
            if len(tags) > header.rows:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "intersection: more rows than the header announced")
        if header is None or run is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "intersection: an empty upload")
        if len(tags) != header.rows:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"intersection: the upload ended after {len(tags)} of {header.rows} rows")
        run.uploads[caller.org] = EncryptedUpload(tags, ciphertexts, tuple(header.columns), layout, key)
        log.info("run %s: upload from %s complete (%d rows)", header.run_id, caller.org, len(tags))
        run.emit(join_pb2.AwaitIntersectionResponse(progress=progress(header.run_id, self.config.org, common_pb2.PHASE_INTERSECTION, len(run.uploads), 2, f"upload from {caller.org} received")))
        if len(run.uploads) == 2 and run.task is None:
            run.task = asyncio.create_task(self._match_and_deliver(header.run_id, run))
        return join_pb2.UploadRowsResponse(rows=len(tags))

    async def _match_and_deliver(self, run_id: str, run: IntersectionRun) -> None:
        org = self.config.org
        owner_a, owner_b = [o.org for o in run.spec.owners]
        # B uploaded under A's key, so what A receives (B's masked rows) has A's ciphertext width.
        width_a = run.uploads[owner_b].key.ciphertext_bytes
        width_b = run.uploads[owner_a].key.ciphertext_bytes
        try:
            result: HelperResult = await asyncio.to_thread(helper_match_and_mask, run.uploads[owner_a], run.uploads[owner_b], run.spec.min_intersection or 1)
        except JoinError as exc:
            run.fail(status_for(exc), f"intersection: {exc}")
            return
        except Exception as exc:  # a bug must still end the run (the type only: no data)
            log.error("run %s: matching failed unexpectedly (%s)", run_id, type(exc).__name__)
            run.fail(grpc.StatusCode.INTERNAL, f"intersection: internal error ({type(exc).__name__})")
            return
        finally:
            run.uploads.clear()  # ciphertexts are no longer needed here
        run.emit(join_pb2.AwaitIntersectionResponse(progress=progress(run_id, org, common_pb2.PHASE_INTERSECTION, result.joined, result.joined, "matched and masked"), joined=result.joined))
        # The helper's own shares stream to its resharing server alongside the deliveries, but
        # their last chunk (which completes them there) is sent only once both owners hold
        # their shares; if a delivery fails, the stores are cancelled and the helper's
        # resharing drops what it got. So a broken delivery leaves no complete shares anywhere.
        delivered = asyncio.Event()
        stores = [
            asyncio.create_task(self._store_own(run_id, result.shares_of_a_columns, result.to_b, delivered)),
            asyncio.create_task(self._store_own(run_id, result.shares_of_b_columns, result.to_a, delivered)),
        ]
        try:
            await asyncio.gather(
                self._deliver(owner_a, run_id, result.joined, result.to_a, width_a),
                self._deliver(owner_b, run_id, result.joined, result.to_b, width_b),
            )
        except grpc.aio.AioRpcError as exc:
            for store in stores:
                store.cancel()
            await asyncio.gather(*stores, return_exceptions=True)
            run.fail(grpc.StatusCode.UNAVAILABLE, f"intersection: delivering masked rows failed: {exc.code().name}: {exc.details()}")
            return
        delivered.set()
        try:
            await asyncio.gather(*stores)
        except grpc.aio.AioRpcError as exc:
            run.fail(grpc.StatusCode.UNAVAILABLE, f"intersection: storing the helper's shares failed: {exc.code().name}: {exc.details()}")
            return
        run.done = True
        run.emit(join_pb2.AwaitIntersectionResponse(progress=progress(run_id, org, common_pb2.PHASE_INTERSECTION, result.joined, result.joined, "masked rows delivered", common_pb2.RUN_STATE_RUNNING), joined=result.joined))

    async def _deliver(self, owner: str, run_id: str, joined: int, delivery: MaskedDelivery, width: int) -> None:
        def requests():
            yield join_pb2.DeliverMaskedRowsRequest(header=join_pb2.MaskedRowsHeader(
                run_id=run_id, joined=joined, layout=codec.layout_to_proto(delivery.layout), columns=delivery.columns, key_id=delivery.key_id))
            for seq, rows in enumerate(chunked(delivery.ciphertexts)):
                flat = [c.to_bytes(width, "big") for row in rows for c in row]
                yield join_pb2.DeliverMaskedRowsRequest(chunk=join_pb2.MaskedRowsChunk(seq=seq, ciphertexts=flat))

        stub = join_pb2_grpc.ResharingServiceStub(self.channels.get(owner, "resharing"))
        await stub.DeliverMaskedRows(requests(), timeout=DELIVERY_DEADLINE_S)

    async def _store_own(self, run_id: str, shares: ShareMatrix, delivery: MaskedDelivery, delivered: asyncio.Event) -> None:
        width = value_bytes(delivery.layout)

        async def requests() -> AsyncIterator[join_pb2.StoreHelperSharesRequest]:
            yield join_pb2.StoreHelperSharesRequest(header=join_pb2.SharesHeader(
                run_id=run_id, rows=shares.n_rows, columns=shares.columns, value_bytes=width, layout=codec.layout_to_proto(delivery.layout)))
            pieces = list(chunked(shares.values))
            for seq, rows in enumerate(pieces):
                if seq == len(pieces) - 1:
                    await delivered.wait()  # the last chunk completes the shares at resharing
                yield join_pb2.StoreHelperSharesRequest(chunk=join_pb2.SharesChunk(seq=seq, rows=len(rows), values=encode_shares(rows, width)))

        stub = join_pb2_grpc.ResharingServiceStub(self.channels.get(self.config.org, "resharing"))
        await stub.StoreHelperShares(requests(), timeout=DELIVERY_DEADLINE_S)

    async def AwaitIntersection(self, request, context) -> AsyncIterator[join_pb2.AwaitIntersectionResponse]:
        run = self.runs.get(request.run_id)
        if run is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"intersection: run {request.run_id} is not open at the helper")
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
    mesh.add_service(join_pb2_grpc.add_IntersectionServiceServicer_to_server, servicer, join_pb2.DESCRIPTOR.services_by_name["IntersectionService"])
    return mesh


def main() -> int:
    return run_server_process("intersection", build_server)


if __name__ == "__main__":
    raise SystemExit(main())
