"""DINOv2 through transformers' ``Dinov2Model`` (vpt-paper.md §2.1, §2.4).

Preprocessing as the paper: longer side capped at ``max_side`` (512, nearest), then the
dinov2 processor (shortest edge 256 bicubic, centre crop 224, x1/255, ImageNet mean/std).
Output: ``last_hidden_state`` without the CLS token, ``(256, hidden)`` float32 for 224 px.
"""

from __future__ import annotations

import torch
from PIL import Image
from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

from perceive.encoders import require_weights
from perceive.reencode import model_has_branch

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

def dinov2_processor(crop: int = 224) -> BitImageProcessorPil:
    return BitImageProcessorPil(
        do_resize=True, size={"shortest_edge": crop * 256 // 224}, resample=Image.Resampling.BICUBIC,
        do_center_crop=True, crop_size={"height": crop, "width": crop},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True,
    )


class Dinov2Encoder:
    """Wraps a ``Dinov2Model``; ``encode(image) -> (num_patches, hidden)`` float32 tensor."""

    def __init__(self, model: Dinov2Model, *, crop: int = 224, max_side: int | None = 512,
                 device: str = "cpu", owned: bool = True):
        # a module the VPT model owns (owned=False) is used where it is, as it is: moving it or
        # switching its mode would change the model
        self.model = model.eval().to(device) if owned else model
        self.processor = dinov2_processor(crop)
        self.max_side = max_side
        self.device = device

    @torch.inference_mode()
    def encode(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self.max_side and max(image.size) > self.max_side:
            s = self.max_side / max(image.size)
            image = image.resize((max(1, int(image.width * s)), max(1, int(image.height * s))),
                                 Image.Resampling.NEAREST)
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=pixels.to(self.device, self.model.dtype))
        return out.last_hidden_state[0, 1:].float()


def build(weights=None, options=None, model=None, *, name: str = "dinov2") -> Dinov2Encoder:
    """Load a local DINOv2 folder (transformers layout)."""
    options = dict(options or {})
    if weights is None and model_has_branch(model, "dino"):  # the VPT model's own weights
        crop = model.branch_config("dino").image_size or 224
        return Dinov2Encoder(model.branch_encoder("dino"), crop=crop, max_side=options.get("max_side", 512),
                             device=str(model.device), owned=False)
    path = require_weights(name, weights)
    net = Dinov2Model.from_pretrained(path, local_files_only=True)
    return Dinov2Encoder(net, crop=options.get("crop", 224), max_side=options.get("max_side", 512),
                         device=options.get("device", "cpu"))


def build_tiny() -> Dinov2Encoder:
    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       mlp_ratio=4, patch_size=14, image_size=518)
    return Dinov2Encoder(Dinov2Model(cfg))
