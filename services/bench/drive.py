"""Drive the join servers of three running organisations directly, as their gateways
would, and read the resulting shares back — for the benchmark harness and tests only.

Reading every org's shares (`collect_shares`) uses each org's lasso identity and the
PKI of all three orgs: only a harness that generated the data and holds every key can
do that. No service path ever reconstructs shares.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from riskmesh.v1 import common_pb2, join_pb2, join_pb2_grpc
from services.join.core import fixedpoint
from services.join.core.columns import ColumnSpec
from services.join.core.fixedpoint import FixedPointFormat
from services.join.core.shares import ShareMatrix, assemble, decode_shares, reconstruct
from services.mesh.config import OrgConfig, load_config
from services.mesh.tls import MeshCredentials
from services.study.spec import DEFAULT_PAILLIER_BITS
from services.testkit.synthetic import StudyData

DEADLINE_S = 4 * 3600.0  # per call; a million rows per owner take ~30 min on two shared cores
OFFLINE_POOL_MESSAGE = "randomness pool: made offline"  # RunEncryption's first progress (encryption_server.py)


@dataclass
class JoinTimings:
    """Wall-clock phases of one join as the driving harness sees them (they add up to total_s)."""

    run_id: str
    joined: int
    setup_s: float  # key pairs (CreateKey), CSV validation (PrepareEncryption), OpenIntersection
    offline_s: float  # randomness, until both owners report their first piece's ready
    join_s: float  # tag, encrypt, upload, match and mask, until the helper reports "matched"
    reshare_s: float  # masked rows delivered and decrypted, until every org's shares are stored
    total_s: float  # from the first request until the shares are stored at all three orgs
    offline_pools: int = 0  # owners whose RunEncryption used a pool made before the run (PreparePool)


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


async def prepare_offline(
    harness: Harness, spec: common_pb2.StudySpec, sources: Mapping[str, str]
) -> dict[str, join_pb2.PreparePoolResponse | str]:
    """Before a run, as the gateways do it (services/gateway/offline.py): each owner's next-run
    key pair (PrepareKey), then each owner's pool for the other owner's key (PreparePool).
    Returns each owner's prepared key id (by org) and its pool reply (by "<org>/pool")."""
    owners = [o.org for o in spec.owners]
    bits = spec.paillier_bits or DEFAULT_PAILLIER_BITS
    resharing = {o: harness.stub(o, "resharing", "gateway", join_pb2_grpc.ResharingServiceStub) for o in owners}
    encryption = {o: harness.stub(o, "encryption", "gateway", join_pb2_grpc.EncryptionServiceStub) for o in owners}
    keys = await asyncio.gather(
        *(resharing[o].PrepareKey(join_pb2.PrepareKeyRequest(study_id=spec.study_id, bits=bits)) for o in owners)
    )
    pools = await asyncio.gather(
        *(
            encryption[o].PreparePool(
                join_pb2.PreparePoolRequest(spec=spec, source_path=sources[o], peer_paillier_key=keys[1 - i].key),
                timeout=DEADLINE_S,
            )
            for i, o in enumerate(owners)
        )
    )
    prepared: dict[str, join_pb2.PreparePoolResponse | str] = {o: keys[i].key.key_id for i, o in enumerate(owners)}
    prepared.update({f"{o}/pool": pools[i] for i, o in enumerate(owners)})
    return prepared


async def start_join(
    harness: Harness,
    spec: common_pb2.StudySpec,
    sources: Mapping[str, str],
    run_id: str,
    prepared: Mapping[str, object] | None = None,
) -> dict[str, join_pb2.RunEncryptionRequest]:
    """Setup as the gateways do it: each owner's key pair (the one prepared offline when
    `prepared` names it: `prepare_offline`) and CSV check, the helper's run.
    Returns each owner's RunEncryptionRequest (carrying the other owner's public keys)."""
    owners = [o.org for o in spec.owners]
    helper = helper_of(spec)
    resharing = {o: harness.stub(o, "resharing", "gateway", join_pb2_grpc.ResharingServiceStub) for o in owners}
    encryption = {o: harness.stub(o, "encryption", "gateway", join_pb2_grpc.EncryptionServiceStub) for o in owners}
    key_ids = {o: str((prepared or {}).get(o, "")) for o in owners}
    keys = await asyncio.gather(
        *(
            resharing[o].CreateKey(
                join_pb2.CreateKeyRequest(
                    run_id=run_id,
                    bits=spec.paillier_bits or DEFAULT_PAILLIER_BITS,
                    study_id=spec.study_id,
                    prepared_key_id=key_ids[o],
                ),
                timeout=DEADLINE_S,
            )
            for o in owners
        )
    )
    prepared = await asyncio.gather(
        *(
            encryption[o].PrepareEncryption(
                join_pb2.PrepareEncryptionRequest(run_id=run_id, spec=spec, source_path=sources[o]), timeout=DEADLINE_S
            )
            for o in owners
        )
    )
    intersection = harness.stub(helper, "intersection", "gateway", join_pb2_grpc.IntersectionServiceStub)
    await intersection.OpenIntersection(join_pb2.OpenIntersectionRequest(run_id=run_id, spec=spec), timeout=DEADLINE_S)
    return {
        owners[i]: join_pb2.RunEncryptionRequest(
            run_id=run_id, peer_x25519_public_key=prepared[1 - i].x25519_public_key, peer_paillier_key=keys[1 - i].key
        )
        for i in range(2)
    }


