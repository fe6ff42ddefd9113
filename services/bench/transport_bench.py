"""What MPyC's traffic costs on each transport, three parties on this machine.

    python -m services.bench.transport_bench [--workload rounds|lasso] [--modes tcp,inline,relay]
                                             [--rounds 2000] [--rows 2000 --features 10] [--repeat 3]

Workloads:
- rounds  N × `await mpc.output(x + i)` on a fresh secret: every party sends its share
          to its successor and waits for its predecessor's (t = 1) — one message each
          way, one network latency per round (`rounds_program`);
- lasso   the production regression (`lasso_program`) on a synthetic study
          (services.testkit.synthetic, dealt by services.testkit.dealer).

Modes, each as three separate processes:
- tcp     stock MPyC: its own `Runtime.start`, plain TCP on localhost, no TLS;
- inline  MPyC's runtime inside the lasso server process: gRPC bidi streams over mTLS,
          frames handed over by function call (the alternative design, not shipped);
- relay   what the lasso server ships: gRPC+mTLS between servers, and a worker
          process per run behind the local link (one more hop on each side).

Figures (medians over --repeat runs): `ms/round` (rounds: first to last progress report
of party 0, divided by N), `mpc s` (the program's first to last progress report: the
MPC work on connected parties), `run s` (RunLasso's whole call, including the worker's
start-up; for tcp the party process from runtime start to shutdown). The machine is
shared and has two cores: read the figures as ratios, not absolutes.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from riskmesh.v1 import common_pb2, lasso_pb2, lasso_pb2_grpc
from services.lasso.core.blocks import ShareBlock
from services.lasso.core.parties import PARTIES
from services.lasso.shares import InMemoryShareSource
from services.lasso.worker.frames import Frame, Result
from services.lasso.worker.link import OnClose, OnFrame
from services.lasso.worker.program import RunContext, load_program, program_env
from services.mesh.config import load_config
from services.mesh.process import SINGLE_THREAD_ENV
from services.mesh.tls import MeshCredentials
from services.tools.launcher import local_mesh_for, wait_healthy

ORGS = ("insurer", "hospital", "helper")
DEFAULT_ROUNDS = 2000
REPORT_EVERY = 100
VALUE_BYTES = 14  # ⌈(ℓ + σ + 2)/8⌉ for ℓ = 64, σ = 40

# One row of zero shares: the rounds program ignores its input.
DUMMY_BLOCK = ShareBlock(("a",), [[0]], VALUE_BYTES, 32, 64, 40)


# The rounds program ----------------------------------------------------------------------


# The programs this benchmark runs besides the production "lasso": registered for this
# process and, through the environment, for every worker and server it starts.
BENCH_PROGRAMS = {
    "transport-check": "services.testkit.transport_check:run",
    "rounds": "services.bench.transport_bench:rounds_program",
}
os.environ.update(program_env(BENCH_PROGRAMS))


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
        parties=[
            common_pb2.Party(org=ORGS[0], role=common_pb2.ROLE_DATA_OWNER),
            common_pb2.Party(org=ORGS[1], role=common_pb2.ROLE_DATA_OWNER),
            common_pb2.Party(org=ORGS[2], role=common_pb2.ROLE_HELPER),
        ],
        owners=[
            common_pb2.OwnerColumns(
                org=ORGS[0],
                birth_date_column="dob",
                postal_code_column="zip",
                features=[column(name="a", min=0, max=1)],
                target=column(name="y", min=0, max=1),
            ),
            common_pb2.OwnerColumns(
                org=ORGS[1],
                birth_date_column="dob",
                postal_code_column="zip",
                features=[column(name="b", min=0, max=1)],
            ),
        ],
        model=common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_LASSO, alphas=[0.1], iterations=rounds),
        min_intersection=1,
    )


# Workloads -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What every party runs; each party process derives its own inputs from these numbers."""

    name: str
    rounds: int = DEFAULT_ROUNDS
    rows: int = 2000
    features: int = 10
    seed: int = 7

    @property
    def program(self) -> str:
        return self.name

    def inputs(self) -> tuple[common_pb2.StudySpec, list[list[ShareBlock]]]:
        """The study and every party's share blocks (deterministic: the same in every process)."""
        if self.name == "rounds":
            return bench_spec(self.rounds), [[DUMMY_BLOCK] for _ in range(PARTIES)]
        return lasso_inputs(self.rows, self.features, self.seed)


