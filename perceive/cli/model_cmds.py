"""``perceive ask`` and ``perceive convert``."""

from __future__ import annotations

from pathlib import Path

import typer

from perceive.cli.output import console, fail


def ask(
    image: Path = typer.Argument(..., help="Image file."),
    question: str = typer.Argument(..., help="The question."),
    model: Path | None = typer.Option(None, "--model", help="Local model folder (project or paper format)."),
    graph: str = typer.Option("free_choice", "--graph", help="Graph YAML file or shipped graph name."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer and the trace as JSON."),
    max_hops: int = typer.Option(4, "--max-hops", min=0, help="Perception calls allowed (free_choice)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:1, ... or auto."),
    dtype: str = typer.Option("auto", "--dtype", help="float32, bfloat16, float16 or auto."),
    reprefill: bool = typer.Option(False, "--reprefill", help="Reference-style: re-prefill after each hop."),
    render: Path | None = typer.Option(None, "--render", help="Write the trace picture (PNG)."),
    action_timeout: float = typer.Option(120.0, "--action-timeout", min=0.001, max=86400, metavar="S",
                                         help="Deadline of each perception call, in seconds."),
) -> None:
    """Answer a question about an image, letting the model call perception actions."""
    from perceive.cli.graph_cmd import run_graph

    if not question.strip():
        raise fail("the question is empty: pass it as the second argument, e.g. "
                   f"perceive ask {image} \"What is written on the sign?\"", 2)
    from perceive.images import check_image_file

    check_image_file(image)  # header only: a wrong image fails before the model loads

    sets = {"max_hops": max_hops} if graph == "free_choice" else {}
    run_graph(graph, image, question, model, as_json, render, sets, max_new_tokens, device, dtype, reprefill,
              action_timeout)


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
