"""`riskmesh doctor --org X`: one check of an organisation's set-up (services/doctor)."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from services.doctor.checks import failed
from services.doctor.diagnose import diagnose

console = Console()


def doctor(
    org: str = typer.Option(..., help="the organisation to check"),
    config: Path | None = typer.Option(
        None, help="its riskmesh.toml (default: $RISKMESH_CONFIG, else .riskmesh/<org>/riskmesh.toml)"
    ),
    server: list[str] = typer.Option(
        [], help="check only these servers' certificates and ports (repeat; e.g. inside one pod)"
    ),
    peers: bool = typer.Option(True, help="dial every peer gateway over mTLS (and compare clocks)"),
) -> None:
    """Check the config, certificates (chains, expiry, SANs, key permissions), peer gateways
    over mTLS, clock skew, ports and disk. Prints what to do for each failure; exits 1 on any."""
    if config is None and not os.environ.get("RISKMESH_CONFIG"):
        config = Path(".riskmesh") / org / "riskmesh.toml"
    findings = diagnose(org, config, os.environ, servers=server or None, peers=peers)
    for f in findings:
        mark = "[green]✓[/]" if f.ok else "[red]✗[/]"
        console.print(
            f"{mark} [bold]{f.area:<6}[/] {escape(f.subject)}: {escape(f.detail)}", highlight=False, soft_wrap=True
        )
        if not f.ok:
            console.print(f"         [yellow]→ {escape(f.fix)}[/]", highlight=False, soft_wrap=True)
    bad = failed(findings)
    console.print(f"{len(findings) - len(bad)} ok, {len(bad)} failed")
    raise typer.Exit(1 if bad else 0)
