"""The paper's "CLIP" re-encoding with the MLLM's own vision tower: tokens
``<|clip_action_*|>``, features placed at ``<|clip_image_pad|>`` (one per merged token)."""

from __future__ import annotations

from perceive import hookimpl
from perceive.encoders import EncoderSpec, lazy
from perceive.reencode import ReencodeAction


class NativeReencode(ReencodeAction):
    name = "native"
    family = "clip"
    description = "Re-encode the image with the MLLM's own vision tower; conditioned features."
    encoders = ("native",)


@hookimpl
def perceive_register_actions():
    return [NativeReencode()]


@hookimpl
def perceive_register_encoders():
    return [
        EncoderSpec(
            name="native", family="native", layout="tokens", feature_dim=None,
            build=lazy("perceive_native.encoder:build"),
            build_tiny=lazy("perceive_native.encoder:build_tiny"), placeholders=None,
            requires_model=True, description="the MLLM's own vision tower (merger output)",
        )
    ]
