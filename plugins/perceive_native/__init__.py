"""The paper's "CLIP" re-encoding with the MLLM's own vision tower: tokens
``<|clip_action_*|>``, features placed at ``<|clip_image_pad|>`` (one per merged token). The model
side (projector, preprocessing, paper layout) is the ``native`` branch in
:mod:`perceive_native.branch`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from perceive import hookimpl
from perceive.actions import EncoderOptions
from perceive.encoders import EncoderSpec, lazy
from perceive.reencode import ReencodeAction
from perceive_native.branch import TOKENS, NativeBranch


class NativeEncoderOptions(BaseModel):
    """Options of the ``native`` encoder: the pixel bounds of its image processor, used only when
    the model brings no processor of its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    min_pixels: int = Field(56 * 56, ge=1)
    max_pixels: int = Field(512 * 512, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> NativeEncoderOptions:
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} is above max_pixels {self.max_pixels}")
        return self


class NativeReencode(ReencodeAction):
    name = "native"
    tokens = TOKENS
    description = "Re-encode the image with the MLLM's own vision tower; conditioned features."
    encoders = ("native",)
    Options = EncoderOptions


@hookimpl
def perceive_register_actions():
    return [NativeReencode()]


@hookimpl
def perceive_register_branches():
    return [NativeBranch()]


@hookimpl
def perceive_register_encoders():
    return [
        EncoderSpec(
            name="native", family="native", layout="tokens", feature_dim=None,
            build=lazy("perceive_native.encoder:build"),
            build_tiny=lazy("perceive_native.encoder:build_tiny"), placeholders=None,
            requires_model=True, description="the MLLM's own vision tower (merger output)",
            Options=NativeEncoderOptions,
        )
    ]
