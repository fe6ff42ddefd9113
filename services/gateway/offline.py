"""A data owner's material for a study's next run, made before the run (docs/adr/0013-offline-keys-and-pools.md).

Once a study is approved, and again after each of its runs ends here, a data owner's
gateway has its resharing server make the next run's Paillier key pair (PrepareKey; the
private key stays there) and announces the public key to the other owner's gateway
(PeerAnnounceKey: public keys only cross organisations). The gateway that hears an
announcement has its encryption server make the randomness pool for that key
(PreparePool). A run then names its prepared key in PeerStartRun and its answer
(`prepared_key_id`), and each owner checks the id against what the other announced.

Everything here is in memory: a restarted gateway, resharing or encryption server has no
prepared material, and its next run makes keys and pools in-run as before. A prepared key
is used by one run at most and only once its announcement was accepted; one older than
OFFLINE_TTL_S is not used.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import grpc

from riskmesh.v1 import common_pb2, gateway_pb2, join_pb2, join_pb2_grpc
from services.gateway import access
from services.gateway.errors import RequestError
from services.gateway.peer_gateways import PeerGateways
from services.gateway.store import Store
from services.mesh.config import OrgConfig
from services.mesh.identity import Identity
from services.mesh.peers import Channels
from services.study import spec as specs

log = logging.getLogger("riskmesh.gateway.offline")

OFFLINE_TTL_S = 12 * 3600.0  # as the servers' own limits (resharing_server.py, encryption_server.py)
KEY_DEADLINE_S = 120.0
POOL_DEADLINE_S = 1800.0


@dataclass
class OwnKey:
    """This owner's prepared next-run key (its public half), once the other owner accepted it."""

    key_id: str
    made_at: float  # time.monotonic()


@dataclass
class PeerKey:
    """The key the other owner announced for its next run, and this owner's pool for it."""

    key_id: str
    received_at: float
    pool_elements: int = 0
    pool_ready: bool = False
    making: bool = True  # the pool is being made (false once made, or failed)


@dataclass
class Timing:
    started: float  # time.perf_counter() when this org's preparation began
    prepared_s: float = 0.0


