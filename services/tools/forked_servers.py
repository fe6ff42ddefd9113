"""Local server processes forked from one process that has imported them already (ADR 0016).

A server spends ~0.4-0.5 CPU-s importing gRPC, OpenTelemetry, numpy and its own modules
before it serves, and three organisations start 12 servers at once: ~5 CPU-s on a 2-core
machine before the first study can begin. Here multiprocessing's ``forkserver`` imports
every server module once, and each server is forked from it. The fork server is
single-threaded and has opened no gRPC channel or server, so its children start clean (a
process that runs gRPC must never fork itself: services/join/core/parallel.py). A child
then does what `launcher.start_server_process` gives a subprocess:

- a process group of its own (the launcher stops the whole group),
- stdout and stderr appended to its log file, stdin from /dev/null,
- exactly the environment the launcher computed for it,
- the command line of the subprocess it replaces, as its title in ps,

and runs its server's console-script ``main`` with ``--config``.

As with any multiprocessing start method but fork, each child is prepared with the launcher's
``__main__`` (imported once, in the fork server): a script that launches servers must guard its
top level with ``if __name__ == "__main__":`` (the riskmesh CLI and pytest do).

`ForkedServer` answers the part of `subprocess.Popen` the launcher and its callers use
(pid, poll, wait, returncode, send_signal, terminate, kill). Only this launcher talks to
its own fork server (multiprocessing pickles the request over a socket in a private
directory); no peer's bytes are involved.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import setproctitle

from services.mesh.process import SINGLE_THREAD_ENV

_lock = threading.Lock()
_started: list[ForkedServer] = []


@contextmanager
def _environment(extra: Mapping[str, str]) -> Iterator[None]:
    """os.environ with `extra` set, restored on exit (the fork server inherits it)."""
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _forkserver_context(modules: tuple[str, ...]) -> multiprocessing.context.ForkServerContext:
    """The forkserver context, its server started with `modules` imported (first call only).

    The fork server is one per process (multiprocessing's), so if a join pool in this same
    process (an in-process test) started it first, the servers still start from it: they
    then import what it lacks themselves, as a subprocess would."""
    context = multiprocessing.get_context("forkserver")
    with _lock:
        # "__main__": a launcher run as a script (the riskmesh CLI) is imported once there,
        # not by every child (multiprocessing prepares each child with the parent's main).
        context.set_forkserver_preload(["__main__", *modules])
        # Numerical libraries size their thread pools at import: single-threaded, as every
        # server's own environment says (SINGLE_THREAD_ENV), already in the fork server.
        with _environment(SINGLE_THREAD_ENV):
            multiprocessing.forkserver.ensure_running()
    return context


def _run_server(module: str, argv: list[str], env: dict[str, str], log_path: str) -> None:
    """In the child: own process group, log file, environment; then the server's main."""
    os.setpgid(0, 0)
    # Named in ps as the subprocess it replaces, not as the fork server (before the
    # environment changes: setproctitle moves the environment's strings to reuse their space).
    setproctitle.setproctitle(" ".join([sys.executable, "-m", module, *argv]))
    null = os.open(os.devnull, os.O_RDONLY)  # not the launcher's terminal
    os.dup2(null, 0)
    os.close(null)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [module, *argv]
    try:
        code = importlib.import_module(module).main()
    finally:
        logging.shutdown()  # the child ends with os._exit: flush what atexit would have
    if code:
        raise SystemExit(code)


class ForkedServer:
    """A server process forked from the fork server; a `subprocess.Popen` look-alike."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """As Popen's: None while running, -N after signal N."""
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(self._process.name or "server", timeout or 0.0)
        return code

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass  # ended between the check and the signal

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start_forked_server(
    module: str, argv: list[str], env: Mapping[str, str], log_path: Path, preload: tuple[str, ...]
) -> ForkedServer:
    """Fork `module`'s server (its `main()`, with `argv`) from the fork server, which imports
    `preload` (every server module of the mesh) when it first starts."""
    context = _forkserver_context(preload)
    process = context.Process(
        target=_run_server, args=(module, list(argv), dict(env), str(log_path)), name=f"riskmesh {module}"
    )
    process.start()
    server = ForkedServer(process)
    with _lock:
        _started[:] = [s for s in _started if s.poll() is None]  # keep only the running
        _started.append(server)
    return server


@atexit.register
def _kill_left_over() -> None:
    """A launcher exiting without stopping its servers (a crash) must not hang in
    multiprocessing's exit handler, which joins every child: kill their process groups.
    Registered after multiprocessing's own handler, so it runs first."""
    with _lock:
        servers = list(_started)
    for server in servers:
        if server.poll() is None:
            try:
                os.killpg(server.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                server.kill()
