"""The secure inner join with three organisations as real processes over mTLS on localhost.

Every org's encryption/intersection/resharing server is its own process (LocalMesh); the
test drives them as the gateways would (services/bench/drive.py) and reads the shares
back with each org's lasso identity, which only a harness holding every org's PKI can do.

Rows reach the shares in the helper's secret permutation π. The tests undo it by matching
rows on their values: `drive.same_rows` sorts the reconstructed rows and the fixed-point
encoded plaintext inner join (computed from the CSV files with `csv` + `float`) and
compares them exactly; every generated row is distinct, so equal sorted lists mean a
row-for-row match.

The helper's intersection runs in a LocalMesh of its own so a test can SIGKILL it and start
it again; the other servers stay up for the whole module.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from riskmesh.v1 import common_pb2, join_pb2, join_pb2_grpc
from services.bench.drive import (
    Harness,
    collect_shares,
    plaintext_join,
    reconstruct_table,
    run_join,
    same_rows,
    start_join,
)
from services.mesh.config import load_config
from services.testkit.studies import spec_for
from services.testkit.synthetic import StudyData, make_study_data
from services.tools.launcher import LocalMesh, local_mesh_for

pytestmark = pytest.mark.e2e

ORGS = ("insurer", "hospital", "helper")
UPLOAD_SEEN_BYTES = 16 * 1024


@dataclass
class Orgs:
    """The three orgs' join servers as processes; the helper's intersection restartable."""

    configs: dict[str, Path]
    servers: LocalMesh
    intersection: LocalMesh

    def restart_intersection(self) -> None:
        self.intersection.stop()
        self.intersection = LocalMesh({"helper": self.configs["helper"]}, only_servers=("intersection",)).start()

    def intersection_pid(self) -> int:
        return self.intersection.find("helper", "intersection").process.pid


@pytest.fixture(scope="module")
def orgs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orgs]:
    configs = local_mesh_for(tmp_path_factory.mktemp("join-e2e"), min_paillier_bits=1024)  # fast keys
    servers = LocalMesh(configs, only_servers=("encryption", "resharing")).start()
    try:
        intersection = LocalMesh({"helper": configs["helper"]}, only_servers=("intersection",)).start()
    except BaseException:
        servers.stop()
        raise
    running = Orgs(configs, servers, intersection)
    yield running
    running.intersection.stop()
    running.servers.stop()


def bytes_waiting(port: int) -> list[int]:
    """Bytes received and not yet read on each established connection to local `port`: what
    a frozen server has been sent (the kernel's receive queues, /proc/net/tcp and tcp6)."""
    queues = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            _, local, _, state, queue, *_ = line.split()
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                queues.append(int(queue.split(":")[1], 16))
    return queues


async def both_uploads_arrived(port: int, timeout: float = 10.0) -> None:
    """Until two connections to the (frozen) intersection hold upload data: more than a
    ping or a header, which is all the harness's own connection carries."""
    deadline = time.monotonic() + timeout
    while sum(queued > UPLOAD_SEEN_BYTES for queued in bytes_waiting(port)) < 2:
        assert time.monotonic() < deadline, f"no two uploads waiting at the frozen intersection: {bytes_waiting(port)}"
        await asyncio.sleep(0.02)


@dataclass
class Study:
    data: StudyData
    spec: common_pb2.StudySpec
    sources: dict[str, Path]

    @property
    def paths(self) -> dict[str, str]:
        return {org: str(path) for org, path in self.sources.items()}


def make_study(root: Path, records: int, bits: int, features: int = 10, study_id: str = "join-e2e") -> Study:
    data = make_study_data(records, overlap=0.5, features=features)
    spec = spec_for(data, study_id, min_intersection=10)  # small joins: the floors are the gateways' job
    spec.paillier_bits = bits
    root.mkdir(parents=True, exist_ok=True)
    return Study(data, spec, {t.org: t.write_csv(root / f"{t.org}.csv") for t in (data.insurer, data.hospital)})


def join_and_check(orgs: Orgs, study: Study, run_id: str) -> int:
    """Run a join over the processes; assert the shares reconstruct the plaintext inner join; return joined."""

    async def run() -> tuple[int, object]:
        harness = Harness(orgs.configs)
        try:
            timings = await run_join(harness, study.spec, study.paths, run_id)
            assert (
                abs(timings.total_s - (timings.setup_s + timings.offline_s + timings.join_s + timings.reshare_s)) < 1e-6
            )
            assert min(timings.offline_s, timings.join_s, timings.reshare_s) > 0
            return timings.joined, reconstruct_table(await collect_shares(harness, study.spec, run_id))
        finally:
            await harness.close()

    joined, table = asyncio.run(run())
    columns, expected = plaintext_join(study.data, study.sources)
    assert joined == len(expected) > 0
    assert same_rows(table, columns, expected)  # type: ignore[arg-type]
    return joined


def test_three_org_join_over_mtls_processes_matches_the_plaintext_join(orgs: Orgs, tmp_path: Path) -> None:
    """1024-bit keys (accepted by resharing for speed): 400 rows per owner, 200 joined, 11 columns."""
    assert join_and_check(orgs, make_study(tmp_path, 400, 1024), "e2e-1024") == 200


def test_three_org_join_with_2048_bit_keys_matches_the_plaintext_join(orgs: Orgs, tmp_path: Path) -> None:
    assert join_and_check(orgs, make_study(tmp_path, 120, 2048), "e2e-2048") == 60


async def _refused_shares(harness: Harness, run_id: str) -> None:
    """No org serves shares of the run, and a waiter is told when the gateway drops it."""
    for org in ORGS:
        lasso = harness.stub(org, "resharing", "lasso", join_pb2_grpc.ResharingServiceStub)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in lasso.GetShares(join_pb2.GetSharesRequest(run_id=run_id), timeout=10):
                pass
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_helper_killed_during_upload_fails_encryption_with_its_phase_and_leaves_no_shares(
    orgs: Orgs, tmp_path: Path
) -> None:
    """The helper's intersection is stopped once both owners' pools are ready, so both uploads
    are under way (over channels a first run opened) when it is SIGKILLed."""
    warm = make_study(tmp_path / "warm", 40, 1024, study_id="warm")
    join_and_check(orgs, warm, "e2e-warm")
    study = make_study(tmp_path / "killed", 3000, 1024, study_id="killed")
    run_id = "e2e-killed-upload"
    pid = orgs.intersection_pid()
    port = load_config(orgs.configs["helper"], env={}).port("intersection")

    async def scenario() -> dict[str, grpc.aio.AioRpcError]:
        harness = Harness(orgs.configs)
        try:
            requests = await start_join(harness, study.spec, study.paths, run_id)
            waiting = {
                o: harness.stub(o, "resharing", "gateway", join_pb2_grpc.ResharingServiceStub).AwaitShares(
                    join_pb2.AwaitSharesRequest(run_id=run_id), timeout=60
                )
                for o in ("insurer", "hospital")
            }
            for call in waiting.values():
                await call.read()  # "waiting for the helper"
            sending: set[str] = set()
            errors: dict[str, grpc.aio.AioRpcError] = {}

            async def encrypt(org: str) -> None:
                stub = harness.stub(org, "encryption", "gateway", join_pb2_grpc.EncryptionServiceStub)
                try:
                    async for reply in stub.RunEncryption(requests[org], timeout=60):
                        if reply.progress.message == "randomness pool: first piece ready":
                            os.kill(pid, signal.SIGSTOP)  # idempotent: whichever owner is first
                        if reply.progress.message.startswith("encrypting and sending"):
                            sending.add(org)
                            if len(sending) == 2:
                                await both_uploads_arrived(port)
                                os.kill(pid, signal.SIGKILL)
                except grpc.aio.AioRpcError as exc:
                    errors[org] = exc

            await asyncio.gather(encrypt("insurer"), encrypt("hospital"))
            await _refused_shares(harness, run_id)
            for org, call in waiting.items():
                await harness.stub(org, "resharing", "gateway", join_pb2_grpc.ResharingServiceStub).DropRun(
                    join_pb2.DropRunRequest(run_id=run_id), timeout=10
                )
                with pytest.raises(grpc.aio.AioRpcError) as dropped:
                    while (reply := await call.read()) is not grpc.aio.EOF:
                        assert reply.progress.state != common_pb2.RUN_STATE_SUCCEEDED
                assert dropped.value.code() == grpc.StatusCode.ABORTED
            return errors
        finally:
            await harness.close()

    try:
        errors = asyncio.run(scenario())
    finally:
        orgs.restart_intersection()
    assert set(errors) == {"insurer", "hospital"}
    for error in errors.values():
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details().startswith("hashing/encryption: the helper did not accept the rows: UNAVAILABLE")
        assert not any(cid in error.details() for cid in study.data.insurer.canonical + study.data.hospital.canonical)
    # Nothing else is lost: with the helper back, the next run completes and matches.
    join_and_check(orgs, make_study(tmp_path / "after", 200, 1024, study_id="after"), "e2e-after-kill")


def test_helper_killed_during_delivery_fails_resharing_and_serves_no_partial_shares(orgs: Orgs, tmp_path: Path) -> None:
    """SIGKILL of the helper's intersection once an owner has decrypted the first of three
    chunks: every org's AwaitShares ends with a resharing status (the helper's too: its own
    shares are completed only after both deliveries), and none serves shares."""
    study = make_study(tmp_path, 6000, 1024, features=6, study_id="killed-delivery")  # 3000 joined: 3 chunks
    run_id = "e2e-killed-delivery"
    pid = orgs.intersection_pid()

    async def scenario() -> tuple[dict[str, grpc.aio.AioRpcError], grpc.aio.AioRpcError | None]:
        harness = Harness(orgs.configs)
        try:
            requests = await start_join(harness, study.spec, study.paths, run_id)
            errors: dict[str, grpc.aio.AioRpcError] = {}
            partial = asyncio.Event()

            async def await_shares(org: str) -> None:
                stub = harness.stub(org, "resharing", "gateway", join_pb2_grpc.ResharingServiceStub)
                try:
                    async for reply in stub.AwaitShares(join_pb2.AwaitSharesRequest(run_id=run_id), timeout=120):
                        assert (
                            reply.progress.state != common_pb2.RUN_STATE_SUCCEEDED
                            and reply.progress.message != "shares stored"
                        )
                        if 0 < reply.progress.done < reply.progress.total and not partial.is_set():
                            partial.set()
                            os.kill(pid, signal.SIGKILL)
                except grpc.aio.AioRpcError as exc:
                    errors[org] = exc

            async def helper_progress() -> grpc.aio.AioRpcError | None:
                stub = harness.stub("helper", "intersection", "gateway", join_pb2_grpc.IntersectionServiceStub)
                try:
                    async for _ in stub.AwaitIntersection(
                        join_pb2.AwaitIntersectionRequest(run_id=run_id), timeout=120
                    ):
                        pass
                except grpc.aio.AioRpcError as exc:
                    return exc
                return None

            async def encrypt(org: str) -> None:
                stub = harness.stub(org, "encryption", "gateway", join_pb2_grpc.EncryptionServiceStub)
                async for _ in stub.RunEncryption(requests[org], timeout=120):
                    pass

            results = await asyncio.gather(
                encrypt("insurer"), encrypt("hospital"), *(await_shares(o) for o in ORGS), helper_progress()
            )
            await _refused_shares(harness, run_id)
            return errors, results[-1]
        finally:
            await harness.close()

    try:
        errors, helper_error = asyncio.run(scenario())
    finally:
        orgs.restart_intersection()
    assert set(errors) == set(ORGS)
    for org, error in errors.items():
        # A lost connection usually cancels the call (UNAVAILABLE); it can also end the stream
        # like a half-close first, which resharing reports as a short stream.
        assert (error.code(), error.details()) in (
            (grpc.StatusCode.UNAVAILABLE, "resharing: the stream from the helper broke off before every row arrived"),
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                "resharing: the stream from the helper ended before every announced row arrived",
            ),
        ), (org, error)
    assert helper_error is not None and helper_error.code() == grpc.StatusCode.UNAVAILABLE


