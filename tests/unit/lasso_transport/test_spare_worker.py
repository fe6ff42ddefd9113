"""Workers started ahead of their run (handle.SpareWorker) with real worker processes: the
run gets the spare, a dead spare is replaced, nothing outlives the server, and a spare
that never gets a run leaves quietly when its link ends."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

from services.lasso.worker.frames import Frame
from services.lasso.worker.handle import SpareWorker, SubprocessWorker, spawn_worker

LAUNCH = "import sys, services.lasso.worker.main as w; raise SystemExit(w.main(sys.argv[1:]))"


class Recorder:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.closed = asyncio.Event()

    def on_frame(self, frame: Frame) -> None:
        self.frames.append(frame)

    def on_close(self, exc: Exception | None) -> None:
        self.closed.set()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_run_takes_the_spare_and_the_next_spare_is_another_process():
    async def main():
        spares = SpareWorker("lasso")
        spares.prepare()
        await settle()
        spare = await spares._spare  # type: ignore[misc]
        run = Recorder()
        worker = await spares.take("lasso", run.on_frame, run.on_close)
        assert worker is spare and worker.usable
        spares.prepare()
        following = await spares._spare  # type: ignore[misc]
        assert following.process.pid != worker.process.pid
        worker.kill()
        assert await worker.wait() == -9
        await asyncio.wait_for(run.closed.wait(), 5)  # the run hears its worker's link end
        spares.close()
        assert await following.wait() == -9  # killed and reaped when the server stops

    asyncio.run(main())


def test_a_dead_spare_is_replaced_by_a_fresh_worker():
    async def main():
        spares = SpareWorker("lasso")
        spares.prepare()
        spare = await spares._spare  # type: ignore[misc]
        spare.kill()
        await spare.wait()
        run = Recorder()
        worker = await spares.take("lasso", run.on_frame, run.on_close)
        assert worker is not spare and worker.usable
        worker.discard()
        assert await worker.wait() == -9

    asyncio.run(main())


def test_another_program_gets_a_fresh_worker_and_the_spare_is_discarded():
    async def main():
        spares = SpareWorker("lasso")
        spares.prepare()
        spare = await spares._spare  # type: ignore[misc]
        run = Recorder()
        worker = await spares.take("transport-check", run.on_frame, run.on_close)
        assert worker is not spare
        assert await asyncio.wait_for(spare.wait(), 5) == -9
        worker.discard()
        await worker.wait()

    asyncio.run(main())


def test_close_before_the_spare_started_still_kills_it():
    async def main():
        started: list[SubprocessWorker] = []

        async def spawn(program: str) -> SubprocessWorker:
            worker = await spawn_worker(program)
            started.append(worker)
            return worker

        spares = SpareWorker("lasso", spawn)
        spares.prepare()
        spares.close()  # the server stops while the spare is being started
        for _ in range(100):
            if started:
                break
            await asyncio.sleep(0.05)
        (worker,) = started
        assert await asyncio.wait_for(worker.wait(), 5) == -9
        spares.prepare()
        assert spares._spare is None  # no new spare after the stop

    asyncio.run(main())


def test_a_spare_whose_link_ends_before_any_run_exits_quietly():
    ours, theirs = socket.socketpair()
    beat_read, beat_write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "--fd", str(theirs.fileno()), "--heartbeat-fd", str(beat_write)],
        pass_fds=(theirs.fileno(), beat_write),
        stderr=subprocess.PIPE,
        text=True,
    )
    theirs.close()
    os.close(beat_write)
    try:
        assert os.read(beat_read, 1) == b"."  # alive and beating while it waits
        ours.close()
        assert process.wait(30) == 0
        assert process.stderr is not None and process.stderr.read() == ""
    finally:
        process.kill()
        process.wait()
        os.close(beat_read)


FORKED = """
import asyncio, os
from services.lasso.worker.handle import SpareWorker, fork_worker

forked = fork_worker("lasso")  # before any event loop or thread, as the lasso server's main does


async def main():
    spares = SpareWorker("lasso")
    spares.prepare(forked)
    spare = await spares._spare
    assert spare.process.pid == forked.pid and spare.usable
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{forked.pid}/fd"))
    beat = spare.last_heartbeat
    await asyncio.sleep(1.5)
    assert spare.last_heartbeat > beat, "no heartbeat from the forked spare"
    spares.close()
    print(await spare.wait(), len(fds))
    try:
        os.waitpid(forked.pid, os.WNOHANG)
    except ChildProcessError:
        print("reaped")


asyncio.run(main())
"""


def test_a_spare_forked_before_the_loop_is_adopted_beats_and_is_killed_and_reaped():
    done = subprocess.run([sys.executable, "-c", FORKED], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    code, fds, reaped = done.stdout.split()
    # 0-2, the link, the heartbeat pipe, and what the interpreter opens itself (its heartbeat thread, ...)
    assert code == "-9" and reaped == "reaped" and int(fds) <= 8, done.stdout
