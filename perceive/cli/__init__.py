"""The ``perceive`` command line.

Errors: a :class:`~perceive.errors.PerceiveError` (the user's mistake: a missing file, a bad
config, a corrupt model) prints ``error: MESSAGE`` and ``  -> HINT`` and exits 1; a usage error
(a wrong option) exits 2; an operating-system error (a folder where a file belongs, a full disk)
prints ``error: ...`` and exits 1; any other exception is a bug and prints one line saying so
and exits 1. ``perceive --debug COMMAND ...`` or ``PERCEIVE_DEBUG=1`` shows the full traceback
instead.
"""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperGroup

from perceive.cli import (
    ask_cmd,
    config_cmd,
    convert_cmd,
    data_cmd,
    demo_cmd,
    eval_cmd,
    graph_cmd,
    mcp_cmd,
    plugins_cmd,
    protocols_cmd,
    serve_cmd,
    train_cmd,
)
from perceive.cli.output import DEBUG_HINT, console, fail, internal_error, print_error
from perceive.cli.typer_compat import hide_flag_types

hide_flag_types()  # no `<bool>` beside flags in help pages (see perceive/cli/typer_compat.py)

DEBUG_ENV = "PERCEIVE_DEBUG"
_state = {"debug": False}


def debug_enabled() -> bool:
    return _state["debug"] or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def error_exit(exc: Exception) -> typer.Exit:
    """Print ``exc`` as the CLI reports errors and return the ``typer.Exit`` to raise."""
    from perceive.errors import PerceiveError

    if isinstance(exc, PerceiveError):
        return fail(exc, 1)
    graphs = sys.modules.get("perceive.graph.validate")
    if graphs is not None and isinstance(exc, graphs.GraphValidationError):
        print_error(f"the graph has {len(exc.issues)} problem(s):")
        console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        return typer.Exit(1)
    if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
        print_error(exc, hint=DEBUG_HINT)
        return typer.Exit(1)
    return internal_error(exc)


class _Boundary(TyperGroup):
    """The root command: every exception a command raises ends here (also under typer's
    ``CliRunner``), and becomes one clear message and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort, BrokenPipeError):  # usage errors, exits
            raise
        except Exception as exc:
            if debug_enabled():
                raise
            raise error_exit(exc) from None


app = typer.Typer(cls=_Boundary, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="perceive: perception tokens as tool calls for multimodal LLMs.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", envvar=DEBUG_ENV,
                                     help="Show the full traceback of an error (also: PERCEIVE_DEBUG=1).")) -> None:
    _state["debug"] = debug


app.add_typer(plugins_cmd.app, name="plugins")
app.add_typer(protocols_cmd.app, name="protocols")
app.add_typer(config_cmd.app, name="config")
app.add_typer(graph_cmd.app, name="graph")
app.add_typer(data_cmd.data_app, name="data")
app.command("train")(train_cmd.train)
app.command("eval")(eval_cmd.eval_)  # `perceive eval compare RUN...` included
app.command("demo")(demo_cmd.demo)
app.command("ask")(ask_cmd.ask)
app.command("convert")(convert_cmd.convert)
app.command("serve")(serve_cmd.serve)
app.command("mcp")(mcp_cmd.mcp)


@app.command()
def version() -> None:
    """Print the perceive version."""
    from perceive import __version__

    typer.echo(__version__)


def main() -> None:
    """The console script. What escapes the commands' own boundary (an error while click parses
    or builds the commands) is reported the same way. A deprecated config key is shown as a
    ``warning:`` line (Python hides deprecation warnings from code outside ``__main__``)."""
    import warnings

    from perceive.errors import ConfigDeprecationWarning

    warnings.simplefilter("default", ConfigDeprecationWarning)
    shown = warnings.showwarning

    def show(message, category, *args, **kwargs):
        if issubclass(category, ConfigDeprecationWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        app()
    except SystemExit:
        raise
    except Exception as exc:
        if debug_enabled() or "--debug" in sys.argv[1:]:
            raise
        exit_ = error_exit(exc)
        sys.exit(exit_.exit_code)
