"""``perceive config check FILE``: run, train and eval configs."""

from __future__ import annotations

from pathlib import Path

import typer

from perceive.cli.output import console

app = typer.Typer(no_args_is_help=True, help="Validate run, train and eval configs.")


@app.command()
def check(path: Path,
          kind: str = typer.Option("auto", "--kind",
                                   help="run, train or eval; auto: tell from the file's top-level keys.")) -> None:
    """Validate a config file as `perceive` would use it: the schema, action and encoder options,
    names of installed plugins, local paths, devices, and an eval config's graph. Exit 1 on any
    problem."""
    from perceive.cli.config_check import check_config_file
    from perceive.errors import ConfigError

    try:
        kind, why, problems = check_config_file(path, kind)
    except ConfigError as exc:
        console.print(str(exc), markup=False, highlight=False)
        if getattr(exc, "config_kind", None):
            article = "an" if exc.config_kind == "eval" else "a"
            console.print(f"{path}: checked as {article} {exc.config_kind} config ({exc.why}; --kind to choose)",
                          markup=False, highlight=False)
        raise typer.Exit(1) from None
    for p in problems:
        console.print(f"{path}: {p}", markup=False, highlight=False)
    checked = f"checked as {'an' if kind == 'eval' else 'a'} {kind} config ({why}; --kind to choose)"
    if problems:
        console.print(f"{path}: {len(problems)} problem(s); {checked}", markup=False, highlight=False)
        raise typer.Exit(1)
    console.print(f"{path}: ok, {checked}", markup=False, highlight=False)
