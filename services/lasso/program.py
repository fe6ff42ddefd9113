"""What an MPC program run by the lasso worker receives, and the programs there are.

A program is `async def program(mpc, context) -> ModelResult`, run by the worker
between MPyC's `start` (all peers connected over the mesh) and `shutdown`. It reports
progress with `context.report(phase, done, total)` (counts only) and returns the
result this party may see; the server blanks the helper's result regardless.

Programs are named here and imported by the worker only after MPyC's runtime exists,
because their modules may `from mpyc.runtime import mpc` at import time.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from riskmesh.v1 import common_pb2, lasso_pb2
from services.lasso.shares import ShareBlock

ReportFn = Callable[[int, int, int], None]


class ProgramError(Exception):
    """A program cannot run on these inputs; the message is reported as is (never data)."""

# name → "module:function"; the lasso server runs "lasso", tests and benchmarks the others.
PROGRAMS: dict[str, str] = {
    "lasso": "services.lasso.lasso_program:run",
    "transport-check": "services.lasso.transport_check:run",
    "rounds": "services.lasso.transport_bench:rounds_program",
}


@dataclass(frozen=True)
class RunContext:
    """One party's view of a run: who it is, the study, its input shares."""

    run_id: str
    spec: common_pb2.StudySpec
    pid: int
    orgs: tuple[str, ...]
    shares: list[ShareBlock] = field(repr=False)
    report: ReportFn = field(repr=False)


Program = Callable[[Any, RunContext], Awaitable[lasso_pb2.ModelResult]]


def load_program(name: str) -> Program:
    """Import a named program (call only once MPyC's runtime is built in this process)."""
    if name not in PROGRAMS:
        raise ValueError(f"unknown MPC program {name!r}; known: {sorted(PROGRAMS)}")
    module_name, function = PROGRAMS[name].split(":")
    return getattr(importlib.import_module(module_name), function)
