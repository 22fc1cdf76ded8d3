"""The VPT model: a stock transformers Qwen2-VL / Qwen2.5-VL with perception branches beside it.

Composition, not a fork: ``base`` is an unmodified ``Qwen2VLForConditionalGeneration`` (or
Qwen2.5-VL) and ``branches`` holds one :class:`~perceive.model.branches.Branch` per re-encode
action (its encoder and the paper's projector). :meth:`VPTModel.forward` is the paper's
training forward (vpt-paper.md §2.6-2.8); the online loop (``perceive.loop``) uses the small
building blocks (:meth:`embed`, :meth:`image_embeds`, :meth:`project`, :meth:`lm`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from perceive.model.branches import Branch
from perceive.model.config import VPTConfig

IGNORE_INDEX = -100

# paper input names of each branch's extra images
EXTRA_INPUTS = {"dino": "detection_images", "sam": "seg_images", "native": "clip_pixel_values"}


@dataclass
class VPTOutput:
    """``logits`` (B, L, V) float32; ``hidden`` the last pass's final-norm states (B, L, d);
    ``first_hidden`` the first pass's (two-pass only); ``controls[action]`` the control vectors
    (one row per action token, row-major); ``projected[action]`` the (unconditioned, conditioned)
    projector outputs."""

    logits: torch.Tensor
    hidden: torch.Tensor
    loss: torch.Tensor | None = None
    first_hidden: torch.Tensor | None = None
    controls: dict[str, torch.Tensor] = field(default_factory=dict)
    projected: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)


class VPTModel(nn.Module):
    def __init__(self, base: nn.Module, config: VPTConfig, branches: dict[str, Branch] | None = None):
        super().__init__()
        self.base = base
        self.config = config
        if branches is None:
            branches = {name: Branch.build(b, config.hidden_size, config.projector_scale)
                        for name, b in config.branches.items()}
        self.branches = nn.ModuleDict(branches)
        self.tokenizer = None  # set by the loader when the checkpoint has one
        self.image_processor = None  # the first image
        self.view_image_processor = None  # crops and other views (None: the same as the first image)

    # -- parts of the stock model ---------------------------------------------------------

    @property
    def language_model(self) -> nn.Module:
        return self.base.model.language_model

    @property
    def visual(self) -> nn.Module:
        return self.base.model.visual

    @property
    def lm_head(self) -> nn.Module:
        return self.base.lm_head

    @property
    def spatial_merge_size(self) -> int:
        return int(self.base.config.vision_config.spatial_merge_size)

    @property
    def max_positions(self) -> int:
        """The language model's context: ``max_position_embeddings`` of its text config."""
        cfg = self.base.config
        return int(getattr(getattr(cfg, "text_config", None), "max_position_embeddings", None)
                   or cfg.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def view_pixels(self, image):
        """Pixel patches and ``(t, h, w)`` grid of a view (any image after the first), as the
        model was trained to see it: resized by ``config.view_scale`` (bicubic) when set, then the
        view processor. Training (the collator) and the loop both call this."""
        from perceive.images import rescale

        if self.config.view_scale is not None:
            image = rescale(image, self.config.view_scale)
        inputs = (self.view_image_processor or self.image_processor)(images=[image], return_tensors="pt")
        return inputs["pixel_values"], inputs["image_grid_thw"][0]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings, ``(..., d)``."""
        return self.base.get_input_embeddings()(input_ids)

    def image_embeds(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """The vision tower's merged tokens for Qwen2-VL patches: ``(sum t*h*w/4, d)``."""
        out = self.visual(pixel_values.to(self.visual.dtype), grid_thw=grid_thw)
        return getattr(out, "pooler_output", out).to(self.dtype)

    def encode_extra(self, action: str, images: torch.Tensor, grid_thw: torch.Tensor | None = None):
        """Raw features of preprocessed extra images. dino: ``(N, 256, C)`` (CLS dropped); sam:
        ``(N, 256, 64, 64)``; native: ``(sum T_i, d)`` plus per-image sizes."""
        branch = self.branches[action]
        if action == "dino":
            out = branch.encoder(pixel_values=images.to(branch.encoder.dtype))
            return out.last_hidden_state[:, 1:].to(self.dtype), None
        if action == "sam":
            w = next(branch.encoder.parameters())
            return branch.encoder(images.to(w.dtype)).to(self.dtype), None
        sizes = (grid_thw.prod(-1) // self.spatial_merge_size**2).tolist()
        return self.image_embeds(images, grid_thw), sizes

    def project(self, action: str, features: torch.Tensor, control: torch.Tensor | None = None,
                sizes: list[int] | None = None) -> torch.Tensor:
        """Projector output ``(num_placeholders_total, d)``; ``control`` is ``(N, d*s)`` or None."""
        proj = self.branches[action].projector
        if control is not None:
            control = control.reshape(-1, self.config.projector_scale * self.config.hidden_size)
        if action == "native":
            return proj(features, control, sizes)
        return proj(features, control)

    def lm(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor | None = None,
           attention_mask: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False):
        """Run the language model; returns its output (``last_hidden_state`` after the final norm)."""
        # transformers' keyword is `cache` (`past_key_values` warns, and goes in 5.40)
        return self.language_model(inputs_embeds=inputs_embeds, position_ids=position_ids,
                                   attention_mask=attention_mask, cache=past_key_values, use_cache=use_cache)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def load_branch_encoder(self, action: str, weights: str) -> None:
        """Load encoder weights into a branch from local files: an official segment-anything
        ``.pth`` for ``sam``; a transformers DINOv2 folder for ``dino``. Strict."""
        from pathlib import Path

        from perceive.model.checkpoint import strict_load

        enc = self.branches[action].encoder
        if action == "sam":
            from perceive.model.sam import load_official

            load_official(enc, str(weights))
        elif action == "dino":
            from transformers import Dinov2Model

            src = Dinov2Model.from_pretrained(str(Path(weights)), local_files_only=True)
            strict_load(enc, src.state_dict(), str(weights))
        else:
            raise ValueError(f"the {action} branch has no separate encoder weights")

    # -- the paper's training forward -----------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, image_grid_thw: torch.Tensor | None = None,
                detection_images: torch.Tensor | None = None, seg_images: torch.Tensor | None = None,
                clip_pixel_values: torch.Tensor | None = None, clip_images_grid_thw: torch.Tensor | None = None,
                num_inner_forward_run: int | None = None, para_mask_id: int | None = None,
                para_mask_ratio: float | None = None, generator: torch.Generator | None = None,
                reference_no_grad: bool = False) -> VPTOutput:
        """vpt-paper.md §2.6. ``input_ids`` (B, L); ``position_ids`` (3, B, L) M-RoPE or None
        (then 0..L-1 on every axis, as the reference's training does). Extra images are
        preprocessed tensors: ``detection_images`` (N, 3, 224, 224), ``seg_images`` (N, 3, S, S),
        ``clip_pixel_values`` Qwen2-VL patches with ``clip_images_grid_thw``.

        Gradients reach the token embeddings and the encoders whenever their parameters require
        them. ``reference_no_grad`` computes those under ``no_grad`` as the reference does (§2.6
        step 0): then they never train, whatever is frozen. Outputs are the same either way."""
        cfg = self.config
        run = num_inner_forward_run or cfg.num_inner_forward_run
        extras = {"dino": detection_images, "sam": seg_images, "native": clip_pixel_values}
        # The reference's quirk: a model trained from scratch under it keeps a random vision tower.
        with torch.no_grad() if reference_no_grad else contextlib.nullcontext():
            embeds = self.embed(input_ids)
            if pixel_values is not None:
                img = self.image_embeds(pixel_values, image_grid_thw)
                embeds = _scatter(embeds, input_ids == cfg.special.image_pad, img)
            feats = {}
            for action, images in extras.items():
                if images is not None:
                    if action not in self.branches:
                        raise ValueError(f"{EXTRA_INPUTS[action]} given but the model has no {action} branch")
                    grid = clip_images_grid_thw if action == "native" else None
                    feats[action] = self.encode_extra(action, images, grid)
        out = VPTOutput(logits=None, hidden=None)  # type: ignore[arg-type]
        first = embeds
        for action, (f, sizes) in feats.items():
            p0 = self.project(action, f, None, sizes)
            out.projected[action] = (p0, None)
            first = _scatter(first, input_ids == cfg.branches[action].pad_id, p0)
        has_action = any(bool((input_ids == b.action_id).any()) for b in cfg.branches.values())
        if run == 2 and not has_action and not feats:
            run = 1  # nothing to condition: the second pass would repeat the first exactly (§6.2 #7)
        if run == 1:
            hidden = self.lm(first, position_ids, attention_mask).last_hidden_state
        else:
            h1 = self.lm(first, position_ids, attention_mask).last_hidden_state
            out.first_hidden = h1
            second = embeds
            action_rows = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            action_masks = {}
            for name, b in cfg.branches.items():
                is_action = input_ids == b.action_id
                if not is_action.any():
                    if name in feats:
                        raise ValueError(f"{name} features given but no {name} action token in the batch")
                    continue
                # the control signal: final-norm state of the token *before* each action token
                before = torch.zeros_like(is_action)
                before[:, :-1] = is_action[:, 1:]
                control = h1[before]
                out.controls[name] = control
                action_masks[name] = (is_action, control)
                action_rows |= is_action.any(-1)
                if name in feats:
                    f, sizes = feats[name]
                    p2 = self.project(name, f, control, sizes)
                    out.projected[name] = (out.projected[name][0], p2)
                    second = _scatter(second, input_ids == b.pad_id, p2)
            mask_id = cfg.para_mask_id if para_mask_id is None else para_mask_id
            ratio = cfg.para_mask_ratio if para_mask_ratio is None else para_mask_ratio
            if mask_id and feats and torch.rand(1, generator=generator).item() < ratio:
                second = paragraph_mask(second, input_ids, action_rows, cfg.special.im_start,
                                        cfg.special.im_end, [1] if mask_id == 1 else [1, 3])
            for is_action, control in action_masks.values():
                second = _scatter(second, is_action, control)
            hidden = self.lm(second, position_ids, attention_mask).last_hidden_state
        out.hidden = hidden
        out.logits = self.logits(hidden)
        if labels is not None:
            out.loss = causal_lm_loss(out.logits, labels)
        return out


def _scatter(embeds: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Place ``values`` (n, d) at the ``mask`` positions (row-major), out of place."""
    n = int(mask.sum())
    if values.shape[0] != n:
        raise ValueError(f"{values.shape[0]} feature rows for {n} placeholder tokens")
    return embeds.masked_scatter(mask.unsqueeze(-1), values.to(embeds.dtype))


def paragraph_mask(embeds: torch.Tensor, input_ids: torch.Tensor, rows: torch.Tensor, start_id: int,
                   end_id: int, pairs: list[int]) -> torch.Tensor:
    """Zero the embeddings strictly between the k-th ``start_id`` and k-th ``end_id`` (k in
    ``pairs``, 0-based) of every selected row (vpt-paper.md §2.7). The attention mask is kept."""
    keep = torch.ones(embeds.shape[:2], dtype=embeds.dtype, device=embeds.device)
    for r in rows.nonzero().flatten().tolist():
        starts = (input_ids[r] == start_id).nonzero().flatten().tolist()
        ends = (input_ids[r] == end_id).nonzero().flatten().tolist()
        for k in pairs:
            if k < len(starts) and k < len(ends):
                keep[r, starts[k] + 1:ends[k]] = 0
    return embeds * keep.unsqueeze(-1)


def mask_action_labels(labels: torch.Tensor, input_ids: torch.Tensor, config: VPTConfig) -> torch.Tensor:
    """vpt-paper.md §2.8: the middle action token of every re-encode family is never a target
    (the start and end tokens stay supervised). Returns a new tensor."""
    labels = labels.clone()
    for b in config.branches.values():
        labels[input_ids == b.action_id] = IGNORE_INDEX
    return labels


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labels != -100."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX)
