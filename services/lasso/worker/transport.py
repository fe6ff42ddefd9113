"""MPyC 0.11, unmodified, with its traffic on the mesh instead of its own TCP sockets.

MPyC talks to a peer only through `runtime.parties[pid].protocol`, on which it calls
`send(pc, payload)`, `receive(pc)` (bytes, or a Future to await), `close_connection()`
and reads `nbytes_sent`; it registers a connected peer with `set_protocol(pid, obj)` and
a cleanly closed one with `unset_protocol(pid)`, and `Runtime.start` opens the
connections. So this module replaces `start` on the runtime instance and provides an
`Exchanger` per peer with exactly that interface; everything else in MPyC is untouched.

MPyC's topology is kept: party i accepts the parties below it and dials those above it,
one bidirectional stream per pair. The dialer's first frame carries its PRSS keys for
the acceptor (`_prss_keys_to_peer`), which the acceptor stores with
`_prss_keys_from_peer`, as MPyC does on its own sockets. Here the dial and accept happen
in the lasso server (which owns the mTLS port and checks the peer's certificate); this
module only sees frames: it sends `Dial`, `Send` and `Close`, and gets `PeerUp`, `Recv`,
`PeerClosed` and `PeerLost` through `MeshTransport.on_frame`.

A peer cannot make this party hold unbounded data: messages that arrive before MPyC asks
for them are buffered up to MAX_AHEAD_MESSAGES and MAX_AHEAD_BYTES per peer, and a second
message for a round already buffered is refused; either fails the run naming the peer.

Counting (`TrafficCounts`): per phase, the messages and payload bytes this party sent and
its rounds — a round is a burst of sends after this party consumed a peer's message (a
send that depends on nothing new joins the current round). Over a network with one-way
delay d a phase takes at least about rounds × d; the counts say nothing about values.

Failures never hang: when a peer is lost every pending receive fails with `PeerLostError`,
later receives fail at once, and `MeshTransport.failure` completes so the worker can
end the run (MPyC itself does not always unwind from a failed future: a failure inside
a gathered list leaves the gathering future pending).

No import of mpyc here: the runtime is passed in, so this module can be tested with a
stand-in and imported by the server without building MPyC's process-wide runtime.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from services.lasso.core import wire
from services.lasso.worker.frames import Close, Dial, Frame, PeerClosed, PeerLost, PeerUp, Recv, Send, Traffic

# MPyC counts 12 header bytes (pc + length) per message in nbytes_sent; kept for its statistics.
MESSAGE_OVERHEAD = 12
# Messages a peer may send ahead of this party's computation (not yet asked for by MPyC).
# The lasso runs ahead by a few input chunks (secure_input.LOOKAHEAD_CHUNKS, ~1 MB each)
# and otherwise by one round; these caps are far above that and far below a worker's memory.
MAX_AHEAD_MESSAGES = 4096
MAX_AHEAD_BYTES = 128 * 1024 * 1024


class PeerLostError(ConnectionError):
    """The stream to an MPC peer ended before the run did."""

    def __init__(self, peer: int, reason: str) -> None:
        super().__init__(f"MPC party {peer}: {reason}")
        self.peer = peer
        self.reason = reason


class FrameSink(Protocol):
    def send(self, frame: Frame) -> None: ...


class TrafficCounts:
    """Rounds, messages and payload bytes this party sent, per phase (module docstring)."""

    def __init__(self) -> None:
        self.phase = 0  # the Phase enum value of what runs now (0 before the first report)
        self.by_phase: dict[int, list[int]] = {}  # phase → [rounds, messages, bytes]
        self._consumed = True  # a peer's message was consumed since the last send

    def sent(self, nbytes: int) -> None:
        counts = self.by_phase.setdefault(self.phase, [0, 0, 0])
        if self._consumed:
            counts[0] += 1
            self._consumed = False
        counts[1] += 1
        counts[2] += nbytes

    def consumed(self) -> None:
        self._consumed = True

    def frames(self) -> list[Traffic]:
        return [Traffic(phase, *counts) for phase, counts in sorted(self.by_phase.items())]


class Exchanger:
    """MPyC's view of one peer (what `asyncoro.MessageExchanger` offers), over frames."""

    __slots__ = (
        "runtime",
        "peer_pid",
        "nbytes_sent",
        "_sink",
        "_loop",
        "_buffers",
        "_error",
        "_ahead_bytes",
        "_ahead_messages",
        "_counts",
    )

    def __init__(self, runtime: Any, peer_pid: int, sink: FrameSink, counts: TrafficCounts | None = None) -> None:
        self.runtime = runtime
        self.peer_pid = peer_pid
        self.nbytes_sent = 0
        self._sink = sink
        self._counts = counts if counts is not None else TrafficCounts()
        self._loop: asyncio.AbstractEventLoop = runtime._loop
        self._buffers: dict[int, bytes | asyncio.Future[bytes]] = {}
        self._error: PeerLostError | None = None
        self._ahead_bytes = 0
        self._ahead_messages = 0

    def send(self, pc: int, payload: bytes) -> None:
        """Send payload labelled with pc (synchronous, as MPyC expects; the link queues it)."""
        self._sink.send(Send(self.peer_pid, pc, bytes(payload)))
        self.nbytes_sent += MESSAGE_OVERHEAD + len(payload)
        self._counts.sent(len(payload))

    def receive(self, pc: int) -> bytes | asyncio.Future[bytes]:
        """The payload labelled pc if it arrived, else a Future for it (failed if the peer is gone)."""
        payload = self._buffers.pop(pc, None)
        if payload is not None:
            self._counts.consumed()
            if isinstance(payload, bytes):
                self._ahead_messages -= 1
                self._ahead_bytes -= len(payload)
            return payload
        future: asyncio.Future[bytes] = self._loop.create_future()
        if self._error is not None:
            future.set_exception(self._error)
            return future
        self._buffers[pc] = future
        return future

    def deliver(self, pc: int, payload: bytes) -> None:
        """A message from the peer: resolve its waiting receive, or keep it until asked.

        Raises PeerLostError when the peer sent a second message for a buffered round or
        more than the caps ahead of the computation (the caller fails the run).
        """
        payload = wire.from_peer(payload, self.peer_pid)
        waiting = self._buffers.get(pc)
        if isinstance(waiting, asyncio.Future):
            del self._buffers[pc]
            if not waiting.done():
                waiting.set_result(payload)
                self._counts.consumed()
            return
        if waiting is not None:
            raise PeerLostError(self.peer_pid, "sent two messages for one round")
        self._ahead_messages += 1
        self._ahead_bytes += len(payload)
        if self._ahead_messages > MAX_AHEAD_MESSAGES or self._ahead_bytes > MAX_AHEAD_BYTES:
            raise PeerLostError(
                self.peer_pid,
                f"sent more than {MAX_AHEAD_MESSAGES} messages or {MAX_AHEAD_BYTES >> 20} MiB ahead of the computation",
            )
        self._buffers[pc] = payload

    def close_connection(self) -> None:
        """MPyC's shutdown: this party (the dialer) ends the stream to the peer."""
        self._sink.send(Close(self.peer_pid))

    def fail(self, error: PeerLostError) -> None:
        """Fail every pending receive and every later one."""
        if self._error is None:
            self._error = error
        for pc in [pc for pc, item in self._buffers.items() if isinstance(item, asyncio.Future)]:
            future = self._buffers.pop(pc)
            assert isinstance(future, asyncio.Future)
            if not future.done():
                future.set_exception(error)

    @property
    def pending_receives(self) -> int:
        return sum(isinstance(item, asyncio.Future) for item in self._buffers.values())


