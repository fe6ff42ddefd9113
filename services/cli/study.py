"""`riskmesh study …` and `riskmesh audit …`: an organisation's operator talking to its own gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import grpc
import typer
from google.protobuf import json_format
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2, gateway_pb2, lasso_pb2
from services.cli.client import gateway_client

study_app = typer.Typer(help="Propose, approve, run and inspect studies at your organisation's gateway.", no_args_is_help=True)
audit_app = typer.Typer(help="This organisation's hash-chained audit log.", no_args_is_help=True)
console = Console()

HOME = Path(".riskmesh")
ORG = typer.Option("insurer", help="your organisation (whose gateway to talk to)")
HOME_OPT = typer.Option(HOME, help="where `riskmesh up` keeps configs, PKI and state")
CONFIG = typer.Option(None, help="org config file (default: <home>/<org>/riskmesh.toml)")

LEAKAGE_NOTICE = (
    "By approving you allow: the other data owner learns the intersection size and the revealed outputs; "
    "the helper learns both set sizes, the intersection size and which pseudonymous tags matched. "
    "All three organisations, the helper included, learn how many solver iterations the fits needed "
    "(the public checkpoint at which the convergence certificate held — 10, 25, 40, … up to the study's "
    "maximum — for the cross-validation batch and for the final fit): one bit per checkpoint, a hint of how "
    "well-conditioned the joined data are. "
    "Repeated studies on inputs that differ by one patient reveal that patient's membership through the "
    "intersection size; every run is recorded in the audit log by digest."
)


def _client(org: str, home: Path, config: Optional[Path]) -> GatewayClient:
    return gateway_client(config or home / org / "riskmesh.toml")


def _fail(exc: grpc.RpcError) -> None:
    console.print(f"[red]{exc.code().name}[/]: {exc.details()}")
    raise typer.Exit(1)


def state_name(value: int, enum) -> str:
    return enum.Name(value).split("_STATE_")[-1]


def print_study(study: gateway_pb2.Study) -> None:
    spec = study.spec
    table = Table(title=f"study {spec.study_id} — {spec.title}", show_header=False)
    table.add_row("state", state_name(study.state, common_pb2.StudyState))
    table.add_row("digest", study.spec_digest)
    table.add_row("proposed by", study.proposed_by)
    table.add_row("approved by", ", ".join(study.approved_by) or "—")
    for owner in spec.owners:
        cols = ", ".join(f"{c.name} [{c.min:g}, {c.max:g}]" for c in owner.features)
        target = f"; target {owner.target.name} [{owner.target.min:g}, {owner.target.max:g}]" if owner.target.name else ""
        table.add_row(owner.org, cols + target)
    model = spec.model
    table.add_row("model", f"{common_pb2.ModelKind.Name(model.kind).removeprefix('MODEL_KIND_').lower()} alpha={list(model.alphas)} "
                  f"folds={model.cv_folds} standardize={model.standardize} "
                  f"max iterations={model.iterations or 'server default'}")
    table.add_row("minimum intersection", str(spec.min_intersection))
    console.print(table)


@study_app.command("propose")
def propose(spec_file: Path = typer.Argument(..., help="study spec as protobuf JSON (riskmesh.v1.StudySpec)"),
            source: Optional[Path] = typer.Option(None, help="your CSV file (stays at your organisation)"),
            org: str = ORG, home: Path = HOME_OPT, config: Optional[Path] = CONFIG) -> None:
    """Propose a study to the other organisations (counts as your approval)."""
    try:
        spec = json_format.Parse(spec_file.read_text(), common_pb2.StudySpec())
    except (OSError, json_format.ParseError) as exc:
        console.print(f"[red]cannot read the spec[/]: {exc}")
        raise typer.Exit(2)
    with _client(org, home, config) as gw:
        try:
            study = gw.propose(spec, str(source.resolve()) if source else "")
        except grpc.RpcError as exc:
            _fail(exc)
    print_study(study)


@study_app.command("approve")
def approve(study_id: str, source: Optional[Path] = typer.Option(None, help="your CSV file (data owners; stays local)"),
            digest: Optional[str] = typer.Option(None, help="the digest you reviewed (asked for when missing)"),
            yes: bool = typer.Option(False, "--yes", help="approve the current digest without asking"),
            org: str = ORG, home: Path = HOME_OPT, config: Optional[Path] = CONFIG) -> None:
    """Review and approve (owners) or acknowledge (helper) a study's exact spec."""
    with _client(org, home, config) as gw:
        try:
            study = gw.get_study(study_id)
            print_study(study)
            console.print(f"[yellow]{LEAKAGE_NOTICE}[/]")
            chosen = digest or study.spec_digest
            if not digest and not yes and not typer.confirm(f"approve digest {chosen[:16]}…?"):
                raise typer.Exit(1)
            study = gw.approve(study_id, chosen, str(source.resolve()) if source else "")
        except grpc.RpcError as exc:
            _fail(exc)
    console.print(f"[green]approved[/] by {org}; state {state_name(study.state, common_pb2.StudyState)}")


