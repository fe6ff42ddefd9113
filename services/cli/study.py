"""`riskmesh study …` and `riskmesh audit …`: an organisation's operator talking to its own gateway."""

from __future__ import annotations

from pathlib import Path

import grpc
import typer
from google.protobuf import json_format
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2, gateway_pb2, lasso_pb2
from services.cli.client import gateway_client
from services.study.disclosure import LEAKAGE_NOTICE
from services.study.spec import GLM_KINDS

study_app = typer.Typer(
    help="Propose, approve, run and inspect studies at your organisation's gateway.", no_args_is_help=True
)
audit_app = typer.Typer(help="This organisation's hash-chained audit log.", no_args_is_help=True)
console = Console()

HOME = Path(".riskmesh")
ORG = typer.Option("insurer", help="your organisation (whose gateway to talk to)")
HOME_OPT = typer.Option(HOME, help="where `riskmesh up` keeps configs, PKI and state")
CONFIG = typer.Option(None, help="org config file (default: <home>/<org>/riskmesh.toml)")


def _client(org: str, home: Path, config: Path | None) -> GatewayClient:
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
        target = (
            f"; target {owner.target.name} [{owner.target.min:g}, {owner.target.max:g}]" if owner.target.name else ""
        )
        table.add_row(owner.org, cols + target)
    table.add_row("model", describe_model(spec.model))
    table.add_row("reveals", describe_reveal(spec))
    table.add_row("minimum intersection", str(spec.min_intersection))
    policy = spec.run_policy
    approval = common_pb2.RunApproval.Name(policy.run_approval).removeprefix("RUN_APPROVAL_").lower().replace("_", " ")
    table.add_row(
        "run policy",
        f"at most {policy.max_runs} run(s), {policy.min_interval_seconds} s apart; "
        f"the other owner approves: {approval}",
    )
    governance = study.governance
    if governance.max_runs:
        next_run = (
            governance.next_run_not_before.ToDatetime().isoformat(timespec="seconds") + "Z"
            if governance.HasField("next_run_not_before")
            else "now"
        )
        table.add_row(
            "runs here", f"{governance.runs_counted} of {governance.max_runs} counted; next run from {next_run}"
        )
    for grant in governance.grants:
        table.add_row(
            "run approval",
            f"{grant.approved_by} approved a run of {grant.org} "
            f"({'input ' + grant.commitment[:16] + '…' if grant.commitment else 'any unchanged input'})",
        )
    for waiting in governance.pending:
        why = (
            f"its input changed since run {waiting.previous_run_id}" if waiting.changed else "every run needs approval"
        )
        table.add_row(
            "[yellow]waiting[/]",
            f"a run of {waiting.org} waits for {waiting.approver}: {why} (input {waiting.commitment[:16]}…)",
        )
    console.print(table)
    if study.policy_checks:
        floors = Table(title="your organisation's disclosure floors")
        for column in ("floor", "your policy", "this spec", ""):
            floors.add_column(column)
        for check in study.policy_checks:
            floors.add_row(check.name, check.required, check.actual, "[green]✓[/]" if check.ok else "[red]✗ refused[/]")
        console.print(floors)
    if study.disclosures:
        told = Table(title="what each party receives or learns", show_header=False)
        for disclosure in study.disclosures:
            told.add_row(disclosure.org, "\n".join(f"• {item}" for item in disclosure.items))
        console.print(told)


def kind_name(kind: int) -> str:
    return common_pb2.ModelKind.Name(kind).removeprefix("MODEL_KIND_").lower()


def metric_name(metric: int) -> str:
    return common_pb2.Metric.Name(metric).removeprefix("METRIC_").lower()


