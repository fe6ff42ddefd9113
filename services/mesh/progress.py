"""The Progress message every server reports (counts only, never data), stamped with the time."""

from __future__ import annotations

import time

from riskmesh.v1 import common_pb2


def progress(
    run_id: str,
    org: str,
    phase: common_pb2.Phase.ValueType,
    done: int = 0,
    total: int = 0,
    message: str = "",
    state: common_pb2.RunState.ValueType = common_pb2.RUN_STATE_RUNNING,
) -> common_pb2.Progress:
    report = common_pb2.Progress(
        run_id=run_id, phase=phase, org=org, done=done, total=total, state=state, message=message
    )
    report.at.FromNanoseconds(time.time_ns())
    return report
