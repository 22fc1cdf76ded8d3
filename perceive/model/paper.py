"""Reading the paper's released checkpoints (vpt-paper.md §2.2, §2.3, §2.10).

Layout: ``config.json`` with ``model_type`` ``qwen2_vl_vpt`` or ``vrt_qwen2_vl`` (a flat
Qwen2-VL config plus the VPT fields), weights in ``pytorch_model*.bin`` shards with the legacy
key families ``model.*``, ``visual.*``, ``lm_head.*``, ``detection_model.*`` /
``detection_projector.*``, ``seg_model.*`` (transformers' SAM layout) / ``seg_projector.*``,
``clip_projector.*``. Encoder architectures come from ``dino_config.json`` /
``sam_vision_config.json`` beside it when present, else the paper's (DINOv2-L, SAM ViT-L).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from perceive.errors import ModelLoadError
from perceive.model.branches import default_encoder_config
from perceive.model.config import FAMILY_ACTION, BranchConfig, RegionConfig, SpecialIds, VPTConfig
from perceive.model.sam import from_transformers_layout
from perceive.vocabulary import FAMILIES, REGION_END, REGION_START, Vocabulary

MODEL_TYPES = {"qwen2_vl_vpt", "vrt_qwen2_vl"}
VPT_FIELDS = {
    "alignment", "num_inner_forward_run", "para_mask_id", "para_mask_ratio", "para_start_id", "para_end_id",
    "projector_scale", "vision_encoder_ls",
    *(f"{fam}_{f}" for fam in ("detection", "seg", "clip") for f in ("image_token_id", "action_id", "action_start_id")),
}
ENCODER_OF = {"dino": "dinov2_large", "sam": "sam_vit_l", "native": "native"}
LS_ACTION = {"dino": "dino", "sam": "sam", "clip": "native"}


def is_paper_checkpoint(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        return False
    return json.loads(cfg.read_text()).get("model_type") in MODEL_TYPES


def token_table(path: Path) -> dict[str, int]:
    """Token string -> id from the checkpoint's tokenizer files or a ``tokens.json`` table."""
    table: dict[str, int] = {}
    tj = path / "tokens.json"
    if tj.exists():
        table.update(json.loads(tj.read_text()).get("special_tokens", {}))
    tok = path / "tokenizer.json"
    if tok.exists():
        data = json.loads(tok.read_text())
        table.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    return table


def base_config_dict(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items()
            if k not in VPT_FIELDS and k not in ("architectures", "model_type", "transformers_version")}


def vpt_config(path: Path, raw: dict[str, Any]) -> VPTConfig:
    tokens = token_table(path)
    hidden = raw.get("hidden_size") or raw.get("text_config", {}).get("hidden_size")
    eos = raw.get("eos_token_id")
    special = SpecialIds(
        im_start=raw.get("para_start_id") or tokens.get("<|im_start|>", 151644),
        im_end=raw.get("para_end_id") or tokens.get("<|im_end|>", 151645),
        image_pad=raw["image_token_id"], vision_start=raw["vision_start_token_id"],
        vision_end=raw["vision_end_token_id"], eos=[eos] if isinstance(eos, int) else list(eos or []),
    )
    region = None
    v = Vocabulary(8)
    if all(t in tokens for t in (REGION_START, REGION_END, *v.x_tokens, *v.y_tokens)):
        region = RegionConfig(start_id=tokens[REGION_START], end_id=tokens[REGION_END],
                              x_ids=[tokens[t] for t in v.x_tokens], y_ids=[tokens[t] for t in v.y_tokens])
    branches = {}
    for ls in raw.get("vision_encoder_ls", []):
        action = LS_ACTION[ls]
        family = {"dino": "detection", "sam": "seg", "native": "clip"}[action]
        start = raw.get(f"{family}_action_start_id")
        act = raw.get(f"{family}_action_id")
        pad = raw.get(f"{family}_image_token_id")
        if None in (start, act, pad):
            raise ModelLoadError(f"{path}/config.json lists {ls!r} but lacks its token ids")
        end = tokens.get(FAMILIES[family][2], act + 1)  # released models add start, action, end in order
        enc_cfg, feature_dim, size = None, hidden, None
        if action == "dino":
            f = path / "dino_config.json"
            enc_cfg = _clean(json.loads(f.read_text())) if f.exists() else default_encoder_config("dinov2_large")
            feature_dim, size = enc_cfg["hidden_size"], 224
        elif action == "sam":
            f = path / "sam_vision_config.json"
            enc_cfg = _clean(json.loads(f.read_text())) if f.exists() else default_encoder_config("sam_vit_l")
            feature_dim, size = enc_cfg.get("output_channels", 256), enc_cfg.get("image_size", 1024)
        branches[action] = BranchConfig(action=action, encoder=ENCODER_OF[action], encoder_config=enc_cfg,
                                        feature_dim=feature_dim, image_size=size, start_id=start, action_id=act,
                                        end_id=end, pad_id=pad)
    return VPTConfig(
        base="qwen2_vl", hidden_size=hidden, special=special, region=region, branches=branches,
        num_inner_forward_run=raw.get("num_inner_forward_run", 2), projector_scale=raw.get("projector_scale", 1),
        para_mask_id=raw.get("para_mask_id", 0) or 0, para_mask_ratio=raw.get("para_mask_ratio", 0.0) or 0.0,
    )


