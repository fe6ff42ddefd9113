"""MPyC over the mesh: three lasso servers as real processes over mTLS on localhost.

Most tests start each party as the production lasso server (`build_server`, a worker
process per run, Exchange streams over mTLS) in its own OS process, with the input
shares handed over in-process (dealt here) and a test program: `transport-check`
(secure sums and an inner product, compared with plaintext) or `rounds` (many short
rounds, to kill or freeze a party mid-run). The last test runs the servers exactly as
deployed (`python -m services.lasso.server`, LocalMesh), with shares from a stand-in
ResharingService over mTLS and the real regression, against scikit-learn. RunLasso is
always called as each org's own gateway.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from riskmesh.v1 import common_pb2, join_pb2, join_pb2_grpc, lasso_pb2, lasso_pb2_grpc
from services.bench.transport_bench import DUMMY_BLOCK, bench_spec, lasso_inputs
from services.join.rules import RESHARING_RULES
from services.lasso.core.blocks import ShareBlock, encode_block
from services.lasso.core.inputs import study_columns
from services.lasso.shares import InMemoryShareSource
from services.lasso.worker.lasso_program import regression_spec
from services.lasso.worker.program import program_env
from services.mesh.config import OrgConfig, load_config
from services.mesh.pki_layout import OrgPaths
from services.mesh.server import MeshServer
from services.mesh.tls import MeshCredentials
from services.study.spec import MAX_ITERATIONS, feature_names
from services.testkit import dealer
from services.testkit.plain_reference import fit_sklearn, split_table
from services.testkit.transport_check import expected, result_names
from services.tools.launcher import LocalMesh, local_mesh_for, wait_healthy
from tests.unit.gateway.specs import make_spec
from tests.unit.lasso_transport.dealing import deal

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ORGS = ("insurer", "hospital", "helper")
FAILURE_BOUND_S = 15.0
TEST_PROGRAMS = {
    "transport-check": "services.testkit.transport_check:run",
    "rounds": "services.bench.transport_bench:rounds_program",
}


def serve_party(config_path: str, shares: dict[str, list[ShareBlock]], program: str) -> None:
    """Process target: one production lasso server with in-memory shares and a test program."""
    os.environ.update(program_env(TEST_PROGRAMS))
    from services.lasso.server import build_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s lasso %(name)s: %(message)s")
    config = load_config(Path(config_path), env={})

    async def serve() -> None:
        server = await build_server(config, shares=InMemoryShareSource(shares), program=program)
        await server.serve_until_signal()

    asyncio.run(serve())


@dataclass
class Parties:
    configs: dict[str, OrgConfig]
    processes: dict[str, multiprocessing.Process] = field(default_factory=dict)
    channels: list[grpc.Channel] = field(default_factory=list)

    def stub(self, org: str, as_org: str | None = None, service: str = "gateway") -> lasso_pb2_grpc.LassoServiceStub:
        """A stub to org's lasso server, calling as <as_org>/<service> (default: org's own gateway)."""
        config = self.configs[org]
        credentials = MeshCredentials(config.pki_dir, as_org or org, service)
        channel = credentials.sync_channel(org, "lasso", config.self_endpoint.address("lasso"))
        self.channels.append(channel)
        return lasso_pb2_grpc.LassoServiceStub(channel)

    def workers(self, org: str) -> list[psutil.Process]:
        try:
            return psutil.Process(self.processes[org].pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def worker_pids(self) -> dict[str, set[int]]:
        return {org: {p.pid for p in self.workers(org)} for org in self.processes}

    def spares(self, timeout: float = 10) -> dict[str, set[int]]:
        """Each server's workers once it has exactly one: the spare its next run takes."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.worker_pids()
            if all(len(pids) == 1 for pids in found.values()):
                return found
            assert time.monotonic() < deadline, found
            time.sleep(0.05)

    def assert_ran_workers_gone(self, ran: dict[str, set[int]], timeout: float = 5) -> None:
        """The workers that ran are gone: each server keeps at most one worker, a new spare."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.worker_pids()
            if all(len(now) <= 1 and not now & ran[org] for org, now in found.items()):
                return
            assert time.monotonic() < deadline, (ran, found)
            time.sleep(0.1)


def start_parties(root: Path, shares: dict[str, dict[str, list[ShareBlock]]], program: str) -> Parties:
    paths = local_mesh_for(root)
    parties = Parties({org: load_config(paths[org], env={}) for org in ORGS})
    context = multiprocessing.get_context("spawn")
    for org in ORGS:
        process = context.Process(target=serve_party, args=(str(paths[org]), shares.get(org, {}), program), daemon=True)
        process.start()
        parties.processes[org] = process
    for config in parties.configs.values():
        wait_healthy(f"{config.bind_host}:{config.health_port('lasso')}", 60)
    return parties


def stop_parties(parties: Parties) -> None:
    for channel in parties.channels:
        channel.close()
    for process in parties.processes.values():
        if process.is_alive():
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
    for process in parties.processes.values():
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()


@dataclass
class Outcome:
    responses: list[lasso_pb2.RunLassoResponse] = field(default_factory=list)
    error: grpc.RpcError | None = None
    ended_at: float = 0.0

    @property
    def result(self) -> lasso_pb2.ModelResult:
        results = [r.result for r in self.responses if r.HasField("result")]
        assert len(results) == 1, self.error
        return results[0]

    @property
    def phases(self) -> list[int]:
        return [r.progress.phase for r in self.responses if r.HasField("progress")]


def run_lasso(
    parties: Parties,
    org: str,
    request: lasso_pb2.RunLassoRequest,
    outcome: Outcome,
    progressed: threading.Event | None = None,
) -> None:
    try:
        for response in parties.stub(org).RunLasso(request, timeout=90):
            outcome.responses.append(response)
            if (
                progressed is not None
                and response.progress.phase == common_pb2.PHASE_ITERATIONS
                and response.progress.done > 0
            ):
                progressed.set()
    except grpc.RpcError as exc:
        outcome.error = exc
    outcome.ended_at = time.monotonic()


def run_everywhere(
    parties: Parties,
    request: lasso_pb2.RunLassoRequest,
    orgs: tuple[str, ...] = ORGS,
    progressed: threading.Event | None = None,
) -> tuple[dict[str, Outcome], list[threading.Thread]]:
    outcomes = {org: Outcome() for org in orgs}
    threads = [
        threading.Thread(target=run_lasso, args=(parties, org, request, outcomes[org], progressed), daemon=True)
        for org in orgs
    ]
    for thread in threads:
        thread.start()
    return outcomes, threads


# Correctness ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dealt() -> tuple[common_pb2.StudySpec, dict[str, list[ShareBlock]], list[list[int]]]:
    spec = make_spec()
    rng = random.Random(2024)
    rows = [[rng.uniform(0, 60) for _ in range(len(study_columns(spec)))] for _ in range(40)]
    blocks, table = deal(spec, rows)
    return spec, blocks, table


@pytest.fixture(scope="module")
def check_parties(tmp_path_factory: pytest.TempPathFactory, dealt) -> Iterator[Parties]:
    _, blocks, _ = dealt
    shares = {org: {"check-1": blocks[org], "check-2": blocks[org], "dup-1": blocks[org]} for org in ORGS}
    parties = start_parties(tmp_path_factory.mktemp("mpc-check"), shares, "transport-check")
    yield parties
    stop_parties(parties)


def test_secure_sums_over_grpc_mtls_equal_plaintext(check_parties: Parties, dealt) -> None:
    spec, _, table = dealt
    spares = check_parties.spares()  # started with the servers, ahead of any run
    outcomes, threads = run_everywhere(check_parties, lasso_pb2.RunLassoRequest(run_id="check-1", spec=spec))
    for thread in threads:
        thread.join(60)
    for org in ORGS:
        assert outcomes[org].error is None, (org, outcomes[org].error)
    want = {
        name: float(value)
        for name, value in zip(result_names(study_columns(spec)), expected(table, 1 << 63), strict=False)
    }
    for owner in ("insurer", "hospital"):
        result = outcomes[owner].result
        assert {c.feature: c.value for c in result.coefficients} == want
        assert result.joined == len(table)
        assert {common_pb2.PHASE_INPUT, common_pb2.PHASE_GRAM, common_pb2.PHASE_REVEAL} <= set(outcomes[owner].phases)
    assert outcomes["helper"].result == lasso_pb2.ModelResult()
    # The run took the spares; its worker processes are gone once it is over (a new spare waits).
    check_parties.assert_ran_workers_gone(spares)


def test_a_run_id_runs_once(check_parties: Parties, dealt) -> None:
    spec, _, _ = dealt
    request = lasso_pb2.RunLassoRequest(run_id="dup-1", spec=spec)
    first = check_parties.stub("insurer").RunLasso(request, timeout=30)
    next(first)  # registered: the first progress comes after the run is
    try:
        with pytest.raises(grpc.RpcError) as err:
            list(check_parties.stub("insurer").RunLasso(request, timeout=10))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        first.cancel()


def test_run_lasso_from_another_orgs_gateway_is_refused(check_parties: Parties, dealt) -> None:
    spec, _, _ = dealt
    with pytest.raises(grpc.RpcError) as err:
        list(
            check_parties.stub("hospital", as_org="insurer").RunLasso(
                lasso_pb2.RunLassoRequest(run_id="check-2", spec=spec), timeout=10
            )
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


# Refusals on Exchange -------------------------------------------------------------------


def hello(run_id: str, pid: int) -> Iterator[lasso_pb2.ExchangeRequest]:
    yield lasso_pb2.ExchangeRequest(hello=lasso_pb2.MpcHello(run_id=run_id, pid=pid, prss_keys=bytes(16)))
    time.sleep(2)  # keep the stream open while the server decides


def test_exchange_from_a_gateway_identity_is_refused(check_parties: Parties) -> None:
    stub = check_parties.stub("helper", as_org="hospital", service="gateway")
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Exchange(hello("check-2", 1), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_exchange_claiming_another_partys_id_is_refused(check_parties: Parties, dealt) -> None:
    spec, _, _ = dealt
    # The helper's run of check-2 is registered (it waits for its peers), so the claim can be checked.
    outcomes, threads = run_everywhere(
        check_parties, lasso_pb2.RunLassoRequest(run_id="check-2", spec=spec), orgs=("helper",)
    )
    as_hospital = check_parties.stub("helper", as_org="hospital", service="lasso")
    for claimed in (0, 2):  # insurer's id; an id not below the acceptor's
        with pytest.raises(grpc.RpcError) as err:
            list(as_hospital.Exchange(hello("check-2", claimed), timeout=10))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"may not act as MPC party {claimed}" in err.value.details()
    # The real parties then complete the run: the refused streams changed nothing.
    rest, rest_threads = run_everywhere(
        check_parties, lasso_pb2.RunLassoRequest(run_id="check-2", spec=spec), orgs=("insurer", "hospital")
    )
    for thread in [*threads, *rest_threads]:
        thread.join(60)
    assert outcomes["helper"].error is None and rest["insurer"].error is None
    assert rest["insurer"].result.coefficients


def test_exchange_with_an_untrusted_certificate_never_reaches_the_server(
    check_parties: Parties, untrusted_pki: Path
) -> None:
    config = check_parties.configs["helper"]
    paths = OrgPaths(untrusted_pki / "hospital")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=OrgPaths(config.pki_dir / "helper").ca_cert().read_bytes(),
        private_key=paths.key("lasso").read_bytes(),
        certificate_chain=paths.cert("lasso").read_bytes(),
    )
    channel = grpc.secure_channel(
        config.self_endpoint.address("lasso"),
        credentials,
        options=[("grpc.ssl_target_name_override", "lasso.helper.riskmesh")],
    )
    with channel, pytest.raises(grpc.RpcError) as err:
        list(lasso_pb2_grpc.LassoServiceStub(channel).Exchange(hello("check-2", 1), timeout=10))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


# Failures ---------------------------------------------------------------------------------


@pytest.fixture
def rounds_parties(tmp_path: Path) -> Iterator[Parties]:
    parties = start_parties(tmp_path, {org: {"long-1": [DUMMY_BLOCK]} for org in ORGS}, "rounds")
    yield parties
    stop_parties(parties)


def start_long_run(parties: Parties) -> tuple[dict[str, Outcome], list[threading.Thread]]:
    progressed = threading.Event()
    request = lasso_pb2.RunLassoRequest(
        run_id="long-1", spec=bench_spec(rounds=MAX_ITERATIONS)
    )  # seconds of rounds: killed well before the end
    outcomes, threads = run_everywhere(parties, request, progressed=progressed)
    assert progressed.wait(30), {org: o.error for org, o in outcomes.items()}
    return outcomes, threads


def assert_failed_quickly(
    outcomes: dict[str, Outcome], threads: list[threading.Thread], survivors: tuple[str, ...], since: float, lost: str
) -> None:
    for thread in threads:
        thread.join(FAILURE_BOUND_S + 5)
    for org in survivors:
        outcome = outcomes[org]
        assert outcome.error is not None, org
        assert outcome.error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED), (org, outcome.error)
        assert outcome.ended_at - since < FAILURE_BOUND_S, (org, outcome.ended_at - since)
        details = outcome.error.details()
        assert "MPC party" in details and "PHASE_ITERATIONS" in details, details
        assert lost in details, details


def test_a_killed_party_ends_the_run_at_the_others_quickly(rounds_parties: Parties) -> None:
    outcomes, threads = start_long_run(rounds_parties)
    victims = rounds_parties.workers("helper")
    assert victims, "the helper's MPC worker should be running"
    running = rounds_parties.workers("insurer") + rounds_parties.workers("hospital")  # the run's: spares come after it
    killed_at = time.monotonic()
    os.kill(rounds_parties.processes["helper"].pid, signal.SIGKILL)
    assert_failed_quickly(outcomes, threads, ("insurer", "hospital"), killed_at, "MPC party 2 (helper)")
    # No worker outlives its run: the survivors killed theirs, the orphan saw its link close.
    _, alive = psutil.wait_procs(victims + running, timeout=10)
    assert not alive


def test_a_frozen_party_ends_the_run_at_the_others(rounds_parties: Parties) -> None:
    outcomes, threads = start_long_run(rounds_parties)
    frozen_at = time.monotonic()
    os.kill(rounds_parties.processes["hospital"].pid, signal.SIGSTOP)
    try:
        assert_failed_quickly(outcomes, threads, ("insurer", "helper"), frozen_at, "MPC party 1 (hospital)")
    finally:
        os.kill(rounds_parties.processes["hospital"].pid, signal.SIGCONT)


def test_a_crashed_worker_ends_the_run_everywhere_with_its_party_named(rounds_parties: Parties) -> None:
    outcomes, threads = start_long_run(rounds_parties)
    (worker,) = rounds_parties.workers("hospital")
    killed_at = time.monotonic()
    worker.kill()
    assert_failed_quickly(outcomes, threads, ORGS, killed_at, "MPC party 1 (hospital)")
    assert "MPC worker" in outcomes["hospital"].error.details()


# Production wiring ----------------------------------------------------------------------


class FakeResharing(join_pb2_grpc.ResharingServiceServicer):
    """Only GetShares, serving dealt blocks: stands in for the resharing server of one org."""

    def __init__(self, blocks: dict[str, list[ShareBlock]]) -> None:
        self.blocks = blocks

    async def GetShares(self, request: join_pb2.GetSharesRequest, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        if request.run_id not in self.blocks:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such run")
        for block in self.blocks[request.run_id]:
            for message in encode_block(request.run_id, block, chunk_rows=64):
                yield message


def test_production_servers_fit_the_study_as_plaintext_does(tmp_path: Path, loop_thread) -> None:
    """`python -m services.lasso.server` ×3 (LocalMesh), shares from GetShares, the real regression."""
    spec, blocks = lasso_inputs(rows=300, features=10, seed=3)
    paths = local_mesh_for(tmp_path)
    configs = {org: load_config(paths[org], env={}) for org in ORGS}
    fakes = []
    for pid, org in enumerate(ORGS):

        async def start(config: OrgConfig = configs[org], pid: int = pid) -> MeshServer:
            server = MeshServer(config, "resharing", RESHARING_RULES)
            server.add_service(
                join_pb2_grpc.add_ResharingServiceServicer_to_server,
                FakeResharing({"prod-1": blocks[pid]}),
                join_pb2.DESCRIPTOR.services_by_name["ResharingService"],
            )
            await server.start()
            return server

        fakes.append(loop_thread.run(start()))
    mesh = LocalMesh(paths, only_servers=("lasso",)).start()
    parties = Parties(configs)
    try:
        outcomes, threads = run_everywhere(parties, lasso_pb2.RunLassoRequest(run_id="prod-1", spec=spec))
        for thread in threads:
            thread.join(90)
        for org in ORGS:
            assert outcomes[org].error is None, (org, outcomes[org].error)
        regression = regression_spec(spec)
        table = dealer.reconstruct([np.asarray(b[0].values, dtype=object) for b in blocks])
        x, y = split_table(table, regression)
        want_w, want_b, _ = fit_sklearn(x, y, regression, spec.model.alphas[0])
        scale = float(np.max(np.abs(want_w)))
        for owner in ("insurer", "hospital"):
            result = outcomes[owner].result
            got = np.array([c.value for c in result.coefficients])
            assert np.max(np.abs(got - want_w)) <= 1e-5 * scale, (got, want_w)
            assert abs(result.intercept - want_b) <= 1e-5 * max(scale, abs(want_b))
            assert [c.feature for c in result.coefficients] == list(feature_names(spec))
            assert {
                common_pb2.PHASE_INPUT,
                common_pb2.PHASE_GRAM,
                common_pb2.PHASE_ITERATIONS,
                common_pb2.PHASE_REVEAL,
            } <= set(outcomes[owner].phases)
        assert outcomes["helper"].result == lasso_pb2.ModelResult()
    finally:
        for channel in parties.channels:
            channel.close()
        mesh.stop()
        for server in fakes:
            loop_thread.run(server.stop(0))


def test_a_frozen_worker_ends_the_run_everywhere(rounds_parties: Parties) -> None:
    """The worker's server stays up (so no keepalive fails): its heartbeat watchdog must notice."""
    outcomes, threads = start_long_run(rounds_parties)
    (worker,) = rounds_parties.workers("helper")
    frozen_at = time.monotonic()
    worker.suspend()
    assert_failed_quickly(outcomes, threads, ORGS, frozen_at, "MPC party 2 (helper)")
    assert "stopped responding" in outcomes["helper"].error.details()
    _, alive = psutil.wait_procs([worker], timeout=5)  # its server killed it
    assert not alive
