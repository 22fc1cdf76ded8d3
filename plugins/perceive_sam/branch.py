"""The SAM branch of a VPT model (the paper's "Seg" family, vpt-paper.md §2.1-2.5):
``segment_anything``'s image encoder, whose ``(256, H, W)`` neck map goes through the SAM
projector (LayerNorm over channels, a 4x4 stride-4 conv, channels-last rows).

Nothing heavy is imported at module level: the registry loads this module with the plugin.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from perceive.reencode import BranchInput, BranchSpec, BranchTokens, PaperLayout

TOKENS = BranchTokens.named("seg")

# Official architectures, for checkpoints that do not carry an encoder config
SAM = {
    "sam_vit_b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "sam_vit_l": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                      global_attn_indexes=[5, 11, 17, 23]),
    "sam_vit_h": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                      global_attn_indexes=[7, 15, 23, 31]),
}
SAM_DEFAULTS = dict(image_size=1024, patch_size=16, window_size=14, output_channels=256, mlp_ratio=4.0)
#: the shared fixtures' tiny SAM: 256 px, patch 4, so the neck map is still 64 x 64
TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=256, patch_size=4, window_size=14,
            global_attn_indexes=[1], output_channels=256, mlp_dim=64)


@lru_cache(maxsize=8)
def _processor(size: int):
    from transformers import SamImageProcessorPil

    return SamImageProcessorPil(size={"longest_edge": size}, pad_size={"height": size, "width": size})


class SamBranch(BranchSpec):
    name = "sam"
    tokens = TOKENS
    encoder = "sam_vit_l"
    description = "SAM image-encoder neck map through the 4x4 conv projector"
    placeholder = "<seg_image>"
    dataset_key = "seg_images"
    paper = PaperLayout(family="seg", encoder_ls="sam",
                        weights={"seg_model.": "encoder", "seg_projector.": "projector"},
                        inputs={"seg_images": "pixel_values"})

    def tiny_config(self, hidden_size: int) -> dict[str, Any]:
        return {"encoder": "sam_vit_b", "encoder_config": dict(TINY), "feature_dim": 256, "image_size": 256}

    def encoder_config_for(self, encoder: str) -> dict[str, Any] | None:
        return dict(SAM_DEFAULTS, **SAM[encoder]) if encoder in SAM else None

    def feature_dim(self, encoder_config, hidden_size: int) -> int:
        return int((encoder_config or {}).get("output_channels", 256))

    def _encoder_config(self, config) -> dict[str, Any]:
        return dict(config.encoder_config or self.encoder_config_for(config.encoder) or {})

    def placeholders(self, config) -> int:
        cfg = self._encoder_config(config)
        side = cfg.get("image_size", 1024) // cfg.get("patch_size", 16) // 4  # neck map side / conv stride
        return side * side

    def build_encoder(self, config):
        from perceive_sam.modeling import image_encoder

        cfg = self._encoder_config(config)
        hidden = cfg["hidden_size"]
        mlp = cfg.get("mlp_dim") or int(hidden * cfg.get("mlp_ratio", 4.0))
        return image_encoder(
            "custom", img_size=cfg["image_size"], patch_size=cfg["patch_size"], depth=cfg["num_hidden_layers"],
            embed_dim=hidden, num_heads=cfg["num_attention_heads"],
            global_attn_indexes=tuple(cfg["global_attn_indexes"]), window_size=cfg.get("window_size", 14),
            mlp_ratio=mlp / hidden, out_chans=cfg.get("output_channels", 256),
        )

    def build_projector(self, config, hidden_size: int, scale: int = 1):
        from perceive_sam.projector import SamProjector

        return SamProjector(hidden_size, scale, channels=config.feature_dim)

    def load_encoder_weights(self, encoder, weights: str) -> None:
        """An official segment-anything ``.pth``, loaded strictly."""
        from perceive_sam.modeling import load_official

        load_official(encoder, str(weights))

    def preprocess(self, image, config, model) -> BranchInput:
        t = _processor(config.image_size or 1024)(images=image, return_tensors="pt")["pixel_values"]
        return BranchInput({"pixel_values": t}, self.placeholders(config))

    def encode(self, encoder, inputs, model):
        w = next(encoder.parameters())
        return encoder(inputs["pixel_values"].to(w.dtype)), None

    def paper_config(self, folder, raw, hidden_size: int) -> dict[str, Any]:
        from perceive.reencode.weights import read_config_file

        f = folder / "sam_vision_config.json"
        cfg = read_config_file(f) if f.exists() else self.encoder_config_for("sam_vit_l")
        return {"encoder": "sam_vit_l", "encoder_config": cfg, "feature_dim": cfg.get("output_channels", 256),
                "image_size": cfg.get("image_size", 1024)}

    def convert_paper_weights(self, part, state, module):
        if part == "encoder":
            from perceive_sam.modeling import from_transformers_layout

            return from_transformers_layout(state)  # transformers' SAM layout -> segment_anything's
        return state
