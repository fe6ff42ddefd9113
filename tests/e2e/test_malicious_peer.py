"""A malicious MPC peer with a valid identity, through real LassoService.Exchange streams.

Three production lasso servers run as processes over mTLS; the hospital's (MPC party 1)
runs tests/security/programs.py:attacker — in a run named `attack-<attack>-…` it takes
part honestly until the field stage and then sends, to both other parties, one of the
payloads of the security review (issue 13) instead of its messages:

    (a) canary        a pickle whose reduce would create a canary file
    (b) dtypeoob,     numpy dtype BUILD state: a field at offset 4096 of an 8-byte dtype;
        dtypeobject,  8 attacker bytes read as an object pointer;
        picklebillion a ~100-byte pickle of 10⁹ elements
    (c) billion       a 7-byte wire header claiming 10⁹ elements
    (d) truncated, oversized (body shorter / longer than its header), wrongwidth
        (8-byte elements where the field's are 16), outofrange (values ≥ p)
    (e) flood         5000 messages for rounds far ahead of the computation

For each: the run fails at the insurer and the helper within FAILURE_BOUND_S with a
status naming MPC party 1 and PHASE_ITERATIONS; the canary never appears; no honest
worker's resident memory exceeds WORKER_RSS_BOUND; and the same servers then (and, for
the flood, at the same time) finish an honest study with the right numbers.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from riskmesh.v1 import lasso_pb2
from services.lasso.core.blocks import ShareBlock
from services.lasso.core.inputs import study_columns
from services.lasso.shares import InMemoryShareSource
from services.lasso.worker.program import program_env
from services.mesh.config import load_config
from services.testkit.transport_check import expected, result_names
from services.tools.launcher import local_mesh_for, wait_healthy
from tests.e2e.test_mpc_transport import ORGS, Outcome, Parties, run_everywhere, stop_parties
from tests.security.programs import CANARY_ENV, A, B, field_names
from tests.unit.gateway.specs import make_spec
from tests.unit.lasso_transport.dealing import deal

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PROGRAMS = {"honest": "tests.security.programs:honest", "attacker": "tests.security.programs:attacker"}
ATTACKER = "hospital"
HONEST = ("insurer", "helper")
FAILURE_BOUND_S = (
    30.0  # from RunLasso to the failure, including the worker's start and the honest rounds before the attack
)
WORKER_RSS_BOUND = 256 * 1024 * 1024
STUDIES = ("study-1", "study-2")
# attack → the rule an honest party names when it refuses it (server: header; worker: field, caps)
REFUSALS = {
    "canary": "unknown message kind 128",
    "dtypeoob": "unknown message kind 128",
    "dtypeobject": "unknown message kind 128",
    "picklebillion": "unknown message kind 128",
    "billion": "1000000000 elements exceed the limit",
    "truncated": "body of 43 bytes, the header says 3 × 16",
    "oversized": "body of 112 bytes, the header says 3 × 16",
    "wrongwidth": "MPC party 1 sent a malformed message: 8-byte elements, the field's are 16 bytes",
    "outofrange": "MPC party 1 sent a malformed message: a value is not below the field's modulus",
    "flood": "MPC party 1: sent more than 4096 messages or 128 MiB ahead of the computation",
}
ATTACKS = tuple(REFUSALS)


def serve_party(config_path: str, shares: dict[str, list[ShareBlock]], program: str, canary: str) -> None:
    """Process target: one production lasso server running `program` in its workers."""
    os.environ.update({**program_env(PROGRAMS), CANARY_ENV: canary})
    from services.lasso.server import build_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s lasso %(name)s: %(message)s")
    config = load_config(Path(config_path), env={})

    async def serve() -> None:
        server = await build_server(config, shares=InMemoryShareSource(shares), program=program)
        await server.serve_until_signal()

    asyncio.run(serve())


class Mesh:
    def __init__(self, parties: Parties, canary: Path, spec, table) -> None:  # type: ignore[no-untyped-def]
        self.parties = parties
        self.canary = canary
        self.spec = spec
        self.table = table


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    spec = make_spec()
    rng = random.Random(13)
    rows = [[rng.uniform(0, 60) for _ in range(len(study_columns(spec)))] for _ in range(30)]
    blocks, table = deal(spec, rows)
    root = tmp_path_factory.mktemp("malicious-peer")
    canary = root / "canary"
    run_ids = [*STUDIES, *(f"attack-{attack}-1" for attack in ATTACKS)]
    paths = local_mesh_for(root)
    parties = Parties({org: load_config(paths[org], env={}) for org in ORGS})
    context = multiprocessing.get_context("spawn")
    for org in ORGS:
        program = "attacker" if org == ATTACKER else "honest"
        shares = {run_id: blocks[org] for run_id in run_ids}
        process = context.Process(target=serve_party, args=(str(paths[org]), shares, program, str(canary)), daemon=True)
        process.start()
        parties.processes[org] = process
    try:
        for config in parties.configs.values():
            wait_healthy(f"{config.bind_host}:{config.health_port('lasso')}", 60)
        yield Mesh(parties, canary, spec, table)
    finally:
        stop_parties(parties)


class PeakMemory:
    """Samples the resident memory of the honest servers' workers every 20 ms."""

    def __init__(self, parties: Parties) -> None:
        self.parties = parties
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            for org in HONEST:
                for worker in self.parties.workers(org):
                    try:
                        self.peak = max(self.peak, worker.memory_info().rss)
                    except psutil.NoSuchProcess:
                        pass
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def run(mesh: Mesh, run_id: str) -> tuple[dict[str, Outcome], float]:
    started = time.monotonic()
    outcomes, threads = run_everywhere(mesh.parties, lasso_pb2.RunLassoRequest(run_id=run_id, spec=mesh.spec))
    for thread in threads:
        thread.join(FAILURE_BOUND_S + 30)
    return outcomes, started