def lasso_inputs(rows: int, features: int, seed: int) -> tuple[common_pb2.StudySpec, list[list[ShareBlock]]]:
    """A synthetic study as a StudySpec and its dealt shares, columns in study order."""
    import numpy as np

    from services.lasso.core.inputs import study_columns
    from services.testkit.dealer import FRACTIONAL_BITS, SIGMA_BITS, VALUE_BITS, deal
    from services.testkit.synthetic import make_joined_table

    study = make_joined_table(rows, features, seed)
    owner_cols = [[j for j in range(len(study.names)) if study.owners[j] == o and j != study.target] for o in (0, 1)]
    column = common_pb2.ColumnSpec
    spec = bench_spec(0, study_id="lasso-bench")
    del spec.owners[:]
    for o, cols in enumerate(owner_cols):
        owner = spec.owners.add(org=ORGS[o], birth_date_column="dob", postal_code_column="zip")
        owner.features.extend(
            column(name=study.names[j], min=study.ranges[j].min, max=study.ranges[j].max) for j in cols
        )
        if study.owners[study.target] == o:
            t = study.target
            owner.target.CopyFrom(column(name=study.names[t], min=study.ranges[t].min, max=study.ranges[t].max))
    order = [*owner_cols[0], *owner_cols[1], study.target]
    dealt = deal(study.table[:, order], [study.owners[j] for j in order], np.random.default_rng(seed))
    columns = study_columns(spec)
    assert columns == tuple(study.names[j] for j in order)
    return spec, [
        [ShareBlock(columns, share.tolist(), VALUE_BYTES, FRACTIONAL_BITS, VALUE_BITS, SIGMA_BITS)]
        for share in dealt.shares
    ]


def workload_of(args: argparse.Namespace) -> Workload:
    return Workload(args.workload, rounds=args.rounds, rows=args.rows, features=args.features)


# Inline worker (MPyC in the server process) ------------------------------------------


class _ToServer:
    def __init__(self, on_frame: OnFrame) -> None:
        self._on_frame = on_frame

    def send(self, frame: Frame) -> None:
        self._on_frame(frame)


class InlineWorker:
    """The worker session on the server's own event loop; frames are function calls."""

    def __init__(self, mpc: Any, program: str, on_frame: OnFrame) -> None:
        from services.lasso.worker.main import WorkerSession

        self._on_frame = on_frame
        self.session = WorkerSession(mpc, _ToServer(on_frame), load_program(program))
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> int:
        result = await self.session.run()
        self._on_frame(Result(result.SerializeToString()))
        return 0

    def send(self, frame: Frame) -> None:
        self.session.on_frame(frame)

    async def writable(self) -> None:
        return  # frames are function calls: nothing queues

    def kill(self) -> None:
        self.task.cancel()

    async def wait(self) -> int | None:
        try:
            return await self.task
        except (asyncio.CancelledError, Exception):
            return 1

    async def wait_silent(self, limit: float) -> None:
        await asyncio.Event().wait()  # in the server's own process: frozen together with it


# Party processes ----------------------------------------------------------------------


