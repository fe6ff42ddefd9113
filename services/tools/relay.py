"""A TCP relay that adds a fixed one-way latency, in user space.

The kernel on the rehearsal machines has no `netem`, so organisations that should look
as far apart as on the internet talk through this relay instead: it accepts
connections on a listening address, opens one connection to its target per accepted
connection, and forwards the bytes both ways, holding every chunk back until
`arrival + delay`. Each direction has a FIFO queue and one writer task, so order is
kept and chunks are in flight concurrently: throughput is not limited by the delay
(a sender that reads a chunk and sleeps before reading the next would be). A round
trip through the relay thus costs at least `2 × delay` more than a direct one. Without
a delay each direction is a plain read-then-write loop (less CPU per chunk).

End of stream travels like data (after the delay, as a half-close), so closing either
side closes the other; a reset or error on either side closes both at once. Opening
the connection to the target is not delayed: the first bytes are.

In process::

    relay = DelayRelay(parse_address("127.0.0.1:0"), parse_address("127.0.0.1:7100"), delay_s=0.02)
    await relay.start()          # relay.listen_address has the bound port
    ...
    await relay.close()

As a process (several routes share one event loop; pairs match by position)::

    python -m services.tools.relay --delay-ms 20 --listen 10.77.2.1:7100 --target 10.77.2.2:7100 \
        --listen unix:/run/rm/gw.sock --target 127.0.0.1:7100

It prints one line `ready <listen>-><target> ...` once every route listens, and stops
on SIGTERM or SIGINT. `start_relay_process` starts one (optionally behind a command
prefix such as `ip netns exec <ns>`) and returns once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CHUNK_BYTES = 64 * 1024
QUEUE_CHUNKS = 1024  # per direction: at most 64 MiB held back before the reader waits
UNIX_PREFIX = "unix:"


@dataclass(frozen=True)
class Address:
    """A TCP `host:port` or a filesystem unix socket (`unix:/path`)."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.is_unix:
            return f"{UNIX_PREFIX}{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """`host:port`, `[v6]:port` or `unix:/absolute/path`; raises ValueError otherwise."""
    if text.startswith(UNIX_PREFIX):
        path = text[len(UNIX_PREFIX) :]
        if not path.startswith("/"):
            raise ValueError(f"unix socket address needs an absolute path: {text!r}")
        return Address(path=path)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address must be host:port or unix:/path, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Address(host=host, port=int(port))


async def _open(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if address.is_unix:
        return await asyncio.open_unix_connection(address.path, limit=CHUNK_BYTES)
    return await asyncio.open_connection(address.host, address.port, limit=CHUNK_BYTES)


async def _read_delayed(
    reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]], delay_s: float
) -> None:
    """Stamp every chunk (and the final b'' = end of stream) with its due time."""
    loop = asyncio.get_running_loop()
    while True:
        data = await reader.read(CHUNK_BYTES)
        await queue.put((loop.time() + delay_s, data))
        if not data:
            return


async def _write_due(writer: asyncio.StreamWriter, queue: asyncio.Queue[tuple[float, bytes]]) -> None:
    """Send each chunk at its due time, in arrival order; half-close at end of stream."""
    loop = asyncio.get_running_loop()
    while True:
        due, data = await queue.get()
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if not data:
            if writer.can_write_eof():
                writer.write_eof()
            return
        writer.write(data)
        await writer.drain()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Without a delay: each chunk written as soon as it is read; half-close at end of stream.
    (No queue and second task to hand each chunk to: a benchmark's relays share the cores
    with the parties whose messages they carry.)"""
    while data := await reader.read(CHUNK_BYTES):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    if delay_s == 0:
        await _copy(reader, writer)
        return
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
    async with asyncio.TaskGroup() as tasks:  # a failure on one side cancels the other
        tasks.create_task(_read_delayed(reader, queue, delay_s))
        tasks.create_task(_write_due(writer, queue))


