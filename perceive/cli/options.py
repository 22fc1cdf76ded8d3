"""The command-line options that several commands share, declared once.

Each is a ``typing.Annotated`` alias a command's parameter takes as its type
(``device: DeviceOpt = None``), so a flag has one name, one set of bounds and one help text
wherever it appears; ``tests/test_cli_options.py`` checks that no command declares its own copy.
What each flag overrides in the run config is :func:`perceive.cli.run_config.loop_flags`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from perceive.cli.run_config import CONFIG_HELP, REMOTE_HELP, REMOTE_MODEL_HELP, SET_HELP
from perceive.config.settings import DEFAULT_GRAPH, MAX_ACTION_TIMEOUT_S, RuntimeConfig
from perceive.threads import MAX_THREADS

#: the bounds of a perception call's timeout (``runtime.action_timeout_s``), in seconds
ACTION_TIMEOUT_MIN_S, ACTION_TIMEOUT_MAX_S = 0.001, float(MAX_ACTION_TIMEOUT_S)
#: the defaults the help texts name: the settings' own
_DEFAULT = {name: f.default for name, f in RuntimeConfig.model_fields.items()}

ConfigOpt = Annotated[Path | None, typer.Option("--config", help=CONFIG_HELP)]
ModelOpt = Annotated[Path | None, typer.Option(
    "--model", help="Local model folder (project or paper format); default: the config's model.path, else "
                    "models/default.")]
GraphOpt = Annotated[str | None, typer.Option(
    "--graph", help=f"Graph YAML file or shipped graph name (default: the config's, else {DEFAULT_GRAPH}).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=SET_HELP)]
MaxNewTokensOpt = Annotated[int | None, typer.Option(
    "--max-new-tokens", min=1,
    help=f"Tokens a sample may generate (runtime.max_new_tokens; default {_DEFAULT['max_new_tokens']}).")]
DeviceOpt = Annotated[str | None, typer.Option(
    "--device", help="cpu, cuda, cuda:1, ... or auto (the default).")]
DtypeOpt = Annotated[str | None, typer.Option(
    "--dtype", help="float32, bfloat16, float16 or auto (the default).")]
ReprefillOpt = Annotated[bool, typer.Option(
    "--reprefill", help="Reference-style: re-prefill after each hop (runtime.reprefill).")]
ActionTimeoutOpt = Annotated[float | None, typer.Option(
    "--action-timeout", min=ACTION_TIMEOUT_MIN_S, max=ACTION_TIMEOUT_MAX_S, metavar="S",
    help="Timeout of each perception call, in seconds; a call past it fails its own sample "
         f"(runtime.action_timeout_s; default {_DEFAULT['action_timeout_s']:g}).")]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", min=1, max=MAX_THREADS,
    help="torch's intra-op threads (runtime.threads; default: the usable cores less one, or OMP_NUM_THREADS).")]
RemoteOpt = Annotated[list[str] | None, typer.Option("--remote", metavar="URL", help=REMOTE_HELP)]
RemoteModelOpt = Annotated[str | None, typer.Option("--remote-model", metavar="NAME", help=REMOTE_MODEL_HELP)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the answer and the trace as JSON.")]
RenderOpt = Annotated[Path | None, typer.Option("--render", help="Write the trace picture (PNG).")]

#: every shared flag, by name (the test reads it)
SHARED = {"--config": ConfigOpt, "--model": ModelOpt, "--graph": GraphOpt, "--set": SetOpt,
          "--max-new-tokens": MaxNewTokensOpt, "--device": DeviceOpt, "--dtype": DtypeOpt,
          "--reprefill": ReprefillOpt, "--action-timeout": ActionTimeoutOpt, "--threads": ThreadsOpt,
          "--remote": RemoteOpt, "--remote-model": RemoteModelOpt, "--json": JsonOpt, "--render": RenderOpt}
