"""Tiles: cut the target view into a rows x cols grid of views. Needs no trained perception
tokens: a graph can force it, so any MLLM sees the image at a higher effective resolution."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from perceive import hookimpl
from perceive.actions import Action, ActionCall, ActionContext, NoOptions, SpanError, TriggerGrammar
from perceive.geometry import Box
from perceive.observations import View


class TilesArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    rows: int = Field(2, ge=1, le=8)
    cols: int = Field(2, ge=1, le=8)


class Tiles(Action):
    name = "tiles"
    description = "Cut the image into rows x cols tiles, each shown as a new image (row-major)."
    grammar = TriggerGrammar(start="<|tiles_start|>", end="<|tiles_end|>")
    Args = TilesArgs
    Options = NoOptions  # rows and cols are call arguments, not options
    observation = "view"

    def parse(self, pieces: Sequence[str]) -> TilesArgs:
        if any(p.strip() for p in pieces):
            raise SpanError("unexpected_token", f"a tiles span is empty, got {list(pieces)}")
        return TilesArgs()

    def run(self, call: ActionCall, context: ActionContext) -> list[View]:
        w, h = context.frame.size
        r, c = call.args.rows, call.args.cols
        xs = [round(k * w / c) for k in range(c + 1)]
        ys = [round(k * h / r) for k in range(r + 1)]
        return [context.crop_root(Box(xs[j], ys[i], xs[j + 1], ys[i + 1], context.frame.id), label=f"tile {i},{j}")
                for i in range(r) for j in range(c)]

    def examples(self) -> list[TilesArgs]:
        return [TilesArgs(), TilesArgs(rows=1, cols=3)]


@hookimpl
def perceive_register_actions():
    return [Tiles()]
