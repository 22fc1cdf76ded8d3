"""The DINOv2 branch of a VPT model (the paper's "Det" family, vpt-paper.md §2.1-2.5): a
transformers ``Dinov2Model`` whose patch tokens (CLS dropped) go through the token projector.

Nothing heavy is imported at module level: the registry loads this module with the plugin.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from perceive.reencode import BranchInput, BranchSpec, BranchTokens, PaperLayout

TOKENS = BranchTokens.named("detection")

# Official architectures, for checkpoints that do not carry an encoder config
# (the paper's released models were built from hub ids).
DINOV2 = {
    "dinov2_small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "dinov2_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "dinov2_large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "dinov2_giant": dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True),
}
#: the shared fixtures' tiny DINOv2 (tests and ``model.add_branches`` without sizes)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4, patch_size=14, image_size=518)


@lru_cache(maxsize=8)
def _processor(crop: int):
    from perceive_dino.encoder import dinov2_processor

    return dinov2_processor(crop)


class DinoBranch(BranchSpec):
    name = "dino"
    tokens = TOKENS
    encoder = "dinov2_large"
    description = "DINOv2 patch tokens (CLS dropped) through the token projector"
    placeholder = "<detection_image>"
    dataset_key = "detection_images"
    paper = PaperLayout(family="detection", encoder_ls="dino",
                        weights={"detection_model.": "encoder", "detection_projector.": "projector"},
                        inputs={"detection_images": "pixel_values"})

    def tiny_config(self, hidden_size: int) -> dict[str, Any]:
        return {"encoder": "dinov2_small", "encoder_config": dict(TINY), "feature_dim": TINY["hidden_size"],
                "image_size": 224}

    def encoder_config_for(self, encoder: str) -> dict[str, Any] | None:
        if encoder in DINOV2:
            return dict(DINOV2[encoder], patch_size=14, image_size=518, mlp_ratio=4)
        return None

    def feature_dim(self, encoder_config, hidden_size: int) -> int:
        return int((encoder_config or {}).get("hidden_size", hidden_size))

    def _encoder_config(self, config) -> dict[str, Any]:
        return dict(config.encoder_config or self.encoder_config_for(config.encoder) or {})

    def placeholders(self, config) -> int:
        patch = self._encoder_config(config).get("patch_size", 14)
        return ((config.image_size or 224) // patch) ** 2

    def build_encoder(self, config):
        from transformers import Dinov2Config, Dinov2Model

        return Dinov2Model(Dinov2Config(**self._encoder_config(config)))

    def build_projector(self, config, hidden_size: int, scale: int = 1):
        from perceive.reencode.projectors import TokenProjector

        return TokenProjector(config.feature_dim, hidden_size, scale)

    def load_encoder_weights(self, encoder, weights: str) -> None:
        """A local transformers DINOv2 folder, loaded strictly."""
        from transformers import Dinov2Model

        from perceive.reencode.weights import strict_load

        src = Dinov2Model.from_pretrained(str(weights), local_files_only=True)
        strict_load(encoder, src.state_dict(), str(weights))

    def preprocess(self, image, config, model) -> BranchInput:
        t = _processor(config.image_size or 224)(images=image, return_tensors="pt")["pixel_values"]
        patch = self._encoder_config(config).get("patch_size", 14)
        return BranchInput({"pixel_values": t}, (t.shape[-1] // patch) ** 2)

    def encode(self, encoder, inputs, model):
        out = encoder(pixel_values=inputs["pixel_values"].to(encoder.dtype))
        return out.last_hidden_state[:, 1:], None

    def paper_config(self, folder, raw, hidden_size: int) -> dict[str, Any]:
        from perceive.reencode.weights import read_config_file

        f = folder / "dino_config.json"
        cfg = read_config_file(f) if f.exists() else self.encoder_config_for("dinov2_large")
        return {"encoder": "dinov2_large", "encoder_config": cfg, "feature_dim": cfg["hidden_size"], "image_size": 224}

    def convert_paper_weights(self, part, state, module):
        if part == "encoder" and module is not None and state:
            from perceive.reencode.weights import library_rename

            return library_rename(module, state)  # legacy attention keys, as transformers renames them
        return state