def watch_run(gw: GatewayClient, run_id: str) -> gateway_pb2.Run:
    """Live progress bars per (org, phase) until the run ends; returns the final run."""
    final = None
    bars: dict[tuple[str, int], int] = {}
    with Progress(TextColumn("{task.description:<34}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), console=console) as progress:
        for event in gw.watch(run_id):
            final = event.run
            p = event.progress
            if not p.run_id:
                continue
            key = (p.org, p.phase)
            label = f"{p.org:9} {common_pb2.Phase.Name(p.phase).removeprefix('PHASE_').lower()}"
            if key not in bars:
                bars[key] = progress.add_task(label, total=p.total or None)
            done = p.done if p.total else None
            progress.update(bars[key], completed=done if done is not None else 0, total=p.total or None)
            if p.state in (common_pb2.RUN_STATE_SUCCEEDED,) or (p.total and p.done >= p.total):
                progress.update(bars[key], completed=p.total or 1, total=p.total or 1)
        for task_id in bars.values():
            task = progress.tasks[task_id]
            if final is not None and final.state == common_pb2.RUN_STATE_SUCCEEDED:
                progress.update(task_id, total=task.total or 1, completed=task.total or 1)
    assert final is not None
    return final


def print_run(run: gateway_pb2.Run) -> None:
    state = state_name(run.state, common_pb2.RunState)
    colour = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow"}.get(state, "white")
    console.print(f"run {run.run_id}: [{colour}]{state}[/] joined={run.joined} trace={run.trace_id}")
    if run.HasField("error"):
        console.print(f"  failed in {common_pb2.Phase.Name(run.error.phase)} at {run.error.org}: {run.error.reason}")


@study_app.command("run")
def run(study_id: str, watch: bool = typer.Option(True, help="show progress until the run ends"),
        org: str = ORG, home: Path = HOME_OPT, config: Optional[Path] = CONFIG) -> None:
    """Start a run of an approved study (data owners)."""
    with _client(org, home, config) as gw:
        try:
            started = gw.start_run(study_id)
            console.print(f"started run {started.run_id}")
            final = watch_run(gw, started.run_id) if watch else started
        except grpc.RpcError as exc:
            _fail(exc)
    print_run(final)
    if watch and final.state != common_pb2.RUN_STATE_SUCCEEDED:
        raise typer.Exit(1)


@study_app.command("watch")
def watch(run_id: str, org: str = ORG, home: Path = HOME_OPT, config: Optional[Path] = CONFIG) -> None:
    """Follow a run's progress at every party until it ends."""
    with _client(org, home, config) as gw:
        try:
            final = watch_run(gw, run_id)
        except grpc.RpcError as exc:
            _fail(exc)
    print_run(final)


def print_result(result: lasso_pb2.ModelResult, reference: dict[str, float] | None = None) -> None:
    table = Table(title=f"revealed model for {result.target or 'the target'} (alpha={result.alpha:g}, joined={result.joined})")
    table.add_column("feature")
    table.add_column("coefficient", justify="right")
    if any(c.standardized_value for c in result.coefficients):
        table.add_column("standardised", justify="right")
    if reference is not None:
        table.add_column("scikit-learn", justify="right")
    for c in result.coefficients:
        row = [c.feature, f"{c.value:.6f}"]
        if len(table.columns) > 2 and (reference is None or len(table.columns) == 4):
            row.append(f"{c.standardized_value:.6f}")
        if reference is not None:
            row.append(f"{reference.get(c.feature, float('nan')):.6f}")
        table.add_row(*row)
    table.add_row("(intercept)", f"{result.intercept:.6f}", *([""] * (len(table.columns) - 3)), *([f"{reference['(intercept)']:.6f}"] if reference and "(intercept)" in reference else ([""] if reference is not None else [])))
    console.print(table)
    print_certificate(result)
    if result.cv_curve:
        cv = Table(title="cross-validation")
        cv.add_column("alpha", justify="right")
        cv.add_column("mean validation MSE", justify="right")
        for point in result.cv_curve:
            cv.add_row(f"{point.alpha:g}", f"{point.mean_squared_error:.6f}")
        console.print(cv)


def print_certificate(result: lasso_pb2.ModelResult) -> None:
    """Whether the solver certified the fit (a data owner must not use an uncertified model unknowingly)."""
    if result.converged:
        console.print(f"[green]certified[/]: relative objective gap ≤ {result.certified_gap:.1e} "
                      f"(convergence certificate computed in MPC after {result.iterations} iterations)")
        return
    console.print(f"[bold red]NOT CERTIFIED[/]: the solver used its maximum of {result.iterations} iterations without "
                  "its convergence certificate holding; the model may be far from the optimum. Do not use it as is: "
                  "rerun the study with more iterations (model.iterations).")


@study_app.command("result")
def result(run_id: str, org: str = ORG, home: Path = HOME_OPT, config: Optional[Path] = CONFIG) -> None:
    """The revealed coefficients of a finished run (data owners only)."""
    with _client(org, home, config) as gw:
        try:
            run_, model = gw.result(run_id)
        except grpc.RpcError as exc:
            _fail(exc)
    print_run(run_)
    print_result(model)


@study_app.command("list")
def list_(org: str = ORG, home: Path = HOME_OPT, config: Optional[Path] = CONFIG) -> None:
    """Studies and runs this organisation knows."""
    with _client(org, home, config) as gw:
        studies, runs = gw.list_studies(), gw.list_runs()
    table = Table(title=f"studies at {org}")
    for col in ("study", "state", "approved by", "digest"):
        table.add_column(col)
    for s in studies:
        table.add_row(s.spec.study_id, state_name(s.state, common_pb2.StudyState), ", ".join(s.approved_by), s.spec_digest[:16])
    console.print(table)
    table = Table(title=f"runs at {org}")
    for col in ("run", "state", "joined", "started by", "error"):
        table.add_column(col)
    for r in runs:
        error = f"{common_pb2.Phase.Name(r.error.phase)} at {r.error.org}: {r.error.reason}" if r.HasField("error") else ""
        table.add_row(r.run_id, state_name(r.state, common_pb2.RunState), str(r.joined), r.started_by, error)
    console.print(table)


@study_app.command("cancel")
def cancel(run_id: str, org: str = ORG, home: Path = HOME_OPT, config: Optional[Path] = CONFIG) -> None:
    """Cancel a running run at every party."""
    with _client(org, home, config) as gw:
        try:
            print_run(gw.cancel(run_id))
        except grpc.RpcError as exc:
            _fail(exc)


@audit_app.command("verify")
def audit_verify(org: str = ORG, home: Path = HOME_OPT, config: Optional[Path] = CONFIG) -> None:
    """Check the hash chain of this organisation's audit log."""
    with _client(org, home, config) as gw:
        reply = gw.verify_audit()
    if reply.ok:
        console.print(f"[green]audit log intact[/]: {reply.rows} rows")
        return
    console.print(f"[red]audit log broken[/] at row {reply.first_bad_row}: {reply.problem}")
    raise typer.Exit(1)
