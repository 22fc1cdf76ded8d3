"""``perceive ask`` and ``perceive convert``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

console = Console()


def ask(
    image: Path = typer.Argument(..., help="Image file."),
    question: str = typer.Argument(..., help="The question."),
    model: Path | None = typer.Option(None, "--model", help="Local model folder (project or paper format)."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer and the trace as JSON."),
    max_hops: int = typer.Option(4, "--max-hops", min=0, help="Perception calls allowed."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:1, ... or auto."),
    dtype: str = typer.Option("auto", "--dtype", help="float32, bfloat16, float16 or auto."),
    reprefill: bool = typer.Option(False, "--reprefill", help="Reference-style: re-prefill after each hop."),
) -> None:
    """Answer a question about an image, letting the model call perception actions."""
    from perceive.errors import PerceiveError
    from perceive.loop import LoopOptions, PerceptionLoop
    from perceive.model import load_model

    if model is None:
        console.print("[red]error[/]: no model given. Pass --model DIR with a local VPT or Qwen2-VL checkpoint "
                      "(the default model ships with a later release).")
        raise typer.Exit(2)
    try:
        m = load_model(model, device=device, dtype=None if dtype == "auto" else dtype)
        loop = PerceptionLoop(m, options=LoopOptions(max_hops=max_hops, max_new_tokens=max_new_tokens,
                                                     reprefill=reprefill))
        answer = loop.ask(image, question)
    except PerceiveError as exc:
        console.print(f"[red]error[/]: {exc}", markup=False)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"answer": answer.text, "trace": answer.trace.to_dict()}, indent=2))
        return
    typer.echo(answer.text)
    for h in answer.trace.hops:
        box = tuple(h.box[k] for k in ("x0", "y0", "x1", "y1")) if h.box else None
        console.print(f"  hop {h.index}: {h.action} in {h.target} -> box {box}, {h.prefilled_tokens} tokens "
                      f"prefilled, {h.dispatch_ms:.1f} ms" + (f", error: {h.error['message']}" if h.error else ""),
                      markup=False, highlight=False)
    if answer.error:
        console.print(f"[red]sample failed[/]: {answer.error['message']}", markup=False)
        raise typer.Exit(1)


def convert(src: Path = typer.Argument(..., help="Paper checkpoint folder (qwen2_vl_vpt / vrt_qwen2_vl)."),
            dst: Path = typer.Argument(..., help="Output folder, in perceive's format.")) -> None:
    """Convert one of the paper's released checkpoints to perceive's format (strict: a key that
    does not match is an error, never a silent partial load)."""
    from perceive.errors import PerceiveError
    from perceive.model import convert as do_convert

    try:
        out = do_convert(src, dst)
    except PerceiveError as exc:
        console.print(f"[red]error[/]: {exc}", markup=False)
        raise typer.Exit(1) from None
    console.print(f"wrote {out}")
