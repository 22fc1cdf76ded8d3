"""The paper's SAM re-encoding ("Seg" family): tokens ``<|seg_action_*|>``, features placed at
``<|seg_image_pad|>`` x 256 (the projector's 4x4 stride-4 conv turns the 64x64 neck map into
16x16 tokens). Encoders ``sam_vit_b``, ``sam_vit_l`` (the paper's), ``sam_vit_h``. The model side
(encoder module, projector, preprocessing, paper layout) is the ``sam`` branch in
:mod:`perceive_sam.branch`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from perceive import hookimpl
from perceive.actions import Device, EncoderOptions
from perceive.encoders import EncoderSpec, lazy
from perceive.reencode import ReencodeAction
from perceive_sam.branch import TOKENS, SamBranch


class SamEncoderOptions(BaseModel):
    """Options of a ``sam_*`` encoder (config ``encoders[].options``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    device: Device = "cpu"


class SamReencode(ReencodeAction):
    name = "sam"
    tokens = TOKENS
    description = "Re-encode the image with SAM's image encoder; conditioned on the control token."
    encoders = ("sam_vit_l", "sam_vit_b", "sam_vit_h")
    layout = "map"
    Options = EncoderOptions


@hookimpl
def perceive_register_actions():
    return [SamReencode()]


@hookimpl
def perceive_register_branches():
    return [SamBranch()]


@hookimpl
def perceive_register_encoders():
    return [
        EncoderSpec(
            name=f"sam_{v}", family="sam", layout="map", feature_dim=256,
            build=lazy("perceive_sam.encoder:build", variant=v),
            build_tiny=lazy("perceive_sam.encoder:build_tiny"),
            placeholders=256, description=f"SAM {v} image encoder neck map (256, 64, 64) at 1024 px",
            Options=SamEncoderOptions,
        )
        for v in ("vit_b", "vit_l", "vit_h")
    ]
