"""A run at one server without a network: frame routing, failure once, registry."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from riskmesh.v1 import common_pb2, lasso_pb2
from services.lasso import runs as runs_module
from services.lasso.core import wire
from services.lasso.exchange import Abort, Outbox, accept
from services.lasso.runs import Finished, Run, RunFailure, RunRegistry
from services.lasso.worker.frames import (
    Close,
    Failed,
    Input,
    InputEnd,
    PeerClosed,
    PeerLost,
    PeerUp,
    Recv,
    Report,
    Result,
    Send,
    Start,
    Traffic,
)
from tests.unit.lasso_transport.test_shares import block

ORGS = ("insurer", "hospital", "helper")


class FakeWorker:
    def __init__(self, on_frame, on_close) -> None:  # type: ignore[no-untyped-def]
        self.on_frame = on_frame
        self.on_close = on_close
        self.frames: list[Any] = []
        self.killed = False
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.silent = asyncio.Event()

    def send(self, frame: Any) -> None:
        self.frames.append(frame)

    async def writable(self) -> None:
        return

    def kill(self) -> None:
        self.killed = True
        if not self.exited.done():
            self.exited.set_result(-9)

    async def wait(self) -> int:
        return await self.exited

    async def wait_silent(self, limit: float) -> None:
        await self.silent.wait()


class Harness:
    def __init__(self, org: str = "hospital", connect_timeout: float = 30.0) -> None:
        self.worker: FakeWorker | None = None
        self.run = Run("run-1", org, ORGS, "transport-check", self.spawn, self.no_channel, connect_timeout)
        self.events: list[Any] = []

    async def spawn(self, program, on_frame, on_close):  # type: ignore[no-untyped-def]
        self.worker = FakeWorker(on_frame, on_close)
        return self.worker

    def no_channel(self, org: str) -> Any:
        raise AssertionError("no dialling in these tests")

    async def execute(self) -> None:
        request = lasso_pb2.RunLassoRequest(run_id="run-1")
        async for event in self.run.execute(request, [block(("a",), 2)]):
            self.events.append(event)

    async def started(self) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self.execute())
        for _ in range(10):
            await asyncio.sleep(0)
        assert self.worker is not None
        return task


def test_worker_gets_the_run_then_its_inputs_then_early_peer_frames():
    async def main():
        h = Harness()
        h.run.peer_up(0, bytes(16))  # a dialer connected before this party's worker existed
        task = await h.started()
        kinds = [type(f) for f in h.worker.frames]
        assert kinds[0] is Start and kinds[-2:] == [InputEnd, PeerUp] and Input in kinds
        assert h.worker.frames[0].pid == 1  # the hospital is party 1: the worker learns it here
        task.cancel()

    asyncio.run(main())


def test_reports_become_progress_and_the_result_ends_the_run():
    async def main():
        h = Harness()
        task = await h.started()
        h.worker.on_frame(Report(common_pb2.PHASE_GRAM, 1, 3))
        h.worker.on_frame(Result(lasso_pb2.ModelResult(joined=5).SerializeToString()))
        await asyncio.wait_for(task, 1)
        assert (
            isinstance(h.events[0], common_pb2.Progress)
            and h.events[0].phase == common_pb2.PHASE_GRAM
            and h.events[0].total == 3
        )
        assert isinstance(h.events[-1], Finished) and h.events[-1].result.joined == 5
        assert h.run.phase == common_pb2.PHASE_GRAM

    asyncio.run(main())


def test_traffic_counts_are_kept_and_become_span_attributes():
    from services.lasso.servicer import traffic_attributes

    async def main():
        h = Harness()
        task = await h.started()
        h.worker.on_frame(Traffic(common_pb2.PHASE_GRAM, 4, 8, 800))
        h.worker.on_frame(Traffic(0, 2, 2, 10))
        h.worker.on_frame(Result(lasso_pb2.ModelResult().SerializeToString()))
        await asyncio.wait_for(task, 1)
        assert traffic_attributes(h.run) == {
            "riskmesh.run.id": "run-1",
            "riskmesh.mpc.rounds.other": 2,
            "riskmesh.mpc.messages.other": 2,
            "riskmesh.mpc.bytes.other": 10,
            "riskmesh.mpc.rounds.gram": 4,
            "riskmesh.mpc.messages.gram": 8,
            "riskmesh.mpc.bytes.gram": 800,
        }

    asyncio.run(main())


def test_progress_within_a_phase_is_thinned_but_starts_and_ends_pass():
    async def main():
        h = Harness()
        task = await h.started()
        for done in range(0, 101):
            h.worker.on_frame(Report(common_pb2.PHASE_ITERATIONS, done, 100))
        h.worker.on_frame(Report(common_pb2.PHASE_REVEAL, 0, 1))
        h.worker.on_frame(Result(lasso_pb2.ModelResult().SerializeToString()))
        await asyncio.wait_for(task, 1)
        passed = [(e.phase, e.done) for e in h.events if isinstance(e, common_pb2.Progress)]
        assert passed == [
            (common_pb2.PHASE_ITERATIONS, 0),
            (common_pb2.PHASE_ITERATIONS, 100),
            (common_pb2.PHASE_REVEAL, 0),
        ]

    asyncio.run(main())


def test_worker_sends_go_to_the_peer_outbox_in_order_and_close_ends_it():
    async def main():
        h = Harness()
        task = await h.started()
        outbox = Outbox()
        h.run._outboxes[2] = outbox
        h.worker.on_frame(Send(2, 1, b"a"))
        h.worker.on_frame(Send(2, -1, b"b"))
        h.worker.on_frame(Close(2))
        items = [await outbox.get() for _ in range(3)]
        assert [(i.pc, i.payload) for i in items[:2]] == [(1, b"a"), (-1, b"b")]
        assert not isinstance(items[2], (lasso_pb2.MpcMessage, Abort))
        task.cancel()

    asyncio.run(main())


def test_a_lost_peer_fails_the_run_once_naming_party_and_phase():
    async def main():
        h = Harness()
        task = await h.started()
        outbox = Outbox()
        h.run._outboxes[0] = outbox
        h.worker.on_frame(Report(common_pb2.PHASE_ITERATIONS, 3, 50))
        h.run.peer_lost(2, grpc.StatusCode.UNAVAILABLE, "")
        h.run.peer_ended(0, "a later, secondary failure")
        await asyncio.wait_for(task, 1)
        failure = h.events[-1]
        assert isinstance(failure, RunFailure) and failure.code == grpc.StatusCode.UNAVAILABLE
        assert failure.message == "MPC party 2 (helper) was lost during PHASE_ITERATIONS (UNAVAILABLE)"
        assert h.worker.killed and isinstance(h.worker.frames[-1], PeerLost)
        assert isinstance(await outbox.get(), Abort)

    asyncio.run(main())


def test_worker_exit_without_result_fails_the_run():
    async def main():
        h = Harness()
        task = await h.started()
        h.worker.exited.set_result(3)
        h.worker.on_close(None)
        await asyncio.wait_for(task, 1)
        assert isinstance(h.events[-1], RunFailure) and "exited (code 3)" in h.events[-1].message

    asyncio.run(main())


def test_a_result_read_after_the_worker_exited_still_counts():
    async def main():
        h = Harness()
        task = await h.started()
        h.worker.exited.set_result(0)  # the exit is noticed before the last frames are read
        await asyncio.sleep(0.01)
        h.worker.on_frame(Result(lasso_pb2.ModelResult(joined=1).SerializeToString()))
        h.worker.on_close(None)
        await asyncio.wait_for(task, 1)
        assert isinstance(h.events[-1], Finished)

    asyncio.run(main())


def test_a_silent_worker_fails_the_run():
    async def main():
        h = Harness()
        task = await h.started()
        h.worker.silent.set()
        await asyncio.wait_for(task, 1)
        assert h.events[-1].code == grpc.StatusCode.ABORTED and "stopped responding" in h.events[-1].message
        assert h.worker.killed

    asyncio.run(main())


def test_worker_failure_is_reported_with_its_reason():
    async def main():
        h = Harness()
        task = await h.started()
        h.worker.on_frame(Failed("the MPC computation raised ValueError"))
        await asyncio.wait_for(task, 1)
        assert h.events[-1].code == grpc.StatusCode.ABORTED and "ValueError" in h.events[-1].message

    asyncio.run(main())


def test_peers_that_never_connect_fail_the_run_after_the_timeout():
    async def main():
        h = Harness(connect_timeout=0.05)
        task = await h.started()
        await asyncio.wait_for(task, 1)
        assert h.events[-1].code == grpc.StatusCode.UNAVAILABLE and "did not connect" in h.events[-1].message

    asyncio.run(main())


def test_a_send_to_an_unconnected_peer_is_an_internal_error():
    async def main():
        h = Harness()
        task = await h.started()
        h.worker.on_frame(Send(2, 1, b"x"))
        await asyncio.wait_for(task, 1)
        assert h.events[-1].code == grpc.StatusCode.INTERNAL

    asyncio.run(main())


class FakeContext:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.aborted = (code, message)
        raise RuntimeError("aborted")


async def requests_of(*pcs: int, end: str | None = ""):  # type: ignore[no-untyped-def]
    for pc in pcs:
        yield lasso_pb2.ExchangeRequest(message=lasso_pb2.MpcMessage(pc=pc, payload=wire.dumps(b"p")))
    if end is not None:
        yield lasso_pb2.ExchangeRequest(end=lasso_pb2.MpcEnd(abort_reason=end))


def test_accepted_stream_relays_and_ends_cleanly_after_the_dialers_end():
    async def main():
        h = Harness(org="helper")
        outbox = Outbox()
        outbox.put(9, b"to-dialer")
        responses = [r async for r in accept(h.run, 0, bytes(16), requests_of(1, 2), FakeContext(), outbox)]
        assert [r.message.pc for r in responses] == [9]
        assert [type(f) for f in h.run._for_worker] == [PeerUp, Recv, Recv, PeerClosed]
        assert h.run.failure is None

    asyncio.run(main())


def test_a_request_stream_that_ends_without_mpc_end_is_a_lost_peer():
    async def main():
        h = Harness(org="helper")
        outbox = Outbox()
        stream = accept(h.run, 1, bytes(16), requests_of(1, end=None), FakeContext(), outbox)
        consumer = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.01)
        assert h.run.failure is not None and h.run.failure.code == grpc.StatusCode.UNAVAILABLE
        assert h.run.failure.message.startswith("MPC party 1 (hospital) was lost during PHASE_INPUT")
        consumer.cancel()

    asyncio.run(main())


def test_a_dialers_abort_reason_becomes_this_runs_failure():
    async def main():
        h = Harness(org="helper")
        stream = accept(
            h.run,
            0,
            bytes(16),
            requests_of(end="MPC party 1 (hospital) was lost during PHASE_GRAM (UNAVAILABLE)"),
            FakeContext(),
            Outbox(),
        )
        consumer = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.01)
        assert h.run.failure is not None and h.run.failure.code == grpc.StatusCode.ABORTED
        assert (
            h.run.failure.message == "MPC party 0 (insurer) ended the run during PHASE_INPUT: "
            "MPC party 1 (hospital) was lost during PHASE_GRAM (UNAVAILABLE)"
        )
        consumer.cancel()

    asyncio.run(main())


def test_accepted_stream_is_aborted_when_the_run_fails():
    async def main():
        h = Harness(org="helper")
        outbox = Outbox()
        outbox.abort("the run failed at helper: x")
        context = FakeContext()

        async def never():  # type: ignore[no-untyped-def]
            await asyncio.sleep(10)
            yield lasso_pb2.ExchangeRequest()

        with pytest.raises(RuntimeError, match="aborted"):
            async for _ in accept(h.run, 0, bytes(16), never(), context, outbox):
                pass
        assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.ABORTED

    asyncio.run(main())


def test_registry_refuses_duplicates_and_too_many_runs():
    async def main():
        registry = RunRegistry(max_runs=1)
        first = Harness().run
        registry.add(first)
        with pytest.raises(RunFailure) as dup:
            registry.add(Harness().run)
        assert dup.value.code == grpc.StatusCode.ALREADY_EXISTS
        other = Run("run-2", "hospital", ORGS, "x", Harness().spawn, Harness().no_channel)
        with pytest.raises(RunFailure) as full:
            registry.add(other)
        assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        registry.remove(first)
        with pytest.raises(RunFailure):
            registry.add(Harness().run)  # a run id never runs twice

    asyncio.run(main())


def test_registry_wait_for_a_run_that_arrives_later_or_never():
    async def main():
        registry = RunRegistry(max_runs=2)
        waiter = asyncio.ensure_future(registry.wait_for("run-1", 1.0))
        other = asyncio.ensure_future(registry.wait_for("run-1", 1.0))
        await asyncio.sleep(0.01)
        run = Harness().run
        registry.add(run)
        assert await waiter is run and await other is run
        assert await registry.wait_for("run-9", 0.01) is None
        registry.remove(run)
        assert await registry.wait_for("run-1", 1.0) is None

    asyncio.run(main())


def test_a_malformed_peer_message_fails_the_run_naming_the_peer_and_phase():
    async def main():
        h = Harness()
        task = await h.started()
        h.run.deliver(0, 5, wire.encode_ints([1, 2], 8))  # well-formed: relayed
        h.run.deliver(0, 6, b"\x80\x04pickle")
        await asyncio.wait_for(task, 1)
        failure = h.events[-1]
        assert isinstance(failure, RunFailure) and failure.code == grpc.StatusCode.ABORTED
        assert (
            failure.message
            == "MPC party 0 (insurer) sent a malformed MPC message during PHASE_INPUT: unknown message kind 128"
        )
        assert [f for f in h.worker.frames if isinstance(f, Recv)] == [Recv(0, 5, wire.encode_ints([1, 2], 8))]

    asyncio.run(main())


def test_what_a_peer_sends_before_the_worker_exists_is_capped(monkeypatch):
    monkeypatch.setattr(runs_module, "MAX_EARLY_BYTES", 1000)

    async def main():
        h = Harness()
        message = wire.dumps(bytes(400))
        h.run.deliver(2, 1, message)
        h.run.deliver(2, 2, message)
        assert h.run.failure is None
        h.run.deliver(2, 3, message)
        assert h.run.failure is not None and h.run.failure.message.startswith("MPC party 2 (helper) sent more than")

    asyncio.run(main())
