"""A run's revealed model: reading it and predicting with it, for data owners only.

A result is served only for a SUCCEEDED run (a run can fail after its result arrived),
and every read is audited. Predictions use the stored model locally (`predict`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from riskmesh.v1 import common_pb2, lasso_pb2
from services.gateway import access
from services.gateway.audit import AuditLog
from services.gateway.errors import RequestError
from services.gateway.predict import predict
from services.gateway.store import RunRecord, Store
from services.mesh.identity import Identity


class Results:
    def __init__(self, org: str, store: Store, audit: AuditLog) -> None:
        self.org = org
        self.store = store
        self.audit = audit

    def _owned_run(self, run_id: str, what: str) -> RunRecord:
        run = self.store.get_run(run_id)
        access.require_owner(self.store.get_spec(run.digest), self.org, what)
        return run

    def read(self, run_id: str, caller: Identity) -> tuple[RunRecord, lasso_pb2.ModelResult]:
        """The run and its model; who asked goes into the audit record."""
        run = self._owned_run(run_id, "reading a result")
        if run.state != common_pb2.RUN_STATE_SUCCEEDED:
            state = common_pb2.RunState.Name(run.state)
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"run {run.run_id} is {state}, not SUCCEEDED")
        result = self.store.get_result(run.run_id)
        if result is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"run {run.run_id} has no stored result")
        details = {"joined": run.joined}
        self.audit.append(str(caller), "result.read", study_id=run.study_id, run_id=run.run_id, details=details)
        return run, result

    def predict(self, run_id: str, records: Sequence[Mapping[str, float]]) -> list[float]:
        """One prediction per record with the run's model (`PredictError` for a bad record)."""
        run = self._owned_run(run_id, "predicting with a revealed model")
        result = self.store.get_result(run.run_id)
        if result is None:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"run {run.run_id} has no revealed model")
        return predict(result, records)
