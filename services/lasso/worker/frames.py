"""Frames on the local link between a lasso server and its per-run MPC worker process.

Why a link at all: MPyC keeps one runtime per process (`import mpyc.runtime` builds it
from `sys.argv`), so every run gets its own worker process, while the lasso server owns
the mTLS port and every Exchange stream. The server relays MPyC's messages between the
worker and the peers' streams over one Unix socket pair, in these frames.

A frame is `u32 length | u8 kind | body` (little-endian). Bodies are fixed-width fields
plus one trailing byte string; nothing is pickled, and protobuf messages (the run
request, share chunks, the result) travel as their own serialisation.

    worker → server                      server → worker
    Dial(peer, prss_keys)                Start(RunLassoRequest bytes)
    Send(peer, pc, payload)              Input(GetSharesResponse bytes) …, InputEnd
    Close(peer)                          PeerUp(peer, prss_keys)
    Report(phase, done, total)           Recv(peer, pc, payload)
    Traffic(phase, rounds, messages,     PeerClosed(peer)
            bytes)                       PeerLost(peer, reason)
    Result(ModelResult bytes)
    Failed(reason)

`pc` is MPyC's program counter, a signed 64-bit hash (sfixed64 on the wire).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


class FrameError(ValueError):
    """Bytes on the link do not form a valid frame."""


@dataclass(frozen=True, slots=True)
class Start:
    request: bytes  # a serialised RunLassoRequest


@dataclass(frozen=True, slots=True)
class Input:
    chunk: bytes  # a serialised GetSharesResponse (header or chunk)


@dataclass(frozen=True, slots=True)
class InputEnd:
    pass


@dataclass(frozen=True, slots=True)
class Dial:
    peer: int
    prss_keys: bytes


@dataclass(frozen=True, slots=True)
class PeerUp:
    peer: int
    prss_keys: bytes  # empty when this party dialled the peer


@dataclass(frozen=True, slots=True)
class Send:
    peer: int
    pc: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Recv:
    peer: int
    pc: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    peer: int


@dataclass(frozen=True, slots=True)
class PeerClosed:
    peer: int


@dataclass(frozen=True, slots=True)
class PeerLost:
    peer: int
    reason: str


@dataclass(frozen=True, slots=True)
class Report:
    phase: int
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class Traffic:
    """What this party sent during one phase (counts only): sent at the end of the run."""

    phase: int
    rounds: int
    messages: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Result:
    result: bytes  # a serialised ModelResult


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str


Frame = (
    Start
    | Input
    | InputEnd
    | Dial
    | PeerUp
    | Send
    | Recv
    | Close
    | PeerClosed
    | PeerLost
    | Report
    | Traffic
    | Result
    | Failed
)

_KINDS: dict[type, int] = {
    Start: 1,
    Input: 2,
    InputEnd: 3,
    Dial: 4,
    PeerUp: 5,
    Send: 6,
    Recv: 7,
    Close: 8,
    PeerClosed: 9,
    PeerLost: 10,
    Report: 11,
    Result: 12,
    Failed: 13,
    Traffic: 14,
}
_HEAD = struct.Struct("<IB")
_PEER = struct.Struct("<H")
_MESSAGE = struct.Struct("<Hq")
_REPORT = struct.Struct("<BQQ")
_TRAFFIC = struct.Struct("<BQQQ")
_COUNTS: dict[int, tuple[type[Report] | type[Traffic], struct.Struct]] = {
    11: (Report, _REPORT),
    14: (Traffic, _TRAFFIC),
}
MAX_FRAME_BYTES = 256 * 1024 * 1024


def encode(frame: Frame) -> bytes:
    """The bytes of one frame."""
    kind = _KINDS[type(frame)]
    if isinstance(frame, (Send, Recv)):
        body = _MESSAGE.pack(frame.peer, frame.pc) + frame.payload
    elif isinstance(frame, (Dial, PeerUp)):
        body = _PEER.pack(frame.peer) + frame.prss_keys
    elif isinstance(frame, (Close, PeerClosed)):
        body = _PEER.pack(frame.peer)
    elif isinstance(frame, PeerLost):
        body = _PEER.pack(frame.peer) + frame.reason.encode()
    elif isinstance(frame, Report):
        body = _REPORT.pack(frame.phase, frame.done, frame.total)
    elif isinstance(frame, Traffic):
        body = _TRAFFIC.pack(frame.phase, frame.rounds, frame.messages, frame.bytes)
    elif isinstance(frame, Start):
        body = frame.request
    elif isinstance(frame, Input):
        body = frame.chunk
    elif isinstance(frame, Result):
        body = frame.result
    elif isinstance(frame, Failed):
        body = frame.reason.encode()
    else:
        body = b""
    return _HEAD.pack(len(body) + 1, kind) + body


def _decode_peer_frame(kind: int, body: memoryview) -> Frame:
    """Dial, PeerUp, Close, PeerClosed, PeerLost: a peer number, then keys or a reason."""
    (peer,) = _PEER.unpack_from(body)
    rest = bytes(body[_PEER.size :])
    if kind in (4, 5):
        return Dial(peer, rest) if kind == 4 else PeerUp(peer, rest)
    if kind == 8:
        return Close(peer)
    if kind == 9:
        return PeerClosed(peer)
    return PeerLost(peer, rest.decode())


def _decode_body(kind: int, body: memoryview) -> Frame:
    try:
        if kind in (6, 7):
            peer, pc = _MESSAGE.unpack_from(body)
            payload = bytes(body[_MESSAGE.size :])
            return Send(peer, pc, payload) if kind == 6 else Recv(peer, pc, payload)
        if kind in (4, 5, 8, 9, 10):
            return _decode_peer_frame(kind, body)
        if kind in _COUNTS:  # Report, Traffic: fixed-width numbers only
            frame_type, layout = _COUNTS[kind]
            return frame_type(*layout.unpack_from(body))
        if kind == 1:
            return Start(bytes(body))
        if kind == 2:
            return Input(bytes(body))
        if kind == 3:
            return InputEnd()
        if kind == 12:
            return Result(bytes(body))
        if kind == 13:
            return Failed(bytes(body).decode())
    except (struct.error, UnicodeDecodeError):
        raise FrameError(f"malformed frame of kind {kind}") from None
    raise FrameError(f"unknown frame kind {kind}")


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole frames back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer.extend(data)
        frames: list[Frame] = []
        view = memoryview(self._buffer)
        offset = 0
        try:
            while len(view) - offset >= _HEAD.size:
                length, kind = _HEAD.unpack_from(view, offset)
                if length < 1 or length > MAX_FRAME_BYTES:
                    raise FrameError(f"frame length {length} out of range")
                end = offset + 4 + length
                if end > len(view):
                    break
                frames.append(_decode_body(kind, view[offset + _HEAD.size : end]))
                offset = end
        finally:
            view.release()
        del self._buffer[:offset]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still buffered."""
        return len(self._buffer)
