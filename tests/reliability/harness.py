"""The reliability suite's mesh: three organisations, every server its own process over
mTLS (`LocalMesh`), each started through tests/reliability/instrument.py (tag keys
captured, the helper's received requests recorded while asked), plus what the checks
need: gateway stubs per identity, runs watched until a trigger, a process killed,
frozen or restarted, the state every org exposes, and the plaintext reference.

The data is the suite's own (`KnownData`): every patient ID and every value as written
is known, so the leak scan can look for all of them. CSV files live outside the orgs'
state directories, which hold only what the servers wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import psutil

from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, join_pb2, join_pb2_grpc, lasso_pb2
from services.gateway.audit import audit_path
from services.mesh.config import OrgConfig, load_config
from services.mesh.tls import MeshCredentials
from services.reliability.leaks import PatientId
from services.testkit.plain_reference import lasso_reference
from services.testkit.studies import spec_for
from services.testkit.synthetic import OwnerTable, StudyData, make_study_data, reference_join
from services.tools.launcher import LocalMesh, OrgPlacement, ServerProcess, local_mesh_for, wait_healthy
from tests.reliability.instrument import RECORD_DIR_ENV, RECORDING_FLAG, TAG_KEYS_FILE

ORGS = ("insurer", "hospital", "helper")
OWNERS = ("insurer", "hospital")
ALPHA = 0.05
MAX_RUNS = 200  # runs of one study the suites may make (the default run policy allows 10)
CALL_S = 30.0
PHASE_ORDER = [
    common_pb2.PHASE_SETUP,
    common_pb2.PHASE_HASHING_ENCRYPTION,
    common_pb2.PHASE_INTERSECTION,
    common_pb2.PHASE_RESHARING,
    common_pb2.PHASE_INPUT,
    common_pb2.PHASE_GRAM,
    common_pb2.PHASE_ITERATIONS,
    common_pb2.PHASE_REVEAL,
]
# Statuses that reject a request cleanly (anything else, INTERNAL and UNKNOWN above all, is a failure).
CLEAN_REJECTIONS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
TRACEBACK_MARKERS = ("Traceback", "Unexpected <class", "Exception calling application", 'File "')


def phase_name(phase: int) -> str:
    return common_pb2.Phase.Name(phase) if phase in common_pb2.Phase.values() else str(phase)


def phase_rank(phase: int) -> int:
    return PHASE_ORDER.index(phase) if phase in PHASE_ORDER else -1


# --- the suite's data ----------------------------------------------------------------


def _non_hex(code: str) -> str:
    """Postal letters moved to G–Z (case kept), so no hex digest can contain a postal code."""
    return "".join(
        chr(ord("a" if c.islower() else "A") + 6 + (ord(c.upper()) - 65) % 20) if c.isalpha() else c for c in code
    )


def _distinctive(table: OwnerTable) -> OwnerTable:
    ids = [(birth, _non_hex(postal)) for birth, postal in table.ids]
    canonical = [f"{c.split('|')[0]}|{_non_hex(c.split('|')[1])}" for c in table.canonical]
    if len(set(canonical)) != len(canonical):
        raise ValueError("two patients share an ID after moving their postal letters; use another seed")
    return dataclasses.replace(table, ids=ids, canonical=canonical)


@dataclass
class KnownData:
    data: StudyData
    sources: dict[str, Path]  # org → CSV path
    patients: list[PatientId]
    cells: list[str]  # every attribute value exactly as the CSV files hold it

    def __repr__(self) -> str:  # hypothesis prints fixtures of a failing example
        return f"KnownData({len(self.patients)} patients)"

    @property
    def canonical_ids(self) -> list[str]:
        return [p.canonical for p in self.patients]


def known_data(root: Path, records: int, features: int = 6, seed: int = 7) -> KnownData:
    raw = make_study_data(records, overlap=0.5, features=features, seed=seed)
    data = StudyData(_distinctive(raw.insurer), _distinctive(raw.hospital), raw.true_weights)
    root.mkdir(parents=True, exist_ok=True)
    sources = {t.org: t.write_csv(root / f"{t.org}.csv") for t in (data.insurer, data.hospital)}
    patients = [
        PatientId(b, p, c) for t in (data.insurer, data.hospital) for (b, p), c in zip(t.ids, t.canonical, strict=False)
    ]
    cells = [f"{v:.6f}" for t in (data.insurer, data.hospital) for v in t.values.ravel()]
    return KnownData(data, sources, patients, cells)


def check_coefficients(data: StudyData, result: lasso_pb2.ModelResult, alpha: float = ALPHA) -> float:
    """Assert the revealed model equals scikit-learn's on the plaintext join; return the relative error."""
    names, x, y = reference_join(data)
    reference = lasso_reference(names, x, y, alpha)
    assert [c.feature for c in result.coefficients] == names
    secure = np.array([c.value for c in result.coefficients])
    plain = np.array([reference[n] for n in names])
    scale = max(float(np.max(np.abs(plain))), 1e-12)
    error = float(np.max(np.abs(secure - plain))) / scale
    assert error <= 1e-5, f"coefficients differ from scikit-learn by {error:.2e} (relative)"
    assert abs(result.intercept - reference["(intercept)"]) <= 1e-4 * max(1.0, abs(reference["(intercept)"]))
    return error


