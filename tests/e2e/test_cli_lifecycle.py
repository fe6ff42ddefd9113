"""`riskmesh up` and `riskmesh demo`, started the way a script starts a background job
(SIGINT ignored, their own session), stop every process they started — the servers,
the join servers' forkservers and pool workers — on SIGTERM, and on SIGINT too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from services.join.core.parallel import default_workers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

RISKMESH = Path(sys.executable).parent / "riskmesh"
READY_S = 120.0
STOP_BOUND_S = 20.0  # the servers drain for up to 5 s (services/mesh/server.py), SIGKILL at 10 s


@dataclass
class Background:
    """A `riskmesh` command running in the background, and the process groups of its tree."""

    child: subprocess.Popen
    log: Path
    groups: set[int] = field(default_factory=set)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_for(self, marker: str) -> None:
        deadline = time.monotonic() + READY_S
        while marker not in self.log.read_text(errors="replace"):
            assert self.child.poll() is None, self.output()
            assert time.monotonic() < deadline, f"no {marker!r} within {READY_S:.0f} s:\n{self.output()}"
            time.sleep(0.2)

    def stop(self, signum: int, crypto_workers: int = 0) -> int:
        """Send `signum`; assert that the command and every process it started end within
        the bound; its exit status. `crypto_workers`: worker processes per data owner it started."""
        tree = psutil.Process(self.child.pid).children(recursive=True)
        # The servers are forked from the launcher's fork server and named as their command
        # line (one string: services/tools/forked_servers.py).
        commands = {p.pid: " ".join(p.cmdline()) for p in tree}
        servers = [p for p in tree if " --config " in commands[p.pid] and "services.console" not in commands[p.pid]]
        # 12 servers and 2 × crypto_workers workers (`up` starts the consoles too; they are in `tree`)
        assert len(servers) == 12 + 2 * crypto_workers, [commands[p.pid] for p in servers]
        if default_workers() > 1 and not crypto_workers:  # each encryption server has its pool by now
            encryption = {p.pid for p in servers if "encryption_server" in commands[p.pid]}
            pools = [p for p in tree if p.ppid() in encryption and "forkserver" in commands[p.pid]]
            assert pools, list(commands.values())
        self.groups |= {os.getpgid(p.pid) for p in tree}
        signalled = time.monotonic()
        self.child.send_signal(signum)
        try:
            self.child.wait(STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_BOUND_S:.0f} s after {signal.Signals(signum).name}:\n{self.output()}")
        _, alive = psutil.wait_procs(tree, timeout=max(0.1, signalled + STOP_BOUND_S - time.monotonic()))
        assert [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
        assert self.alive_in_groups() == []  # also nothing started after the snapshot
        return self.child.returncode

    def alive_in_groups(self) -> list[str]:
        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                if os.getpgid(proc.pid) in self.groups and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])}")
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    def kill_leftovers(self) -> None:
        with suppress(psutil.Error):
            self.groups |= {os.getpgid(p.pid) for p in psutil.Process(self.child.pid).children(recursive=True)}
        for group in self.groups:
            with suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self.child.wait()


@contextmanager
def in_background(args: list[str], log: Path) -> Iterator[Background]:
    """`riskmesh <args>` started as `riskmesh <args> &` in a script starts it (SIGINT
    ignored; its own session here); whatever is left of it afterwards is killed."""
    with log.open("wb") as out:
        child = subprocess.Popen(
            [str(RISKMESH), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    background = Background(child, log, {child.pid})
    try:
        yield background
    finally:
        background.kill_leftovers()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT-inherited-ignored"])
def test_up_stops_every_process_it_started(tmp_path: Path, signum: int) -> None:
    with in_background(["up", "--free-ports", "--home", str(tmp_path / "home")], tmp_path / "up.log") as up:
        up.wait_for("Running.")
        assert up.stop(signum, crypto_workers=2) == 0, up.output()  # `riskmesh up` starts 2 per owner by default


def test_demo_stops_every_process_it_started(tmp_path: Path) -> None:
    with in_background(["demo", "--home", str(tmp_path / "home")], tmp_path / "demo.log") as demo:
        demo.wait_for("servers healthy")
        assert demo.stop(signal.SIGTERM) == 128 + signal.SIGTERM, demo.output()
        assert "SIGTERM: stopped every server" in demo.output()
