"""``perceive ask`` and ``perceive convert``."""

from __future__ import annotations

from pathlib import Path

import typer

from perceive.cli.output import console, fail
from perceive.cli.run_config import (
    CONFIG_HELP,
    REMOTE_HELP,
    REMOTE_MODEL_HELP,
    SET_HELP,
    loop_flags,
    remote_flags,
    run_config,
)


def ask(
    image: Path = typer.Argument(..., help="Image file."),
    question: str = typer.Argument(..., help="The question."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    model: Path | None = typer.Option(None, "--model", help="Local model folder (project or paper format); default: "
                                                           "the config's model.path, else models/default."),
    graph: str | None = typer.Option(None, "--graph", help="Graph YAML file or shipped graph name (default: the "
                                                          "config's, else free_choice)."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer and the trace as JSON."),
    max_hops: int | None = typer.Option(None, "--max-hops", min=0,
                                        help="Perception calls allowed: runtime.max_hops and the graph's max_hops "
                                             "param (default 4)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="Default 256."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... or auto (the default)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16, float16 or auto (the default)."),
    reprefill: bool = typer.Option(False, "--reprefill", help="Reference-style: re-prefill after each hop."),
    render: Path | None = typer.Option(None, "--render", help="Write the trace picture (PNG)."),
    action_timeout: float | None = typer.Option(None, "--action-timeout", min=0.001, max=86400, metavar="S",
                                                help="Deadline of each perception call, in seconds (default 120)."),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help=SET_HELP),
    remote: str | None = typer.Option(None, "--remote", metavar="URL", help=REMOTE_HELP),
    remote_model: str | None = typer.Option(None, "--remote-model", metavar="NAME", help=REMOTE_MODEL_HELP),
) -> None:
    """Answer a question about an image, letting the model call perception actions.

    Values come from, highest first: the flags, --set, the --config file, the defaults."""
    from perceive.cli.graph_cmd import run_graph

    if not question.strip():
        raise fail("the question is empty: pass it as the second argument, e.g. "
                   f"perceive ask {image} \"What is written on the sign?\"", 2)
    from perceive.images import check_image_file, check_input_size

    flags = [(("graph",), graph, "--graph"), (("runtime", "max_hops"), max_hops, "--max-hops"),
             (("params", "max_hops"), max_hops, "--max-hops"),
             *loop_flags(model, max_new_tokens, device, dtype, reprefill, action_timeout),
             *remote_flags(remote, remote_model)]
    cfg = run_config(config, set_, flags)
    # header only (upright size): a wrong or too small or too elongated image fails before the model loads
    check_input_size(check_image_file(image), f"image {image}")
    run_graph(cfg, image, question, as_json, render)


def convert(src: Path = typer.Argument(..., help="Paper checkpoint folder (qwen2_vl_vpt / vrt_qwen2_vl)."),
            dst: Path = typer.Argument(..., help="Output folder, in perceive's format.")) -> None:
    """Convert one of the paper's released checkpoints to perceive's format (strict: a key that
    does not match is an error, never a silent partial load)."""
    from perceive.errors import PerceiveError
    from perceive.model import convert as do_convert

    try:
        out = do_convert(src, dst)
    except PerceiveError as exc:
        raise fail(exc, 1) from None
    console.print(f"wrote {out}")
