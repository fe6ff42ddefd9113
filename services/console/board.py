"""The protocol's steps for each party, from one organisation's point of view (the
pilot's Figure 3): built from the progress events its gateway's WatchRun returns.

Pure: no gRPC, no HTML. A party's step is *done* once a later step of that party has
started, its own count reached its total, or the run succeeded; *active* while it is the
party's latest step; *failed* where the run's error names it. Parties do not report
every step (the helper's setup, for one), so a later step implies the earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from riskmesh.v1 import common_pb2, gateway_pb2

# Figure 3's order, left to right: (phase, label).
STEPS: tuple[tuple[int, str], ...] = (
    (common_pb2.PHASE_SETUP, "Setup"),
    (common_pb2.PHASE_HASHING_ENCRYPTION, "Hashing & encryption"),
    (common_pb2.PHASE_INTERSECTION, "Intersection"),
    (common_pb2.PHASE_RESHARING, "Resharing"),
    (common_pb2.PHASE_INPUT, "Input"),
    (common_pb2.PHASE_GRAM, "Gram"),
    (common_pb2.PHASE_ITERATIONS, "Iterations"),
    (common_pb2.PHASE_REVEAL, "Reveal"),
)
PHASE_LABELS = dict(STEPS)
# Steps a role takes no part in: owners do not intersect, the helper neither hashes nor encrypts.
NOT_FOR_ROLE = {
    common_pb2.ROLE_DATA_OWNER: {common_pb2.PHASE_INTERSECTION},
    common_pb2.ROLE_HELPER: {common_pb2.PHASE_HASHING_ENCRYPTION},
}
TERMINAL = {common_pb2.RUN_STATE_SUCCEEDED, common_pb2.RUN_STATE_FAILED, common_pb2.RUN_STATE_CANCELLED}

WAITING, ACTIVE, DONE, FAILED, STOPPED, NOT_APPLICABLE = "waiting", "active", "done", "failed", "stopped", "n/a"


def phase_label(phase: int) -> str:
    return PHASE_LABELS.get(phase, "—")


def run_state_label(state: int) -> str:
    return (
        common_pb2.RunState.Name(state).removeprefix("RUN_STATE_").lower()
        if state in common_pb2.RunState.values()
        else "unknown"
    )


@dataclass
class Cell:
    status: str = WAITING
    done: int = 0
    total: int = 0
    message: str = ""
    first_at: float | None = None  # seconds since the epoch, from the events' `at`
    last_at: float | None = None

    @property
    def percent(self) -> int | None:
        if not self.total:
            return None
        return min(100, int(100 * self.done / self.total))


@dataclass
class Board:
    """Rows: parties (spec order); columns: STEPS."""

    parties: list[tuple[str, int]]  # (org, role)
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)
    run: gateway_pb2.Run | None = None
    _latest: dict[str, int] = field(default_factory=dict)
    _succeeded: set[str] = field(default_factory=set)

    @classmethod
    def for_parties(cls, parties: list[tuple[str, int]]) -> Board:
        board = cls(parties=list(parties))
        for org, role in parties:
            for phase, _ in STEPS:
                board.cells[(org, phase)] = Cell(NOT_APPLICABLE if phase in NOT_FOR_ROLE.get(role, set()) else WAITING)
        return board

    def add(self, response: gateway_pb2.WatchRunResponse) -> None:
        """Take one WatchRun message (a progress event and/or the run's state)."""
        if response.HasField("run"):
            self.run = response.run
        if response.HasField("progress") and response.progress.run_id:
            self._progress(response.progress)
        self._settle()

    def _progress(self, p: common_pb2.Progress) -> None:
        cell = self.cells.get((p.org, p.phase))
        if cell is None or cell.status == NOT_APPLICABLE:
            return
        at = p.at.ToNanoseconds() / 1e9 if p.HasField("at") else None
        if at is not None:
            cell.first_at = at if cell.first_at is None else min(cell.first_at, at)
            cell.last_at = at if cell.last_at is None else max(cell.last_at, at)
        if p.total:
            cell.done, cell.total = p.done, p.total
        if p.message:
            cell.message = p.message
        if p.state == common_pb2.RUN_STATE_SUCCEEDED:
            self._succeeded.add(p.org)
        if p.state != common_pb2.RUN_STATE_FAILED and STEP_INDEX[p.phase] >= STEP_INDEX.get(
            self._latest.get(p.org, 0), -1
        ):
            self._latest[p.org] = p.phase

    def _settle(self) -> None:
        state = self.run.state if self.run is not None else common_pb2.RUN_STATE_UNSPECIFIED
        error = self.run.error if self.run is not None and self.run.HasField("error") else None
        for org, _ in self.parties:
            latest = STEP_INDEX.get(self._latest.get(org, 0), -1)
            finished = org in self._succeeded or state == common_pb2.RUN_STATE_SUCCEEDED
            for phase, _ in STEPS:
                cell = self.cells[(org, phase)]
                if cell.status == NOT_APPLICABLE:
                    continue
                index = STEP_INDEX[phase]
                if finished or index < latest or (index == latest and cell.total and cell.done >= cell.total):
                    cell.status = DONE
                elif index == latest:
                    cell.status = ACTIVE
                else:
                    cell.status = WAITING
                if state in (common_pb2.RUN_STATE_FAILED, common_pb2.RUN_STATE_CANCELLED) and cell.status == ACTIVE:
                    cell.status = STOPPED
        if error is not None and (error.org, error.phase) in self.cells:
            cell = self.cells[(error.org, error.phase)]
            if cell.status != NOT_APPLICABLE:
                cell.status = FAILED
                cell.message = error.reason

    @property
    def ended(self) -> bool:
        return self.run is not None and self.run.state in TERMINAL

    @property
    def summary(self) -> str:
        """One sentence for the page (and screen readers): where the run stands."""
        if self.run is None:
            return "Waiting for the run's first progress…"
        state = run_state_label(self.run.state)
        if self.run.HasField("error") and self.run.state in (
            common_pb2.RUN_STATE_FAILED,
            common_pb2.RUN_STATE_CANCELLED,
        ):
            e = self.run.error
            return f"Run {state} in {phase_label(e.phase)} at {e.org}: {e.reason}"
        active = [f"{org}: {phase_label(phase)}" for (org, phase), c in self.cells.items() if c.status == ACTIVE]
        if state == "running" and active:
            return "Running — " + "; ".join(active)
        return f"Run {state}" + (f", {self.run.joined} patients in the intersection" if self.run.joined else "")

    def timeline(self) -> list[tuple[str, str, float, float]]:
        """(org, step label, start, end) in seconds since the first event, for the waterfall.
        A step ends where the party's next step starts (or at its own last event)."""
        starts = [c.first_at for c in self.cells.values() if c.first_at is not None]
        if not starts:
            return []
        t0 = min(starts)
        rows = []
        for org, _ in self.parties:
            timed = [
                (phase, self.cells[(org, phase)]) for phase, _ in STEPS if self.cells[(org, phase)].first_at is not None
            ]
            for i, (phase, cell) in enumerate(timed):
                end = timed[i + 1][1].first_at if i + 1 < len(timed) else cell.last_at
                rows.append((org, phase_label(phase), cell.first_at - t0, max(end, cell.first_at) - t0))  # type: ignore[operator, type-var]
        return rows


STEP_INDEX = {phase: i for i, (phase, _) in enumerate(STEPS)}
