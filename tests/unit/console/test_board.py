"""The steps board: each party's step from the WatchRun messages one org receives."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from riskmesh.v1 import common_pb2 as c
from riskmesh.v1 import gateway_pb2
from services.console.board import ACTIVE, DONE, FAILED, NOT_APPLICABLE, STOPPED, WAITING, Board

PARTIES = [("insurer", c.ROLE_DATA_OWNER), ("hospital", c.ROLE_DATA_OWNER), ("helper", c.ROLE_HELPER)]


def run(state=c.RUN_STATE_RUNNING, error=None) -> gateway_pb2.Run:
    r = gateway_pb2.Run(run_id="r1", study_id="s", state=state)
    if error is not None:
        r.error.CopyFrom(error)
    return r


def event(org, phase, done=0, total=0, state=c.RUN_STATE_RUNNING, at=None, message="") -> gateway_pb2.WatchRunResponse:
    p = c.Progress(run_id="r1", org=org, phase=phase, done=done, total=total, state=state, message=message)
    if at is not None:
        p.at.CopyFrom(Timestamp(seconds=at))
    return gateway_pb2.WatchRunResponse(progress=p, run=run())


def status(board, org, phase):
    return board.cells[(org, phase)].status


def test_roles_skip_the_steps_they_take_no_part_in():
    board = Board.for_parties(PARTIES)
    assert status(board, "insurer", c.PHASE_INTERSECTION) == NOT_APPLICABLE
    assert status(board, "helper", c.PHASE_HASHING_ENCRYPTION) == NOT_APPLICABLE
    assert status(board, "helper", c.PHASE_INTERSECTION) == WAITING


def test_a_later_step_completes_the_earlier_ones_and_counts_show_progress():
    board = Board.for_parties(PARTIES)
    board.add(event("insurer", c.PHASE_HASHING_ENCRYPTION, done=40, total=100))
    assert status(board, "insurer", c.PHASE_SETUP) == DONE
    assert status(board, "insurer", c.PHASE_HASHING_ENCRYPTION) == ACTIVE
    assert board.cells[("insurer", c.PHASE_HASHING_ENCRYPTION)].percent == 40
    assert status(board, "insurer", c.PHASE_RESHARING) == WAITING
    # The helper never reports its setup: its first intersection event implies it.
    board.add(event("helper", c.PHASE_INTERSECTION))
    assert status(board, "helper", c.PHASE_SETUP) == DONE
    board.add(event("insurer", c.PHASE_HASHING_ENCRYPTION, done=100, total=100))
    assert status(board, "insurer", c.PHASE_HASHING_ENCRYPTION) == DONE
    assert "insurer: Hashing" not in board.summary and "helper: Intersection" in board.summary


def test_success_completes_every_step_of_every_party():
    board = Board.for_parties(PARTIES)
    board.add(event("insurer", c.PHASE_GRAM))
    board.add(gateway_pb2.WatchRunResponse(run=run(c.RUN_STATE_SUCCEEDED)))
    assert board.ended
    for org, _role in PARTIES:
        assert {cell.status for (o, _), cell in board.cells.items() if o == org} == {DONE, NOT_APPLICABLE}


def test_failure_names_the_phase_and_reason_and_stops_the_others():
    board = Board.for_parties(PARTIES)
    board.add(event("insurer", c.PHASE_RESHARING))
    board.add(event("hospital", c.PHASE_HASHING_ENCRYPTION, done=10, total=100))
    error = c.RunError(phase=c.PHASE_HASHING_ENCRYPTION, org="hospital", reason="input validation failed")
    board.add(gateway_pb2.WatchRunResponse(run=run(c.RUN_STATE_FAILED, error)))
    assert status(board, "hospital", c.PHASE_HASHING_ENCRYPTION) == FAILED
    assert board.cells[("hospital", c.PHASE_HASHING_ENCRYPTION)].message == "input validation failed"
    assert status(board, "insurer", c.PHASE_RESHARING) == STOPPED
    assert board.summary == "Run failed in Hashing & encryption at hospital: input validation failed"


def test_timeline_runs_each_step_until_the_next_one_starts():
    board = Board.for_parties(PARTIES)
    board.add(event("insurer", c.PHASE_SETUP, at=100))
    board.add(event("insurer", c.PHASE_SETUP, done=1, total=1, at=102))
    board.add(event("insurer", c.PHASE_HASHING_ENCRYPTION, at=103))
    board.add(event("insurer", c.PHASE_HASHING_ENCRYPTION, done=5, total=5, at=107))
    board.add(event("helper", c.PHASE_INTERSECTION, at=104))
    assert board.timeline() == [
        ("insurer", "Setup", 0.0, 3.0),
        ("insurer", "Hashing & encryption", 3.0, 7.0),
        ("helper", "Intersection", 4.0, 4.0),
    ]
    assert Board.for_parties(PARTIES).timeline() == []


def test_events_of_unknown_parties_or_phases_are_ignored():
    board = Board.for_parties(PARTIES)
    board.add(event("mallory", c.PHASE_GRAM))
    board.add(event("insurer", c.PHASE_INTERSECTION))
    assert all(cell.status in (WAITING, NOT_APPLICABLE) for cell in board.cells.values())
