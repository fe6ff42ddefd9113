"""The user-space delaying relay: integrity, order, added latency, throughput, closing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from services.tools.relay import Address, DelayRelay, RelayStartError, parse_address, start_relay_process

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
REPO = Path(__file__).resolve().parents[3]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


class Upstream:
    """A TCP server on a free loopback port and a relay in front of it."""

    def __init__(self, handler: Handler, delay_s: float, listen: Address | None = None) -> None:
        self.handler = handler
        self.delay_s = delay_s
        self.listen = listen or Address("127.0.0.1", 0)

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self.handler, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.target = Address("127.0.0.1", port)
        self.relay = DelayRelay(self.listen, self.target, self.delay_s)
        await self.relay.start()
        return self

    async def open_relayed(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        address = self.relay.listen_address
        if address.is_unix:
            return await asyncio.open_unix_connection(address.path)
        return await asyncio.open_connection(address.host, address.port)

    async def open_direct(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.target.host, self.target.port)

    async def __aexit__(self, *exc: object) -> None:
        await self.relay.close()
        self.server.close()
        await self.server.wait_closed()


def test_parse_address() -> None:
    assert parse_address("10.77.2.1:7100") == Address("10.77.2.1", 7100)
    assert parse_address("[::1]:80") == Address("::1", 80)
    assert str(parse_address("[::1]:80")) == "[::1]:80"
    assert parse_address("unix:/run/x.sock") == Address(path="/run/x.sock")
    for bad in ("7100", "host:", ":7100", "host:port", "host:70000", "unix:relative.sock"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_negative_delay_is_refused() -> None:
    with pytest.raises(ValueError):
        DelayRelay(Address("127.0.0.1", 0), Address("127.0.0.1", 1), -0.001)


def test_bytes_arrive_intact_and_in_order_both_ways() -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)

    async def main() -> bytes:
        async with Upstream(_echo, delay_s=0.005) as up:
            reader, writer = await up.open_relayed()

            async def send() -> None:
                for i in range(0, len(payload), 10_000):  # many writes of odd sizes
                    writer.write(payload[i : i + 10_000])
                    await writer.drain()
                writer.write_eof()

            sender = asyncio.create_task(send())
            received = await asyncio.wait_for(reader.read(-1), 30)  # until the echo's end of stream
            await sender
            writer.close()
            return received

    assert asyncio.run(main()) == payload


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    started = time.perf_counter()
    writer.write(b"x")
    await writer.drain()
    assert await reader.readexactly(1) == b"x"
    return time.perf_counter() - started


def test_round_trip_grows_by_at_least_twice_the_delay() -> None:
    delay = 0.03

    async def main() -> tuple[float, float]:
        async with Upstream(_echo, delay_s=delay) as up:
            direct = await up.open_direct()
            relayed = await up.open_relayed()
            direct_rtt = min([await _round_trip(*direct) for _ in range(5)])
            relayed_rtt = min([await _round_trip(*relayed) for _ in range(5)])
            for _, writer in (direct, relayed):
                writer.close()
            return direct_rtt, relayed_rtt

    direct_rtt, relayed_rtt = asyncio.run(main())
    assert relayed_rtt >= 2 * delay - 0.001, (direct_rtt, relayed_rtt)
    assert relayed_rtt - direct_rtt >= 2 * delay - 0.002, (direct_rtt, relayed_rtt)


def test_chunks_in_flight_overlap_so_delay_does_not_cap_throughput() -> None:
    """50 separate chunks, 2 ms apart, through a 100 ms relay: one delay in total, not 50."""
    delay, chunks, gap = 0.1, 50, 0.002
    arrivals: list[float] = []
    done = asyncio.Event()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            arrivals.append(time.perf_counter())
        done.set()
        writer.close()

    async def main() -> float:
        async with Upstream(sink, delay_s=delay) as up:
            _, writer = await up.open_relayed()
            started = time.perf_counter()
            for _ in range(chunks):
                writer.write(b"y" * 1000)
                await writer.drain()
                await asyncio.sleep(gap)
            writer.close()
            await asyncio.wait_for(done.wait(), 30)
            return started

    started = asyncio.run(main())
    assert arrivals and arrivals[0] - started >= delay - 0.001
    assert arrivals[-1] - started < delay + chunks * gap + 1.0, "chunks were delayed one after another"
    assert arrivals[-1] - started < chunks * delay / 2


def test_client_close_reaches_the_server_and_server_close_reaches_the_client() -> None:
    async def main() -> tuple[bytes, bytes]:
        eof_at_server: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read(-1)
            eof_at_server.set_result(data)
            writer.close()

        async with Upstream(until_eof, delay_s=0.01) as up:
            reader, writer = await up.open_relayed()
            writer.write(b"bye")
            await writer.drain()
            writer.close()  # client closes ...
            got_at_server = await asyncio.wait_for(eof_at_server, 5)  # ... the server sees the end
            assert up.relay.open_connections <= 1

        async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"hello")
            await writer.drain()
            writer.close()  # server closes ...

        async with Upstream(close_at_once, delay_s=0.01) as up:
            reader, writer = await up.open_relayed()
            got_at_client = await asyncio.wait_for(reader.read(-1), 5)  # ... the client sees the end
            writer.close()
            await _until(lambda: up.relay.open_connections == 0)
        return got_at_server, got_at_client

    assert asyncio.run(main()) == (b"bye", b"hello")


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_reset_on_one_side_drops_the_other() -> None:
    async def main() -> bytes:
        accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set_result(writer)
            await reader.read(-1)

        async with Upstream(hold, delay_s=0.01) as up:
            reader, writer = await up.open_relayed()
            server_writer = await asyncio.wait_for(accepted, 5)
            server_writer.transport.abort()  # RST from the server
            try:
                data = await asyncio.wait_for(reader.read(-1), 5)
            except ConnectionResetError:
                data = b""
            writer.close()
            await _until(lambda: up.relay.open_connections == 0)
            return data

    assert asyncio.run(main()) == b""


def test_unreachable_target_closes_the_client() -> None:
    async def main() -> bytes:
        async with Upstream(_echo, delay_s=0.0) as up:
            up.server.close()
            await up.server.wait_closed()  # nothing listens at the target any more
            reader, writer = await up.open_relayed()
            try:
                data = await asyncio.wait_for(reader.read(-1), 5)
            except ConnectionResetError:
                data = b""
            writer.close()
            return data

    assert asyncio.run(main()) == b""


def test_unix_socket_listener_and_close_drops_open_connections(tmp_path: Path) -> None:
    sock = tmp_path / "relay.sock"

    async def main() -> tuple[bytes, bytes]:
        async with Upstream(_echo, delay_s=0.002, listen=Address(path=str(sock))) as up:
            reader, writer = await up.open_relayed()
            writer.write(b"ping")
            await writer.drain()
            echoed = await asyncio.wait_for(reader.readexactly(4), 5)
            await up.relay.close()  # while the connection is open
            try:
                rest = await asyncio.wait_for(reader.read(-1), 5)
            except ConnectionResetError:
                rest = b""
            writer.close()
            return echoed, rest

    assert asyncio.run(main()) == (b"ping", b"")
    assert not sock.exists()


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            return line.strip()
        if process.poll() is not None:
            break
    raise AssertionError(f"relay printed nothing (exit {process.poll()})")


def test_relay_as_a_process_forwards_and_stops_on_sigterm(tmp_path: Path) -> None:
    async def serve_echo(ready: asyncio.Future[int], stop: asyncio.Event) -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        ready.set_result(server.sockets[0].getsockname()[1])
        await stop.wait()
        server.close()

    async def main() -> tuple[str, bytes, int]:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        echo = asyncio.create_task(serve_echo(ready, stop))
        port = await ready
        sock = tmp_path / "p.sock"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.tools.relay",
                "--delay-ms",
                "5",
                "--listen",
                f"unix:{sock}",
                "--target",
                f"127.0.0.1:{port}",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            line = await asyncio.to_thread(_read_line, process, 30)
            reader, writer = await asyncio.open_unix_connection(str(sock))
            writer.write(b"through a process")
            echoed = await asyncio.wait_for(reader.readexactly(17), 5)
            writer.close()
            process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(process.wait, 10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            stop.set()
            await echo
        return line, echoed, code

    line, echoed, code = asyncio.run(main())
    assert line == f"ready unix:{tmp_path / 'p.sock'}->127.0.0.1:{line.rsplit(':', 1)[1]}"
    assert echoed == b"through a process"
    assert code == 0


def test_relay_process_refuses_unpaired_routes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.tools.relay", "--listen", "127.0.0.1:0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--target" in result.stderr


def test_start_relay_process_waits_until_listening_and_stops(tmp_path: Path) -> None:
    async def main() -> bytes:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sock = tmp_path / "r.sock"
        relay = await asyncio.to_thread(
            start_relay_process, [(f"unix:{sock}", f"127.0.0.1:{port}")], 1.0, tmp_path / "relay.log"
        )
        try:
            reader, writer = await asyncio.open_unix_connection(str(sock))  # listening already: no retry needed
            writer.write(b"ok")
            echoed = await asyncio.wait_for(reader.readexactly(2), 5)
            writer.close()
        finally:
            await asyncio.to_thread(relay.stop)
            server.close()
        assert relay.process.returncode == 0
        return echoed

    assert asyncio.run(main()) == b"ok"


def test_start_relay_process_reports_a_relay_that_cannot_listen(tmp_path: Path) -> None:
    with pytest.raises(RelayStartError, match="relay did not start"):
        start_relay_process([("unix:/nonexistent-dir/x.sock", "127.0.0.1:1")], 0.0, tmp_path / "relay.log")


def test_dropped_and_refused_connections_are_not_reported_as_errors() -> None:
    """close() with connections open, and an unreachable target: no asyncio error reports."""
    reports: list[dict[str, object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reports.append(context))
        async with Upstream(_echo, delay_s=0.01) as up:
            connections = [await up.open_relayed() for _ in range(3)]
            for reader, writer in connections:
                writer.write(b"z")
                await writer.drain()
                assert await asyncio.wait_for(reader.readexactly(1), 5) == b"z"
            await up.relay.close()
            for _, writer in connections:
                writer.close()
        async with Upstream(_echo, delay_s=0.0) as up:
            up.server.close()
            await up.server.wait_closed()
            reader, writer = await up.open_relayed()
            try:
                await asyncio.wait_for(reader.read(-1), 5)
            except ConnectionResetError:
                pass
            writer.close()
            await _until(lambda: up.relay.open_connections == 0)
        await asyncio.sleep(0.05)  # let any callback that would report run

    asyncio.run(main())
    assert reports == []
