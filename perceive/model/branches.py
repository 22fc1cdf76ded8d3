"""Encoder modules of the re-encode branches, built from the architecture stored in a
checkpoint's ``perceive.json`` (weights come from the checkpoint, never a hub)."""

from __future__ import annotations

from typing import Any

from torch import nn

from perceive.model.config import BranchConfig
from perceive.model.projectors import build_projector

# Official architectures, for checkpoints that do not carry an encoder config
# (the paper's released models were built from hub ids).
DINOV2 = {
    "dinov2_small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "dinov2_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "dinov2_large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "dinov2_giant": dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True),
}
SAM = {
    "sam_vit_b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "sam_vit_l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                      global_attn_indexes=[5, 11, 17, 23]),
    "sam_vit_h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                      global_attn_indexes=[7, 15, 23, 31]),
}
SAM_DEFAULTS = dict(image_size=1024, patch_size=16, window_size=14, output_channels=256, mlp_ratio=4.0)


def default_encoder_config(encoder: str) -> dict[str, Any] | None:
    if encoder in DINOV2:
        return dict(DINOV2[encoder], patch_size=14, image_size=518, mlp_ratio=4)
    if encoder in SAM:
        return dict(SAM_DEFAULTS, **SAM[encoder])
    return None


def build_encoder(branch: BranchConfig) -> nn.Module | None:
    """A randomly initialised encoder module of the branch's architecture (None for native)."""
    if branch.action == "native":
        return None
    cfg = dict(branch.encoder_config or default_encoder_config(branch.encoder) or {})
    if branch.action == "dino":
        from transformers import Dinov2Config, Dinov2Model

        return Dinov2Model(Dinov2Config(**cfg))
    from perceive.model.sam import image_encoder

    hidden = cfg["hidden_size"]
    mlp = cfg.get("mlp_dim") or int(hidden * cfg.get("mlp_ratio", 4.0))
    return image_encoder(
        "custom", img_size=cfg["image_size"], patch_size=cfg["patch_size"], depth=cfg["num_hidden_layers"],
        embed_dim=hidden, num_heads=cfg["num_attention_heads"],
        global_attn_indexes=tuple(cfg["global_attn_indexes"]), window_size=cfg.get("window_size", 14),
        mlp_ratio=mlp / hidden, out_chans=cfg.get("output_channels", 256),
    )


class Branch(nn.Module):
    """One re-encode branch: ``encoder`` (None for native) and ``projector``."""

    def __init__(self, encoder: nn.Module | None, projector: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    @classmethod
    def build(cls, branch: BranchConfig, hidden_size: int, projector_scale: int = 1) -> Branch:
        """A randomly initialised branch of ``branch``'s architecture for a ``hidden_size`` LM."""
        return cls(build_encoder(branch), build_projector(branch.action, branch.feature_dim, hidden_size,
                                                          projector_scale))
