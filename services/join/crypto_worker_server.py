"""CryptoWorkerService (data owners): Paillier chunk work for the same organisation's servers.

A worker makes one-time randomness (pool elements ρ = h_s^r) for the encryption server and
decrypts chunks for the resharing server (docs/adr/0011-crypto-workers.md). It keeps nothing
between requests but its counters and the last fixed-base window table (public powers of h_s,
``paillier.pool_chunk``): the private key arrives with each decryption request, is used and
dropped, and is never logged; pool elements and plaintexts leave only in the response.

Only the same organisation's encryption server may ask for pool elements and only its
resharing server for decryptions (services/join/rules.py, by certificate identity over mTLS).
One request computes at a time (a worker is one core's worth of work; the dispatcher keeps a
second request queued so the worker never waits for the network). Local worker i
(RISKMESH_CRYPTO_WORKER_INDEX) listens on its own ports (config.worker_ports); in Kubernetes
every replica is worker 0 on 7105/7115.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from riskmesh.v1 import crypto_worker_pb2, crypto_worker_pb2_grpc
from services.join import codec
from services.join.common import join_errors
from services.join.core.errors import WireFormatError
from services.join.core.paillier import decrypt_many, pool_chunk
from services.join.core.workwire import (
    check_pool_request,
    pack_numbers,
    plaintext_bytes,
    private_key_from_parts,
    unpack_numbers,
)
from services.join.rules import CRYPTO_WORKER_RULES
from services.mesh.config import CRYPTO_WORKER, OrgConfig
from services.mesh.process import run_server_process
from services.mesh.server import MeshServer

log = logging.getLogger("riskmesh.crypto_worker")

INDEX_ENV = "RISKMESH_CRYPTO_WORKER_INDEX"
T = TypeVar("T")


@dataclass
class WorkerStats:
    pool_requests: int = 0
    pool_elements: int = 0
    decrypt_requests: int = 0
    ciphertexts_decrypted: int = 0
    cpu_seconds: float = 0.0


def _timed(work: Callable[[], T]) -> tuple[T, float]:
    """Run `work` in this thread and return its result and the thread's CPU seconds."""
    start = time.thread_time()
    result = work()
    return result, time.thread_time() - start


class CryptoWorkerServicer(crypto_worker_pb2_grpc.CryptoWorkerServiceServicer):
    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = WorkerStats()
        # One computation at a time: a worker stands for one core.
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crypto")

    async def _run(self, work: Callable[[], T]) -> tuple[T, float]:
        return await asyncio.get_running_loop().run_in_executor(self._compute, _timed, work)

    async def MakePool(self, request, context):
        async with join_errors(context, "crypto worker"):
            key = codec.public_key_from_proto(request.key)
            check_pool_request(key, request.count, request.window_bits)
            n2, h_s, bits, window = int(key.n2), key.h_s, key.exponent_bits, request.window_bits or None
            elements, cpu = await self._run(lambda: pool_chunk(n2, h_s, bits, window, request.count))
            self.stats.pool_requests += 1
            self.stats.pool_elements += len(elements)
            self.stats.cpu_seconds += cpu
            return crypto_worker_pb2.MakePoolResponse(
                elements=pack_numbers(elements, key.ciphertext_bytes), worker=self.name, cpu_seconds=cpu
            )

    async def DecryptChunk(self, request, context):
        async with join_errors(context, "crypto worker"):
            wire = request.key
            public = codec.public_key_from_proto(wire.public)
            ciphertexts = unpack_numbers(request.ciphertexts, public.ciphertext_bytes)
            if any(not 0 < c < public.n2 for c in ciphertexts):
                raise WireFormatError("a ciphertext lies outside (0, N²)")
            key = private_key_from_parts(public, wire.p, wire.q, wire.a_p, wire.a_q)
            plain, cpu = await self._run(lambda: decrypt_many(key, ciphertexts, below_p=request.below_p))
            self.stats.decrypt_requests += 1
            self.stats.ciphertexts_decrypted += len(plain)
            self.stats.cpu_seconds += cpu
            return crypto_worker_pb2.DecryptChunkResponse(
                plaintexts=pack_numbers(plain, plaintext_bytes(public)), worker=self.name, cpu_seconds=cpu
            )

    async def GetWorkerStats(self, request, context):
        s = self.stats
        return crypto_worker_pb2.GetWorkerStatsResponse(
            worker=self.name,
            pool_requests=s.pool_requests,
            pool_elements=s.pool_elements,
            decrypt_requests=s.decrypt_requests,
            ciphertexts_decrypted=s.ciphertexts_decrypted,
            cpu_seconds=s.cpu_seconds,
        )


def worker_index() -> int:
    raw = os.environ.get(INDEX_ENV, "0")
    if not raw.isdigit():
        raise SystemExit(f"riskmesh-{CRYPTO_WORKER}: {INDEX_ENV} must be a number, got {raw!r}")
    return int(raw)


async def build_server(config: OrgConfig, port: int | None = None, health_port: int | None = None) -> MeshServer:
    index = worker_index()
    if port is None and health_port is None:
        ports = config.worker_ports(index)
        port, health_port = ports.mtls, ports.health
    mesh = MeshServer(config, CRYPTO_WORKER, CRYPTO_WORKER_RULES, port=port, health_port=health_port)
    servicer = CryptoWorkerServicer(f"{socket.gethostname()}/{os.getpid()}")
    mesh.on_stop(lambda: servicer._compute.shutdown(wait=False, cancel_futures=True))
    mesh.add_service(
        crypto_worker_pb2_grpc.add_CryptoWorkerServiceServicer_to_server,
        servicer,
        crypto_worker_pb2.DESCRIPTOR.services_by_name["CryptoWorkerService"],
    )
    return mesh


def main() -> int:
    return run_server_process(CRYPTO_WORKER, build_server)


if __name__ == "__main__":
    raise SystemExit(main())
