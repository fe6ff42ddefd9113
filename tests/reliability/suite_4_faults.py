"""Faults: a process of one organisation is killed (SIGKILL) or frozen (SIGSTOP) while a
run of the fault study is in a given phase, on the suite's shared mesh of processes.

The matrix: every phase the issue names × every organisation, and over the phases each
org loses each kind of server it runs (join server, lasso, gateway):

    phase (trigger)                        insurer        hospital       helper
    hashing_encryption (the org's keys     encryption     encryption     intersection
      ready; the insurer's upload starts)
    intersection (first upload received)   resharing      gateway        intersection
    resharing (insurer awaits its shares)  gateway        resharing      resharing
    input (the org fetches its shares)     lasso          gateway        lasso
    iterations (the org's first iteration) gateway        lasso          gateway

A run's phases last tens of milliseconds at this size, so the kill is triggered by a
progress event at the start of the phase and each victim is a process the run still
needs after that moment (an encryption server until its upload is accepted, the
intersection until its deliveries, a resharing server until its lasso fetched the
shares, a lasso server or gateway until the end); the phase in which the failure is
reported is therefore the trigger's phase or a later one, and is printed per fault.
With the randomness pool made before the run (ADR 0013), an owner's hashing/encryption
is its upload alone (15-80 ms here), too short to hit from a trigger: its encryption
server is killed at the owner's "keys ready" instead (the end of its setup: from then the
server holds the run's prepared table and keys, and the run needs it until its upload is
accepted), with that owner starting the run, so that the helper's and the other owner's
setup still lie between the trigger and its upload. A gateway killed is never the starter's.

Every fault must end the run FAILED, with a phase and a reason, at every org still
alive within FAIL_BOUND_S; leave no shares that anyone would serve and no result; leave
every study, every earlier run and the control study's result as they were, every
gateway answering and every audit log verifying; after the killed process is restarted
(`LocalMesh.restart`), a rerun of the same study must succeed and equal scikit-learn.

Slow peers (SIGSTOP, SIGCONT once the others ended the run): a gateway frozen before its
org's MPC starts (the peers' watchdog ends the run: a gateway frozen only during the
iterations is not needed again and the run rightly succeeds), the helper's intersection
frozen (gRPC keepalive on its gateway's stream) and a lasso server frozen during the
iterations (keepalive on the MPC streams). A frozen gateway, thawed, ends its part too.

A SIGKILLed server's child processes (an encryption server's forkserver and pool workers)
are not killed with it; they are counted in the fault's detail and killed by pid.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass

import grpc
import pytest

from riskmesh.v1 import common_pb2, gateway_pb2, join_pb2, join_pb2_grpc
from services.reliability.ledger import Ledger
from tests.reliability.harness import (
    ORGS,
    OWNERS,
    KnownData,
    Mesh,
    OrgState,
    check_coefficients,
    phase_name,
    phase_rank,
)

pytestmark = pytest.mark.e2e

FAULT_STUDY = "fault-study"
CONTROL_STUDY = "control-study"
FAIL_BOUND_S = 30.0  # gateway watchdog ≤ 3 × 2 s + call timeouts; lasso heartbeat 10 s; keepalive ≈ 4 s
TRIGGER_S = 120.0

P = common_pb2


@dataclass(frozen=True)
class Trigger:
    org: str
    phase: int
    message: str | None = None  # a prefix of the progress message, when the phase alone is too late

    def matches(self, progress: common_pb2.Progress) -> bool:
        return (
            progress.org == self.org
            and progress.phase == self.phase
            and (self.message is None or progress.message.startswith(self.message))
        )


@dataclass(frozen=True)
class Fault:
    phase: str  # the phase named in the matrix
    org: str
    server: str
    trigger: Trigger
    freeze: bool = False
    starter: str = "insurer"  # the owner that starts the run (and whose gateway the suite watches)

    @property
    def name(self) -> str:
        return f"{'freeze' if self.freeze else 'kill'} {self.org}/{self.server} during {self.phase}"


def _keys_ready(org: str) -> Trigger:
    return Trigger(org, P.PHASE_SETUP, "keys ready")  # the gateway's, after PrepareEncryption (module docstring)


def _upload_starts(org: str) -> Trigger:
    return Trigger(org, P.PHASE_SETUP, "randomness pool: ")  # RunEncryption's first event, before its upload


UPLOAD_RECEIVED = Trigger("helper", P.PHASE_INTERSECTION, "upload from")
INSURER_RESHARES = Trigger("insurer", P.PHASE_RESHARING)  # its upload was accepted; it awaits its shares


def _fetching(org: str) -> Trigger:
    return Trigger(org, P.PHASE_INPUT, "fetching this party's input shares")


def _iterating(org: str) -> Trigger:
    return Trigger(org, P.PHASE_ITERATIONS)


KILLS = [
    Fault("hashing_encryption", "insurer", "encryption", _keys_ready("insurer")),
    Fault("hashing_encryption", "hospital", "encryption", _keys_ready("hospital"), starter="hospital"),
    Fault("hashing_encryption", "helper", "intersection", _upload_starts("insurer")),
    Fault("intersection", "insurer", "resharing", UPLOAD_RECEIVED),
    Fault("intersection", "hospital", "gateway", UPLOAD_RECEIVED),
    Fault("intersection", "helper", "intersection", UPLOAD_RECEIVED),
    Fault("resharing", "insurer", "gateway", INSURER_RESHARES, starter="hospital"),
    Fault("resharing", "hospital", "resharing", INSURER_RESHARES),
    Fault("resharing", "helper", "resharing", INSURER_RESHARES),
    Fault("input", "insurer", "lasso", _fetching("insurer")),
    Fault("input", "hospital", "gateway", _fetching("hospital")),
    Fault("input", "helper", "lasso", _fetching("helper")),
    Fault("iterations", "insurer", "gateway", _iterating("insurer"), starter="hospital"),
    Fault("iterations", "hospital", "lasso", _iterating("hospital")),
    Fault("iterations", "helper", "gateway", _iterating("helper")),
]
FREEZES = [
    Fault("intersection", "hospital", "gateway", UPLOAD_RECEIVED, freeze=True),  # the peers' watchdog
    Fault(
        "intersection", "helper", "intersection", UPLOAD_RECEIVED, freeze=True
    ),  # keepalive on the helper gateway's stream
    Fault("iterations", "helper", "lasso", _iterating("helper"), freeze=True),  # keepalive on the MPC streams
]
assert not [f.name for f in KILLS + FREEZES if (f.org, f.server) == (f.starter, "gateway")], "the watched gateway"


@dataclass
class Baseline:
    """What must survive every fault: the control study's result and every org's state."""

    control_run: str
    control_result: bytes
    states: dict[str, OrgState]


@pytest.fixture(scope="module")
def baseline(mesh: Mesh, known: KnownData) -> Baseline:
    mesh.approve_known(known, CONTROL_STUDY)
    finals = mesh.run_to_end(CONTROL_STUDY)
    assert all(r.state == P.RUN_STATE_SUCCEEDED for r in finals.values()), finals
    run_id = finals["insurer"].run_id
    mesh.approve_known(known, FAULT_STUDY)
    return Baseline(run_id, mesh.result("insurer", run_id).SerializeToString(deterministic=True), mesh.states())


def _unchanged(before: OrgState, after: OrgState, new_runs: set[str]) -> None:
    assert after.studies == before.studies, "a study changed"
    kept = tuple(r for r in after.runs if r[0] not in new_runs)
    assert kept == before.runs, "an earlier run changed or disappeared"


def _starts_clean(mesh: Mesh, fault: Fault, run_id: str) -> None:
    """The restarted server knows nothing of the run it was killed in (resharing: see
    `shares_refused`; a gateway ends it FAILED; a lasso server keeps nothing between runs).
    The suite's channel may still be in its reconnect backoff: the calls wait for it."""
    caller = mesh.channel((fault.org, "gateway"), (fault.org, fault.server))
    if fault.server == "intersection":
        with pytest.raises(grpc.RpcError) as err:
            list(
                join_pb2_grpc.IntersectionServiceStub(caller).AwaitIntersection(
                    join_pb2.AwaitIntersectionRequest(run_id=run_id), timeout=10, wait_for_ready=True
                )
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()
    if fault.server == "encryption":
        with pytest.raises(grpc.RpcError) as err:
            list(
                join_pb2_grpc.EncryptionServiceStub(caller).RunEncryption(
                    join_pb2.RunEncryptionRequest(run_id=run_id), timeout=10, wait_for_ready=True
                )
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()


def _inject(mesh: Mesh, known: KnownData, baseline: Baseline, fault: Fault) -> str:
    """Inject the fault and check everything the module docstring lists; returns the detail line."""
    before = mesh.states()
    run_id = mesh.start_run(FAULT_STUDY, by=fault.starter)
    seen, phases = mesh.watch_until(run_id, fault.starter, fault.trigger.matches, TRIGGER_S)
    gateway_hit = fault.server == "gateway"
    alive = [o for o in ORGS if not (o == fault.org and gateway_hit)]
    hit = time.monotonic()
    orphans = 0
    if fault.freeze:
        mesh.signal(fault.org, fault.server, signal.SIGSTOP)
    else:
        orphans = mesh.kill(fault.org, fault.server)
    try:
        finals = mesh.wait_terminal(run_id, alive, FAIL_BOUND_S)
        ended = time.monotonic() - hit
        if fault.freeze:
            mesh.signal(fault.org, fault.server, signal.SIGCONT)
            if gateway_hit:  # thawed, it ends its own part too
                finals.update(mesh.wait_terminal(run_id, [fault.org], FAIL_BOUND_S))
        else:
            mesh.restart(fault.org, fault.server)
            if gateway_hit:
                finals.update(mesh.wait_terminal(run_id, [fault.org], 1.0))
                assert finals[fault.org].error.reason == "gateway restarted during the run", finals[fault.org]
    finally:
        mesh.ensure_running(fault.org, fault.server)
    for org, run in finals.items():
        assert run.state == P.RUN_STATE_FAILED, f"{org}: {P.RunState.Name(run.state)}"
        assert run.error.reason and run.error.org and run.error.phase != P.PHASE_UNSPECIFIED, (
            f"{org}: no phase or reason: {run.error}"
        )
        # The failure is reported in a phase the detecting org had not left before the fault.
        floor = phases.get(run.error.org, P.PHASE_SETUP)
        assert phase_rank(run.error.phase) >= phase_rank(floor), (
            f"{org}: failed in {phase_name(run.error.phase)} at {run.error.org}, "
            f"which was in {phase_name(floor)} already"
        )
    mesh.healthy()
    if not fault.freeze:
        _starts_clean(mesh, fault, run_id)
    # Nothing half-written is used: no shares served anywhere, no result for the run.
    mesh.shares_refused(run_id)
    for org in OWNERS:
        with pytest.raises(grpc.RpcError) as no_result:
            mesh.result(org, run_id)
        assert no_result.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Other studies, earlier runs and the control result are intact; audits verify.
    after = mesh.states()
    for org in ORGS:
        _unchanged(before[org], after[org], {run_id})
    assert (
        mesh.result("hospital", baseline.control_run).SerializeToString(deterministic=True) == baseline.control_result
    )
    mesh.verify_audits()
    # A rerun of the same study succeeds.
    rerun = mesh.run_to_end(FAULT_STUDY)
    assert all(r.state == P.RUN_STATE_SUCCEEDED for r in rerun.values()), {
        o: (P.RunState.Name(r.state), r.error.reason) for o, r in rerun.items()
    }
    check_coefficients(known.data, mesh.result("insurer", rerun["insurer"].run_id))
    reasons = "; ".join(sorted({f"{o}: {phase_name(r.error.phase)} at {r.error.org}" for o, r in finals.items()}))
    left = f"; {orphans} orphaned child processes killed" if orphans else ""
    return f"hit in {phase_name(seen.phase)}, FAILED everywhere in {ended:.1f} s ({reasons}); rerun SUCCEEDED{left}"


@pytest.mark.reliability("faults", "kill (SIGKILL), restart, rerun")
@pytest.mark.parametrize("fault", KILLS, ids=[f.name.replace(" ", "-") for f in KILLS])
def test_kill(
    mesh: Mesh,
    known: KnownData,
    baseline: Baseline,
    ledger: Ledger,
    error_messages: list[tuple[str, str]],
    fault: Fault,
) -> None:
    with ledger.check("faults", "kill (SIGKILL), restart, rerun", fault.name) as item:
        item.detail = _inject(mesh, known, baseline, fault)
    _collect_reasons(mesh, error_messages)


@pytest.mark.reliability("faults", "freeze (SIGSTOP), thaw, rerun")
@pytest.mark.parametrize("fault", FREEZES, ids=[f.name.replace(" ", "-") for f in FREEZES])
def test_freeze(
    mesh: Mesh,
    known: KnownData,
    baseline: Baseline,
    ledger: Ledger,
    error_messages: list[tuple[str, str]],
    fault: Fault,
) -> None:
    with ledger.check("faults", "freeze (SIGSTOP), thaw, rerun", fault.name) as item:
        item.detail = _inject(mesh, known, baseline, fault)
    _collect_reasons(mesh, error_messages)


def _collect_reasons(mesh: Mesh, error_messages: list[tuple[str, str]]) -> None:
    for org in ORGS:
        for run in (
            mesh.gateway(org)
            .ListRuns(gateway_pb2.ListRunsRequest(study_id=FAULT_STUDY), timeout=30, wait_for_ready=True)
            .runs
        ):
            if run.error.reason:
                error_messages.append((f"{org} run {run.run_id}", run.error.reason))
