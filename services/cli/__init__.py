"""The `riskmesh` command line (typer + rich)."""
