"""`riskmesh` — dev PKI, starting organisations, talking to a gateway, the demo and benchmarks."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from services.tools.pki import DEFAULT_ORGS, ca_fingerprints, export_k8s, init_pki

app = typer.Typer(
    help="riskmesh: secure inner join + secure Lasso across organisations, over mTLS.", no_args_is_help=True
)
pki_app = typer.Typer(help="Development PKI (one CA per organisation).", no_args_is_help=True)
app.add_typer(pki_app, name="pki")
from services.cli.study import audit_app, study_app  # noqa: E402  (sub-commands)

app.add_typer(study_app, name="study")
app.add_typer(audit_app, name="audit")
console = Console()
err = Console(stderr=True)

DEFAULT_HOME = Path(".riskmesh")


@pki_app.command("init")
def pki_init(
    out: Path = typer.Option(DEFAULT_HOME / "pki", help="directory for the PKI (never commit it)"),
    org: list[str] = typer.Option(list(DEFAULT_ORGS), help="organisations (repeat the option)"),
    dns: list[str] = typer.Option([], help="extra DNS SAN for every certificate (repeat)"),
    force: bool = typer.Option(False, help="replace existing CAs and certificates"),
) -> None:
    """Create one CA per organisation, a certificate per service and the trust bundles."""
    dirs = init_pki(out, tuple(org), tuple(dns), force=force)
    for d in dirs:
        console.print(
            f"[green]✓[/] {d}  (CA, gateway, encryption, intersection, resharing, lasso, client, console,"
            " crypto-worker; keys 0600)"
        )
    _print_fingerprints(out, tuple(org))


def _print_fingerprints(pki_dir: Path, orgs: tuple[str, ...]) -> None:
    # Plain lines (no wrapping): they are copied into configs and compared by eye.
    typer.echo("CA fingerprints (SHA-256) to exchange and pin as ca_sha256 in each org's riskmesh.toml:")
    for name, fingerprint in ca_fingerprints(pki_dir, orgs).items():
        typer.echo(f"{name} {fingerprint}")


@pki_app.command("fingerprints")
def pki_fingerprints(
    pki_dir: Path = typer.Option(DEFAULT_HOME / "pki", help="the PKI directory"),
    org: list[str] = typer.Option(list(DEFAULT_ORGS), help="organisations (repeat the option)"),
) -> None:
    """Print each organisation's CA fingerprint (what the orgs send each other and pin)."""
    try:
        _print_fingerprints(pki_dir, tuple(org))
    except FileNotFoundError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None


@pki_app.command("export-k8s")
def pki_export_k8s(
    org: str = typer.Argument(..., help="organisation whose Secrets to write"),
    pki_dir: Path = typer.Option(DEFAULT_HOME / "pki", help="the PKI directory"),
    out: Path = typer.Option(DEFAULT_HOME / "k8s-secrets", help="where to write the Secret manifests (outside k8s/)"),
    namespace: str = typer.Option("riskmesh", help="Kubernetes namespace"),
) -> None:
    """Write Kubernetes Secret manifests with an org's certificates (contain private keys)."""
    for path in export_k8s(pki_dir, org, out, namespace):
        console.print(f"[green]✓[/] {path}")


@app.command()
def up(
    org: list[str] = typer.Option([], help="organisation(s) to start (default: all three)"),
    home: Path = typer.Option(DEFAULT_HOME, help="where configs, PKI and state live"),
    free_ports: bool = typer.Option(
        False,
        "--free-ports",
        help="ports reserved while this runs instead of 7100/7200/7300 (the configs under --home name them)",
    ),
    consoles: bool = typer.Option(True, help="also start each organisation's web console (services/console)"),
    crypto_workers: int = typer.Option(
        2,
        "--crypto-workers",
        min=0,
        max=4,
        help="crypto-worker processes per data owner for its encryption and resharing servers (0: their own pools)",
    ),
) -> None:
    """Start organisations on localhost (each server its own process) until Ctrl-C or SIGTERM."""
    from services.tools.consoles import start_consoles
    from services.tools.launcher import LocalMesh, stop_on_signals, write_local_mesh

    with stop_on_signals():  # `kill <pid>` stops every server as Ctrl-C does, also when SIGINT came in ignored
        try:
            configs = write_local_mesh(home, reserve_ports=free_ports, crypto_workers=crypto_workers)
            unknown = set(org) - set(configs)
            if unknown:
                raise typer.BadParameter(f"unknown organisation(s): {', '.join(sorted(unknown))}")
            chosen = {o: p for o, p in configs.items() if not org or o in org}
            mesh = LocalMesh(chosen)
            try:
                with console.status("starting servers…"):
                    mesh.start()
                infos = []
                if consoles:
                    with console.status("starting consoles…"):
                        processes, infos = start_consoles(chosen)
                    mesh.processes.extend(processes)
                _print_processes(mesh)
                if infos:
                    _print_consoles(infos)
                console.print("Running. Press Ctrl-C (or send SIGTERM) to stop.")
                while all(p.process.poll() is None for p in mesh.processes):
                    time.sleep(0.5)
                err.print("[red]a server exited; stopping[/]")
            finally:
                mesh.stop()
        except KeyboardInterrupt:
            return
    raise typer.Exit(1)  # a server exited on its own