class MeshTransport:
    """Connects an MPyC runtime to its peers through frames; install once per runtime."""

    def __init__(self, runtime: Any, sink: FrameSink, on_peer_up: Callable[[int], None] | None = None) -> None:
        self.runtime = runtime
        self._sink = sink
        self._on_peer_up = on_peer_up
        self.exchangers: dict[int, Exchanger] = {}
        self.counts = TrafficCounts()
        self.failure: asyncio.Future[PeerLostError] = runtime._loop.create_future()
        self._started = False
        self._early: list[Frame] = []  # peers may connect (and send) before MPyC starts
        self._early_sizes: dict[int, tuple[int, int]] = {}  # peer → (messages, bytes) in _early

    def install(self) -> None:
        """Replace `start` on this runtime instance (not on the class)."""
        self.runtime.start = self.start

    async def start(self) -> None:
        """MPyC's `Runtime.start` over the mesh: dial the parties above, await all peers."""
        rt = self.runtime
        m = len(rt.parties)
        if m == 1:
            rt.start_time = time.time()
            return
        all_up: asyncio.Future[None] = rt._loop.create_future()
        for peer in rt.parties:
            peer.protocol = all_up if peer.pid == rt.pid else None
        for peer in rt.parties[rt.pid + 1 :]:
            keys = b"" if rt.options.no_prss else b"".join(rt._prss_keys_to_peer(peer.pid))
            self._sink.send(Dial(peer.pid, keys))
        self._started = True
        for frame in self._early:
            self.on_frame(frame)
        self._early = []
        self._early_sizes = {}
        done, _ = await asyncio.wait([all_up, self.failure], return_when=asyncio.FIRST_COMPLETED)
        if self.failure in done:
            raise self.failure.result()
        rt.start_time = time.time()

    def on_frame(self, frame: Frame) -> None:
        """Dispatch a frame from the server (Recv is the hot path, so it comes first)."""
        if not self._started and not isinstance(frame, PeerLost):
            if isinstance(frame, Recv):
                messages, size = self._early_sizes.get(frame.peer, (0, 0))
                messages, size = messages + 1, size + len(frame.payload)
                if messages > MAX_AHEAD_MESSAGES or size > MAX_AHEAD_BYTES:
                    self.fail(
                        PeerLostError(
                            frame.peer,
                            f"sent more than {MAX_AHEAD_MESSAGES} messages or {MAX_AHEAD_BYTES >> 20} MiB "
                            "before the computation started",
                        )
                    )
                    return
                self._early_sizes[frame.peer] = (messages, size)
            self._early.append(frame)
        elif isinstance(frame, Recv):
            exchanger = self.exchangers.get(frame.peer)
            if exchanger is not None:
                try:
                    exchanger.deliver(frame.pc, frame.payload)
                except PeerLostError as error:
                    self.fail(error)
        elif isinstance(frame, PeerUp):
            self._peer_up(frame)
        elif isinstance(frame, PeerClosed):
            self._peer_closed(frame.peer)
        elif isinstance(frame, PeerLost):
            self.fail(PeerLostError(frame.peer, frame.reason))

    def _peer_up(self, frame: PeerUp) -> None:
        rt = self.runtime
        if frame.peer in self.exchangers or not 0 <= frame.peer < len(rt.parties) or frame.peer == rt.pid:
            self.fail(PeerLostError(frame.peer, "connected twice or not a party"))
            return
        if frame.peer < rt.pid and not rt.options.no_prss:
            expected = rt._prss_keys_from_peer(frame.peer)
            if len(frame.prss_keys) != expected:
                self.fail(PeerLostError(frame.peer, "sent PRSS keys of the wrong size"))
                return
            rt._prss_keys_from_peer(frame.peer, frame.prss_keys)
        exchanger = Exchanger(rt, frame.peer, self._sink, self.counts)
        self.exchangers[frame.peer] = exchanger
        rt.set_protocol(frame.peer, exchanger)
        if self._on_peer_up is not None:
            self._on_peer_up(frame.peer)

    def _peer_closed(self, peer: int) -> None:
        """The stream ended cleanly: MPyC's shutdown (connection_lost without error)."""
        exchanger = self.exchangers.get(peer)
        if exchanger is None:
            return
        if exchanger.pending_receives:
            self.fail(PeerLostError(peer, "closed its stream while messages were awaited"))
            return
        exchanger.fail(PeerLostError(peer, "closed its stream"))
        if self.runtime.parties[peer].protocol is exchanger:
            self.runtime.unset_protocol(peer)

    def fail(self, error: PeerLostError) -> None:
        """A peer is gone: fail all receives on every stream and signal `failure` (once)."""
        for exchanger in self.exchangers.values():
            exchanger.fail(error)
        if not self.failure.done():
            self.failure.set_result(error)
