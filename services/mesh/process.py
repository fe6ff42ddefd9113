"""Entry point helpers for a server process: read the config once, set up logging and
tracing, build the server, serve until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from services.mesh.config import ConfigError, OrgConfig, load_config
from services.mesh.server import MeshServer
from services.mesh.telemetry import setup_metrics, setup_tracing

# Three parties share few cores: numerical libraries (and MPyC) stay single-threaded in
# every server, MPC worker and party process.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MPYC_MAXWORKERS": "0",
}


def run_server_process(
    name: str, build: Callable[[OrgConfig], Awaitable[MeshServer]], argv: list[str] | None = None
) -> int:
    parser = argparse.ArgumentParser(prog=f"riskmesh-{name}", description=f"riskmesh {name} server")
    parser.add_argument("--config", type=Path, help="org config file (default: $RISKMESH_CONFIG)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"riskmesh-{name}: {exc}", file=sys.stderr)
        return 2
    if not config.runs(name):
        print(f"riskmesh-{name}: a {config.role} organisation does not run the {name} server", file=sys.stderr)
        return 2
    provider = setup_tracing(config.org, name, config.state_dir)
    meters = setup_metrics(config.org, name, config.state_dir)

    async def serve() -> None:
        server = await build(config)
        await server.serve_until_signal()

    try:
        asyncio.run(serve())
    finally:
        provider.shutdown()
        meters.shutdown()
    return 0