# --- state an org exposes --------------------------------------------------------------


@dataclass(frozen=True)
class OrgState:
    studies: tuple[tuple[str, str, int, tuple[str, ...]], ...]  # (id, digest, state, approved_by)
    runs: tuple[tuple[str, int], ...]  # (run id, state)


def audit_rows(config: OrgConfig, after_seq: int = 0) -> list[tuple[int, str, str, str]]:
    """(seq, actor, action, details JSON) of the org's audit log, read-only from its file."""
    path = audit_path(config.state_dir)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        return list(
            db.execute("SELECT seq, actor, action, details FROM audit WHERE seq > ? ORDER BY seq", (after_seq,))
        )


# --- the mesh ----------------------------------------------------------------------------


@dataclass
class Mesh:
    root: Path
    record_dir: Path
    configs: dict[str, Path] = field(default_factory=dict)
    orgs: dict[str, OrgConfig] = field(default_factory=dict)
    local: LocalMesh | None = None
    _channels: dict[tuple[str, str, str, str], grpc.Channel] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Mesh({self.root})"

    @classmethod
    def create(cls, root: Path) -> Mesh:
        record_dir = root / "records"
        record_dir.mkdir(parents=True, exist_ok=True)
        mesh = cls(root, record_dir)
        # The fault suite runs one study dozens of times: a run policy and local ceiling to match;
        # the suites use fast 1024-bit keys.
        mesh.configs = local_mesh_for(
            root / "mesh", policies={org: {"max_runs": MAX_RUNS} for org in ORGS}, min_paillier_bits=1024
        )
        mesh.orgs = {org: load_config(path, env={}) for org, path in mesh.configs.items()}
        prefix = (sys.executable, "-m", "tests.reliability.instrument", "--")
        placements = {org: OrgPlacement(command_prefix=prefix, env={RECORD_DIR_ENV: str(record_dir)}) for org in ORGS}
        mesh.local = LocalMesh(mesh.configs, placements=placements)
        return mesh

    def start(self) -> None:
        assert self.local is not None
        self.local.start(timeout=120)

    def stop(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        if self.local is not None:
            self.local.stop()

    # Stubs ------------------------------------------------------------------------

    def channel(self, caller: tuple[str, str], target: tuple[str, str]) -> grpc.Channel:
        """A blocking mTLS channel to target (org, server) presenting caller (org, service)'s certificate."""
        key = (*caller, *target)
        if key not in self._channels:
            address = self.orgs[target[0]].self_endpoint.address(target[1])
            self._channels[key] = MeshCredentials(self.orgs[caller[0]].pki_dir, *caller).sync_channel(
                target[0], target[1], address
            )
        return self._channels[key]

    def gateway(
        self, org: str, as_org: str | None = None, as_service: str = "client"
    ) -> gateway_pb2_grpc.GatewayServiceStub:
        """The org's gateway, as its own client (default) or as another identity."""
        return gateway_pb2_grpc.GatewayServiceStub(self.channel((as_org or org, as_service), (org, "gateway")))

    def resharing_as_lasso(self, org: str) -> join_pb2_grpc.ResharingServiceStub:
        return join_pb2_grpc.ResharingServiceStub(self.channel((org, "lasso"), (org, "resharing")))

    # Studies and runs ----------------------------------------------------------------

    def approve(self, spec: common_pb2.StudySpec, sources: dict[str, Path]) -> str:
        gw = {org: self.gateway(org) for org in ORGS}
        study = (
            gw["insurer"]
            .ProposeStudy(
                gateway_pb2.ProposeStudyRequest(spec=spec, source_path=str(sources["insurer"])),
                timeout=CALL_S,
                wait_for_ready=True,
            )
            .study
        )
        gw["hospital"].ApproveStudy(
            gateway_pb2.ApproveStudyRequest(
                study_id=spec.study_id, spec_digest=study.spec_digest, source_path=str(sources["hospital"])
            ),
            timeout=CALL_S,
            wait_for_ready=True,
        )
        gw["helper"].ApproveStudy(
            gateway_pb2.ApproveStudyRequest(study_id=spec.study_id, spec_digest=study.spec_digest),
            timeout=CALL_S,
            wait_for_ready=True,
        )
        return study.spec_digest

    def approve_known(self, known: KnownData, study_id: str) -> str:
        spec = spec_for(known.data, study_id, alphas=[ALPHA], run_policy=common_pb2.RunPolicy(max_runs=MAX_RUNS))
        return self.approve(spec, known.sources)

    def start_run(self, study_id: str, by: str = "insurer") -> str:
        return (
            self.gateway(by)
            .StartRun(gateway_pb2.StartRunRequest(study_id=study_id), timeout=CALL_S, wait_for_ready=True)
            .run.run_id
        )

    def run(self, org: str, run_id: str) -> gateway_pb2.Run | None:
        runs = self.gateway(org).ListRuns(gateway_pb2.ListRunsRequest(), timeout=CALL_S, wait_for_ready=True).runs
        return next((r for r in runs if r.run_id == run_id), None)

    def wait_terminal(self, run_id: str, orgs: Iterable[str], timeout: float) -> dict[str, gateway_pb2.Run]:
        """Each org's run once it is terminal; AssertionError naming the orgs still not after `timeout`."""
        deadline = time.monotonic() + timeout
        final: dict[str, gateway_pb2.Run] = {}
        waiting = list(orgs)
        while waiting:
            for org in list(waiting):
                run = self.run(org, run_id)
                if run is not None and run.state in (
                    common_pb2.RUN_STATE_SUCCEEDED,
                    common_pb2.RUN_STATE_FAILED,
                    common_pb2.RUN_STATE_CANCELLED,
                ):
                    final[org] = run
                    waiting.remove(org)
            if waiting and time.monotonic() > deadline:
                seen = {org: self.run(org, run_id) for org in waiting}
                where = {
                    org: (common_pb2.RunState.Name(r.state), phase_name(self.phase_at(org, run_id))) if r else "unknown"
                    for org, r in seen.items()
                }
                raise AssertionError(f"run {run_id} not ended within {timeout:.0f} s at {where}")
            if waiting:
                time.sleep(0.1)
        return final

    def phase_at(self, org: str, run_id: str) -> int:
        """The phase of the org's own last progress event of the run (as its gateway stored it)."""
        call = self.gateway(org).WatchRun(gateway_pb2.WatchRunRequest(run_id=run_id), timeout=2, wait_for_ready=True)
        phase = common_pb2.PHASE_UNSPECIFIED
        try:
            for reply in call:
                if reply.progress.org == org:
                    phase = reply.progress.phase
        except grpc.RpcError:
            pass  # the watch of a running run ends at its deadline
        return phase

    def run_to_end(self, study_id: str, by: str = "insurer", timeout: float = 120.0) -> dict[str, gateway_pb2.Run]:
        """Start a run and wait for its end everywhere; a run that fails at the starter is
        reported at once (the other orgs may never have heard of it)."""
        run_id = self.start_run(study_id, by)
        started = time.monotonic()
        final = self.wait_terminal(run_id, [by], timeout)
        if final[by].state != common_pb2.RUN_STATE_SUCCEEDED:
            return final
        final.update(
            self.wait_terminal(run_id, [o for o in ORGS if o != by], max(1.0, timeout - (time.monotonic() - started)))
        )
        return final

    def watch_until(
        self, run_id: str, org: str, predicate: Callable[[common_pb2.Progress], bool], timeout: float
    ) -> tuple[common_pb2.Progress, dict[str, int]]:
        """The first progress event (seen at org's gateway) that satisfies predicate, and
        each org's phase in its last event up to then."""
        call = self.gateway(org).WatchRun(
            gateway_pb2.WatchRunRequest(run_id=run_id), timeout=timeout, wait_for_ready=True
        )
        phases: dict[str, int] = {}
        try:
            for reply in call:
                if reply.progress.run_id:
                    phases[reply.progress.org] = reply.progress.phase
                    if predicate(reply.progress):
                        return reply.progress, phases
                if reply.run.state in (
                    common_pb2.RUN_STATE_SUCCEEDED,
                    common_pb2.RUN_STATE_FAILED,
                    common_pb2.RUN_STATE_CANCELLED,
                ):
                    raise AssertionError(
                        f"run {run_id} ended ({common_pb2.RunState.Name(reply.run.state)}: "
                        f"{reply.run.error.reason}) before the trigger"
                    )
        finally:
            call.cancel()
        raise AssertionError(f"run {run_id}: the watch ended before the trigger")

    def ensure_running(self, org: str, server: str) -> None:
        """After a fault: a stopped process continues, a dead one is restarted."""
        proc = self.process(org, server)
        if proc.process.poll() is None:
            os.kill(proc.process.pid, signal.SIGCONT)
        else:
            self.restart(org, server)

    def result(self, org: str, run_id: str) -> lasso_pb2.ModelResult:
        return (
            self.gateway(org)
            .GetResult(gateway_pb2.GetResultRequest(run_id=run_id), timeout=CALL_S, wait_for_ready=True)
            .result
        )

    # Processes -------------------------------------------------------------------------

    def process(self, org: str, server: str) -> ServerProcess:
        assert self.local is not None
        return self.local.find(org, server)

    def kill(self, org: str, server: str) -> int:
        """SIGKILL one server; its child processes still alive 3 s later are killed by pid
        and counted (the return value)."""
        proc = self.process(org, server).process
        children = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _, orphans = psutil.wait_procs(children, timeout=3)
        for orphan in orphans:
            with contextlib.suppress(psutil.NoSuchProcess):
                orphan.kill()
        return len(orphans)

    def signal(self, org: str, server: str, sig: signal.Signals) -> None:
        os.kill(self.process(org, server).process.pid, sig)

    def restart(self, org: str, server: str) -> None:
        assert self.local is not None
        self.local.restart(self.process(org, server), timeout=120)

    def healthy(self) -> None:
        """Every server's health port answers SERVING."""
        assert self.local is not None
        for proc in self.local.processes:
            assert proc.process.poll() is None, f"{proc.org}/{proc.server} is not running"
            wait_healthy(proc.health_address, timeout=30)

    # Recording and tag keys -----------------------------------------------------------------

    def recording(self, on: bool) -> None:
        flag = self.record_dir / RECORDING_FLAG
        if on:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def tag_keys(self) -> list[tuple[bytes, str]]:
        """(tag key, study id) of every run whose owners derived one (each key once)."""
        path = self.record_dir / TAG_KEYS_FILE
        lines = path.read_text().splitlines() if path.exists() else []
        return sorted({(bytes.fromhex(line.split()[0]), line.split()[1]) for line in lines})

    def wire_files(self) -> list[Path]:
        return sorted(self.record_dir.glob("wire-*.bin"))

    # State ----------------------------------------------------------------------------------

    def state(self, org: str) -> OrgState:
        gw = self.gateway(org)
        studies = gw.ListStudies(gateway_pb2.ListStudiesRequest(), timeout=CALL_S, wait_for_ready=True).studies
        runs = gw.ListRuns(gateway_pb2.ListRunsRequest(), timeout=CALL_S, wait_for_ready=True).runs
        return OrgState(
            tuple(sorted((s.spec.study_id, s.spec_digest, s.state, tuple(sorted(s.approved_by))) for s in studies)),
            tuple(sorted((r.run_id, r.state) for r in runs)),
        )

    def states(self) -> dict[str, OrgState]:
        return {org: self.state(org) for org in ORGS}

    def verify_audits(self) -> None:
        for org in ORGS:
            reply = self.gateway(org).VerifyAudit(gateway_pb2.VerifyAuditRequest(), timeout=CALL_S, wait_for_ready=True)
            assert reply.ok, f"{org}'s audit log does not verify: row {reply.first_bad_row}: {reply.problem}"

    def shares_refused(self, run_id: str, orgs: Iterable[str] = ORGS, within: float = 10.0) -> None:
        """No org's resharing serves shares of the run, not even to its own lasso server
        (a gateway that restarts drops its interrupted runs there within `within` s)."""
        for org in orgs:
            deadline = time.monotonic() + within
            while True:
                try:
                    list(
                        self.resharing_as_lasso(org).GetShares(
                            join_pb2.GetSharesRequest(run_id=run_id), timeout=CALL_S, wait_for_ready=True
                        )
                    )
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, (
                        f"{org}: {err.code().name}: {err.details()}"
                    )
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{org}'s resharing served shares of the failed run {run_id}")
                time.sleep(0.2)
