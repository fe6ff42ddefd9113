"""Drive the join servers of three running organisations directly, as their gateways
would, and read the resulting shares back — for the benchmark harness and tests only.

Reading every org's shares (`collect_shares`) uses each org's lasso identity and the
PKI of all three orgs: only a harness that generated the data and holds every key can
do that. No service path ever reconstructs shares.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from riskmesh.v1 import common_pb2, join_pb2, join_pb2_grpc
from services.join.core.shares import ShareMatrix, assemble, decode_shares, reconstruct
from services.mesh.config import OrgConfig, load_config
from services.mesh.tls import MeshCredentials

DEADLINE_S = 1800.0


@dataclass
class JoinTimings:
    run_id: str
    joined: int
    setup_s: float  # key generation + CSV validation
    offline_s: float  # randomness pools (the slower owner)
    join_s: float  # from the encryption start until the helper delivered masked rows
    reshare_s: float  # until every org's shares are stored
    total_s: float


class Harness:
    """Channels to every org's servers with the identity the real caller would use."""

    def __init__(self, config_paths: dict[str, Path]) -> None:
        self.configs: dict[str, OrgConfig] = {org: load_config(p, env={}) for org, p in config_paths.items()}
        self._channels: dict = {}

    def stub(self, org: str, server: str, as_service: str, stub_class):
        key = (org, server, as_service)
        if key not in self._channels:
            config = self.configs[org]
            creds = MeshCredentials(config.pki_dir, org, as_service)
            self._channels[key] = creds.channel(org, server, config.self_endpoint.address(server))
        return stub_class(self._channels[key])

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


async def run_join(harness: Harness, spec: common_pb2.StudySpec, sources: dict[str, str], run_id: str) -> JoinTimings:
    owners = [o.org for o in spec.owners]
    helper = next(p.org for p in spec.parties if p.role == common_pb2.ROLE_HELPER)
    started = time.perf_counter()
    resharing = {o: harness.stub(o, "resharing", "gateway", join_pb2_grpc.ResharingServiceStub) for o in [*owners, helper]}
    encryption = {o: harness.stub(o, "encryption", "gateway", join_pb2_grpc.EncryptionServiceStub) for o in owners}
    keys = await asyncio.gather(*(resharing[o].CreateKey(join_pb2.CreateKeyRequest(run_id=run_id, bits=spec.paillier_bits or 2048), timeout=DEADLINE_S) for o in owners))
    prepared = await asyncio.gather(*(encryption[o].PrepareEncryption(join_pb2.PrepareEncryptionRequest(run_id=run_id, spec=spec, source_path=sources[o]), timeout=DEADLINE_S) for o in owners))
    intersection = harness.stub(helper, "intersection", "gateway", join_pb2_grpc.IntersectionServiceStub)
    await intersection.OpenIntersection(join_pb2.OpenIntersectionRequest(run_id=run_id, spec=spec), timeout=DEADLINE_S)
    setup_done = time.perf_counter()
    offline_done: list[float] = []

    async def encrypt(i: int) -> None:
        peer = 1 - i
        request = join_pb2.RunEncryptionRequest(run_id=run_id, peer_x25519_public_key=prepared[peer].x25519_public_key, peer_paillier_key=keys[peer].key)
        async for reply in encryption[owners[i]].RunEncryption(request, timeout=DEADLINE_S):
            if reply.progress.phase == common_pb2.PHASE_SETUP and reply.progress.done == reply.progress.total:
                offline_done.append(time.perf_counter())

    joined = 0
    intersected = 0.0

    async def await_intersection() -> None:
        nonlocal joined, intersected
        async for reply in intersection.AwaitIntersection(join_pb2.AwaitIntersectionRequest(run_id=run_id), timeout=DEADLINE_S):
            joined = reply.joined or joined
        intersected = time.perf_counter()

    async def await_shares(org: str) -> None:
        async for _ in resharing[org].AwaitShares(join_pb2.AwaitSharesRequest(run_id=run_id), timeout=DEADLINE_S):
            pass

    await asyncio.gather(encrypt(0), encrypt(1), await_intersection(), *(await_shares(o) for o in [*owners, helper]))
    done = time.perf_counter()
    offline = (max(offline_done) - setup_done) if offline_done else 0.0
    return JoinTimings(run_id, joined, setup_done - started, offline, intersected - setup_done, done - intersected, done - started)


async def collect_shares(harness: Harness, spec: common_pb2.StudySpec, run_id: str) -> dict[str, ShareMatrix]:
    """Each org's shares over all study columns (harness only: uses every org's lasso identity)."""
    columns = [c.name for o in spec.owners for c in o.features] + [o.target.name for o in spec.owners if o.HasField("target") and o.target.name]
    out = {}
    for org in harness.configs:
        stub = harness.stub(org, "resharing", "lasso", join_pb2_grpc.ResharingServiceStub)
        blocks: list[ShareMatrix] = []
        header = None
        rows: list[list[int]] = []
        async for reply in stub.GetShares(join_pb2.GetSharesRequest(run_id=run_id), timeout=DEADLINE_S):
            if reply.HasField("header"):
                if header is not None:
                    blocks.append(ShareMatrix(tuple(header.columns), rows))
                header, rows = reply.header, []
            else:
                rows.extend(decode_shares(reply.chunk.values, len(header.columns), header.value_bytes))
        if header is not None:
            blocks.append(ShareMatrix(tuple(header.columns), rows))
        n_rows = blocks[0].n_rows if blocks else 0
        out[org] = assemble(columns, blocks, n_rows)
    return out


def reconstruct_table(shares: dict[str, ShareMatrix]) -> ShareMatrix:
    return reconstruct(list(shares.values()))
