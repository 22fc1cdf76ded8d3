"""Zoom: crop the selected grid cells and resample the crop to a target view size.

Options (config ``actions.zoom.options``): ``size`` (longest side of the view, default 448).
The view's frame keeps the exact map back to the original image.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from perceive import hookimpl
from perceive.actions import ActionCall, ActionContext
from perceive.observations import View
from perceive.regions import GridSpanAction


class ZoomOptions(BaseModel):
    """``size``: the longest side of the zoomed view, in pixels."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    size: int = Field(448, ge=1, le=8192)  # the cap keeps a typo from allocating gigapixels


class Zoom(GridSpanAction):
    name = "zoom"
    description = "Crop the named grid cells and resample the crop so its longest side is `size`."
    start_token = "<|zoom_start|>"
    end_token = "<|zoom_end|>"
    Options = ZoomOptions

    def run(self, call: ActionCall, context: ActionContext) -> View:
        box = call.args.box_in(context.frame.width, context.frame.height, context.frame.id)
        rb = context.root_box(box)  # bounds-checked, whole pixels of the original
        size = context.options.size  # a ZoomOptions, validated, its default filled in
        scale = size / max(rb.width, rb.height)
        out = (max(1, round(rb.width * scale)), max(1, round(rb.height * scale)))
        return context.crop_root(box, out_size=out, label="zoom")


@hookimpl
def perceive_register_actions():
    return [Zoom()]
