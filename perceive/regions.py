"""Grid-span arguments shared by the region actions (``region_select``, ``zoom``, ...).

A region span is ``start (x|y)+ end`` on an N x N grid laid over the view the call targets.
Parsing follows the paper (vpt-paper.md §1.2): the *set* of x and y indices counts, order and
repetition do not; the box grows by one cell and is clamped. An explicit pixel box is the
other way to fill these arguments (graphs that force a crop, the conformance kit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import BaseModel, Field, model_validator

from perceive.actions import Action, SpanError, TriggerGrammar
from perceive.geometry import Box, grid_cells_to_box
from perceive.strict import FrozenStrictModel
from perceive.vocabulary import Vocabulary, grid_index


class RegionArgs(FrozenStrictModel):
    """Either grid ``cells`` (paper semantics) or an explicit ``box`` in the target view's pixels."""

    xs: tuple[int, ...] = ()
    ys: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    grid: int = Field(8, ge=1)
    margin: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _one_form(self) -> RegionArgs:
        if self.box is None:
            if not self.xs or not self.ys:
                raise ValueError("region needs x and y cells, or a box")
            bad = [i for i in (*self.xs, *self.ys) if not 0 <= i < self.grid]
            if bad:
                raise ValueError(f"cell indices {bad} outside the {self.grid}x{self.grid} grid")
        elif self.xs or self.ys:
            raise ValueError("give cells or a box, not both")
        return self

    def box_in(self, width: int, height: int, frame: str) -> Box:
        """The requested box in the pixel frame ``frame`` of a ``width`` x ``height`` view."""
        if self.box is not None:
            return Box(*self.box, frame=frame)
        return grid_cells_to_box(set(self.xs), set(self.ys), width, height, grid=self.grid,
                                 margin=self.margin, frame=frame)


def parse_grid_span(pieces: Sequence[str], grid: int, margin: int = 1) -> RegionArgs:
    """Pieces between the span tokens -> :class:`RegionArgs`; :class:`SpanError` if malformed."""
    xs: set[int] = set()
    ys: set[int] = set()
    for piece in pieces:
        hit = grid_index(piece)
        if hit is None:
            if piece.strip():
                raise SpanError("unexpected_token", f"{piece!r} is not a grid token")
            continue
        axis, idx = hit
        if idx >= grid:
            raise SpanError("out_of_range",
                            f"{piece} is outside the {grid}x{grid} grid (indices 0..{grid - 1})")
        (xs if axis == "x" else ys).add(idx)
    if not xs:
        raise SpanError("missing_x", "region span has no x cell token")
    if not ys:
        raise SpanError("missing_y", "region span has no y cell token")
    return RegionArgs(xs=tuple(sorted(xs)), ys=tuple(sorted(ys)), grid=grid, margin=margin)


class GridSpanAction(Action):
    """Base for actions whose span holds grid cells. Subclasses set ``start``/``end`` tokens."""

    Args: ClassVar[type[BaseModel]] = RegionArgs
    start_token: ClassVar[str] = ""
    end_token: ClassVar[str] = ""

    def __init__(self, grid: int = 8, margin: int = 1):
        self.grid = grid
        self.margin = margin
        vocab = Vocabulary(grid)
        # an instance attribute: the grammar depends on the grid size
        self.grammar = TriggerGrammar(start=self.start_token, end=self.end_token,
                                      inner=vocab.x_tokens + vocab.y_tokens)

    def parse(self, pieces: Sequence[str]) -> RegionArgs:
        return parse_grid_span(pieces, self.grid, self.margin)

    def examples(self) -> list[RegionArgs]:
        g = self.grid - 1
        return [
            RegionArgs(xs=(1, 5), ys=(5, 7), grid=self.grid, margin=self.margin),  # paper's example
            RegionArgs(xs=(0,), ys=(0,), grid=self.grid, margin=self.margin),  # top-left corner
            RegionArgs(xs=(g,), ys=(g,), grid=self.grid, margin=self.margin),  # bottom-right
            RegionArgs(xs=(0, g), ys=(0, g), grid=self.grid, margin=self.margin),  # everything
        ]

    def args_for_box(self, box: Box) -> RegionArgs:
        return RegionArgs(box=box.as_tuple(), grid=self.grid, margin=self.margin)
