"""Reading the paper's released checkpoints (vpt-paper.md §2.2, §2.3, §2.10).

Layout: ``config.json`` with ``model_type`` ``qwen2_vl_vpt`` or ``vrt_qwen2_vl`` (a flat
Qwen2-VL config plus the VPT fields), weights in ``pytorch_model*.bin`` shards with the legacy
key families ``model.*``, ``visual.*``, ``lm_head.*`` and each re-encode family's own. The
families are the registered branches that declare a :class:`~perceive.reencode.PaperLayout`:
``vision_encoder_ls`` names them, ``{family}_action_start_id`` (and ``_action_id``,
``_image_token_id``) give their ids, their key prefixes map to ``branches.<name>.encoder`` /
``.projector``, and each branch reads its own encoder architecture from the folder
(:meth:`~perceive.BranchSpec.paper_config`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from perceive.errors import ModelLoadError
from perceive.model.config import BranchConfig, RegionConfig, SpecialIds, VPTConfig
from perceive.reencode.weights import library_rename, read_config_file  # noqa: F401 - the plugin API; here as before
from perceive.vocabulary import REGION_END, REGION_START, Vocabulary

MODEL_TYPES = {"qwen2_vl_vpt", "vrt_qwen2_vl"}
VPT_FIELDS = {
    "alignment", "num_inner_forward_run", "para_mask_id", "para_mask_ratio", "para_start_id", "para_end_id",
    "projector_scale", "vision_encoder_ls",
}
#: a family's token-id fields (``{family}_action_start_id`` ...): VPT fields too, whatever the family
FAMILY_FIELD = re.compile(r"^[a-z][a-z0-9]*_(image_token_id|action_id|action_start_id)$")


def _registry(registry=None):
    from perceive.plugins import get_registry

    return registry or get_registry()


def paper_branches(registry=None) -> dict[str, tuple]:
    """``vision_encoder_ls`` name -> ``(spec, distribution)`` of every registered branch that
    declares a paper layout."""
    return {r.obj.paper.encoder_ls: (r.obj, r.dist) for r in _registry(registry).branches.values()
            if r.obj.paper is not None}


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
            if k not in VPT_FIELDS and not FAMILY_FIELD.match(k)
            and k not in ("architectures", "model_type", "transformers_version")}


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
    known = paper_branches()
    for ls in raw.get("vision_encoder_ls", []):
        if ls not in known:
            raise ModelLoadError(
                f"{path}/config.json lists the re-encode family {ls!r} (vision_encoder_ls), but no installed plugin "
                f"registers a branch for it",
                hint=f"install the perceive plugin whose branch declares PaperLayout(encoder_ls={ls!r}); "
                     f"installed: {sorted(known) or 'none'}")
        spec, dist = known[ls]
        start, act, pad = (raw.get(f) for f in spec.paper.config_fields())
        if None in (start, act, pad):
            raise ModelLoadError(f"{path}/config.json lists {ls!r} but lacks its token ids")
        end = tokens.get(spec.tokens.end, act + 1)  # released models add start, action, end in order
        fields = spec.paper_config(path, raw, hidden)
        branches[spec.name] = BranchConfig(action=spec.name, **fields, start_id=start, action_id=act, end_id=end,
                                           pad_id=pad, plugin=dist)
    return VPTConfig(
        base="qwen2_vl", hidden_size=hidden, special=special, region=region, branches=branches,
        num_inner_forward_run=raw.get("num_inner_forward_run", 2), projector_scale=raw.get("projector_scale", 1),
        para_mask_id=raw.get("para_mask_id", 0) or 0, para_mask_ratio=raw.get("para_mask_ratio", 0.0) or 0.0,
    )


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


def convert_state(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Paper keys -> :class:`~perceive.model.vpt.VPTModel` keys: each registered branch's paper
    prefixes (:class:`~perceive.reencode.PaperLayout` ``weights``) become ``branches.<name>.<part>.``,
    converted by the branch (:meth:`~perceive.BranchSpec.convert_paper_weights`). Keys of no known
    family pass through unchanged, so the strict load reports them as unexpected."""
    out: dict[str, torch.Tensor] = {}
    rest = dict(state)
    for spec, _ in paper_branches().values():
        for prefix, part in spec.paper.weights.items():
            group = {k[len(prefix):]: rest.pop(k) for k in list(rest) if k.startswith(prefix)}
            if not group:
                continue
            branch = model.branches[spec.name] if spec.name in model.branches else None
            group = spec.convert_paper_weights(part, group, None if branch is None else getattr(branch, part))
            out.update({f"branches.{spec.name}.{part}.{k}": v for k, v in group.items()})
    base = {k: rest.pop(k) for k in list(rest) if k.split(".")[0] in ("model", "visual", "lm_head")}
    out.update({f"base.{k}": v for k, v in library_rename(model.base, base).items()})
    out.update(rest)
    return out


__all__ = ["MODEL_TYPES", "convert_state", "is_paper_checkpoint", "library_rename", "paper_branches",
           "read_config_file", "read_state", "vpt_config"]