def helper_of(spec: common_pb2.StudySpec) -> str:
    return next(p.org for p in spec.parties if p.role == common_pb2.ROLE_HELPER)


async def run_join(
    harness: Harness,
    spec: common_pb2.StudySpec,
    sources: Mapping[str, str],
    run_id: str,
    prepared: Mapping[str, object] | None = None,
) -> JoinTimings:
    """The join's RPCs in the order the gateways make them; returns when every org stores its shares.
    `prepared`: what `prepare_offline` made before the run (its keys are then used)."""
    owners = [o.org for o in spec.owners]
    helper = helper_of(spec)
    started = time.perf_counter()
    requests = await start_join(harness, spec, sources, run_id, prepared)
    setup_done = time.perf_counter()
    offline_done: list[float] = []
    offline_pools = 0

    async def encrypt(org: str) -> None:
        stub = harness.stub(org, "encryption", "gateway", join_pb2_grpc.EncryptionServiceStub)
        nonlocal offline_pools
        async for reply in stub.RunEncryption(requests[org], timeout=DEADLINE_S):
            offline_pools += reply.progress.message == OFFLINE_POOL_MESSAGE
            if reply.progress.phase == common_pb2.PHASE_SETUP and reply.progress.done == reply.progress.total:
                offline_done.append(time.perf_counter())

    joined = 0
    matched = 0.0

    async def await_intersection() -> None:
        nonlocal joined, matched
        intersection = harness.stub(helper, "intersection", "gateway", join_pb2_grpc.IntersectionServiceStub)
        async for reply in intersection.AwaitIntersection(
            join_pb2.AwaitIntersectionRequest(run_id=run_id), timeout=DEADLINE_S
        ):
            if reply.joined and not matched:
                matched = time.perf_counter()  # "matched and masked": the deliveries start
            joined = reply.joined or joined

    async def await_shares(org: str) -> None:
        resharing = harness.stub(org, "resharing", "gateway", join_pb2_grpc.ResharingServiceStub)
        async for _ in resharing.AwaitShares(join_pb2.AwaitSharesRequest(run_id=run_id), timeout=DEADLINE_S):
            pass

    await asyncio.gather(
        *(encrypt(o) for o in owners), await_intersection(), *(await_shares(o) for o in [*owners, helper])
    )
    done = time.perf_counter()
    offline = max(offline_done) if len(offline_done) == len(owners) else setup_done
    return JoinTimings(
        run_id,
        joined,
        setup_done - started,
        offline - setup_done,
        matched - offline,
        done - matched,
        done - started,
        offline_pools,
    )


async def collect_shares(harness: Harness, spec: common_pb2.StudySpec, run_id: str) -> dict[str, ShareMatrix]:
    """Each org's shares over all study columns (harness only: uses every org's lasso identity)."""
    columns = [c.name for o in spec.owners for c in o.features] + [
        o.target.name for o in spec.owners if o.HasField("target") and o.target.name
    ]
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
    """The sum of the three orgs' shares: the fixed-point encoded joined table, in the helper's order."""
    return reconstruct(list(shares.values()))


def plaintext_join(data: StudyData, sources: Mapping[str, Path]) -> tuple[tuple[str, ...], list[tuple[int, ...]]]:
    """The oracle: the plaintext inner join of the two owners' CSV files, fixed-point encoded.

    Reads the files with the `csv` module and `float` (not with the join's own reader) and
    matches rows by the generator's canonical IDs (`StudyData`, line i of a file is
    `canonical[i]`). Columns: insurer features, hospital features, then the target, as
    `collect_shares` orders them. Rows are in the insurer's file order.
    """
    tables = {t.org: t for t in (data.insurer, data.hospital)}
    columns: list[ColumnSpec] = []
    per_owner: dict[str, dict[str, list[float]]] = {}
    for org, table in tables.items():
        names = [c.name for c in table.columns] + ([table.target.name] if table.target else [])
        with open(sources[org], newline="") as f:
            rows = list(csv.DictReader(f))
        if len(rows) != len(table.canonical):
            raise ValueError(f"{org}'s file does not hold the generated rows")
        per_owner[org] = {cid: [float(row[n]) for n in names] for cid, row in zip(table.canonical, rows, strict=True)}
        columns += [ColumnSpec(c.name, c.min, c.max) for c in table.columns]
    target = data.insurer.target
    if target is None:
        raise ValueError("the insurer holds the target in generated data")
    columns.append(ColumnSpec(target.name, target.min, target.max))
    n_features = len(data.insurer.columns)
    joined = [
        (values[:n_features] + per_owner["hospital"][cid] + values[n_features:])
        for cid, values in per_owner["insurer"].items()
        if cid in per_owner["hospital"]
    ]
    encoded = fixedpoint.encode(
        np.array(joined, dtype=np.float64).reshape(len(joined), len(columns)), columns, FixedPointFormat()
    )
    return tuple(c.name for c in columns), [tuple(int(v) for v in row) for row in encoded.tolist()]


def same_rows(table: ShareMatrix, columns: tuple[str, ...], rows: list[tuple[int, ...]]) -> bool:
    """True if `table` holds exactly `rows` (as a multiset) under `columns`: this undoes the
    helper's secret permutation by matching rows on their values (sorting both sides)."""
    return table.columns == columns and sorted(tuple(r) for r in table.values) == sorted(rows)
