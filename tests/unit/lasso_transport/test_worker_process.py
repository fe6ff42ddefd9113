"""The worker process against a scripted server end (no network): a failure inside an
MPyC coroutine becomes one Failed frame naming the exception type, never its message."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from riskmesh.v1 import lasso_pb2
from services.bench.transport_bench import DUMMY_BLOCK, bench_spec
from services.lasso.core.blocks import encode_block
from services.lasso.worker.frames import Dial, Failed, FrameDecoder, Input, InputEnd, PeerUp, Start, encode
from services.lasso.worker.program import program_env
from tests.unit.lasso_transport.crash_program import SECRET

LAUNCH = "import sys, services.lasso.worker.main as w; raise SystemExit(w.main(sys.argv[1:]))"
CRASH_ENV = {**os.environ, **program_env({"crash": "tests.unit.lasso_transport.crash_program:run"})}


def test_a_failing_mpyc_coroutine_is_reported_by_type_only():
    ours, theirs = socket.socketpair()
    beat_read, beat_write = os.pipe()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LAUNCH,
            "--fd",
            str(theirs.fileno()),
            "--heartbeat-fd",
            str(beat_write),
            "--program",
            "crash",
        ],
        pass_fds=(theirs.fileno(), beat_write),
        env=CRASH_ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    theirs.close()
    os.close(beat_write)
    try:
        ours.sendall(encode(Start(0, lasso_pb2.RunLassoRequest(run_id="r", spec=bench_spec(1)).SerializeToString())))
        for message in encode_block("r", DUMMY_BLOCK):
            ours.sendall(encode(Input(message.SerializeToString())))
        ours.sendall(encode(InputEnd()))
        decoder, frames = FrameDecoder(), []
        ours.settimeout(30)
        deadline = time.monotonic() + 30
        while not any(isinstance(f, Failed) for f in frames) and time.monotonic() < deadline:
            data = ours.recv(65536)
            if not data:
                break
            for frame in decoder.feed(data):
                frames.append(frame)
                if isinstance(frame, Dial):  # party 0 dials 1 and 2: "connect" them
                    ours.sendall(encode(PeerUp(frame.peer, b"")))
        failed = [f for f in frames if isinstance(f, Failed)]
        assert failed == [Failed("the MPC computation raised ValueError")], (
            process.stderr.read() if process.stderr else ""
        )
        assert process.wait(30) == 1
        assert os.read(beat_read, 100).startswith(b".")
        stderr = process.stderr.read() if process.stderr else ""
        assert "ValueError" in stderr and SECRET not in stderr
    finally:
        process.kill()
        process.wait()
        ours.close()
        os.close(beat_read)