def describe_model(model: common_pb2.ModelSpec) -> str:
    """One line: the kind, its penalty and options, the alpha (grid) and folds."""
    text = f"{kind_name(model.kind)} alpha={list(model.alphas)} folds={model.cv_folds} standardize={model.standardize}"
    if model.kind in GLM_KINDS:
        text += f" max newton steps={model.iterations or 'server default'}"
    else:
        text += f" max iterations={model.iterations or 'server default'}"
    if model.kind in (common_pb2.MODEL_KIND_LOGISTIC, common_pb2.MODEL_KIND_POISSON):
        text += f" l1_ratio={model.l1_ratio:g}"
    if model.balanced_class_weights:
        text += " class_weight=balanced"
    if model.kind == common_pb2.MODEL_KIND_SVM:
        loss = model.svm_loss or common_pb2.SVM_LOSS_SQUARED_HINGE
        text += f" loss={common_pb2.SvmLoss.Name(loss).removeprefix('SVM_LOSS_').lower()}"
    return text


def describe_reveal(spec: common_pb2.StudySpec) -> str:
    """What the owners will learn besides the coefficients and intercept."""
    parts = ["coefficients, intercept"]
    if spec.reveal.joined_count:
        parts.append("joined count")
    if spec.reveal.cv_curve:
        parts.append("cross-validation curve")
    parts += [metric_name(m) for m in spec.reveal.metrics]
    return ", ".join(parts)


@study_app.command("propose")
def propose(
    spec_file: Path = typer.Argument(..., help="study spec as protobuf JSON (riskmesh.v1.StudySpec)"),
    source: Path | None = typer.Option(None, help="your CSV file (stays at your organisation)"),
    org: str = ORG,
    home: Path = HOME_OPT,
    config: Path | None = CONFIG,
) -> None:
    """Propose a study to the other organisations (counts as your approval)."""
    try:
        spec = json_format.Parse(spec_file.read_text(), common_pb2.StudySpec())
    except (OSError, json_format.ParseError) as exc:
        console.print(f"[red]cannot read the spec[/]: {exc}")
        raise typer.Exit(2) from None
    with _client(org, home, config) as gw:
        try:
            study = gw.propose(spec, str(source.resolve()) if source else "")
        except grpc.RpcError as exc:
            _fail(exc)
    print_study(study)


@study_app.command("approve")
def approve(
    study_id: str,
    source: Path | None = typer.Option(None, help="your CSV file (data owners; stays local)"),
    digest: str | None = typer.Option(None, help="the digest you reviewed (asked for when missing)"),
    yes: bool = typer.Option(False, "--yes", help="approve the current digest without asking"),
    org: str = ORG,
    home: Path = HOME_OPT,
    config: Path | None = CONFIG,
) -> None:
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


@study_app.command("approve-run")
def approve_run(
    study_id: str,
    for_org: str | None = typer.Option(
        None, "--for", help="the owner whose run you approve (default: the other owner)"
    ),
    commitment: str | None = typer.Option(None, help="the input commitment you approve (default: the waiting one)"),
    yes: bool = typer.Option(False, "--yes", help="approve without asking"),
    org: str = ORG,
    home: Path = HOME_OPT,
    config: Path | None = CONFIG,
) -> None:
    """Approve the other data owner's next run, or its changed input (as the run policy asks)."""
    with _client(org, home, config) as gw:
        try:
            study = gw.get_study(study_id)
            print_study(study)
            waiting = [p for p in study.governance.pending if p.approver == org]
            chosen = commitment or (waiting[-1].commitment if waiting else "")
            what = f"input {chosen[:16]}…" if chosen else "its next run with an unchanged input"
            if waiting and waiting[-1].changed and not commitment:
                console.print(
                    f"[yellow]{waiting[-1].org}'s input changed since run {waiting[-1].previous_run_id}[/]: "
                    "approving lets a run on the changed input reveal its outputs, and the difference "
                    "between two runs can single out the patients who changed."
                )
            if not yes and not typer.confirm(f"approve {for_org or 'the other owner'}'s {what}?"):
                raise typer.Exit(1)
            study = gw.approve_run(study_id, for_org or "", chosen)
        except grpc.RpcError as exc:
            _fail(exc)
    console.print(f"[green]run approved[/] by {org}; {len(study.governance.grants)} approval(s) unused")


