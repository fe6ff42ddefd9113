"""Test-only wrapper that runs a real riskmesh server process with two instruments:

    python -m tests.reliability.instrument -- <python> -m <server module> --config <file>

(the form `LocalMesh` produces with an `OrgPlacement(command_prefix=...)`).

- Tag keys: `keys.derive_tag_key` is wrapped so that every HMAC key an owner's
  encryption server derives is appended to <dir>/tag-keys.txt ("<key hex> <study id>",
  the study id read from the HKDF info). The leak scan needs the keys to know every
  tag; nothing else can read them out of the process.
- Wire recording (helper organisation only): a server interceptor placed before every
  other one keeps the exact serialised bytes of every request message the server
  receives over mTLS, while the file <dir>/recording exists, appended to
  <dir>/wire-<org>-<server>-<pid>.bin as records (method length, method, data length,
  data; 4-byte big-endian lengths).

<dir> is $RISKMESH_RELIABILITY_RECORD_DIR, outside every org's state directory (the
leak scan reads those directories, and the tag keys must not be among them).
"""

from __future__ import annotations

import importlib
import os
import struct
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

import grpc

RECORD_DIR_ENV = "RISKMESH_RELIABILITY_RECORD_DIR"
TAG_KEYS_FILE = "tag-keys.txt"
RECORDING_FLAG = "recording"


class WireRecorder(grpc.aio.ServerInterceptor):
    """Appends each received request message of a recorded RPC to a file."""

    def __init__(self, path: Path, flag: Path) -> None:
        self.path = path
        self.flag = flag
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None

    def _write(self, method: str, data: bytes) -> None:
        name = method.encode()
        with self._lock:
            if self._file is None:
                self._file = self.path.open("ab")
            self._file.write(struct.pack(">I", len(name)) + name + struct.pack(">I", len(data)) + data)
            self._file.flush()

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None or not self.flag.exists():
            return handler
        method, deserialize = details.method, handler.request_deserializer

        def record(data: bytes) -> Any:
            self._write(method, bytes(data))
            return deserialize(data)

        return handler._replace(request_deserializer=record)


def read_wire(path: Path) -> list[tuple[str, bytes]]:
    """The (method, request bytes) records of one recording file."""
    blob = path.read_bytes()
    out: list[tuple[str, bytes]] = []
    at = 0
    while at + 4 <= len(blob):
        (n,) = struct.unpack_from(">I", blob, at)
        method = blob[at + 4 : at + 4 + n].decode()
        at += 4 + n
        if at + 4 > len(blob):
            break  # a record cut off by SIGKILL
        (m,) = struct.unpack_from(">I", blob, at)
        if at + 4 + m > len(blob):
            break
        out.append((method, blob[at + 4 : at + 4 + m]))
        at += 4 + m
    return out


def _install(record_dir: Path, module_name: str, config_path: Path) -> None:
    from services.join.core import keys
    from services.mesh.config import load_config

    real_derive = keys.derive_tag_key

    def derive(private_key: Any, peer_public_key: bytes, info: bytes) -> keys.TagKey:
        key = real_derive(private_key, peer_public_key, info)
        rest = info[
            len(keys.tag_key_info("", "")) - 4 :
        ]  # info = prefix, then (2-byte length, text) for the study and the run
        study_id = rest[2 : 2 + int.from_bytes(rest[:2], "big")].decode()
        with (record_dir / TAG_KEYS_FILE).open("a") as f:
            f.write(f"{key.secret.hex()} {study_id}\n")
        return key

    keys.derive_tag_key = derive  # type: ignore[assignment]
    config = load_config(config_path, env={})
    if config.role != "helper":
        return
    server = module_name.rsplit(".", 1)[-1].removesuffix("_server")
    recorder = WireRecorder(record_dir / f"wire-{config.org}-{server}-{os.getpid()}.bin", record_dir / RECORDING_FLAG)
    real_server = grpc.aio.server

    def server_with_recorder(*args: Any, interceptors: Any = None, **kwargs: Any) -> grpc.aio.Server:
        if interceptors is not None:  # the mTLS server (the plaintext health server has none)
            interceptors = [recorder, *interceptors]
        return real_server(*args, interceptors=interceptors, **kwargs)

    grpc.aio.server = server_with_recorder  # type: ignore[assignment]


def main(argv: list[str]) -> int:
    if "--" not in argv or "-m" not in argv:
        print("usage: python -m tests.reliability.instrument -- <python> -m <module> --config <file>", file=sys.stderr)
        return 2
    command = argv[argv.index("--") + 1 :]
    module_name = command[command.index("-m") + 1]
    rest = command[command.index("-m") + 2 :]
    config_path = Path(rest[rest.index("--config") + 1])
    _install(Path(os.environ[RECORD_DIR_ENV]), module_name, config_path)
    module = importlib.import_module(module_name)
    sys.argv = [module_name, *rest]
    result = module.main()
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
