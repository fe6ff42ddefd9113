"""What one MPyC round costs on each transport, three parties on this machine.

    python -m services.lasso.transport_bench [--rounds 2000] [--repeat 3] [--modes tcp,inline,relay]

A round is `await mpc.output(x + i)` on a fresh secret: every party sends its share to
its successor and waits for its predecessor's (t = 1), i.e. one message each way and
one network latency; `rounds_program` runs N of them between two progress reports.

Modes, each as three separate processes:
- tcp     stock MPyC: its own `Runtime.start`, plain TCP on localhost, no TLS;
- inline  MPyC's runtime inside the lasso server process: gRPC bidi streams over mTLS,
          frames handed over by function call (the alternative design, not shipped);
- relay   what the lasso server ships: gRPC+mTLS between servers, and a worker
          process per run behind the local link (one more hop on each side).

Reported per mode: the median seconds per round (from the first to the last progress
report of party 0) and the median wall time of a whole run (process start excluded).
The machine is shared and has two cores: treat the figures as ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from riskmesh.v1 import common_pb2, lasso_pb2, lasso_pb2_grpc
from services.lasso.frames import Frame, Result
from services.lasso.link import OnClose, OnFrame
from services.lasso.parties import PARTIES
from services.lasso.program import RunContext
from services.lasso.shares import InMemoryShareSource, ShareBlock
from services.mesh.config import load_config
from services.mesh.launcher import SINGLE_THREAD_ENV, local_mesh_for, wait_healthy
from services.mesh.tls import MeshCredentials

ORGS = ("insurer", "hospital", "helper")
DEFAULT_ROUNDS = 2000
REPORT_EVERY = 100


# The program ------------------------------------------------------------------------


async def rounds_program(mpc: Any, context: RunContext) -> lasso_pb2.ModelResult:
    """`spec.model.iterations` rounds of one output each; progress every REPORT_EVERY rounds."""
    rounds = context.spec.model.iterations or DEFAULT_ROUNDS
    secint = mpc.SecInt(32)
    x = mpc.input(secint(context.pid + 1), senders=0)
    await mpc.output(x)
    context.report(common_pb2.PHASE_ITERATIONS, 0, rounds)
    for i in range(rounds):
        await mpc.output(x + i)
        if (i + 1) % REPORT_EVERY == 0 or i + 1 == rounds:
            context.report(common_pb2.PHASE_ITERATIONS, i + 1, rounds)
    return lasso_pb2.ModelResult(iterations=rounds)


def bench_spec(rounds: int, study_id: str = "transport-bench") -> common_pb2.StudySpec:
    """A minimal valid study whose `iterations` is the number of rounds."""
    column = common_pb2.ColumnSpec
    return common_pb2.StudySpec(
        study_id=study_id,
        title="transport benchmark",
        parties=[common_pb2.Party(org=ORGS[0], role=common_pb2.ROLE_DATA_OWNER), common_pb2.Party(org=ORGS[1], role=common_pb2.ROLE_DATA_OWNER), common_pb2.Party(org=ORGS[2], role=common_pb2.ROLE_HELPER)],
        owners=[
            common_pb2.OwnerColumns(org=ORGS[0], birth_date_column="dob", postal_code_column="zip", features=[column(name="a", min=0, max=1)], target=column(name="y", min=0, max=1)),
            common_pb2.OwnerColumns(org=ORGS[1], birth_date_column="dob", postal_code_column="zip", features=[column(name="b", min=0, max=1)]),
        ],
        model=common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_LASSO, alphas=[0.1], iterations=rounds),
        min_intersection=1,
    )


# One row of zero shares: the rounds program ignores its input.
DUMMY_BLOCK = ShareBlock(("a",), [[0]], 14, 32, 64, 40)


def dummy_source(runs: list[str]) -> InMemoryShareSource:
    return InMemoryShareSource({run: [DUMMY_BLOCK] for run in runs})


# Inline worker (MPyC in the server process) ------------------------------------------


class _ToServer:
    def __init__(self, on_frame: OnFrame) -> None:
        self._on_frame = on_frame

    def send(self, frame: Frame) -> None:
        self._on_frame(frame)


class InlineWorker:
    """The worker session on the server's own event loop; frames are function calls."""

    def __init__(self, mpc: Any, on_frame: OnFrame) -> None:
        from services.lasso.mpc_worker import WorkerSession

        self._on_frame = on_frame
        self.session = WorkerSession(mpc, _ToServer(on_frame), rounds_program)
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> int:
        result = await self.session.run()
        self._on_frame(Result(result.SerializeToString()))
        return 0

    def send(self, frame: Frame) -> None:
        self.session.on_frame(frame)

    def kill(self) -> None:
        self.task.cancel()

    async def wait(self) -> int | None:
        try:
            return await self.task
        except (asyncio.CancelledError, Exception):
            return 1


# Party processes ----------------------------------------------------------------------


def party_main(args: argparse.Namespace) -> int:
    """One lasso server (inline or relay mode) until SIGTERM."""
    from services.lasso.server import build_server
    from services.lasso.servicer import LassoServicer

    config = load_config(Path(args.config), env={})
    runs = [f"bench-{k}" for k in range(args.runs)]

    async def serve() -> None:
        server = await build_server(config, shares=dummy_source(runs), program="rounds")
        await server.serve_until_signal()

    if args.mode == "relay":
        asyncio.run(serve())
        return 0
    from services.lasso.mpc_worker import load_runtime
    from services.lasso.server import LassoChannels
    from services.lasso.rules import LASSO_RULES
    from services.mesh.server import MeshServer

    mpc = load_runtime(ORGS.index(config.org))

    async def spawn(pid: int, program: str, label: str, on_frame: OnFrame, on_close: OnClose) -> InlineWorker:
        return InlineWorker(mpc, on_frame)

    async def serve_inline() -> None:
        server = MeshServer(config, "lasso", LASSO_RULES)
        servicer = LassoServicer(config.org, dummy_source(runs), LassoChannels(config, server.credentials), program="rounds", spawn=spawn, max_runs=1)
        server.add_service(lasso_pb2_grpc.add_LassoServiceServicer_to_server, servicer, lasso_pb2.DESCRIPTOR.services_by_name["LassoService"])
        await server.serve_until_signal()

    mpc.run(serve_inline())
    return 0


