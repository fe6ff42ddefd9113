"""One organisation's part of a study run: this org's servers called in phase order.

    data owner: CreateKey + PrepareEncryption (setup) → RunEncryption (hashing/encryption)
                → AwaitShares (resharing) → RunLasso (input, Gram, iterations, reveal)
    helper:     OpenIntersection (setup) → AwaitIntersection (intersection)
                → AwaitShares (resharing) → RunLasso

Every phase is a span (`riskmesh.phase`) in the run's trace; progress events go to
`report`. A failing call becomes a `PhaseFailure` naming the phase, the org, the
server's reason (for this org's record: it may name a CSV row or column, never a value)
and the category the other organisations are told (`errors.failure_category`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from opentelemetry import trace

from riskmesh.v1 import common_pb2, join_pb2, join_pb2_grpc, lasso_pb2, lasso_pb2_grpc
from services.gateway.errors import PhaseFailure, failure_category
from services.mesh.config import OrgConfig
from services.mesh.peers import Channels
from services.mesh.progress import progress
from services.study.spec import DEFAULT_PAILLIER_BITS

tracer = trace.get_tracer("riskmesh.gateway")

# Generous per-phase deadlines: keepalive, not these, detects a dead peer quickly.
SETUP_DEADLINE_S = 120.0
PHASE_DEADLINE_S = 1800.0

Report = Callable[[common_pb2.Progress], Awaitable[None]]
Stub = TypeVar("Stub")


def phase_label(phase: common_pb2.Phase.ValueType) -> str:
    return common_pb2.Phase.Name(phase).removeprefix("PHASE_").lower()


@dataclass
class CalledServer:
    server: str


@dataclass(frozen=True)
class OwnerKeys:
    x25519_public_key: bytes
    paillier_key: common_pb2.PaillierPublicKey


@dataclass(frozen=True)
class OwnerSetup:
    """An owner's setup for a run: its public keys and its commitment to the input it read."""

    keys: OwnerKeys
    commitment: str
    prepared_key_id: str = ""  # set when the Paillier key is the one prepared (and announced) offline


