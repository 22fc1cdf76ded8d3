"""SAM's image encoder (``segment_anything``'s ``ImageEncoderViT``): building it, loading
official checkpoints, and reading transformers' SAM layout (the paper's checkpoints)."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from functools import partial

import torch

from perceive.errors import ModelLoadError

# embed dim, depth, heads, global-attention blocks of the official checkpoints
VARIANTS = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


def sam_modeling():
    """``segment_anything.modeling``, importable without torchvision.

    The package's top-level ``__init__`` imports its predictor, which needs torchvision (there is
    no CPU build of it here); the image encoder does not. If that import fails, register the
    package without running its ``__init__`` and import the subpackage alone.
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
    modeling = sam_modeling()
    dim, depth, heads, glob = VARIANTS.get(variant, (None, None, None, None))
    kw = dict(depth=depth, embed_dim=dim, num_heads=heads, global_attn_indexes=glob, mlp_ratio=4.0,
              out_chans=256, window_size=14)
    kw.update(overrides)
    return modeling.ImageEncoderViT(
        img_size=img_size, patch_size=patch_size, qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, **kw,
    )


def load_strict(net: torch.nn.Module, state: dict, source: str) -> None:
    result = net.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"{source} does not match the SAM image encoder: missing {result.missing_keys[:10]}, "
            f"unexpected {result.unexpected_keys[:10]}",
            hint="pass a checkpoint of the same SAM variant",
        )


def load_official(net: torch.nn.Module, path: str) -> None:
    """Load an official segment-anything ``.pth`` (keys ``image_encoder.*``) into ``net``.

    Strict: missing or unexpected encoder keys are an error listing them.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "image_encoder."
    enc = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} or state
    load_strict(net, enc, path)


# transformers SamVisionEncoder prefix -> segment_anything ImageEncoderViT prefix
_LAYOUT = [
    (r"patch_embed\.projection\.", "patch_embed.proj."),
    (r"layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"layers\.(\d+)\.", r"blocks.\1."),
    (r"neck\.conv1\.", "neck.0."),
    (r"neck\.layer_norm1\.", "neck.1."),
    (r"neck\.conv2\.", "neck.2."),
    (r"neck\.layer_norm2\.", "neck.3."),
]
def _rename(state: dict[str, torch.Tensor], rules) -> dict[str, torch.Tensor]:
    """Apply the first matching prefix rule to every key."""
    out = {}
    for k, v in state.items():
        for pat, rep in rules:
            new = re.sub("^" + pat, rep, k)
            if new != k:
                k = new
                break
        out[k] = v
    return out


def from_transformers_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``SamVisionEncoder`` keys -> ``segment_anything`` ``ImageEncoderViT`` keys."""
    return _rename(state, _LAYOUT)