def tcp_party_main(args: argparse.Namespace) -> int:
    """Stock MPyC over its own TCP sockets; prints this party's seconds for the rounds."""
    from services.lasso.mpc_runtime import create_runtime

    mpc = create_runtime(args.pid, [("127.0.0.1", args.base_port + i) for i in range(PARTIES)])
    marks: list[float] = []

    def report(phase: int, done: int, total: int) -> None:
        if done in (0, total):
            marks.append(time.perf_counter())

    context = RunContext("tcp", bench_spec(args.rounds), args.pid, ORGS, [], report)

    async def main() -> None:
        await mpc.start()
        await rounds_program(mpc, context)
        await mpc.shutdown()

    start = time.perf_counter()
    mpc.run(main())
    print(json.dumps({"round_s": (marks[-1] - marks[0]) / args.rounds, "run_s": time.perf_counter() - start}), flush=True)
    return 0


# Driver --------------------------------------------------------------------------------


def free_port_block(count: int) -> int:
    for base in range(23000 + (os.getpid() % 300) * 20, 60000, 20):
        ok = True
        for port in range(base, base + count):
            with closing(socket.socket()) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free ports")


def run_tcp(rounds: int) -> tuple[float, float]:
    base = free_port_block(PARTIES)
    env = {**os.environ, **SINGLE_THREAD_ENV}
    procs = [subprocess.Popen([sys.executable, "-m", "services.lasso.transport_bench", "tcp-party", "--pid", str(i), "--rounds", str(rounds), "--base-port", str(base)], stdout=subprocess.PIPE, env=env, text=True) for i in range(PARTIES)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    figures = json.loads(outputs[0].strip().splitlines()[-1])
    return figures["round_s"], figures["run_s"]


async def _call_run(config_path: Path, org: str, run_id: str, spec: common_pb2.StudySpec) -> tuple[float, float]:
    config = load_config(config_path, env={})
    channel = MeshCredentials(config.pki_dir, org, "gateway").channel(org, "lasso", config.self_endpoint.address("lasso"))
    marks: list[float] = []
    start = time.perf_counter()
    async with channel:
        stub = lasso_pb2_grpc.LassoServiceStub(channel)
        async for reply in stub.RunLasso(lasso_pb2.RunLassoRequest(run_id=run_id, spec=spec), timeout=600):
            progress = reply.progress
            if reply.HasField("progress") and progress.phase == common_pb2.PHASE_ITERATIONS and progress.done in (0, progress.total):
                marks.append(progress.at.ToNanoseconds() / 1e9)
    return (marks[-1] - marks[0]) / spec.model.iterations, time.perf_counter() - start


def run_grpc(mode: str, rounds: int, repeat: int, root: Path) -> list[tuple[float, float]]:
    configs = local_mesh_for(root / mode)
    env = {**os.environ, **SINGLE_THREAD_ENV}
    procs = []
    try:
        for org in ORGS:
            procs.append(subprocess.Popen([sys.executable, "-m", "services.lasso.transport_bench", "party", "--mode", mode, "--config", str(configs[org]), "--runs", str(repeat)], env=env, stderr=subprocess.DEVNULL))
        for org in ORGS:
            config = load_config(configs[org], env={})
            wait_healthy(f"{config.bind_host}:{config.health_port('lasso')}", 60)
        spec = bench_spec(rounds)
        figures = []
        for k in range(repeat):

            async def one() -> list[tuple[float, float]]:
                return list(await asyncio.gather(*(_call_run(configs[org], org, f"bench-{k}", spec) for org in ORGS)))

            figures.append(asyncio.run(one())[0])
        return figures
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.lasso.transport_bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    party = sub.add_parser("party", help="(internal) one lasso server for the benchmark")
    party.add_argument("--mode", choices=("inline", "relay"), required=True)
    party.add_argument("--config", required=True)
    party.add_argument("--runs", type=int, default=1)
    tcp = sub.add_parser("tcp-party", help="(internal) one stock MPyC party")
    tcp.add_argument("--pid", type=int, required=True)
    tcp.add_argument("--rounds", type=int, required=True)
    tcp.add_argument("--base-port", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default="tcp,inline,relay")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.command == "party":
        return party_main(args)
    if args.command == "tcp-party":
        return tcp_party_main(args)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="transport-bench-") as tmp:
        for mode in args.modes.split(","):
            if mode == "tcp":
                figures = [run_tcp(args.rounds) for _ in range(args.repeat)]
            else:
                figures = run_grpc(mode, args.rounds, args.repeat, Path(tmp))
            results[mode] = {"ms_per_round": 1000 * statistics.median(f[0] for f in figures), "run_s": statistics.median(f[1] for f in figures)}
    if args.json:
        print(json.dumps({"rounds": args.rounds, "repeat": args.repeat, "modes": results}, indent=2))
    else:
        print(f"{args.rounds} rounds, median of {args.repeat} runs, 3 parties on this machine")
        print(f"{'mode':8} {'ms/round':>9} {'run s':>7}")
        for mode, r in results.items():
            print(f"{mode:8} {r['ms_per_round']:9.3f} {r['run_s']:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
