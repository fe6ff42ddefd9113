"""Start each organisation's web console (services/console) beside its servers.

Used by `riskmesh up` and the browser tests. A console is one more process per org: the
launcher chooses its login token (passed in the environment, never on the command line)
and waits until its plain-HTTP /healthz answers. The processes are `ServerProcess`es so
that `LocalMesh.stop` / `stop_processes` end them with the servers.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from services.console.server import console_port
from services.mesh.config import load_config
from services.mesh.process import SINGLE_THREAD_ENV
from services.tools.launcher import ServerProcess, reserve_port, start_server_process


@dataclass(frozen=True)
class ConsoleInfo:
    org: str
    url: str  # http://127.0.0.1:<port>
    token: str

    @property
    def login_url(self) -> str:
        return f"{self.url}/login?token={self.token}"


def spawn_console(
    org: str, config_path: Path, port: int | None = None, host: str = "127.0.0.1"
) -> tuple[ServerProcess, ConsoleInfo]:
    config = load_config(config_path, env={})
    if port is None:  # servers on reserved ports (base_port 0): the console's port is reserved too
        port = console_port(config) if config.base_port else reserve_port(host)
    token = secrets.token_urlsafe(24)
    env = {**os.environ, **SINGLE_THREAD_ENV, "RISKMESH_CONFIG": str(config_path), "RISKMESH_CONSOLE_TOKEN": token}
    log_dir = config.state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "console.log"
    command = [
        sys.executable,
        "-m",
        "services.console",
        "--config",
        str(config_path),
        "--host",
        host,
        "--port",
        str(port),
    ]
    process = start_server_process(command, env, log_path)
    url = f"http://{host}:{port}"
    return ServerProcess(org, "console", process, log_path, f"{url}/healthz"), ConsoleInfo(org, url, token)


def wait_console(proc: ServerProcess, timeout: float = 30.0) -> None:
    """Until GET /healthz answers 200 (or the process dies, with its log's tail)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.process.poll() is not None:
            tail = proc.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the console of {proc.org} exited with {proc.process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(proc.health_address, timeout=1.0) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the console of {proc.org} did not answer within {timeout:.0f} s (log: {proc.log_path})"
            )
        time.sleep(0.1)


def start_consoles(
    config_paths: dict[str, Path], ports: dict[str, int] | None = None
) -> tuple[list[ServerProcess], list[ConsoleInfo]]:
    """One console per org in config_paths, started and answering."""
    processes, infos = [], []
    try:
        for org, path in config_paths.items():
            proc, info = spawn_console(org, path, (ports or {}).get(org))
            processes.append(proc)
            infos.append(info)
        for proc in processes:
            wait_console(proc)
    except BaseException:
        for proc in processes:
            if proc.process.poll() is None:
                proc.process.terminate()
                proc.process.wait(10)
        raise
    return processes, infos
