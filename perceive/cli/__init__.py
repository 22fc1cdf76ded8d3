"""The ``perceive`` command line."""

from __future__ import annotations

import typer

from perceive.cli import config_cmd, demo, graph_cmd, model_cmds, plugins_cmd, train_cmds
from perceive.cli.typer_compat import hide_flag_types

hide_flag_types()  # no `<bool>` beside flags in help pages

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="perceive: perception tokens as tool calls for multimodal LLMs.")
app.add_typer(plugins_cmd.app, name="plugins")
app.add_typer(config_cmd.app, name="config")
app.add_typer(graph_cmd.app, name="graph")
app.add_typer(train_cmds.data_app, name="data")
app.command("train")(train_cmds.train)
app.command("eval")(train_cmds.eval_)
app.command("demo")(demo.demo)
app.command("ask")(model_cmds.ask)
app.command("convert")(model_cmds.convert)


@app.command()
def version() -> None:
    """Print the perceive version."""
    from perceive import __version__

    typer.echo(__version__)


def main() -> None:
    app()
