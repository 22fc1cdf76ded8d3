"""SAM's image encoder from ``segment_anything`` (vpt-paper.md §2.1, §2.4).

Preprocessing as the paper: transformers' SAM processor (longest side to ``img_size``,
ImageNet mean/std, zero pad to a square). Output: the neck map ``(256, img_size/16,
img_size/16)`` float32, i.e. ``(256, 64, 64)`` at 1024 px.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import torch
from PIL import Image
from transformers import SamImageProcessorPil

from perceive.encoders import require_weights
from perceive.errors import ModelLoadError

# embed dim, depth, heads, global-attention blocks of the official checkpoints
VARIANTS = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


def sam_modeling():
    """``segment_anything.modeling``, importable without torchvision.

    The package's top-level ``__init__`` imports its predictor, which needs torchvision (no CPU
    build exists here); the image encoder does not. If that import fails, register the package
    without running its ``__init__`` and import the subpackage alone.
    """
    try:
        import segment_anything.modeling as modeling

        return modeling
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            raise
    spec = importlib.util.find_spec("segment_anything")
    pkg = types.ModuleType("segment_anything")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    sys.modules["segment_anything"] = pkg
    import segment_anything.modeling as modeling

    return modeling


def image_encoder(variant: str, img_size: int = 1024, patch_size: int = 16, **overrides):
    """A randomly initialised ``ImageEncoderViT`` of an official variant (or custom sizes)."""
    from functools import partial

    modeling = sam_modeling()
    dim, depth, heads, glob = VARIANTS.get(variant, (None, None, None, None))
    kw = dict(depth=depth, embed_dim=dim, num_heads=heads, global_attn_indexes=glob)
    kw.update(overrides)
    return modeling.ImageEncoderViT(
        img_size=img_size, patch_size=patch_size, mlp_ratio=4, out_chans=256, qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=14,
        **kw,
    )


class SamEncoder:
    """Wraps an ``ImageEncoderViT``; ``encode(image) -> (256, H/16, W/16)`` float32."""

    def __init__(self, net, img_size: int, device: str = "cpu"):
        self.net = net.eval().to(device)
        self.img_size = img_size
        self.device = device
        self.processor = SamImageProcessorPil(
            size={"longest_edge": img_size}, pad_size={"height": img_size, "width": img_size})

    @torch.inference_mode()
    def encode(self, image: Image.Image) -> torch.Tensor:
        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        dtype = next(self.net.parameters()).dtype
        return self.net(pixels.to(self.device, dtype))[0].float()


def load_official(net, path: str) -> None:
    """Load an official segment-anything ``.pth`` (keys ``image_encoder.*``) into ``net``.

    Strict: missing or unexpected encoder keys are an error listing them.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "image_encoder."
    enc = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} or state
    result = net.load_state_dict(enc, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"{path} does not match the SAM image encoder: missing {result.missing_keys[:10]}, "
            f"unexpected {result.unexpected_keys[:10]}",
            hint="pass an official segment-anything checkpoint of the same variant",
        )


def build(weights=None, options=None, model=None, *, variant: str = "vit_l") -> SamEncoder:
    options = dict(options or {})
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
