"""Where a lasso party's input shares come from (the blocks themselves: services/lasso/core/blocks.py).

The source is injected into the lasso servicer:
- `GrpcShareSource` — production: the same org's ResharingService.GetShares(run_id),
  which only this org's lasso identity may call;
- `InMemoryShareSource` — blocks handed over in-process (tests, benchmarks, a dealer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import grpc

from riskmesh.v1 import join_pb2, join_pb2_grpc
from services.lasso.core.blocks import BlockDecoder, ShareBlock, ShareError
from services.mesh.peers import await_ready
from services.mesh.status import StatusError


class ShareSourceError(StatusError):
    """The shares of a run cannot be obtained; `code` is the gRPC status to report."""


class ShareSource(Protocol):
    async def fetch(self, run_id: str) -> list[ShareBlock]:
        """This party's share blocks of the run (raises ShareSourceError)."""
        ...


class GrpcShareSource:
    """Production source: the same org's ResharingService.GetShares over mTLS."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float = 300.0) -> None:
        self._channel = channel
        self._stub = join_pb2_grpc.ResharingServiceStub(channel)
        self._timeout = timeout

    async def fetch(self, run_id: str) -> list[ShareBlock]:
        decoder = BlockDecoder(run_id)
        await await_ready(self._channel)  # a resharing server just restarted: past the reconnect backoff
        try:
            async for message in self._stub.GetShares(join_pb2.GetSharesRequest(run_id=run_id), timeout=self._timeout):
                decoder.feed(message)
            return decoder.finish()
        except grpc.aio.AioRpcError as exc:
            missing = exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
            code = grpc.StatusCode.FAILED_PRECONDITION if missing else grpc.StatusCode.UNAVAILABLE
            details = (exc.details() or "")[:300]
            raise ShareSourceError(
                code, f"resharing could not provide the shares of run {run_id!r}: {exc.code().name}: {details}"
            ) from None
        except ShareError as exc:
            raise ShareSourceError(grpc.StatusCode.DATA_LOSS, f"resharing sent malformed shares: {exc}") from None


class InMemoryShareSource:
    """Blocks per run, given in-process (tests, benchmarks, a trusted dealer)."""

    def __init__(self, runs: Mapping[str, Sequence[ShareBlock]] | None = None) -> None:
        self._runs: dict[str, list[ShareBlock]] = {k: list(v) for k, v in (runs or {}).items()}

    def put(self, run_id: str, blocks: Sequence[ShareBlock]) -> None:
        self._runs[run_id] = list(blocks)

    async def fetch(self, run_id: str) -> list[ShareBlock]:
        if run_id not in self._runs:
            raise ShareSourceError(grpc.StatusCode.FAILED_PRECONDITION, f"no shares of run {run_id!r} at this party")
        return list(self._runs[run_id])