def _clean(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in ("transformers_version", "architectures", "model_type",
                                                      "_name_or_path", "torch_dtype", "dtype")}


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """Every ``pytorch_model*.bin`` shard merged (safe loading: tensors only)."""
    shards = sorted(path.glob("pytorch_model*.bin"))
    if not shards:
        raise ModelLoadError(f"no pytorch_model*.bin in {path}",
                             hint="the paper's checkpoints ship .bin shards; is this the right folder?")
    state: dict[str, torch.Tensor] = {}
    for s in shards:
        state.update(torch.load(s, map_location="cpu", weights_only=True))
    return state


def library_rename(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename legacy keys the way transformers' ``from_pretrained`` does for ``module``
    (e.g. Qwen2-VL ``model.*`` -> ``model.language_model.*``, DINOv2 ``attention.attention.query``
    -> ``attention.q_proj``), using the library's own conversion mapping."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    transforms = get_model_conversion_mapping(module)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    out = {}
    for k, v in state.items():
        new, pattern = rename_source_key(k, renamings, converters)
        if pattern is not None:  # a tensor-changing conversion: not expected for these models
            raise ModelLoadError(f"key {k!r} needs a weight conversion perceive does not apply")
        out[new] = v
    return out


# paper prefix -> (VPTModel prefix, attribute path of the module whose renamings apply)
_GROUPS = [
    ("detection_model.", "branches.dino.encoder.", "branches.dino.encoder"),
    ("detection_projector.", "branches.dino.projector.", None),
    ("seg_projector.", "branches.sam.projector.", None),
    ("clip_projector.", "branches.native.projector.", None),
]


def convert_state(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Paper keys -> :class:`~perceive.model.vpt.VPTModel` keys. Keys of no known family pass
    through unchanged, so the strict load reports them as unexpected."""
    out: dict[str, torch.Tensor] = {}
    rest = dict(state)
    sam = {k[len("seg_model."):]: rest.pop(k) for k in list(rest) if k.startswith("seg_model.")}
    out.update({f"branches.sam.encoder.{k}": v for k, v in from_transformers_layout(sam).items()})
    for old, new, owner in _GROUPS:
        group = {k[len(old):]: rest.pop(k) for k in list(rest) if k.startswith(old)}
        if owner is not None and group:
            group = library_rename(model.get_submodule(owner), group)
        out.update({new + k: v for k, v in group.items()})
    base = {k: rest.pop(k) for k in list(rest) if k.split(".")[0] in ("model", "visual", "lm_head")}
    out.update({f"base.{k}": v for k, v in library_rename(model.base, base).items()})
    out.update(rest)
    return out


__all__ = ["FAMILY_ACTION", "MODEL_TYPES", "convert_state", "is_paper_checkpoint", "read_state", "vpt_config"]