class OfflineMaterial:
    def __init__(self, config: OrgConfig, channels: Channels, store: Store, peers: PeerGateways) -> None:
        self.config = config
        self.channels = channels
        self.store = store
        self.peers = peers
        self.own: dict[str, OwnKey] = {}
        self.peer: dict[str, PeerKey] = {}
        self.timing: dict[str, Timing] = {}
        self.last_run: dict[str, tuple[str, bool]] = {}  # study id -> (run id, both keys were prepared)
        self._tasks: set[asyncio.Task[None]] = set()
        self._preparing: dict[str, asyncio.Task[None]] = {}  # this owner's key being made, by study

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _fresh(self, since: float) -> bool:
        return time.monotonic() - since <= OFFLINE_TTL_S

    # Making this owner's key ------------------------------------------------------------

    def prepare_soon(self, study_id: str) -> None:
        """In the background: the study's next-run key pair, announced to the other owner
        (an approved study, at a data owner with its data file; nothing otherwise)."""
        study = self.store.get_study(study_id)
        if study.state != common_pb2.STUDY_STATE_APPROVED or not study.source_path:
            return
        if not access.is_owner(study.spec, self.config.org):
            return
        self.own.pop(study_id, None)  # the key made before, if any, is replaced
        earlier = self._preparing.pop(study_id, None)
        if earlier is not None:
            earlier.cancel()  # so that an older key is never recorded after the newer one
        self.timing[study_id] = Timing(time.perf_counter())
        self._preparing[study_id] = self._background(self._prepare(study_id))

    async def _prepare(self, study_id: str) -> None:
        study = self.store.get_study(study_id)
        spec = study.spec
        resharing = join_pb2_grpc.ResharingServiceStub(self.channels.get(self.config.org, "resharing"))
        bits = spec.paillier_bits or specs.DEFAULT_PAILLIER_BITS
        try:
            await self.channels.ready(self.config.org, "resharing")  # just restarted: past its reconnect backoff
            made = await resharing.PrepareKey(
                join_pb2.PrepareKeyRequest(study_id=study_id, bits=bits), timeout=KEY_DEADLINE_S
            )
            other = next(o for o in specs.owner_orgs(spec) if o != self.config.org)
            announce = gateway_pb2.PeerAnnounceKeyRequest(
                study_id=study_id, spec_digest=study.digest, paillier_key=made.key
            )
            await self.peers.announce_key(other, announce)
        except grpc.aio.AioRpcError as exc:  # the next run makes its key in-run
            log.warning("study %s: next run's key not prepared (%s)", study_id, exc.code().name)
            return
        self.own[study_id] = OwnKey(made.key.key_id, time.monotonic())
        self._note_done(study_id)

    def take_own(self, study_id: str) -> str:
        """The id of this owner's prepared key for a run starting now ("" for none); a run takes it once."""
        own = self.own.pop(study_id, None)
        return own.key_id if own is not None and self._fresh(own.made_at) else ""

    # The other owner's key ----------------------------------------------------------------

    def accept_announcement(self, request: gateway_pb2.PeerAnnounceKeyRequest, caller: Identity) -> None:
        """The other data owner's next-run public key: kept, and this owner's pool made for it."""
        study = self.store.get_study(request.study_id)
        access.require_party(study.spec, caller.org)
        if not access.is_owner(study.spec, caller.org) or not access.is_owner(study.spec, self.config.org):
            raise access.denied("only a data owner announces a run key, to the other data owner")
        if request.spec_digest != study.digest:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, "the announced key is for another spec digest")
        spec_bits = study.spec.paillier_bits or specs.DEFAULT_PAILLIER_BITS
        bits = int.from_bytes(request.paillier_key.n, "big").bit_length()
        if bits != spec_bits or not request.paillier_key.key_id or not request.paillier_key.h_s:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, f"the announced key must be a {spec_bits}-bit Paillier key with an id"
            )
        earlier = self.peer.get(request.study_id)
        if earlier is not None and earlier.making:
            # Bounds the work the other owner can cause here: one pool at a time per study.
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION, "the pool for the previously announced key is still being made"
            )
        peer = self.peer[request.study_id] = PeerKey(request.paillier_key.key_id, time.monotonic())
        peer.making = bool(study.source_path)
        if study.source_path:
            self._background(self._make_pool(study.study_id, study.spec, study.source_path, request.paillier_key, peer))

    async def _make_pool(
        self,
        study_id: str,
        spec: common_pb2.StudySpec,
        source_path: str,
        key: common_pb2.PaillierPublicKey,
        peer: PeerKey,
    ) -> None:
        encryption = join_pb2_grpc.EncryptionServiceStub(self.channels.get(self.config.org, "encryption"))
        request = join_pb2.PreparePoolRequest(spec=spec, source_path=source_path, peer_paillier_key=key)
        try:
            await self.channels.ready(self.config.org, "encryption")  # just restarted: past its reconnect backoff
            made = await encryption.PreparePool(request, timeout=POOL_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:  # the next run makes its pool in-run
            log.warning("study %s: pool for the other owner's next key not made (%s)", study_id, exc.code().name)
            return
        finally:
            peer.making = False
        peer.pool_elements, peer.pool_ready = made.elements, True
        self._note_done(study_id)

    def check_peer(self, study_id: str, prepared_key_id: str, key: common_pb2.PaillierPublicKey) -> bool:
        """A run's key from the other owner: True when it is the key that owner announced here for
        this run; False when it is not a prepared one, or none was heard of (lost on a restart).
        A prepared key id that is not the announced key is refused (FAILED_PRECONDITION)."""
        announced = self.peer.pop(study_id, None)
        if not prepared_key_id:
            return False
        if prepared_key_id != key.key_id:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "the run's prepared key id is not its key's id")
        if announced is None:
            return False
        if announced.key_id != prepared_key_id:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the run names prepared key {prepared_key_id}, but key {announced.key_id} was announced for it here",
            )
        return self._fresh(announced.received_at)

    def note_run(self, study_id: str, run_id: str, own_prepared: bool, peer_prepared: bool) -> None:
        self.last_run[study_id] = (run_id, own_prepared and peer_prepared)
        log.info("run %s: prepared keys used: own %s, other owner's %s", run_id, own_prepared, peer_prepared)

    # Status --------------------------------------------------------------------------------

    def _note_done(self, study_id: str) -> None:
        timing = self.timing.get(study_id)
        if timing is not None and self.ready(study_id):
            timing.prepared_s = time.perf_counter() - timing.started

    def ready(self, study_id: str) -> bool:
        own, peer = self.own.get(study_id), self.peer.get(study_id)
        return own is not None and peer is not None and peer.pool_ready

    def status(self, study_id: str) -> gateway_pb2.OfflineStatus:
        timing, peer = self.timing.get(study_id), self.peer.get(study_id)
        return gateway_pb2.OfflineStatus(
            ready=self.ready(study_id),
            prepared_s=round(timing.prepared_s, 3) if timing else 0.0,
            pool_elements=peer.pool_elements if peer else 0,
            last_run_id=self.last_run.get(study_id, ("", False))[0],
            last_run_prepared=self.last_run.get(study_id, ("", False))[1],
        )
