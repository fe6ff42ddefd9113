"""The MPyC side of the transport: exchanger semantics and the replaced Runtime.start."""

from __future__ import annotations

import asyncio

import pytest

from services.lasso.worker import transport as transport_module
from services.lasso.worker.frames import Close, Dial, PeerClosed, PeerLost, PeerUp, Recv, Send
from services.lasso.worker.transport import Exchanger, MeshTransport, PeerLostError, TrafficCounts
from tests.unit.lasso_transport.fake_runtime import FakeRuntime, RecordingSink


def run(coro):
    return asyncio.run(coro)


def test_send_queues_a_frame_and_counts_bytes_like_mpyc():
    async def main():
        sink = RecordingSink()
        ex = Exchanger(FakeRuntime(0, asyncio.get_running_loop()), 2, sink)
        ex.send(-5, b"abc")
        ex.send(2**63 - 1, bytearray(b"de"))
        assert sink.frames == [Send(2, -5, b"abc"), Send(2, 2**63 - 1, b"de")]
        assert ex.nbytes_sent == (12 + 3) + (12 + 2)

    run(main())


def test_receive_after_and_before_delivery():
    async def main():
        ex = Exchanger(FakeRuntime(0, asyncio.get_running_loop()), 1, RecordingSink())
        ex.deliver(7, b"early")
        assert ex.receive(7) == b"early"
        future = ex.receive(8)
        assert isinstance(future, asyncio.Future) and not future.done()
        ex.deliver(8, b"late")
        assert await future == b"late"
        assert ex.pending_receives == 0

    run(main())


def test_fail_fails_pending_and_later_receives_but_keeps_delivered_ones():
    async def main():
        ex = Exchanger(FakeRuntime(0, asyncio.get_running_loop()), 1, RecordingSink())
        ex.deliver(1, b"kept")
        pending = ex.receive(2)
        error = PeerLostError(1, "was lost")
        ex.fail(error)
        with pytest.raises(PeerLostError):
            await pending
        with pytest.raises(PeerLostError):
            await ex.receive(3)
        assert ex.receive(1) == b"kept"

    run(main())


def test_close_connection_asks_the_server_to_end_the_stream():
    async def main():
        sink = RecordingSink()
        Exchanger(FakeRuntime(0, asyncio.get_running_loop()), 2, sink).close_connection()
        assert sink.frames == [Close(2)]

    run(main())


def test_start_dials_higher_parties_with_their_prss_keys_and_waits_for_all():
    async def main():
        rt = FakeRuntime(1, asyncio.get_running_loop())
        sink = RecordingSink()
        transport = MeshTransport(rt, sink)
        transport.install()
        started = asyncio.ensure_future(rt.start())
        await asyncio.sleep(0)
        assert sink.frames == [Dial(2, bytes([1] * 16))]
        transport.on_frame(PeerUp(2, b""))
        assert not started.done()
        transport.on_frame(PeerUp(0, bytes([9] * 16)))
        await asyncio.wait_for(started, 1)
        assert rt._prss_keys[(0, 1)] == bytes([9] * 16)
        assert isinstance(rt.parties[0].protocol, Exchanger) and isinstance(rt.parties[2].protocol, Exchanger)
        assert rt.start_time is not None

    run(main())


def test_frames_before_start_are_kept_until_mpyc_starts():
    async def main():
        rt = FakeRuntime(2, asyncio.get_running_loop())
        transport = MeshTransport(rt, RecordingSink())
        transport.install()
        transport.on_frame(PeerUp(0, bytes(16)))
        transport.on_frame(Recv(0, 11, b"m"))
        transport.on_frame(PeerUp(1, bytes(16)))
        await asyncio.wait_for(rt.start(), 1)
        assert rt.parties[0].protocol.receive(11) == b"m"

    run(main())


def test_a_lost_peer_fails_start():
    async def main():
        rt = FakeRuntime(0, asyncio.get_running_loop())
        transport = MeshTransport(rt, RecordingSink())
        transport.install()
        started = asyncio.ensure_future(rt.start())
        await asyncio.sleep(0)
        transport.on_frame(PeerLost(2, "did not connect"))
        with pytest.raises(PeerLostError, match="did not connect"):
            await asyncio.wait_for(started, 1)

    run(main())


async def started_transport(pid: int) -> tuple[FakeRuntime, MeshTransport, RecordingSink]:
    rt = FakeRuntime(pid, asyncio.get_running_loop())
    sink = RecordingSink()
    transport = MeshTransport(rt, sink)
    transport.install()
    started = asyncio.ensure_future(rt.start())
    await asyncio.sleep(0)
    for peer in range(3):
        if peer != pid:
            transport.on_frame(PeerUp(peer, bytes(16) if peer < pid else b""))
    await asyncio.wait_for(started, 1)
    return rt, transport, sink


def test_a_lost_peer_fails_every_pending_receive_on_every_stream():
    async def main():
        rt, transport, _ = await started_transport(0)
        from_1 = rt.parties[1].protocol.receive(5)
        from_2 = rt.parties[2].protocol.receive(6)
        transport.on_frame(PeerLost(2, "was lost during PHASE_GRAM (UNAVAILABLE)"))
        for future in (from_1, from_2):
            with pytest.raises(PeerLostError):
                await future
        assert transport.failure.done() and transport.failure.result().peer == 2

    run(main())


def test_clean_close_unsets_the_protocol_as_mpyc_shutdown_expects():
    async def main():
        rt, transport, _ = await started_transport(2)
        shutdown_done = asyncio.get_running_loop().create_future()
        rt.parties[2].protocol = shutdown_done  # what Runtime.shutdown installs
        transport.on_frame(PeerClosed(0))
        transport.on_frame(PeerClosed(1))
        assert shutdown_done.done()
        assert not transport.failure.done()

    run(main())