def test_join_bench_runs_its_own_mesh_and_reports_measured_figures(tmp_path: Path) -> None:
    """The benchmark (riskmesh bench --phase join): its own PKI, data and processes; the fields it promises."""
    from services.bench.join_bench import bench_join

    result = bench_join(300, features=10, bits=1024, workdir=tmp_path)
    assert result["records"] == 300 and result["joined"] == 150 and result["shares_match_plaintext"] is True
    phases = result["setup_s"] + result["offline_s"] + result["join_s"] + result["reshare_s"]
    assert (
        abs(result["total_s"] - phases) < 0.01 and min(result["offline_s"], result["join_s"], result["reshare_s"]) > 0
    )  # each rounded to ms
    # Measured on the wire: at least every owner's tags and ciphertexts (2 × 256 bytes per row at 1024 bits).
    assert result["bytes_to_helper"] > 2 * 300 * (32 + 2 * 256)
    assert result["bytes_to_owners"] > 2 * 150 * 2 * 256
    assert result["server_cpu_s"] > 0 and result["paillier_bits"] == 1024
    # Keys and pools were made before the timed run, and the run used them.
    assert result["used_prepared_keys"] is True and result["prepared_s"] > 0
    assert all(n > 0 for n in result["prepared_pool_elements"].values())
    by_org = result["cpu_s_by_org"]
    assert set(by_org) == {"insurer", "hospital", "helper"} and all(v > 0 for v in by_org.values())
    assert abs(sum(by_org.values()) - result["server_cpu_s"]) < 0.05
    assert set(result["peak_rss_mb_by_org"]) == set(by_org) and 0 < result["peak_rss_mb"] <= max(
        result["peak_rss_mb_by_org"].values()
    )
