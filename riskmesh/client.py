"""A small typed client for an organisation's own gateway, for hospital systems and the CLI.

    from riskmesh.client import GatewayClient
    with GatewayClient.from_pki("localhost:7100", org="insurer", pki_dir=".riskmesh/pki") as gw:
        print(gw.get_info())

The caller authenticates with its org's `client` certificate (spiffe://<org>/client);
the gateway's certificate must be issued by the org's own CA and name
`gateway.<org>.riskmesh`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc

from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, lasso_pb2

DEFAULT_TIMEOUT_S = 30.0
#: Models fitted by a fixed number of Newton steps: no convergence certificate to check.
UNCERTIFIED_KINDS = (common_pb2.MODEL_KIND_LOGISTIC, common_pb2.MODEL_KIND_POISSON, common_pb2.MODEL_KIND_SVM)


class UncertifiedModelWarning(UserWarning):
    """A revealed model whose convergence certificate did not hold: it may be far from the optimum."""


class GatewayClient:
    def __init__(self, address: str, org: str, certificate_pem: bytes, private_key_pem: bytes, ca_pem: bytes) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=private_key_pem, certificate_chain=certificate_pem
        )
        options = [
            ("grpc.ssl_target_name_override", f"gateway.{org}.riskmesh"),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        self.org = org
        self._channel = grpc.secure_channel(address, credentials, options=options)
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)

    @classmethod
    def from_pki(cls, address: str, org: str, pki_dir: str | Path, identity: str = "client") -> GatewayClient:
        """Use <pki_dir>/<org>/<identity>.pem/.key and the org's CA."""
        root = Path(pki_dir) / org
        return cls(
            address,
            org,
            (root / f"{identity}.pem").read_bytes(),
            (root / f"{identity}.key").read_bytes(),
            (root / "ca.pem").read_bytes(),
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_info(self) -> gateway_pb2.GetInfoResponse:
        return self._stub.GetInfo(gateway_pb2.GetInfoRequest(), timeout=DEFAULT_TIMEOUT_S)

    def check_peers(self) -> gateway_pb2.CheckPeersResponse:
        return self._stub.CheckPeers(gateway_pb2.CheckPeersRequest(), timeout=DEFAULT_TIMEOUT_S)

    def propose(self, spec: common_pb2.StudySpec, source_path: str = "") -> gateway_pb2.Study:
        return self._stub.ProposeStudy(
            gateway_pb2.ProposeStudyRequest(spec=spec, source_path=source_path), timeout=DEFAULT_TIMEOUT_S
        ).study

    def approve(self, study_id: str, spec_digest: str, source_path: str = "") -> gateway_pb2.Study:
        request = gateway_pb2.ApproveStudyRequest(study_id=study_id, spec_digest=spec_digest, source_path=source_path)
        return self._stub.ApproveStudy(request, timeout=DEFAULT_TIMEOUT_S).study

    def approve_run(self, study_id: str, org: str = "", commitment: str = "") -> gateway_pb2.Study:
        """Approve the other owner's next run (`org`, default: the other owner): its pending changed
        input, or the given `commitment`, or else any input unchanged since its previous run."""
        request = gateway_pb2.ApproveRunRequest(study_id=study_id, org=org, commitment=commitment)
        return self._stub.ApproveRun(request, timeout=DEFAULT_TIMEOUT_S).study

    def get_study(self, study_id: str) -> gateway_pb2.Study:
        return self._stub.GetStudy(gateway_pb2.GetStudyRequest(study_id=study_id), timeout=DEFAULT_TIMEOUT_S).study

    def offline_status(self, study_id: str) -> gateway_pb2.OfflineStatus:
        """This organisation's material for the study's next run, made before the run (data owners)."""
        return self._stub.GetStudy(gateway_pb2.GetStudyRequest(study_id=study_id), timeout=DEFAULT_TIMEOUT_S).offline

    def list_studies(self) -> list[gateway_pb2.Study]:
        return list(self._stub.ListStudies(gateway_pb2.ListStudiesRequest(), timeout=DEFAULT_TIMEOUT_S).studies)

    def start_run(self, study_id: str) -> gateway_pb2.Run:
        return self._stub.StartRun(gateway_pb2.StartRunRequest(study_id=study_id), timeout=DEFAULT_TIMEOUT_S).run

    def watch(self, run_id: str, timeout: float | None = None) -> Iterator[gateway_pb2.WatchRunResponse]:
        yield from self._stub.WatchRun(gateway_pb2.WatchRunRequest(run_id=run_id), timeout=timeout)

    def wait(self, run_id: str, timeout: float | None = None) -> gateway_pb2.Run:
        """The run as this gateway last reports it, once it has ended (or `timeout` passed). Each organisation's
        gateway ends a run on its own, so another party's "succeeded" does not yet mean this gateway's."""
        last = None
        for event in self.watch(run_id, timeout=timeout):
            last = event.run
        if last is None:
            raise RuntimeError(f"run {run_id}: the gateway sent no state")
        return last

    def result(self, run_id: str) -> tuple[gateway_pb2.Run, lasso_pb2.ModelResult]:
        """The run and its revealed model; warns (`UncertifiedModelWarning`) when the lasso-family solver did not
        certify it (the GLMs take a fixed number of Newton steps and have no certificate)."""
        reply = self._stub.GetResult(gateway_pb2.GetResultRequest(run_id=run_id), timeout=DEFAULT_TIMEOUT_S)
        if reply.result.coefficients and not reply.result.converged and reply.result.kind not in UNCERTIFIED_KINDS:
            warnings.warn(
                f"run {run_id}: the model is not certified (the solver stopped at its maximum of "
                f"{reply.result.iterations} iterations); it may be far from the optimum",
                UncertifiedModelWarning,
                stacklevel=2,
            )
        return reply.run, reply.result

    def cancel(self, run_id: str) -> gateway_pb2.Run:
        return self._stub.CancelRun(gateway_pb2.CancelRunRequest(run_id=run_id), timeout=DEFAULT_TIMEOUT_S).run

    def list_runs(self, study_id: str = "") -> list[gateway_pb2.Run]:
        return list(self._stub.ListRuns(gateway_pb2.ListRunsRequest(study_id=study_id), timeout=DEFAULT_TIMEOUT_S).runs)

    def predict(self, run_id: str, records: list[dict[str, float]]) -> list[float]:
        """One prediction per record: the fitted value (linear), the probability of class 1 (logistic),
        the expected count (Poisson) or the class 0/1 (SVM); `predict_with_kind` also says which."""
        return self.predict_with_kind(run_id, records)[0]

    def predict_with_kind(self, run_id: str, records: list[dict[str, float]]) -> tuple[list[float], int]:
        """(predictions, the applied model's `ModelKind`)."""
        request = gateway_pb2.PredictRequest(run_id=run_id, records=[gateway_pb2.Record(values=r) for r in records])
        reply = self._stub.Predict(request, timeout=DEFAULT_TIMEOUT_S)
        return list(reply.predictions), reply.kind

    def verify_audit(self) -> gateway_pb2.VerifyAuditResponse:
        return self._stub.VerifyAudit(gateway_pb2.VerifyAuditRequest(), timeout=DEFAULT_TIMEOUT_S)

    def list_audit(self, after_seq: int = 0, limit: int = 0) -> gateway_pb2.ListAuditResponse:
        """Audit rows with seq > after_seq, oldest first (at most `limit`; 0 = the gateway's default)."""
        return self._stub.ListAudit(
            gateway_pb2.ListAuditRequest(after_seq=after_seq, limit=limit), timeout=DEFAULT_TIMEOUT_S
        )
