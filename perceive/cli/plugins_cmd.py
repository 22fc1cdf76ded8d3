"""``perceive plugins ...``: list, scaffold and check perception-action plugins."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from perceive.cli.output import console, fail

app = typer.Typer(no_args_is_help=True, help="List, scaffold and check plugins.")


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Every installed plugin with its actions, tokens and encoders. Broken plugins are shown
    with their error; the command still succeeds."""
    from perceive.plugins import get_registry

    reg = get_registry()
    data = reg.to_json()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    t = Table(title="perception actions")
    for col in ("action", "from", "gives", "span", "encoders"):
        t.add_column(col, overflow="fold")
    for a in data["actions"]:
        inner = a["inner"]
        shown = " ".join(inner) if len(inner) <= 2 else f"{inner[0]} .. {inner[-1]}"
        origin = a["plugin"] + (f" ({a['distribution']} {a['version']})" if a["distribution"] else "")
        t.add_row(a["name"], origin, a["observation"], f"{a['start']} {shown} {a['end']}",
                  ", ".join(a["encoders"]))
    console.print(t)
    e = Table(title="vision encoders")
    for col in ("encoder", "plugin", "family", "layout", "dim", "placeholders"):
        e.add_column(col)
    for x in data["encoders"]:
        e.add_row(x["name"], x["plugin"], x["family"], x["layout"], str(x["feature_dim"] or "model"),
                  str(x["placeholders"] or "per token"))
    console.print(e)
    for p in reg.broken:
        console.print(f"[bold red]broken plugin[/] {p.name!r} ({p.dist or 'no distribution'}):")
        for err in p.errors:
            console.print(f"  - {err}", markup=False)
    for problem in reg.problems:
        console.print(f"[yellow]warning[/]: {problem}")


@app.command()
def new(name: str = typer.Argument(..., help="Action and plugin name, e.g. 'quadrant'."),
        dir: Path = typer.Option(Path("."), "--dir", help="Folder to create the package in.")) -> None:
    """Scaffold a pip-installable plugin package with one working example action."""
    from perceive.errors import PerceiveError
    from perceive.scaffold import new_plugin

    try:
        root = new_plugin(name, dir)
    except PerceiveError as exc:
        raise fail(exc, 2) from None
    console.print(f"created {root}")
    console.print(f"next: pip install -e {root} && perceive plugins check {name}")


@app.command()
def check(name: str = typer.Argument(..., help="Registered action name."),
          as_json: bool = typer.Option(False, "--json"),
          quick: bool = typer.Option(False, "--quick", help="One photo, fewer awkward inputs.")) -> None:
    """Run the conformance kit on an action; exit 1 with a readable report if it fails."""
    from perceive.errors import UnknownActionError
    from perceive.plugins import get_registry
    from perceive.testing.conformance import check_action

    reg = get_registry()
    try:
        report = check_action(name, registry=reg, quick=quick)
    except UnknownActionError as exc:
        for p in reg.broken:
            if p.name == name:
                console.print(f"plugin {p.name!r} is installed but broken:", markup=False)
                for err in p.errors:
                    console.print(f"  - {err}", markup=False)
        raise fail(exc, 2) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(report.render(), markup=False, highlight=False)
    if not report.ok:
        raise typer.Exit(1)