def party_main(args: argparse.Namespace) -> int:
    """One lasso server (inline or relay mode) until SIGTERM."""
    from services.lasso.rules import LASSO_RULES
    from services.lasso.server import LassoChannels, build_server
    from services.lasso.servicer import LassoServicer
    from services.mesh.server import MeshServer

    config = load_config(Path(args.config), env={})
    workload = workload_of(args)
    pid = ORGS.index(config.org)
    _, blocks = workload.inputs()
    shares = InMemoryShareSource({f"bench-{k}": blocks[pid] for k in range(args.runs)})

    if args.mode == "relay":

        async def serve() -> None:
            server = await build_server(config, shares=shares, program=workload.program)
            await server.serve_until_signal()

        asyncio.run(serve())
        return 0

    from services.lasso.worker.main import load_runtime

    mpc = load_runtime(pid)

    async def spawn(program: str, on_frame: OnFrame, on_close: OnClose) -> InlineWorker:
        return InlineWorker(mpc, program, on_frame)

    async def serve_inline() -> None:
        server = MeshServer(config, "lasso", LASSO_RULES)
        servicer = LassoServicer(
            config.org,
            shares,
            LassoChannels(config, server.credentials),
            program=workload.program,
            spawn=spawn,
            max_runs=1,
        )
        server.add_service(
            lasso_pb2_grpc.add_LassoServiceServicer_to_server,
            servicer,
            lasso_pb2.DESCRIPTOR.services_by_name["LassoService"],
        )
        await server.serve_until_signal()

    mpc.run(serve_inline())
    return 0


def tcp_party_main(args: argparse.Namespace) -> int:
    """Stock MPyC over its own TCP sockets; prints this party's figures as JSON."""
    from services.lasso.mpc.runtime import create_runtime

    mpc = create_runtime(args.pid, [("127.0.0.1", args.base_port + i) for i in range(PARTIES)])
    workload = workload_of(args)
    spec, blocks = workload.inputs()
    program = load_program(workload.program)
    marks: list[tuple[int, int, int, float]] = []

    def report(phase: int, done: int, total: int) -> None:
        marks.append((phase, done, total, time.perf_counter()))

    context = RunContext("tcp", spec, args.pid, ORGS, blocks[args.pid], report)

    async def main() -> None:
        await mpc.start()
        await program(mpc, context)
        await mpc.shutdown()

    start = time.perf_counter()
    mpc.run(main())
    print(json.dumps(figures_of(marks, workload, time.perf_counter() - start)), flush=True)
    return 0


def figures_of(marks: list[tuple[int, int, int, float]], workload: Workload, run_s: float) -> dict[str, float]:
    """ms per round (rounds workload), MPC seconds and run seconds from (phase, done, total, t) marks."""
    figures = {"mpc_s": marks[-1][3] - marks[0][3], "run_s": run_s}
    if workload.name == "rounds":
        iterations = [
            t for phase, done, total, t in marks if phase == common_pb2.PHASE_ITERATIONS and done in (0, total)
        ]
        figures["ms_per_round"] = 1000 * (iterations[-1] - iterations[0]) / workload.rounds
    return figures


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


def workload_args(workload: Workload) -> list[str]:
    return [
        "--workload",
        workload.name,
        "--rounds",
        str(workload.rounds),
        "--rows",
        str(workload.rows),
        "--features",
        str(workload.features),
    ]


def run_tcp(workload: Workload) -> dict[str, float]:
    base = free_port_block(PARTIES)
    env = {**os.environ, **SINGLE_THREAD_ENV}
    command = [
        sys.executable,
        "-m",
        "services.bench.transport_bench",
        "tcp-party",
        *workload_args(workload),
        "--base-port",
        str(base),
    ]
    procs = [
        subprocess.Popen([*command, "--pid", str(i)], stdout=subprocess.PIPE, env=env, text=True)
        for i in range(PARTIES)
    ]
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    return json.loads(outputs[0].strip().splitlines()[-1])


async def _call_run(
    config_path: Path, org: str, run_id: str, spec: common_pb2.StudySpec, workload: Workload
) -> dict[str, float]:
    config = load_config(config_path, env={})
    channel = MeshCredentials(config.pki_dir, org, "gateway").channel(
        org, "lasso", config.self_endpoint.address("lasso")
    )
    marks: list[tuple[int, int, int, float]] = []
    start = time.perf_counter()
    async with channel:
        stub = lasso_pb2_grpc.LassoServiceStub(channel)
        async for reply in stub.RunLasso(lasso_pb2.RunLassoRequest(run_id=run_id, spec=spec), timeout=1800):
            progress = reply.progress
            if reply.HasField("progress") and progress.HasField("at"):
                marks.append((progress.phase, progress.done, progress.total, progress.at.ToNanoseconds() / 1e9))
    return figures_of(marks, workload, time.perf_counter() - start)


