"""Servers forked from the launcher's fork server (services/tools/forked_servers.py, ADR 0016):
each child gets its own process group, its log, exactly its environment, and reports its exit
like a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from services.tools.forked_servers import start_forked_server
from services.tools.launcher import kill_process_group

MODULE = "tests.unit.tools.forked_main"


def _report(log: Path) -> dict:
    return json.loads(log.read_text().splitlines()[0])


def test_child_gets_its_group_log_environment_and_exit_code(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("")  # appended to, as a restarted server's log
    env = {"PATH": os.environ.get("PATH", ""), "EXIT_CODE": "3", "ONLY_THIS": "yes"}
    server = start_forked_server(MODULE, ["--config", "x.toml"], env, log, preload=(MODULE,))
    assert server.wait(30) == 3
    assert server.returncode == 3 and server.poll() == 3
    report = _report(log)
    assert report["pid"] == server.pid
    assert report["pgid"] == server.pid  # a process group of its own
    assert report["env"] == env  # exactly the launcher's environment, nothing inherited
    assert report["argv"] == ["--config", "x.toml"]
    assert report["stdin"] == ""  # /dev/null
    assert "to stderr" in log.read_text()


def test_signals_and_wait_timeout_behave_like_popen(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = start_forked_server(MODULE, ["--sleep"], {"PATH": ""}, log, preload=(MODULE,))
    with pytest.raises(subprocess.TimeoutExpired):
        server.wait(0.2)
    assert server.poll() is None and server.returncode is None
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == -signal.SIGTERM
    server.kill()  # after the end: nothing to signal, no error
    kill_process_group(server)  # the empty group: no error either


def test_child_is_named_as_the_subprocess_it_replaces(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("")
    server = start_forked_server(MODULE, ["--sleep"], {"PATH": ""}, log, preload=(MODULE,))
    try:
        deadline = time.monotonic() + 30
        while not log.read_text() and time.monotonic() < deadline:  # main() has started
            time.sleep(0.05)
        # One string with spaces (setproctitle), which psutil returns as its first element
        assert psutil.Process(server.pid).cmdline()[0].endswith(f" -m {MODULE} --sleep")
    finally:
        server.kill()
        server.wait(30)
