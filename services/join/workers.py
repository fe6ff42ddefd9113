"""Handing Paillier chunks to the organisation's crypto workers (docs/adr/0011-crypto-workers.md).

`CryptoWorkers` is the encryption and resharing servers' client of their own organisation's
crypto workers (services/join/crypto_worker_server.py): it cuts a piece of work into chunks
(POOL_CHUNK pool elements, DECRYPT_CHUNK ciphertexts), keeps up to `IN_FLIGHT_PER_WORKER`
chunks at each worker and sends each chunk to the least-loaded one (fewest chunks in flight;
ties by fewest chunks so far), and reassembles the results in order.

Targets: one per local worker process (development: `crypto_workers = N`, each its own
address), or one balanced address for a Deployment's replicas (Kubernetes: `[addresses]
crypto-worker = "dns:///riskmesh-crypto-worker:7105"`, a headless Service, gRPC's round_robin
over the pods; the slots are then `crypto_workers` × IN_FLIGHT_PER_WORKER on that one target).

Failure policy. A chunk whose worker does not answer (UNAVAILABLE, DEADLINE_EXCEEDED: the
process died, the pod is gone, the connection broke) is sent again, to another worker when
there is one: retrying is safe, since a pool chunk's elements are fresh and the lost ones are
never used, and decryption has no side effect. That worker is set aside for DOWN_S seconds.
After MAX_ATTEMPTS tries of one chunk (every worker tried, for several workers) the run fails
with UNAVAILABLE and a message naming the crypto workers; there is no silent fallback to the
server's own process (a deployment that sized its workers for the crypto must not find it in
the server pod instead). Any other status (a refusal, a malformed request) fails at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from riskmesh.v1 import crypto_worker_pb2, crypto_worker_pb2_grpc
from services.join import codec
from services.join.core.errors import WireFormatError
from services.join.core.paillier import PrivateKey, PublicKey, RandomnessPool
from services.join.core.parallel import chunks, split_sizes
from services.join.core.workwire import pack_numbers, plaintext_bytes, private_key_parts, unpack_numbers
from services.mesh.config import CRYPTO_WORKER, OrgConfig
from services.mesh.status import StatusError
from services.mesh.tls import MeshCredentials

log = logging.getLogger("riskmesh.workers")

POOL_CHUNK = 1000  # pool elements per request (~1–2 s of one core at 3072 bits)
DECRYPT_CHUNK = 500  # ciphertexts per request (~0.5 s at 3072 bits, p-only)
MIN_CHUNK = 50  # below this a request costs more in messages than it saves: small work is not split further
IN_FLIGHT_PER_WORKER = 2  # one computing, one waiting: the worker never idles on the network
CALL_TIMEOUT_S = 300.0
DOWN_S = 5.0
MAX_ATTEMPTS = 3
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
BALANCED = [("grpc.lb_policy_name", "round_robin")]


class Reply(Protocol):
    """What every work reply carries besides its result: who did it and at what cost."""

    worker: str
    cpu_seconds: float


R = TypeVar("R", bound=Reply)
T = TypeVar("T")


class CryptoWorkersUnavailable(StatusError):
    """No crypto worker answered a chunk (after the retries of the failure policy)."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, message)


@dataclass
class WorkerShare:
    """What one worker (by the name it reports) did for this server."""

    chunks: int = 0
    items: int = 0
    cpu_s: float = 0.0


@dataclass
class Target:
    address: str
    stub: crypto_worker_pb2_grpc.CryptoWorkerServiceStub
    slots: int
    in_flight: int = 0
    sent: int = 0
    down_until: float = 0.0

    @property
    def down(self) -> bool:
        return time.monotonic() < self.down_until