@dataclass
class GrpcParties:
    """Three party processes of one gRPC mode, kept up for every repeat."""

    mode: str
    configs: dict[str, Path]
    processes: list[subprocess.Popen[bytes]]

    def run(self, k: int, workload: Workload) -> dict[str, float]:
        spec, _ = workload.inputs()

        async def one() -> list[dict[str, float]]:
            return list(
                await asyncio.gather(*(_call_run(self.configs[org], org, f"bench-{k}", spec, workload) for org in ORGS))
            )

        return asyncio.run(one())[0]

    def stop(self) -> None:
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            p.wait(10)


def start_grpc(mode: str, workload: Workload, repeat: int, root: Path) -> GrpcParties:
    configs = local_mesh_for(root / mode)
    env = {**os.environ, **SINGLE_THREAD_ENV}
    parties = GrpcParties(mode, configs, [])
    try:
        for org in ORGS:
            command = [
                sys.executable,
                "-m",
                "services.bench.transport_bench",
                "party",
                "--mode",
                mode,
                "--config",
                str(configs[org]),
                "--runs",
                str(repeat),
                *workload_args(workload),
            ]
            parties.processes.append(subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL))
        for org in ORGS:
            config = load_config(configs[org], env={})
            wait_healthy(f"{config.bind_host}:{config.health_port('lasso')}", 120)
    except BaseException:
        parties.stop()
        raise
    return parties


def add_workload_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", choices=("rounds", "lasso"), default="rounds")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds workload: number of rounds")
    parser.add_argument("--rows", type=int, default=2000, help="lasso workload: joined rows")
    parser.add_argument("--features", type=int, default=10, help="lasso workload: features (>= 10)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.bench.transport_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command")
    party = sub.add_parser("party", help="(internal) one lasso server for the benchmark")
    party.add_argument("--mode", choices=("inline", "relay"), required=True)
    party.add_argument("--config", required=True)
    party.add_argument("--runs", type=int, default=1)
    add_workload_options(party)
    tcp = sub.add_parser("tcp-party", help="(internal) one stock MPyC party")
    tcp.add_argument("--pid", type=int, required=True)
    tcp.add_argument("--base-port", type=int, required=True)
    add_workload_options(tcp)
    add_workload_options(parser)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default="tcp,inline,relay")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.command == "party":
        return party_main(args)
    if args.command == "tcp-party":
        return tcp_party_main(args)
    workload = workload_of(args)
    modes = args.modes.split(",")
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="transport-bench-") as tmp:
        grpc_parties = {mode: start_grpc(mode, workload, args.repeat, Path(tmp)) for mode in modes if mode != "tcp"}
        try:
            for k in range(args.repeat):  # modes interleaved, so a busy spell of the machine hits all of them
                for mode in modes:
                    runs[mode].append(run_tcp(workload) if mode == "tcp" else grpc_parties[mode].run(k, workload))
        finally:
            for parties in grpc_parties.values():
                parties.stop()
    results = {mode: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for mode, rs in runs.items()}
    load = (load_before, os.getloadavg()[0])
    if args.json:
        print(
            json.dumps(
                {"workload": workload.__dict__, "repeat": args.repeat, "load_average": load, "modes": results}, indent=2
            )
        )
        return 0
    what = (
        f"{workload.rounds} rounds"
        if workload.name == "rounds"
        else f"lasso, {workload.rows} rows × {workload.features} features"
    )
    print(
        f"{what}; median of {args.repeat} runs; 3 parties on this machine (load average {load[0]:.1f} → {load[1]:.1f})"
    )
    print(f"{'mode':8} {'ms/round':>9} {'mpc s':>7} {'run s':>7}")
    for mode, r in results.items():
        per_round = f"{r['ms_per_round']:9.3f}" if "ms_per_round" in r else f"{'-':>9}"
        print(f"{mode:8} {per_round} {r['mpc_s']:7.2f} {r['run_s']:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
