"""Frames on the local link between a lasso server and its per-run MPC worker process.

Why a link at all: MPyC keeps one runtime per process (`import mpyc.runtime` builds it
from `sys.argv`), so every run gets its own worker process, while the lasso server owns
the mTLS port and every Exchange stream. The server relays MPyC's messages between the
worker and the peers' streams over one Unix socket pair, in these frames.

A frame is `u32 length | u8 kind | body` (little-endian). Bodies are fixed-width fields
plus at most one trailing byte string, per kind in one table (`_LAYOUTS`, read by
both `encode` and the decoder); nothing is pickled, and protobuf messages (the run
request, share chunks, the result) travel as their own serialisation.

    worker → server                      server → worker
    Dial(peer, prss_keys)                Start(pid, RunLassoRequest bytes)
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
from dataclasses import dataclass, fields


class FrameError(ValueError):
    """Bytes on the link do not form a valid frame."""


@dataclass(frozen=True, slots=True)
class Start:
    pid: int  # this party's MPC id in the run (the worker builds MPyC's runtime for it)
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


@dataclass(frozen=True, slots=True)
class _Layout:
    """How one kind of frame lays out its body: fixed-width fields, then at most one trailing
    byte string (the dataclass's last field; `text` when it is a str, sent as UTF-8)."""

    kind: int
    frame_type: type
    fixed: struct.Struct
    fixed_names: tuple[str, ...]
    tail: str | None = None
    text: bool = False


def _layout(kind: int, frame_type: type, fixed: str = "<", tail: bool = False, text: bool = False) -> _Layout:
    names = tuple(f.name for f in fields(frame_type))
    fixed_names = names[:-1] if tail else names
    return _Layout(kind, frame_type, struct.Struct(fixed), fixed_names, names[-1] if tail else None, text)


_PEER = "<H"
_MESSAGE = "<Hq"  # peer, pc
_LAYOUTS = [
    _layout(1, Start, _PEER, tail=True),
    _layout(2, Input, tail=True),
    _layout(3, InputEnd),
    _layout(4, Dial, _PEER, tail=True),
    _layout(5, PeerUp, _PEER, tail=True),
    _layout(6, Send, _MESSAGE, tail=True),
    _layout(7, Recv, _MESSAGE, tail=True),
    _layout(8, Close, _PEER),
    _layout(9, PeerClosed, _PEER),
    _layout(10, PeerLost, _PEER, tail=True, text=True),
    _layout(11, Report, "<BQQ"),
    _layout(12, Result, tail=True),
    _layout(13, Failed, tail=True, text=True),
    _layout(14, Traffic, "<BQQQ"),
]
_BY_TYPE = {layout.frame_type: layout for layout in _LAYOUTS}
_BY_KIND = {layout.kind: layout for layout in _LAYOUTS}
_HEAD = struct.Struct("<IB")
MAX_FRAME_BYTES = 256 * 1024 * 1024


def encode(frame: Frame) -> bytes:
    """The bytes of one frame."""
    layout = _BY_TYPE[type(frame)]
    body = layout.fixed.pack(*[getattr(frame, name) for name in layout.fixed_names])
    if layout.tail is not None:
        tail = getattr(frame, layout.tail)
        body += tail.encode() if layout.text else tail
    return _HEAD.pack(len(body) + 1, layout.kind) + body


def _decode_body(kind: int, body: memoryview) -> Frame:
    layout = _BY_KIND.get(kind)
    if layout is None:
        raise FrameError(f"unknown frame kind {kind}")
    try:
        values: list[object] = list(layout.fixed.unpack_from(body))  # short body: struct.error
        if layout.tail is not None:
            tail = bytes(body[layout.fixed.size :])
            values.append(tail.decode() if layout.text else tail)
    except (struct.error, UnicodeDecodeError):
        raise FrameError(f"malformed frame of kind {kind}") from None
    frame: Frame = layout.frame_type(*values)
    return frame


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
