"""What an MPC program run by the lasso worker receives, and the programs there are.

A program is `async def program(mpc, context) -> ModelResult`, run by the worker
between MPyC's `start` (all peers connected over the mesh) and `shutdown`. It reports
progress with `context.report(phase, done, total)` (counts only) and returns the
result this party may see; the server blanks the helper's result regardless.

Programs are named here and imported by the worker before its run is known (a spare
worker waits with its program loaded: services.lasso.worker.handle), so a program's
modules must not import `mpyc.runtime` at import time: they get the runtime as `mpc`,
built once the party id is known (the worker refuses to build a second one).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from riskmesh.v1 import common_pb2, lasso_pb2
from services.lasso.core.blocks import ShareBlock

ReportFn = Callable[[int, int, int], None]


class ProgramError(Exception):
    """A program cannot run on these inputs; the message is reported as is (never data)."""


# name → "module:function": the production programs. Tests and benchmarks add their own
# through EXTRA_PROGRAMS_ENV (set by whoever starts the server, never by a peer).
PROGRAMS: dict[str, str] = {
    "lasso": "services.lasso.worker.lasso_program:run",
}
EXTRA_PROGRAMS_ENV = "RISKMESH_EXTRA_PROGRAMS"


def extra_programs(env: Mapping[str, str]) -> dict[str, str]:
    """Programs registered through the environment: "name=module:function;name=module:function"."""
    programs: dict[str, str] = {}
    for entry in filter(None, env.get(EXTRA_PROGRAMS_ENV, "").split(";")):
        name, sep, target = entry.partition("=")
        if not sep or ":" not in target:
            raise ValueError(f"{EXTRA_PROGRAMS_ENV}: expected name=module:function, got {entry!r}")
        programs[name.strip()] = target.strip()
    return programs


def program_env(programs: Mapping[str, str]) -> dict[str, str]:
    """The environment entry that registers `programs` in workers started with it."""
    return {EXTRA_PROGRAMS_ENV: ";".join(f"{name}={target}" for name, target in programs.items())}


@dataclass(frozen=True)
class RunContext:
    """One party's view of a run: who it is, the study, its input shares."""

    run_id: str
    spec: common_pb2.StudySpec
    pid: int
    orgs: tuple[str, ...]
    shares: list[ShareBlock] = field(repr=False)
    report: ReportFn = field(repr=False)
    # This party's floor on the joined count from its organisation's local policy (0: none).
    min_joined: int = 0


Program = Callable[[Any, RunContext], Awaitable[lasso_pb2.ModelResult]]


def load_program(name: str, env: Mapping[str, str] | None = None) -> Program:
    """Import a named program (its modules never import `mpyc.runtime`: see the module docstring)."""
    known = {**PROGRAMS, **extra_programs(os.environ if env is None else env)}
    if name not in known:
        raise ValueError(f"unknown MPC program {name!r}; known: {sorted(known)}")
    module_name, function = known[name].split(":")
    return getattr(importlib.import_module(module_name), function)
