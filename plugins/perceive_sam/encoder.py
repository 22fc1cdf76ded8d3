"""SAM's image encoder from ``segment_anything`` (vpt-paper.md §2.1, §2.4).

Preprocessing as the paper: transformers' SAM processor (longest side to ``img_size``,
ImageNet mean/std, zero pad to a square). Output: the neck map ``(256, img_size/16,
img_size/16)`` float32, i.e. ``(256, 64, 64)`` at 1024 px.
"""

from __future__ import annotations

import torch
from PIL import Image
from transformers import SamImageProcessorPil

from perceive.encoders import require_weights
from perceive.reencode import model_has_branch
from perceive_sam.modeling import VARIANTS, image_encoder, load_official, sam_modeling

__all__ = ["VARIANTS", "SamEncoder", "build", "build_tiny", "image_encoder", "load_official", "sam_modeling"]

class SamEncoder:
    """Wraps an ``ImageEncoderViT``; ``encode(image) -> (256, H/16, W/16)`` float32."""

    def __init__(self, net, img_size: int, device: str = "cpu", owned: bool = True):
        # a module the VPT model owns (owned=False) is used where it is, as it is: moving it or
        # switching its mode would change the model
        self.net = net.eval().to(device) if owned else net
        self.img_size = img_size
        self.device = device
        self.processor = SamImageProcessorPil(
            size={"longest_edge": img_size}, pad_size={"height": img_size, "width": img_size})

    @torch.inference_mode()
    def encode(self, image: Image.Image) -> torch.Tensor:
        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        dtype = next(self.net.parameters()).dtype
        return self.net(pixels.to(self.device, dtype))[0].float()


def build(weights=None, options=None, model=None, *, variant: str = "vit_l") -> SamEncoder:
    options = dict(options or {})
    if weights is None and model_has_branch(model, "sam"):  # the VPT model carries its own SAM weights
        net = model.branch_encoder("sam")
        return SamEncoder(net, int(net.img_size), device=str(model.device), owned=False)
    path = require_weights(f"sam_{variant}", weights)
    net = image_encoder(variant)
    load_official(net, path)
    return SamEncoder(net, 1024, device=options.get("device", "cpu"))


def build_tiny() -> SamEncoder:
    """The shared fixtures' tiny SAM: 256 px, patch 4, so the neck map is still 64 x 64."""
    torch.manual_seed(0)
    net = image_encoder("tiny", img_size=256, patch_size=4, depth=2, embed_dim=16, num_heads=2,
                        global_attn_indexes=(1,))
    return SamEncoder(net, 256)
