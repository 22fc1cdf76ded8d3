"""The MLLM's own vision tower as a re-encoder (the paper's "clip" family, §1.5, §2.5).

The image goes through the base model's Qwen2-VL image processor and vision tower; the output
is the merger's ``(t*h*w/4, hidden)`` tokens, so a re-encoded image gets as many placeholders
as a normal image of the same size.
"""

from __future__ import annotations

import torch
from PIL import Image
from transformers import Qwen2VLImageProcessorPil

from perceive.errors import EncoderUnavailableError


def vision_tower(model):
    """The vision tower of a transformers Qwen2-VL / Qwen2.5-VL model (or a perceive wrapper)."""
    for path in ("visual", "model.visual"):  # VPTModel.visual, or a transformers Qwen2-VL's
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    raise EncoderUnavailableError(f"{type(model).__name__} has no Qwen2-VL vision tower")


class NativeEncoder:
    def __init__(self, tower, processor: Qwen2VLImageProcessorPil):
        self.tower = tower
        self.processor = processor

    @torch.inference_mode()
    def encode(self, image: Image.Image) -> torch.Tensor:
        inputs = self.processor(images=[image.convert("RGB")], return_tensors="pt")
        p = next(self.tower.parameters())
        out = self.tower(inputs["pixel_values"].to(p.device, p.dtype),
                         grid_thw=inputs["image_grid_thw"].to(p.device))
        return getattr(out, "pooler_output", out).float()


def build(weights=None, options=None, model=None) -> NativeEncoder:
    options = dict(options or {})
    if model is None:
        raise EncoderUnavailableError(
            "the native encoder reuses the MLLM's vision tower, and no model is loaded",
            hint="run the native action through a loaded model (perceive.load_model)")
    processor = getattr(model, "image_processor", None) or Qwen2VLImageProcessorPil(
        min_pixels=options.get("min_pixels", 56 * 56), max_pixels=options.get("max_pixels", 512 * 512))
    return NativeEncoder(vision_tower(model), processor)


def build_tiny() -> NativeEncoder:
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import (
        Qwen2VisionTransformerPretrainedModel,
    )

    torch.manual_seed(0)
    cfg = Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=64, num_heads=2)
    tower = Qwen2VisionTransformerPretrainedModel._from_config(cfg).eval()
    return NativeEncoder(tower, Qwen2VLImageProcessorPil(min_pixels=784, max_pixels=112 * 112))
