"""Region Selection (vpt-paper.md §1.2): crop the selected grid cells of the target view.

The crop is cut from the full-resolution original image and shown to the model as a new
image; its box is kept in the original image's pixel frame.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from perceive import hookimpl
from perceive.actions import ActionCall, ActionContext
from perceive.observations import View
from perceive.regions import GridSpanAction
from perceive.vocabulary import REGION_END, REGION_START


class RegionSelectOptions(BaseModel):
    """``margin``: grid cells added around the named ones (unset: the span's own, 1 as in the paper)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    margin: int | None = Field(None, ge=0)


class RegionSelect(GridSpanAction):
    name = "region_select"
    description = ("Crop the grid cells the model names (+-1 cell, option `margin`) and show the crop as a "
                   "new image.")
    start_token = REGION_START
    end_token = REGION_END
    Options = RegionSelectOptions

    def run(self, call: ActionCall, context: ActionContext) -> View:
        args = call.args
        margin = context.options.margin  # a RegionSelectOptions, validated
        if margin is not None:  # a model trained on tighter (or wider) crops says so
            args = args.model_copy(update={"margin": margin})
        box = args.box_in(context.frame.width, context.frame.height, context.frame.id)
        return context.crop_root(box, label="region")


@hookimpl
def perceive_register_actions():
    return [RegionSelect()]
