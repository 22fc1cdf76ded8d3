"""``perceive config check FILE``."""

from __future__ import annotations

from pathlib import Path

import typer

from perceive.cli.output import console

app = typer.Typer(no_args_is_help=True, help="Validate run configs.")


@app.command()
def check(path: Path) -> None:
    """Validate a config file against the schema and the installed plugins."""
    from perceive.config import load_config
    from perceive.errors import ConfigError
    from perceive.plugins import get_registry

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        console.print(str(exc), markup=False)
        raise typer.Exit(1) from None
    errors = cfg.check_names(get_registry())
    for e in errors:
        console.print(f"{path}: {e}", markup=False)
    if errors:
        raise typer.Exit(1)
    console.print(f"{path}: ok")