@dataclass
class CryptoWorkers:
    """The dispatcher (module docstring). Build with `for_config`."""

    targets: list[Target]
    shares: dict[str, WorkerShare] = field(default_factory=dict)
    _free: asyncio.Condition = field(default_factory=asyncio.Condition)

    @classmethod
    def for_config(cls, config: OrgConfig, credentials: MeshCredentials) -> CryptoWorkers | None:
        """None when the org has no crypto workers (the server's own pool does the work)."""
        addresses = config.crypto_worker_targets()
        if not addresses:
            return None
        balanced = len(addresses) == 1 and config.crypto_workers > 1
        slots = IN_FLIGHT_PER_WORKER * (config.crypto_workers if balanced else 1)
        targets = []
        for address in addresses:
            channel = credentials.channel(
                config.org,
                CRYPTO_WORKER,
                address,
                interceptors=aio_client_interceptors(),
                extra_options=BALANCED if balanced else (),
            )
            targets.append(Target(address, crypto_worker_pb2_grpc.CryptoWorkerServiceStub(channel), slots))
        return cls(targets)

    @property
    def parallelism(self) -> int:
        """How many chunks compute at once (one per worker)."""
        return max(1, sum(t.slots for t in self.targets) // IN_FLIGHT_PER_WORKER)

    def _parts(self, count: int, largest: int) -> int:
        """Chunks for `count` items: none above `largest`, and at least one per worker unless tiny."""
        return max(-(-count // largest), min(self.parallelism, count // MIN_CHUNK), 1)

    async def _acquire(self, tried: set[str]) -> Target:
        async with self._free:
            while True:
                fresh = [t for t in self.targets if t.address not in tried] or (
                    self.targets if len(self.targets) == 1 else []
                )
                if not fresh:
                    raise CryptoWorkersUnavailable("crypto workers: every worker failed this chunk")
                # A worker that failed lately gets chunks only when every other one has failed too.
                fresh = [t for t in fresh if not t.down] or fresh
                open_ = [t for t in fresh if t.in_flight < t.slots]
                if open_:
                    target = min(open_, key=lambda t: (t.in_flight / t.slots, t.sent))
                    target.in_flight += 1
                    target.sent += 1
                    return target
                await self._free.wait()

    async def _release(self, target: Target) -> None:
        async with self._free:
            target.in_flight -= 1
            self._free.notify_all()

    async def _call(
        self, items: int, invoke: Callable[[crypto_worker_pb2_grpc.CryptoWorkerServiceStub], Awaitable[R]]
    ) -> R:
        tried: set[str] = set()
        last = ""
        for attempt in range(MAX_ATTEMPTS):
            if attempt and len(self.targets) == 1:
                await asyncio.sleep(0.5 * attempt)  # one target: give the balancer a moment
            target = await self._acquire(tried)
            try:
                reply = await invoke(target.stub)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRY_CODES:
                    raise StatusError(
                        grpc.StatusCode.INTERNAL,
                        f"crypto worker at {target.address}: {exc.code().name}: {exc.details()}",
                    ) from None
                target.down_until = time.monotonic() + DOWN_S
                tried.add(target.address)
                last = f"{target.address}: {exc.code().name}"
                log.warning(
                    "crypto worker %s did not answer (%s); the chunk goes to another try",
                    target.address,
                    exc.code().name,
                )
                continue
            finally:
                await self._release(target)
            share = self.shares.setdefault(reply.worker, WorkerShare())
            share.chunks += 1
            share.items += items
            share.cpu_s += reply.cpu_seconds
            return reply
        raise CryptoWorkersUnavailable(
            f"crypto workers: no worker answered a chunk after {MAX_ATTEMPTS} tries (last: {last})"
        )

    async def make_pool(self, key: PublicKey, count: int, window_bits: int | None) -> RandomnessPool:
        """`count` fresh pool elements for `key`, made by the workers chunk by chunk."""
        wire = codec.public_key_to_proto(key)
        width = key.ciphertext_bytes

        async def chunk(size: int) -> list[int]:
            request = crypto_worker_pb2.MakePoolRequest(key=wire, count=size, window_bits=window_bits or 0)
            reply = await self._call(size, lambda stub: stub.MakePool(request, timeout=CALL_TIMEOUT_S))
            elements = unpack_numbers(reply.elements, width, size)
            if len(elements) != size or any(not 0 < e < key.n2 for e in elements):
                raise WireFormatError("a crypto worker returned the wrong pool elements")
            return elements

        parts = await _gather(chunk(size) for size in split_sizes(count, self._parts(count, POOL_CHUNK)) if size)
        return RandomnessPool(key.key_id, (e for part in parts for e in part))

    async def decrypt(self, key: PrivateKey, ciphertexts: Sequence[int], *, below_p: bool) -> list[int]:
        """Plaintexts of `ciphertexts`, in order, decrypted by the workers chunk by chunk."""
        public = key.public
        p, q, a_p, a_q = private_key_parts(key)
        wire = crypto_worker_pb2.PaillierPrivateKey(
            public=codec.public_key_to_proto(public), p=p, q=q, a_p=a_p, a_q=a_q
        )
        width, plain_width = public.ciphertext_bytes, plaintext_bytes(public)

        async def chunk(part: Sequence[int]) -> list[int]:
            request = crypto_worker_pb2.DecryptChunkRequest(
                key=wire, ciphertexts=pack_numbers(part, width), below_p=below_p
            )
            reply = await self._call(len(part), lambda stub: stub.DecryptChunk(request, timeout=CALL_TIMEOUT_S))
            plain = unpack_numbers(reply.plaintexts, plain_width, len(part))
            if len(plain) != len(part):
                raise WireFormatError("a crypto worker returned the wrong number of plaintexts")
            return plain

        parts = chunks(ciphertexts, self._parts(len(ciphertexts), DECRYPT_CHUNK))
        results = await _gather(chunk(part) for part in parts if part)
        return [m for part in results for m in part]


async def _gather(coroutines: Iterable[Awaitable[T]]) -> list[T]:
    """All results in order; on the first failure the others are cancelled."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
