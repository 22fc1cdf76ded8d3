"""The native branch of a VPT model (the paper's "CLIP" family, vpt-paper.md §1.5, §2.5): the
MLLM's own vision tower re-run on the image; its merged tokens are already as wide as the
language model, so the projector only conditions them. The branch has no encoder module of its
own; an image gets as many placeholders as it has merged tokens.

Nothing heavy is imported at module level: the registry loads this module with the plugin.
"""

from __future__ import annotations

from typing import Any

from perceive.reencode import BranchInput, BranchSpec, BranchTokens, PaperLayout

TOKENS = BranchTokens.named("clip")


class NativeBranch(BranchSpec):
    name = "native"
    tokens = TOKENS
    encoder = "native"
    description = "the MLLM's own vision tower, re-run; merged tokens conditioned on the control state"
    placeholder = "<clip_image>"
    dataset_key = "clip_images"
    paper = PaperLayout(family="clip", encoder_ls="clip", weights={"clip_projector.": "projector"},
                        inputs={"clip_pixel_values": "pixel_values", "clip_images_grid_thw": "grid_thw"})

    def tiny_config(self, hidden_size: int) -> dict[str, Any]:
        return {"encoder": "native", "encoder_config": None, "feature_dim": hidden_size, "image_size": None}

    def build_encoder(self, config):
        return None  # the MLLM's vision tower

    def build_projector(self, config, hidden_size: int, scale: int = 1):
        from perceive_native.projector import NativeProjector

        return NativeProjector(hidden_size, scale)

    def preprocess(self, image, config, model) -> BranchInput:
        # the native encoder in the loop uses the first image's processor: the same here
        inputs = model.image_processor(images=[image], return_tensors="pt")
        grid = inputs["image_grid_thw"]
        return BranchInput({"pixel_values": inputs["pixel_values"], "grid_thw": grid},
                           int(grid[0].prod()) // model.spatial_merge_size**2)

    def encode(self, encoder, inputs, model):
        grid = inputs["grid_thw"]
        sizes = (grid.prod(-1) // model.spatial_merge_size**2).tolist()
        return model.image_embeds(inputs["pixel_values"], grid), sizes

    def project(self, projector, features, control, sizes=None):
        return projector(features, control, sizes)

    def one_image(self, features):
        return features, [features.shape[0]]

    def first_image(self, features, sizes):
        return features
