"""Crypto workers in this process over real mTLS (docs/adr/0011-crypto-workers.md).

Two data owners with two crypto workers each, the helper without: a join whose pool
elements and decryptions run on the workers reconstructs the plaintext join, and both
workers of each owner did part of it. The workers answer their own organisation's
encryption (pool) and resharing (decryption) servers only; malformed requests are refused
before any work; the dispatcher retries a chunk on the other worker when one is gone and
fails the run with UNAVAILABLE when none answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from riskmesh.v1 import crypto_worker_pb2, crypto_worker_pb2_grpc
from services.bench.drive import (
    Harness,
    collect_shares,
    plaintext_join,
    prepare_offline,
    reconstruct_table,
    run_join,
    same_rows,
)
from services.join import codec, crypto_worker_server, encryption_server, intersection_server, resharing_server
from services.join.core.paillier import generate_keypair, generate_pool
from services.join.core.workwire import MAX_CHUNK_ITEMS, pack_numbers, private_key_parts, unpack_numbers
from services.join.workers import CryptoWorkers, CryptoWorkersUnavailable
from services.mesh.config import CRYPTO_WORKER, ConfigError, OrgConfig, load_config, parse_config
from services.mesh.server import MeshServer
from services.mesh.tls import MeshCredentials
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data
from services.tools.launcher import local_mesh_for
from tests.conftest import LoopThread

BITS = 1024
RECORDS = 300
WORKERS = 2
SERVERS = {
    "insurer": ("encryption", "resharing"),
    "hospital": ("encryption", "resharing"),
    "helper": ("intersection", "resharing"),
}
BUILDERS = {
    "encryption": encryption_server.build_server,
    "intersection": intersection_server.build_server,
    "resharing": resharing_server.build_server,
}
CW = "/riskmesh.v1.CryptoWorkerService/"


@dataclass
class WorkerMesh:
    configs: dict[str, Path]
    loop: LoopThread
    workers: dict[tuple[str, int], MeshServer] = field(default_factory=dict)
    channels: list[grpc.Channel] = field(default_factory=list)

    def config(self, org: str) -> OrgConfig:
        return load_config(self.configs[org], env={})

    def worker_stub(self, caller: tuple[str, str], org: str, index: int) -> Any:
        """A blocking stub to `org`'s worker `index` presenting `caller` (org, service)'s certificate."""
        config = self.config(caller[0])
        target = self.config(org)
        address = f"{target.bind_host}:{target.worker_ports(index).mtls}"
        channel = MeshCredentials(config.pki_dir, *caller).sync_channel(org, CRYPTO_WORKER, address)
        self.channels.append(channel)
        return crypto_worker_pb2_grpc.CryptoWorkerServiceStub(channel)

    def start_worker(self, org: str, index: int) -> None:
        config = self.config(org)
        ports = config.worker_ports(index)

        async def start() -> MeshServer:
            server = await crypto_worker_server.build_server(config, ports.mtls, ports.health)
            await server.start()
            return server

        self.workers[(org, index)] = self.loop.run(start())

    def stop_worker(self, org: str, index: int) -> None:
        self.loop.run(self.workers.pop((org, index)).stop(0))


@pytest.fixture(scope="module")
def mesh(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerMesh]:
    configs = local_mesh_for(tmp_path_factory.mktemp("worker-mesh"), min_paillier_bits=BITS, crypto_workers=WORKERS)
    mesh = WorkerMesh(configs, loop_thread)
    servers: list[MeshServer] = []
    for org, names in SERVERS.items():
        config = mesh.config(org)
        for index in range(config.crypto_workers):
            mesh.start_worker(org, index)
        for name in names:

            async def start(name: str = name, config: OrgConfig = config) -> MeshServer:
                server = await BUILDERS[name](config)
                await server.start()
                return server

            servers.append(loop_thread.run(start()))
    yield mesh
    for channel in mesh.channels:
        channel.close()
    for server in [*servers, *mesh.workers.values()]:
        loop_thread.run(server.stop(0))


def stats(mesh: WorkerMesh, org: str, index: int) -> crypto_worker_pb2.GetWorkerStatsResponse:
    stub = mesh.worker_stub((org, "client"), org, index)
    return stub.GetWorkerStats(crypto_worker_pb2.GetWorkerStatsRequest(), timeout=10)


def test_only_data_owners_have_workers(mesh: WorkerMesh) -> None:
    assert [mesh.config(o).crypto_workers for o in SERVERS] == [WORKERS, WORKERS, 0]


def test_a_join_on_the_workers_reconstructs_the_plaintext_join_and_both_workers_share_it(
    mesh: WorkerMesh, tmp_path: Path
) -> None:
    before = {(o, i): stats(mesh, o, i) for o in ("insurer", "hospital") for i in range(WORKERS)}
    data = make_study_data(RECORDS, overlap=0.5, features=10, seed=11)
    spec = spec_for(data, "workers-it", min_intersection=10)
    spec.paillier_bits = BITS
    sources = {t.org: t.write_csv(tmp_path / f"{t.org}.csv") for t in (data.insurer, data.hospital)}
    harness = Harness(mesh.configs)

    async def run() -> tuple[int, dict[str, Any]]:
        try:
            timings = await run_join(harness, spec, {o: str(p) for o, p in sources.items()}, "workers-1")
            return timings.joined, await collect_shares(harness, spec, "workers-1")
        finally:
            await harness.close()

    joined, shares = mesh.loop.run(run(), timeout=180)
    columns, expected = plaintext_join(data, sources)
    assert joined == len(expected) == RECORDS // 2
    assert same_rows(reconstruct_table(shares), columns, expected)
    for org in ("insurer", "hospital"):
        after = [stats(mesh, org, i) for i in range(WORKERS)]
        pool = [a.pool_elements - before[(org, i)].pool_elements for i, a in enumerate(after)]
        decrypted = [a.ciphertexts_decrypted - before[(org, i)].ciphertexts_decrypted for i, a in enumerate(after)]
        # One element per ciphertext: every row's ciphertexts (a whole number per row) ...
        assert sum(pool) > 0 and sum(pool) % RECORDS == 0
        # ... and the other owner's joined rows decrypted.
        assert sum(decrypted) > 0 and sum(decrypted) % joined == 0
        assert all(p > 0 for p in pool), pool  # both workers made part of the pool
        assert all(a.cpu_seconds > 0 for a in after)


def _pool_request(count: int = 4) -> crypto_worker_pb2.MakePoolRequest:
    key = generate_keypair(BITS).public
    return crypto_worker_pb2.MakePoolRequest(key=codec.public_key_to_proto(key), count=count)


def _decrypt_request(count: int = 3) -> tuple[crypto_worker_pb2.DecryptChunkRequest, Any, list[int]]:
    key = generate_keypair(BITS)
    plain = list(range(7, 7 + count))
    pool = generate_pool(key.public, count)
    cts = [key.public.encrypt(m, pool.pop()) for m in plain]
    p, q, a_p, a_q = private_key_parts(key)
    wire = crypto_worker_pb2.PaillierPrivateKey(
        public=codec.public_key_to_proto(key.public), p=p, q=q, a_p=a_p, a_q=a_q
    )
    request = crypto_worker_pb2.DecryptChunkRequest(
        key=wire, ciphertexts=pack_numbers(cts, key.public.ciphertext_bytes)
    )
    return request, key, plain


def test_own_servers_get_their_own_operation(mesh: WorkerMesh) -> None:
    reply = mesh.worker_stub(("insurer", "encryption"), "insurer", 0).MakePool(_pool_request(5), timeout=30)
    assert len(reply.elements) % 5 == 0 and reply.worker and reply.cpu_seconds >= 0
    request, key, plain = _decrypt_request()
    reply = mesh.worker_stub(("insurer", "resharing"), "insurer", 1).DecryptChunk(request, timeout=30)
    assert unpack_numbers(reply.plaintexts, (key.public.bits + 7) // 8) == plain


@pytest.mark.parametrize(
    "caller, method",
    [
        (("hospital", "encryption"), "MakePool"),  # another organisation's encryption server
        (("hospital", "resharing"), "DecryptChunk"),  # another organisation's resharing server
        (("helper", "intersection"), "MakePool"),
        (("insurer", "resharing"), "MakePool"),  # own org, but not the server that may ask for pools
        (("insurer", "encryption"), "DecryptChunk"),  # own org, but only resharing holds the key
        (("insurer", "gateway"), "DecryptChunk"),
        (("insurer", "gateway"), "MakePool"),
        (("hospital", "client"), "GetWorkerStats"),
    ],
)
def test_every_other_caller_is_refused(mesh: WorkerMesh, caller: tuple[str, str], method: str) -> None:
    stub = mesh.worker_stub(caller, "insurer", 0)
    request = {
        "MakePool": _pool_request,
        "DecryptChunk": lambda: _decrypt_request()[0],
        "GetWorkerStats": crypto_worker_pb2.GetWorkerStatsRequest,
    }[method]()
    with pytest.raises(grpc.RpcError) as refused:
        getattr(stub, method)(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_malformed_requests_are_refused_before_any_work(mesh: WorkerMesh) -> None:
    pools = mesh.worker_stub(("insurer", "encryption"), "insurer", 0)
    decrypts = mesh.worker_stub(("insurer", "resharing"), "insurer", 0)
    too_many = _pool_request()
    too_many.count = MAX_CHUNK_ITEMS + 1
    huge_window = _pool_request()
    huge_window.window_bits = 16
    no_key = crypto_worker_pb2.MakePoolRequest(count=3)
    cut, _, _ = _decrypt_request()
    cut.ciphertexts = cut.ciphertexts[:-1]
    wrong_key, _, _ = _decrypt_request()
    wrong_key.key.p = wrong_key.key.q  # p·q ≠ N
    long_part, _, _ = _decrypt_request()
    long_part.key.a_p = b"\x01" * 4096
    for stub, method, request in [
        (pools, "MakePool", too_many),
        (pools, "MakePool", huge_window),
        (pools, "MakePool", no_key),
        (decrypts, "DecryptChunk", cut),
        (decrypts, "DecryptChunk", wrong_key),
        (decrypts, "DecryptChunk", long_part),
    ]:
        with pytest.raises(grpc.RpcError) as refused:
            getattr(stub, method)(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, refused.value.details())
        assert "crypto worker" in refused.value.details()


def _dispatcher(mesh: WorkerMesh, org: str, service: str) -> CryptoWorkers:
    config = mesh.config(org)

    async def make() -> CryptoWorkers:
        workers = CryptoWorkers.for_config(config, MeshCredentials(config.pki_dir, org, service))
        assert workers is not None
        return workers

    return mesh.loop.run(make())


def test_a_dead_worker_s_chunks_go_to_the_other_and_none_left_fails_the_run(mesh: WorkerMesh) -> None:
    key = generate_keypair(BITS)
    pools = _dispatcher(mesh, "hospital", "encryption")
    decrypts = _dispatcher(mesh, "hospital", "resharing")
    mesh.stop_worker("hospital", 1)
    try:
        pool = mesh.loop.run(pools.make_pool(key.public, 2500, None))
        assert len(pool) == 2500
        plain = list(range(1200))
        cts = [key.public.encrypt(m, pool.pop()) for m in plain]
        assert mesh.loop.run(decrypts.decrypt(key, cts, below_p=True)) == plain
        # Everything was done by the worker still alive.
        assert len(pools.shares) == len(decrypts.shares) == 1
        mesh.stop_worker("hospital", 0)
        with pytest.raises(CryptoWorkersUnavailable, match="crypto workers"):
            mesh.loop.run(pools.make_pool(key.public, 10, None))
    finally:
        for index in range(WORKERS):
            if ("hospital", index) not in mesh.workers:
                mesh.start_worker("hospital", index)


def test_local_worker_ports_and_k8s_balanced_target() -> None:
    base = {"org": "insurer", "role": "data_owner", "base_port": 7100, "pki_dir": "/pki", "crypto_workers": 2}
    local = parse_config(base, {}, Path("/"))
    assert local.crypto_worker_targets() == ["127.0.0.1:7105", "127.0.0.1:7125"]
    assert (local.worker_ports(1).mtls, local.worker_ports(1).health) == (7125, 7135)
    k8s = parse_config({**base, "addresses": {"crypto-worker": "dns:///riskmesh-crypto-worker:7105"}}, {}, Path("/"))
    assert k8s.crypto_worker_targets() == ["dns:///riskmesh-crypto-worker:7105"]
    none = parse_config({**base, "crypto_workers": 0}, {}, Path("/"))
    assert none.crypto_worker_targets() == []
    with pytest.raises(ConfigError, match="data owners"):
        parse_config({**base, "role": "helper"}, {}, Path("/"))
    with pytest.raises(ConfigError, match="crypto_workers"):
        parse_config({**base, "crypto_workers": -1}, {}, Path("/"))


def test_the_offline_pool_is_made_on_the_workers_and_used_by_the_run(mesh: WorkerMesh, tmp_path: Path) -> None:
    """docs/adr/0013: PreparePool goes through the same dispatch as a run's pieces (the workers),
    and the run then makes no pool element itself."""
    data = make_study_data(RECORDS, overlap=0.5, features=10, seed=12)
    spec = spec_for(data, "workers-offline", min_intersection=10)
    spec.paillier_bits = BITS
    sources = {t.org: str(t.write_csv(tmp_path / f"{t.org}.csv")) for t in (data.insurer, data.hospital)}
    harness = Harness(mesh.configs)
    owners = ("insurer", "hospital")

    def pool_elements() -> dict[str, int]:
        return {o: sum(stats(mesh, o, i).pool_elements for i in range(WORKERS)) for o in owners}

    async def prepare() -> dict:
        return await prepare_offline(harness, spec, sources)

    async def run(prepared: dict) -> tuple[Any, dict[str, Any]]:
        try:
            timings = await run_join(harness, spec, sources, "workers-offline-1", prepared)
            return timings, await collect_shares(harness, spec, "workers-offline-1")
        finally:
            await harness.close()

    before = pool_elements()
    prepared = mesh.loop.run(prepare(), timeout=180)
    made = pool_elements()
    assert all(made[o] - before[o] == prepared[f"{o}/pool"].elements > 0 for o in owners)
    timings, shares = mesh.loop.run(run(prepared), timeout=180)
    columns, expected = plaintext_join(data, {o: Path(p) for o, p in sources.items()})
    assert timings.offline_pools == 2 and same_rows(reconstruct_table(shares), columns, expected)
    assert pool_elements() == made  # the run used the offline pools and made no element