def watch_run(gw: GatewayClient, run_id: str) -> gateway_pb2.Run:
    """Live progress bars per (org, phase) until the run ends; returns the final run."""
    final = None
    bars: dict[tuple[str, int], int] = {}
    with Progress(
        TextColumn("{task.description:<34}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), console=console
    ) as progress:
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
    for committed in run.inputs:
        change = f", changed since run {committed.previous_run_id}" if committed.changed else ""
        console.print(f"  input of {committed.org}: commitment {committed.commitment[:16]}…{change}")
    if run.HasField("error"):
        console.print(f"  failed in {common_pb2.Phase.Name(run.error.phase)} at {run.error.org}: {run.error.reason}")


@study_app.command("run")
def run(
    study_id: str,
    watch: bool = typer.Option(True, help="show progress until the run ends"),
    org: str = ORG,
    home: Path = HOME_OPT,
    config: Path | None = CONFIG,
) -> None:
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
def watch(run_id: str, org: str = ORG, home: Path = HOME_OPT, config: Path | None = CONFIG) -> None:
    """Follow a run's progress at every party until it ends."""
    with _client(org, home, config) as gw:
        try:
            final = watch_run(gw, run_id)
        except grpc.RpcError as exc:
            _fail(exc)
    print_run(final)


def print_result(result: lasso_pb2.ModelResult, reference: dict[str, float] | None = None) -> None:
    kind = f"{kind_name(result.kind)} " if result.kind else ""
    table = Table(
        title=f"revealed {kind}model for {result.target or 'the target'} "
        f"(alpha={result.alpha:g}, joined={result.joined})"
    )
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
    table.add_row(
        "(intercept)",
        f"{result.intercept:.6f}",
        *([""] * (len(table.columns) - 3)),
        *(
            [f"{reference['(intercept)']:.6f}"]
            if reference and "(intercept)" in reference
            else ([""] if reference is not None else [])
        ),
    )
    console.print(table)
    print_certificate(result)
    if result.cv_curve:
        cv = Table(title="cross-validation")
        cv.add_column("alpha", justify="right")
        cv.add_column("mean validation loss", justify="right")  # MSE, log-loss, squared hinge or Poisson deviance
        for point in result.cv_curve:
            cv.add_row(f"{point.alpha:g}", f"{point.mean_validation_loss or point.mean_squared_error:.6f}")
        console.print(cv)
    if result.metrics:
        quality = Table(title="model quality (on the join)")
        quality.add_column("metric")
        quality.add_column("value", justify="right")
        quality.add_column("K-fold", justify="right")
        for metric in result.metrics:
            cv_value = f"{metric.cv_value:.6f}" if metric.HasField("cv_value") else "—"
            quality.add_row(metric_name(metric.metric), f"{metric.value:.6f}", cv_value)
        console.print(quality)


def parse_records(records: list[str], csv_file: Path | None) -> list[dict[str, float]]:
    """Records from `name=value,name=value` strings and/or a CSV file with a header row."""
    import csv  # noqa: PLC0415

    out: list[dict[str, float]] = []
    for i, text in enumerate(records):
        record: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            if not sep:
                raise typer.BadParameter(f"--record {i}: expected name=value, got {item!r}")
            try:
                record[name.strip()] = float(value)
            except ValueError:
                raise typer.BadParameter(f"--record {i}: the value of {name.strip()!r} is not a number") from None
        out.append(record)
    if csv_file is not None:
        with csv_file.open(newline="") as f:
            for row_number, row in enumerate(csv.DictReader(f), start=2):
                try:
                    out.append({name: float(value) for name, value in row.items()})
                except (TypeError, ValueError):
                    raise typer.BadParameter(
                        f"{csv_file}: line {row_number} has a missing or non-numeric value"
                    ) from None
    return out


def print_certificate(result: lasso_pb2.ModelResult) -> None:
    """Whether the solver certified the fit (a data owner must not use an uncertified model unknowingly)."""
    if result.kind in GLM_KINDS:
        console.print(
            f"{kind_name(result.kind)}: {result.iterations} Newton steps (stopped once a step was below 1e-3, or at "
            "the maximum; no convergence certificate for this model)"
        )
        return
    if result.converged:
        console.print(
            f"[green]certified[/]: relative objective gap ≤ {result.certified_gap:.1e} "
            f"(convergence certificate computed in MPC after {result.iterations} iterations)"
        )
        return
    console.print(
        f"[bold red]NOT CERTIFIED[/]: the solver used its maximum of {result.iterations} iterations without "
        "its convergence certificate holding; the model may be far from the optimum. Do not use it as is: "
        "rerun the study with more iterations (model.iterations)."
    )


@study_app.command("result")
def result(run_id: str, org: str = ORG, home: Path = HOME_OPT, config: Path | None = CONFIG) -> None:
    """The revealed coefficients of a finished run (data owners only)."""
    with _client(org, home, config) as gw:
        try:
            run_, model = gw.result(run_id)
        except grpc.RpcError as exc:
            _fail(exc)
    print_run(run_)
    print_result(model)


PREDICTION_LABEL = {
    common_pb2.MODEL_KIND_LOGISTIC: "probability of class 1",
    common_pb2.MODEL_KIND_POISSON: "expected count",
    common_pb2.MODEL_KIND_SVM: "class",
}


@study_app.command("predict")
def predict(
    run_id: str,
    record: list[str] = typer.Option([], help="a record as name=value,name=value (repeat for more)"),
    csv_file: Path | None = typer.Option(
        None, "--csv", help="records as a CSV file with a header row of feature names"
    ),
    org: str = ORG,
    home: Path = HOME_OPT,
    config: Path | None = CONFIG,
) -> None:
    """Apply a run's revealed model to records (locally at your gateway): fitted value, probability, count or class."""
    records = parse_records(record, csv_file)
    if not records:
        raise typer.BadParameter("give at least one --record or a --csv file")
    with _client(org, home, config) as gw:
        try:
            predictions, kind = gw.predict_with_kind(run_id, records)
        except grpc.RpcError as exc:
            _fail(exc)
    table = Table(title=f"predictions of run {run_id}")
    table.add_column("record", justify="right")
    table.add_column(PREDICTION_LABEL.get(kind, "prediction"), justify="right")
    for i, value in enumerate(predictions):
        table.add_row(str(i), f"{value:g}" if kind == common_pb2.MODEL_KIND_SVM else f"{value:.6f}")
    console.print(table)


@study_app.command("list")
def list_(org: str = ORG, home: Path = HOME_OPT, config: Path | None = CONFIG) -> None:
    """Studies and runs this organisation knows."""
    with _client(org, home, config) as gw:
        studies, runs = gw.list_studies(), gw.list_runs()
    table = Table(title=f"studies at {org}")
    for col in ("study", "state", "approved by", "digest"):
        table.add_column(col)
    for s in studies:
        table.add_row(
            s.spec.study_id, state_name(s.state, common_pb2.StudyState), ", ".join(s.approved_by), s.spec_digest[:16]
        )
    console.print(table)
    table = Table(title=f"runs at {org}")
    for col in ("run", "state", "joined", "started by", "error"):
        table.add_column(col)
    for r in runs:
        error = (
            f"{common_pb2.Phase.Name(r.error.phase)} at {r.error.org}: {r.error.reason}" if r.HasField("error") else ""
        )
        table.add_row(r.run_id, state_name(r.state, common_pb2.RunState), str(r.joined), r.started_by, error)
    console.print(table)


@study_app.command("cancel")
def cancel(run_id: str, org: str = ORG, home: Path = HOME_OPT, config: Path | None = CONFIG) -> None:
    """Cancel a running run at every party."""
    with _client(org, home, config) as gw:
        try:
            print_run(gw.cancel(run_id))
        except grpc.RpcError as exc:
            _fail(exc)


@audit_app.command("verify")
def audit_verify(org: str = ORG, home: Path = HOME_OPT, config: Path | None = CONFIG) -> None:
    """Check the hash chain of this organisation's audit log."""
    with _client(org, home, config) as gw:
        reply = gw.verify_audit()
    if reply.ok:
        console.print(f"[green]audit log intact[/]: {reply.rows} rows")
        return
    console.print(f"[red]audit log broken[/] at row {reply.first_bad_row}: {reply.problem}")
    raise typer.Exit(1)
