"""``perceive plugins ...``: list, scaffold and check perception-action plugins."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from perceive.cli.output import console, fail

app = typer.Typer(no_args_is_help=True, help="List, scaffold and check plugins.")


def _lay_out(lead: str, pieces: list[str], width: int, hang: int | None = None) -> list[str]:
    """``lead`` then ``pieces`` (token names, encoder names, words) in lines of at most ``width``
    columns, broken only between pieces: a name is never split (one wider than a line gets a line
    of its own). Continuation lines are indented by ``hang`` (default: the lead's width)."""
    hang = len(lead) if hang is None else hang
    lines, cur = [], ""
    for p in pieces:
        if cur and (len(lead) if not lines else hang) + len(cur) + 1 + len(p) > width:
            lines.append(cur)
            cur = p
        else:
            cur = f"{cur} {p}" if cur else p
    lines.append(cur)
    return [(lead if i == 0 else " " * hang) + line for i, line in enumerate(lines)]


def _field(label: str, pieces: list[str], width: int) -> list[str]:
    return _lay_out(f"    {label:<9} ", pieces, width)


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Every installed plugin with its actions, tokens and encoders. Broken plugins are shown
    with their error; the command still succeeds."""
    from perceive.plugins import get_registry

    reg = get_registry()
    data = reg.to_json()
    from perceive.rl.rewards import builtin_rewards

    data["rewards"] = [{"name": b.name, "plugin": "perceive", "distribution": None, "version": None,
                        "description": b.description} for b in builtin_rewards()] + data["rewards"]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    console.print(Text("perception actions", style="bold"))
    console.print()
    width = max(40, console.width)
    for a in data["actions"]:
        inner = a["inner"]
        shown = inner if len(inner) <= 2 else [inner[0], "..", inner[-1]]
        origin = [a["plugin"]] + ([f"({a['distribution']} {a['version']})"] if a["distribution"] else [])
        head = _lay_out(a["name"] + "  ", ["gives", a["observation"] + ",", "from", *origin], width, hang=4)
        console.print(Text(head[0][:len(a["name"])], style="bold cyan") + Text(head[0][len(a["name"]):]),
                      soft_wrap=True, highlight=False)
        for line in head[1:]:
            console.print(line, soft_wrap=True, markup=False, highlight=False)
        for line in _field("span", [a["start"], *shown, a["end"]], width):
            console.print(line, soft_wrap=True, markup=False, highlight=False)
        if a["encoders"]:
            for line in _field("encoders", [e + "," for e in a["encoders"][:-1]] + a["encoders"][-1:], width):
                console.print(line, soft_wrap=True, markup=False, highlight=False)
    console.print()
    e = Table(title="vision encoders")
    for col in ("encoder", "plugin", "family", "layout", "dim", "placeholders"):
        e.add_column(col, no_wrap=col == "encoder")
    for x in data["encoders"]:
        e.add_row(x["name"], x["plugin"], x["family"], x["layout"], str(x["feature_dim"] or "model"),
                  str(x["placeholders"] or "per token"))
    console.print(e)
    r = Table(title="rewards (GRPO: `rewards:` in a method: grpo config)")
    for col in ("reward", "plugin", "description"):
        r.add_column(col, no_wrap=col == "reward")
    for x in data["rewards"]:
        r.add_row(x["name"], x["plugin"], x["description"])
    console.print(r)
    for p in reg.broken:
        console.print(f"[bold red]broken plugin[/] {p.name!r} ({p.dist or 'no distribution'}):")
        for err in p.errors:
            console.print(f"  - {err}", markup=False)
    for problem in reg.problems:
        console.print(f"[yellow]warning[/]: {problem}")


@app.command()
def new(name: str = typer.Argument(..., help="Action and plugin name, e.g. 'quadrant'."),
        dir: Path = typer.Option(Path("."), "--dir", help="Folder to create the package in."),
        kind: str = typer.Option("view", "--kind", help="view: an action that shows a new view; features: a "
                                                         "re-encode action with its encoder and model branch.")
        ) -> None:
    """Scaffold a pip-installable plugin package with one working example action."""
    from perceive.errors import PerceiveError
    from perceive.scaffold import new_plugin

    try:
        root = new_plugin(name, dir, kind)
    except PerceiveError as exc:
        raise fail(exc, 2) from None
    console.print(f"created {root}")
    console.print(f"next: pip install -e {root} && perceive plugins check {name}")


@app.command()
def check(name: str = typer.Argument(..., help="Registered action name."),
          as_json: bool = typer.Option(False, "--json"),
          quick: bool = typer.Option(False, "--quick", help="One photo, fewer awkward inputs."),
          action_timeout: float = typer.Option(120.0, "--action-timeout", min=0.001, max=86400, metavar="S",
                                               help="Timeout of each call, in seconds.")) -> None:
    """Run the conformance kit on an action; exit 1 with a readable report if it fails."""
    from perceive.conformance import check_action
    from perceive.errors import UnknownActionError
    from perceive.plugins import get_registry

    reg = get_registry()
    try:
        report = check_action(name, registry=reg, quick=quick, timeout_s=action_timeout)
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
