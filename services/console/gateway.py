"""The console's only connection: its own organisation's gateway, over mTLS, as
spiffe://<org>/console (the gateway's authorisation rules admit it on the client RPCs).

An asyncio channel, opened in the web server's event loop. Errors keep the gateway's
status code and message, which the pages show as they are (the gateway never puts
patient data in them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from riskmesh.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, lasso_pb2
from services.mesh.config import OrgConfig
from services.mesh.tls import MeshCredentials

IDENTITY = "console"
CALL_TIMEOUT_S = 30.0
WATCH_TIMEOUT_S = 3600.0


class GatewayError(Exception):
    """A refused or failed gateway call: its status code and the gateway's message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class ConsoleGateway:
    def __init__(self, config: OrgConfig) -> None:
        self.config = config
        self.org = config.org
        self.role = config.role
        self._credentials = MeshCredentials.for_config(config, IDENTITY)
        self._channel: grpc.aio.Channel | None = None
        self._stub: gateway_pb2_grpc.GatewayServiceStub | None = None

    def open(self) -> None:
        """Open the channel (inside the running event loop)."""
        address = self.config.self_endpoint.address("gateway")
        self._channel = self._credentials.channel(self.org, "gateway", address)
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    @property
    def stub(self) -> gateway_pb2_grpc.GatewayServiceStub:
        assert self._stub is not None, "open() the gateway first"
        return self._stub

    async def _call(self, method, request):
        try:
            return await method(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise GatewayError(exc.code(), exc.details() or "") from None

    async def info(self) -> gateway_pb2.GetInfoResponse:
        return await self._call(self.stub.GetInfo, gateway_pb2.GetInfoRequest())

    async def studies(self) -> list[gateway_pb2.Study]:
        return list((await self._call(self.stub.ListStudies, gateway_pb2.ListStudiesRequest())).studies)

    async def study(self, study_id: str) -> gateway_pb2.Study:
        return (await self._call(self.stub.GetStudy, gateway_pb2.GetStudyRequest(study_id=study_id))).study

    async def propose(self, spec: common_pb2.StudySpec, source_path: str) -> gateway_pb2.Study:
        return (
            await self._call(
                self.stub.ProposeStudy, gateway_pb2.ProposeStudyRequest(spec=spec, source_path=source_path)
            )
        ).study

    async def approve(self, study_id: str, spec_digest: str, source_path: str) -> gateway_pb2.Study:
        request = gateway_pb2.ApproveStudyRequest(study_id=study_id, spec_digest=spec_digest, source_path=source_path)
        return (await self._call(self.stub.ApproveStudy, request)).study

    async def runs(self, study_id: str = "") -> list[gateway_pb2.Run]:
        return list((await self._call(self.stub.ListRuns, gateway_pb2.ListRunsRequest(study_id=study_id))).runs)

    async def run(self, run_id: str) -> gateway_pb2.Run | None:
        """The run with this id (ListRuns has no single-run form)."""
        return next((r for r in await self.runs() if r.run_id == run_id), None)

    async def start_run(self, study_id: str) -> gateway_pb2.Run:
        return (await self._call(self.stub.StartRun, gateway_pb2.StartRunRequest(study_id=study_id))).run

    async def cancel(self, run_id: str) -> gateway_pb2.Run:
        return (await self._call(self.stub.CancelRun, gateway_pb2.CancelRunRequest(run_id=run_id))).run

    async def watch(self, run_id: str) -> AsyncIterator[gateway_pb2.WatchRunResponse]:
        """Every progress event of the run so far, then new ones, until the run ends."""
        call = self.stub.WatchRun(gateway_pb2.WatchRunRequest(run_id=run_id), timeout=WATCH_TIMEOUT_S)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            raise GatewayError(exc.code(), exc.details() or "") from None
        finally:
            call.cancel()

    async def result(self, run_id: str) -> tuple[gateway_pb2.Run, lasso_pb2.ModelResult]:
        reply = await self._call(self.stub.GetResult, gateway_pb2.GetResultRequest(run_id=run_id))
        return reply.run, reply.result

    async def verify_audit(self) -> gateway_pb2.VerifyAuditResponse:
        return await self._call(self.stub.VerifyAudit, gateway_pb2.VerifyAuditRequest())

    async def audit(self, after_seq: int, limit: int) -> gateway_pb2.ListAuditResponse:
        return await self._call(self.stub.ListAudit, gateway_pb2.ListAuditRequest(after_seq=after_seq, limit=limit))
