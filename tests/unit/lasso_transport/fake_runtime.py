"""A stand-in for MPyC's Runtime with exactly what services.lasso.worker.transport touches.

`set_protocol`/`unset_protocol` and the PRSS key bookkeeping follow mpyc/runtime.py
(0.11) line for line; building a real runtime would parse pytest's argv and install a
process-wide MPyC runtime, so unit tests use this and the e2e tests run real MPyC.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any


@dataclass
class FakeParty:
    pid: int
    protocol: Any = None


class FakeRuntime:
    def __init__(self, pid: int, loop: asyncio.AbstractEventLoop, m: int = 3, threshold: int = 1) -> None:
        self.pid = pid
        self.parties = [FakeParty(i) for i in range(m)]
        self.options = SimpleNamespace(no_prss=False)
        self.threshold = threshold
        self._loop = loop
        self.start_time: float | None = None
        self._prss_keys = {s: bytes([pid] * 16) for s in itertools.combinations(range(m), m - threshold) if s[0] == pid}

    def _prss_keys_to_peer(self, peer_pid: int) -> list[bytes]:
        m = len(self.parties)
        return [
            self._prss_keys[s]
            for s in itertools.combinations(range(m), m - self.threshold)
            if s[0] == self.pid and peer_pid in s
        ]

    def _prss_keys_from_peer(self, peer_pid: int, data: bytes | None = None) -> int:
        m = len(self.parties)
        n = 0
        for subset in itertools.combinations(range(m), m - self.threshold):
            if subset[0] == peer_pid and self.pid in subset:
                if data is not None:
                    self._prss_keys[subset] = data[n : n + 16]
                n += 16
        return n

    def set_protocol(self, peer_pid: int, protocol: Any) -> None:
        self.parties[peer_pid].protocol = protocol
        if all(p.protocol is not None for p in self.parties if p.pid != self.pid):
            self.parties[self.pid].protocol.set_result(None)

    def unset_protocol(self, peer_pid: int) -> None:
        self.parties[peer_pid].protocol = None
        if all(p.protocol is None for p in self.parties if p.pid != self.pid):
            self.parties[self.pid].protocol.set_result(None)


class RecordingSink:
    def __init__(self) -> None:
        self.frames: list[Any] = []

    def send(self, frame: Any) -> None:
        self.frames.append(frame)