class RunPipeline:
    def __init__(
        self,
        config: OrgConfig,
        channels: Channels,
        spec: common_pb2.StudySpec,
        run_id: str,
        report: Report,
        min_joined: int = 0,
    ) -> None:
        self.config = config
        self.channels = channels
        self.spec = spec
        self.run_id = run_id
        self.report = report
        self.min_joined = min_joined  # this org's floor on the joined count, checked inside the MPC
        self.joined = 0

    def _stub(self, server: str, stub_class: Callable[[grpc.aio.Channel], Stub]) -> Stub:
        return stub_class(self.channels.get(self.config.org, server))

    async def _ready_stub(self, server: str, stub_class: Callable[[grpc.aio.Channel], Stub]) -> Stub:
        """A stub of this org's `server` for a step's first call, once its channel connected: a
        server that just restarted is behind the reconnect backoff for a moment (`Channels.ready`);
        one still down after that fails the call itself."""
        await self.channels.ready(self.config.org, server)
        return self._stub(server, stub_class)

    @contextlib.asynccontextmanager
    async def phase(self, phase: common_pb2.Phase.ValueType, server: str) -> AsyncIterator[CalledServer]:
        """A span for the phase; gRPC errors become PhaseFailure(phase, this org, reason
        naming the server called last, which the block may update)."""
        span = self._start_span(phase)
        where = CalledServer(server)
        try:
            with trace.use_span(span, end_on_exit=True):
                yield where
        except grpc.aio.AioRpcError as exc:
            reason = f"{where.server}: {exc.code().name}: {exc.details()}"
            category = failure_category(phase, where.server, exc.code())
            raise PhaseFailure(phase, self.config.org, reason, category) from None

    async def _progress(self, phase: int, done: int = 0, total: int = 0, message: str = "") -> None:
        await self.report(progress(self.run_id, self.config.org, phase, done, total, message))

    # Data owners -----------------------------------------------------------

    async def prepare_owner(self, source_path: str, commitment_key: bytes, prepared_key_id: str = "") -> OwnerSetup:
        """Setup: this run's Paillier key pair (kept by resharing: the one prepared offline with
        `prepared_key_id` if resharing still holds it, else a fresh one) and the CSV read,
        committed to under `commitment_key` (this org's per-study secret) + X25519 key (encryption)."""
        async with self.phase(common_pb2.PHASE_SETUP, "resharing") as where:
            resharing = await self._ready_stub("resharing", join_pb2_grpc.ResharingServiceStub)
            key, prepared_key_id = await self._run_key(resharing, prepared_key_id)
            where.server = "encryption"
            encryption = await self._ready_stub("encryption", join_pb2_grpc.EncryptionServiceStub)
            request = join_pb2.PrepareEncryptionRequest(
                run_id=self.run_id, spec=self.spec, source_path=source_path, commitment_key=commitment_key
            )
            prepared = await encryption.PrepareEncryption(request, timeout=SETUP_DEADLINE_S)
            await self._progress(common_pb2.PHASE_SETUP, done=1, total=1, message="keys ready, local data validated")
        return OwnerSetup(OwnerKeys(prepared.x25519_public_key, key), prepared.input_commitment, prepared_key_id)

    async def _run_key(
        self, resharing: join_pb2_grpc.ResharingServiceStub, prepared_key_id: str
    ) -> tuple[common_pb2.PaillierPublicKey, str]:
        """This run's public key and its prepared key id ("" when it was made now)."""
        request = join_pb2.CreateKeyRequest(
            run_id=self.run_id, bits=self.spec.paillier_bits or DEFAULT_PAILLIER_BITS, study_id=self.spec.study_id
        )
        if prepared_key_id:
            request.prepared_key_id = prepared_key_id
            try:
                return (await resharing.CreateKey(request, timeout=SETUP_DEADLINE_S)).key, prepared_key_id
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                # Used, expired or lost on a restart: make one now, as without offline keys.
                request.prepared_key_id = ""
        await self._progress(common_pb2.PHASE_SETUP, message="generating this run's Paillier key pair")
        return (await resharing.CreateKey(request, timeout=SETUP_DEADLINE_S)).key, ""

    async def run_owner(self, peer: OwnerKeys) -> lasso_pb2.ModelResult:
        async with self.phase(common_pb2.PHASE_HASHING_ENCRYPTION, "encryption"):
            encryption = await self._ready_stub("encryption", join_pb2_grpc.EncryptionServiceStub)
            request = join_pb2.RunEncryptionRequest(
                run_id=self.run_id, peer_x25519_public_key=peer.x25519_public_key, peer_paillier_key=peer.paillier_key
            )
            async for reply in encryption.RunEncryption(request, timeout=PHASE_DEADLINE_S):
                await self.report(reply.progress)
        await self._await_shares()
        return await self._run_lasso()

    # Helper ------------------------------------------------------------------

    async def open_helper(self) -> None:
        async with self.phase(common_pb2.PHASE_SETUP, "intersection"):
            intersection = await self._ready_stub("intersection", join_pb2_grpc.IntersectionServiceStub)
            await intersection.OpenIntersection(
                join_pb2.OpenIntersectionRequest(run_id=self.run_id, spec=self.spec), timeout=SETUP_DEADLINE_S
            )

    async def run_helper(self) -> lasso_pb2.ModelResult:
        async with self.phase(common_pb2.PHASE_INTERSECTION, "intersection"):
            intersection = await self._ready_stub("intersection", join_pb2_grpc.IntersectionServiceStub)
            async for reply in intersection.AwaitIntersection(
                join_pb2.AwaitIntersectionRequest(run_id=self.run_id), timeout=PHASE_DEADLINE_S
            ):
                await self.report(reply.progress)
                self.joined = reply.joined or self.joined
        await self._await_shares()
        return await self._run_lasso()

    # Every org ---------------------------------------------------------------

    async def _await_shares(self) -> None:
        async with self.phase(common_pb2.PHASE_RESHARING, "resharing"):
            resharing = await self._ready_stub("resharing", join_pb2_grpc.ResharingServiceStub)
            async for reply in resharing.AwaitShares(
                join_pb2.AwaitSharesRequest(run_id=self.run_id), timeout=PHASE_DEADLINE_S
            ):
                await self.report(reply.progress)
                self.joined = reply.joined or self.joined

    async def _run_lasso(self) -> lasso_pb2.ModelResult:
        """The MPC phases: one span per phase the lasso server reports (input, Gram, iterations, reveal)."""
        lasso = await self._ready_stub("lasso", lasso_pb2_grpc.LassoServiceStub)
        result = lasso_pb2.ModelResult()
        current = common_pb2.PHASE_INPUT
        span = self._start_span(current)
        try:
            async for reply in lasso.RunLasso(
                lasso_pb2.RunLassoRequest(run_id=self.run_id, spec=self.spec, min_joined=self.min_joined),
                timeout=PHASE_DEADLINE_S,
            ):
                if reply.HasField("result"):
                    result = reply.result
                    continue
                if reply.progress.phase not in (current, common_pb2.PHASE_UNSPECIFIED):
                    span.end()
                    current = reply.progress.phase
                    span = self._start_span(current)
                await self.report(reply.progress)
        except grpc.aio.AioRpcError as exc:
            span.set_status(trace.Status(trace.StatusCode.ERROR, exc.code().name))
            reason = f"lasso: {exc.code().name}: {exc.details()}"
            category = failure_category(current, "lasso", exc.code())
            raise PhaseFailure(current, self.config.org, reason, category) from None
        finally:
            span.end()
        if self.joined and not result.joined:
            result.joined = self.joined
        return result

    def _start_span(self, phase: common_pb2.Phase.ValueType) -> trace.Span:
        attributes = {
            "riskmesh.phase": phase_label(phase),
            "riskmesh.run.id": self.run_id,
            "riskmesh.study.id": self.spec.study_id,
            "riskmesh.org": self.config.org,
        }
        return tracer.start_span(f"phase {phase_label(phase)}", attributes=attributes)

    async def drop(self) -> None:
        """Best effort: free this run's keys and shares at resharing."""
        resharing = self._stub("resharing", join_pb2_grpc.ResharingServiceStub)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await resharing.DropRun(join_pb2.DropRunRequest(run_id=self.run_id), timeout=10)
