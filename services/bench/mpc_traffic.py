"""MPC rounds and messages of one run, from the lasso servers' exported `mpc traffic` spans.

Each party's lasso server records, when its run finishes, one span `mpc traffic` with the
rounds, messages and payload bytes its MPC worker sent per phase (services/lasso/servicer.py,
counted in services/lasso/worker/transport.py). A benchmark reads them from the orgs'
state directories (`<state_dir>/spans/*.jsonl`) after the servers stopped (they flush then):

    mpc_rounds    phase → the most rounds any party needed in it, and "total" (their sum):
                  over a network with one-way delay d a phase takes at least ≈ rounds × d
    mpc_messages  phase → messages the three parties sent in it, and "total"

"other" is MPyC's start and shutdown.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from services.mesh.telemetry import read_spans
from services.tools.traces import span_files

SPAN_NAME = "mpc traffic"
PREFIX = "riskmesh.mpc."


def mpc_traffic(roots: Iterable[Path], run_id: str) -> dict[str, dict[str, int]]:
    """{"mpc_rounds": {...}, "mpc_messages": {...}} of `run_id` (empty dicts if no span was found)."""
    rounds: dict[str, int] = {}
    messages: dict[str, int] = {}
    for span in read_spans(span_files(roots)):
        attributes = span.get("attributes") or {}
        if span.get("name") != SPAN_NAME or attributes.get("riskmesh.run.id") != run_id:
            continue
        for key, value in attributes.items():
            if not key.startswith(PREFIX):
                continue
            kind, _, phase = key.removeprefix(PREFIX).partition(".")
            if kind == "rounds":
                rounds[phase] = max(rounds.get(phase, 0), int(value))
            elif kind == "messages":
                messages[phase] = messages.get(phase, 0) + int(value)
    if rounds:
        rounds["total"] = sum(rounds.values())
        messages["total"] = sum(messages.values())
    return {"mpc_rounds": rounds, "mpc_messages": messages}
