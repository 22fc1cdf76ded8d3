"""The paper's DINOv2 re-encoding ("Det" family): tokens ``<|detection_action_*|>``,
features placed at ``<|detection_image_pad|>`` x 256. Encoders ``dinov2_small`` ...
``dinov2_giant`` (the paper uses ``dinov2_large``). The model side (encoder module, projector,
preprocessing, paper layout) is the ``dino`` branch in :mod:`perceive_dino.branch`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from perceive import hookimpl
from perceive.actions import Device, EncoderOptions
from perceive.encoders import EncoderSpec, lazy
from perceive.reencode import ReencodeAction
from perceive_dino.branch import TOKENS, DinoBranch

HIDDEN = {"small": 384, "base": 768, "large": 1024, "giant": 1536}


class DinoEncoderOptions(BaseModel):
    """Options of a ``dinov2_*`` encoder (config ``encoders[].options``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    crop: int = Field(224, ge=14, le=4096)  # the processor's centre-crop side, pixels
    max_side: int | None = Field(512, ge=1)  # longer side capped first (nearest); None: no cap
    device: Device = "cpu"


class DinoReencode(ReencodeAction):
    name = "dino"
    tokens = TOKENS
    description = "Re-encode the image with DINOv2; features conditioned on the control token."
    encoders = ("dinov2_large", "dinov2_small", "dinov2_base", "dinov2_giant")
    Options = EncoderOptions


@hookimpl
def perceive_register_actions():
    return [DinoReencode()]


@hookimpl
def perceive_register_branches():
    return [DinoBranch()]


@hookimpl
def perceive_register_encoders():
    return [
        EncoderSpec(
            name=f"dinov2_{size}", family="dinov2", layout="tokens", feature_dim=dim,
            build=lazy("perceive_dino.encoder:build", name=f"dinov2_{size}"),
            build_tiny=lazy("perceive_dino.encoder:build_tiny"),
            placeholders=256, description=f"DINOv2-{size} patch tokens (CLS dropped), 224 px",
            Options=DinoEncoderOptions,
            branch_options=("max_side",),  # a model's own dino branch keeps its crop and device
        )
        for size, dim in HIDDEN.items()
    ]