def assert_attack_refused(mesh: Mesh, attack: str) -> None:
    memory = PeakMemory(mesh.parties)
    outcomes, started = run(mesh, f"attack-{attack}-1")
    peak = memory.stop()
    for org in HONEST:
        error = outcomes[org].error
        assert error is not None, (org, outcomes[org].responses[-1:])
        assert error.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE), (org, error)
        assert "MPC party 1" in error.details() and "PHASE_ITERATIONS" in error.details(), (org, error.details())
        assert REFUSALS[attack] in error.details(), (org, error.details())
        assert outcomes[org].ended_at - started < FAILURE_BOUND_S, (org, outcomes[org].ended_at - started)
    assert not mesh.canary.exists()
    assert 0 < peak < WORKER_RSS_BOUND, peak


def assert_study_correct(mesh: Mesh, outcomes: dict[str, Outcome]) -> None:
    for org in ORGS:
        assert outcomes[org].error is None, (org, outcomes[org].error)
    columns = study_columns(mesh.spec)
    want = dict(zip(result_names(columns), map(float, expected(mesh.table, 1 << 63)), strict=False))
    products = [a * b for a, b in zip(A, B, strict=False)]
    for owner in ("insurer", "hospital"):
        got = {c.feature: c.value for c in outcomes[owner].result.coefficients}
        assert {name: got[name] for name in want} == want
        fields = [got[name] for name in field_names()]
        assert fields[: len(A)] == pytest.approx(products, abs=2 ** -(16 - 2))
        assert fields[len(A) :] == [float(p < 0) for p in products]
    assert outcomes["helper"].result == lasso_pb2.ModelResult()


def test_malicious_peer_pickle_with_a_reduce_never_runs(mesh: Mesh) -> None:
    assert_attack_refused(mesh, "canary")


@pytest.mark.parametrize("attack", ["dtypeoob", "dtypeobject", "picklebillion"])
def test_malicious_peer_dtype_build_payloads_are_refused(mesh: Mesh, attack: str) -> None:
    assert_attack_refused(mesh, attack)


def test_malicious_peer_claiming_a_billion_elements_is_refused_before_allocation(mesh: Mesh) -> None:
    assert_attack_refused(mesh, "billion")


@pytest.mark.parametrize("attack", ["truncated", "oversized", "wrongwidth", "outofrange"])
def test_malicious_peer_malformed_frames_are_refused(mesh: Mesh, attack: str) -> None:
    assert_attack_refused(mesh, attack)


def test_malicious_peer_flood_ahead_is_capped_while_another_study_finishes(mesh: Mesh) -> None:
    outcomes: dict[str, Outcome] = {}

    def honest_study() -> None:
        result, _ = run(mesh, "study-1")
        outcomes.update(result)

    study = threading.Thread(target=honest_study, daemon=True)
    study.start()
    assert_attack_refused(mesh, "flood")
    study.join(FAILURE_BOUND_S + 30)
    assert_study_correct(mesh, outcomes)


def test_malicious_peer_leaves_the_mesh_able_to_finish_a_study(mesh: Mesh) -> None:
    spares = mesh.parties.spares()
    outcomes, _ = run(mesh, "study-2")
    assert_study_correct(mesh, outcomes)
    mesh.parties.assert_ran_workers_gone(spares)  # each server keeps only a new spare
