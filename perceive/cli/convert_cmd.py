"""``perceive convert``: one of the paper's released checkpoints to perceive's format."""

from __future__ import annotations

from pathlib import Path

import typer

from perceive.cli.output import console, fail


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