class DelayRelay:
    """Forward connections from `listen` to `target`, delaying each direction by `delay_s`."""

    def __init__(self, listen: Address, target: Address, delay_s: float) -> None:
        if delay_s < 0:
            raise ValueError(f"delay must be >= 0, got {delay_s}")
        self.listen = listen
        self.target = target
        self.delay_s = delay_s
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.connections_total = 0

    @property
    def listen_address(self) -> Address:
        """The bound address (the real port when `listen` asked for port 0)."""
        if self._server is None:
            raise RuntimeError("relay not started")
        if self.listen.is_unix:
            return self.listen
        host, port = self._server.sockets[0].getsockname()[:2]
        return Address(host=str(host), port=int(port))

    async def start(self) -> None:
        if self.listen.is_unix:
            Path(self.listen.path).unlink(missing_ok=True)
            self._server = await asyncio.start_unix_server(self._accept, self.listen.path, limit=CHUNK_BYTES)
        else:
            self._server = await asyncio.start_server(
                self._accept, self.listen.host, self.listen.port, limit=CHUNK_BYTES, reuse_address=True
            )

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.connections_total += 1
        try:
            await self._forward(client_reader, client_writer)
        except asyncio.CancelledError:
            # close() dropped the connection; ending quietly keeps asyncio (3.11) from
            # logging the cancelled callback task
            pass
        finally:
            self._connections.discard(task)

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await _open(self.target)
        except OSError:  # the target does not answer: the client sees its connection end
            client_writer.transport.abort()
            return
        except asyncio.CancelledError:
            client_writer.transport.abort()
            raise
        clean = False
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(_pipe(client_reader, target_writer, self.delay_s))
                tasks.create_task(_pipe(target_reader, client_writer, self.delay_s))
            clean = True
        except* OSError:
            pass  # a reset or broken pipe on either side: both sides are dropped below
        finally:
            for writer in (client_writer, target_writer):
                if clean:
                    writer.close()  # both ends of stream were delivered; flush what is buffered
                else:
                    writer.transport.abort()

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        """Stop listening and drop every open connection (both sides)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            if self.listen.is_unix:
                Path(self.listen.path).unlink(missing_ok=True)
            self._server = None


class RelayStartError(RuntimeError):
    """A relay process exited or did not listen in time (its log is in the message)."""


@dataclass
class RelayProcess:
    """A running `python -m services.tools.relay` process."""

    process: subprocess.Popen[bytes]
    routes: list[tuple[str, str]]
    log_path: Path

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (it closes every connection), SIGKILL after `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_relay_process(
    routes: Sequence[tuple[str, str]],
    delay_ms: float,
    log_path: Path,
    prefix: Sequence[str] = (),
    timeout: float = 30.0,
) -> RelayProcess:
    """Start a relay process for `routes` ((listen, target) address strings), its output
    in `log_path`, and wait until it listens on every route."""
    command = [*prefix, sys.executable, "-m", "services.tools.relay", "--delay-ms", f"{delay_ms:g}"]
    for listen, target in routes:
        command += ["--listen", listen, "--target", target]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    relay = RelayProcess(process, list(routes), log_path)
    deadline = time.monotonic() + timeout
    while not log_path.read_text(errors="replace").startswith("ready "):
        if process.poll() is not None or time.monotonic() > deadline:
            relay.stop()
            raise RelayStartError(
                f"relay did not start ({' '.join(command)}):\n{log_path.read_text(errors='replace')[-2000:]}"
            )
        time.sleep(0.05)
    return relay


def _parse_args(argv: list[str] | None) -> tuple[list[tuple[Address, Address]], float]:
    parser = argparse.ArgumentParser(
        prog="python -m services.tools.relay",
        description="TCP relay that delays every chunk by a fixed one-way latency",
    )
    parser.add_argument(
        "--listen",
        action="append",
        required=True,
        help="host:port or unix:/path to accept on (repeat; pairs with --target by position)",
    )
    parser.add_argument(
        "--target", action="append", required=True, help="host:port or unix:/path to forward to (repeat)"
    )
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="one-way delay added to every chunk, each direction (default 0)"
    )
    args = parser.parse_args(argv)
    if len(args.listen) != len(args.target):
        parser.error(f"{len(args.listen)} --listen but {len(args.target)} --target: give them in pairs")
    if args.delay_ms < 0:
        parser.error("--delay-ms must be >= 0")
    try:
        routes = [(parse_address(a), parse_address(b)) for a, b in zip(args.listen, args.target, strict=False)]
    except ValueError as exc:
        parser.error(str(exc))
    return routes, args.delay_ms / 1000.0


async def serve(routes: list[tuple[Address, Address]], delay_s: float) -> None:
    """Run every route until SIGTERM or SIGINT."""
    relays = [DelayRelay(listen, target, delay_s) for listen, target in routes]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for relay in relays:
            await relay.start()
        print("ready " + " ".join(f"{r.listen_address}->{r.target}" for r in relays), flush=True)
        await stop.wait()
    finally:
        for relay in relays:
            await relay.close()


def main(argv: list[str] | None = None) -> int:
    routes, delay_s = _parse_args(argv)
    try:
        asyncio.run(serve(routes, delay_s))
    except OSError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