def test_close_while_a_message_is_awaited_is_a_failure():
    async def main():
        rt, transport, _ = await started_transport(2)
        pending = rt.parties[0].protocol.receive(3)
        transport.on_frame(PeerClosed(0))
        with pytest.raises(PeerLostError, match="closed its stream"):
            await pending
        assert transport.failure.done()

    run(main())


def test_prss_keys_of_the_wrong_size_fail_the_run():
    async def main():
        rt = FakeRuntime(2, asyncio.get_running_loop())
        transport = MeshTransport(rt, RecordingSink())
        transport.install()
        asyncio.ensure_future(rt.start())
        await asyncio.sleep(0)
        transport.on_frame(PeerUp(0, b"short"))
        assert transport.failure.done()

    run(main())


def test_traffic_counts_rounds_as_bursts_of_sends_after_a_consumed_message():
    async def main():
        counts = TrafficCounts()
        rt = FakeRuntime(0, asyncio.get_running_loop())
        to_1, to_2 = Exchanger(rt, 1, RecordingSink(), counts), Exchanger(rt, 2, RecordingSink(), counts)
        counts.phase = 5
        to_1.send(1, b"ab")
        to_2.send(1, b"cd")  # same round: nothing consumed in between
        to_1.deliver(1, b"x")  # arrived, not yet consumed
        to_1.send(2, b"e")
        assert counts.by_phase[5] == [1, 3, 5]
        assert to_1.receive(1) == b"x"  # consumed: the next send starts round 2
        to_2.send(3, b"f")
        pending = to_2.receive(4)
        to_2.deliver(4, b"y")  # resolves a waiting receive: consumed
        assert await pending == b"y"
        counts.phase = 6
        to_1.send(4, b"gh")
        to_2.send(4, b"ij")
        assert counts.by_phase == {5: [2, 4, 6], 6: [1, 2, 4]}
        assert [(t.phase, t.rounds, t.messages, t.bytes) for t in counts.frames()] == [(5, 2, 4, 6), (6, 1, 2, 4)]

    run(main())


def test_a_second_message_for_a_buffered_round_fails_the_run_naming_the_peer():
    async def main():
        rt, transport, _ = await started_transport(0)
        transport.on_frame(Recv(1, 9, b"first"))
        transport.on_frame(Recv(1, 9, b"second"))
        assert transport.failure.done()
        assert str(transport.failure.result()) == "MPC party 1: sent two messages for one round"

    run(main())


def test_the_transport_shares_one_count_over_its_peers():
    async def main():
        rt = FakeRuntime(1, asyncio.get_running_loop())
        transport = MeshTransport(rt, RecordingSink())
        transport.install()
        started = asyncio.ensure_future(rt.start())
        await asyncio.sleep(0)
        transport.on_frame(PeerUp(2, b""))
        transport.on_frame(PeerUp(0, bytes([9] * 16)))
        await asyncio.wait_for(started, 1)
        rt.parties[0].protocol.send(1, b"a")
        rt.parties[2].protocol.send(1, b"b")
        assert transport.counts.by_phase == {0: [1, 2, 2]}

    run(main())


def test_a_flood_ahead_of_the_computation_fails_the_run_at_the_cap(monkeypatch):
    monkeypatch.setattr(transport_module, "MAX_AHEAD_MESSAGES", 50)
    monkeypatch.setattr(transport_module, "MAX_AHEAD_BYTES", 1000)

    async def main():
        rt, transport, _ = await started_transport(0)
        for pc in range(50):
            transport.on_frame(Recv(2, 1 << 40 | pc, b"x"))
        assert not transport.failure.done()
        transport.on_frame(Recv(2, 1 << 41, b"x"))
        assert transport.failure.done() and transport.failure.result().peer == 2
        assert "ahead of the computation" in str(transport.failure.result())

    run(main())
    # Bytes count as well as messages.

    async def big() -> None:
        rt, transport, _ = await started_transport(0)
        transport.on_frame(Recv(1, 1, bytes(600)))
        transport.on_frame(Recv(1, 2, bytes(600)))
        assert transport.failure.done() and transport.failure.result().peer == 1

    run(big())


def test_messages_taken_by_mpyc_no_longer_count_toward_the_cap(monkeypatch):
    monkeypatch.setattr(transport_module, "MAX_AHEAD_MESSAGES", 3)

    async def main():
        rt, transport, _ = await started_transport(0)
        for pc in range(100):
            transport.on_frame(Recv(1, pc, b"m"))
            assert rt.parties[1].protocol.receive(pc) == b"m"
            waiting = rt.parties[1].protocol.receive(1000 + pc)
            transport.on_frame(Recv(1, 1000 + pc, b"n"))
            assert await waiting == b"n"
        assert not transport.failure.done()

    run(main())


def test_a_flood_before_mpyc_starts_is_capped_too(monkeypatch):
    monkeypatch.setattr(transport_module, "MAX_AHEAD_MESSAGES", 10)

    async def main():
        transport = MeshTransport(FakeRuntime(2, asyncio.get_running_loop()), RecordingSink())
        transport.on_frame(PeerUp(0, bytes(16)))
        for pc in range(11):
            transport.on_frame(Recv(0, pc, b"m"))
        assert transport.failure.done() and transport.failure.result().peer == 0
        assert "before the computation started" in str(transport.failure.result())

    run(main())


def test_delivered_messages_are_labelled_with_their_sender():
    async def main():
        rt, transport, _ = await started_transport(0)
        transport.on_frame(Recv(2, 4, b"m"))
        message = rt.parties[2].protocol.receive(4)
        assert message == b"m" and message.peer == 2

    run(main())