def _print_processes(mesh) -> None:
    table = Table(title="riskmesh servers")
    for col in ("org", "server", "pid", "health", "log"):
        table.add_column(col)
    for p in mesh.processes:
        table.add_row(p.org, p.server, str(p.process.pid), p.health_address, str(p.log_path))
    console.print(table)


def _print_consoles(infos) -> None:
    console.print("[bold]Web consoles[/] (open a login link in a browser on this machine):")
    for info in infos:
        console.print(f"  {info.org:9} {info.login_url}", soft_wrap=True, highlight=False)


@app.command()
def peers(
    org: str = typer.Option("insurer", help="ask this organisation's gateway"),
    config: Path | None = typer.Option(None, help="org config (default: <home>/<org>/riskmesh.toml)"),
    home: Path = typer.Option(DEFAULT_HOME),
) -> None:
    """Ask a gateway to handshake with every peer gateway over mTLS."""
    from services.cli.client import gateway_client

    with gateway_client(config or home / org / "riskmesh.toml") as gw:
        reply = gw.check_peers()
    _print_peers(reply)


def _print_peers(reply) -> None:
    from riskmesh.v1 import common_pb2

    table = Table(title=f"peers of {reply.org}")
    for col in ("peer", "address", "reachable", "role", "latency ms", "error"):
        table.add_column(col)
    for p in reply.peers:
        table.add_row(
            p.org,
            p.address,
            "✓" if p.reachable else "✗",
            common_pb2.Role.Name(p.role) if p.reachable else "",
            f"{p.latency_ms:.1f}",
            p.error,
        )
    console.print(table)


@app.command()
def trace(
    run_or_trace: str = typer.Argument(..., help="a run id (looked up at --org) or a trace id"),
    org: str = typer.Option("insurer"),
    home: Path = typer.Option(DEFAULT_HOME),
    png: Path | None = typer.Option(None, help="also write the waterfall as PNG here"),
) -> None:
    """A run's spans from every organisation as a waterfall (text, and PNG with --png)."""
    from services.tools.traces import load_trace, summary, waterfall_png, waterfall_text

    trace_id = run_or_trace
    if len(run_or_trace) != 32:
        from services.cli.client import gateway_client

        with gateway_client(home / org / "riskmesh.toml") as gw:
            trace_id = next((r.trace_id for r in gw.list_runs() if r.run_id == run_or_trace), "")
        if not trace_id:
            err.print(f"no run {run_or_trace!r} at {org}")
            raise typer.Exit(1)
    rows = load_trace([home], trace_id)
    console.print(waterfall_text(rows))
    console.print(summary(rows))
    if png:
        console.print(f"waterfall written to {waterfall_png(rows, png, f'trace {trace_id}')}")


from services.bench.cli import bench as bench_command  # noqa: E402  (benchmarks: services/bench)

app.command("bench")(bench_command)


@app.command()
def demo(
    home: Path = typer.Option(DEFAULT_HOME / "demo", help="working directory (wiped first)"),
    model: str = typer.Option("lasso", help="lasso (hospitalisation days) | logistic (readmitted yes/no)"),
) -> None:
    """Start three organisations on localhost and run the demo."""
    from services.cli.demo import DEMO_MODELS
    from services.cli.demo import main as demo_main

    if model not in DEMO_MODELS:
        raise typer.BadParameter(f"--model must be one of {', '.join(DEMO_MODELS)}")
    raise typer.Exit(demo_main(home, model))


@app.command("demo-hosts")
def demo_hosts(
    home: Path = typer.Option(DEFAULT_HOME / "demo-hosts", help="working directory (wiped first)"),
    latency_ms: float = typer.Option(
        0.0, min=0.0, help="one-way delay between organisations, added by a user-space relay"
    ),
    records: int = typer.Option(2000, min=100, help="synthetic patients at each data owner"),
) -> None:
    """Run the demo with each organisation in its own network namespace (needs root; removes all it creates)."""
    from services.cli.hosts import main as hosts_main

    raise typer.Exit(hosts_main(home, latency_ms, records))


from services.cli.doctor import doctor  # noqa: E402  (riskmesh doctor: services/doctor)

app.command("doctor")(doctor)


def main() -> None:
    app()
