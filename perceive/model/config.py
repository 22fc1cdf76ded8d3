"""The VPT model's own config (``perceive.json`` in a checkpoint folder).

Names the perception token ids, the branches (one per re-encode action, each provided by the
plugin that registers it, see :mod:`perceive.reencode.branch_spec`) and the projector settings. The
base MLLM's config lives beside it in standard transformers layout.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from perceive.strict import StrictModel


class BranchConfig(StrictModel):
    """One re-encode branch: its tokens, its encoder and its projector. ``action`` names the
    branch (and the features action it serves); the plugin that registers a branch of that name
    (``perceive_register_branches``) builds its modules."""

    action: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    encoder: str  # registry name of the encoder it was trained with
    #: architecture of the encoder module stored in the checkpoint, as the branch's plugin reads
    #: it; None for a branch without an encoder module of its own
    encoder_config: dict[str, Any] | None = None
    feature_dim: int  # C of the encoder output fed to the projector
    image_size: int | None = None  # encoder input side
    start_id: int
    action_id: int
    end_id: int
    pad_id: int
    #: the distribution that provided the branch when the model was saved (for the error message
    #: when it is not installed); None: not recorded
    plugin: str | None = None


class RegionConfig(StrictModel):
    start_id: int
    end_id: int
    x_ids: list[int]
    y_ids: list[int]

    @property
    def grid(self) -> int:
        return len(self.x_ids)


class SpecialIds(StrictModel):
    """Ids of the chat template's structural tokens."""

    im_start: int
    im_end: int
    image_pad: int
    vision_start: int
    vision_end: int
    newline: int | None = None  # id of "\n" when it is a single token (tiny tokenizers)
    eos: list[int] = Field(default_factory=list)


class PromptConventions(StrictModel):
    """The trigger prompts (text appended to the question) a model was trained with; ``None``: it
    was trained without one and decides by itself (see :mod:`perceive.prompts`)."""

    region: str | None
    reencode: str | None


class VPTConfig(StrictModel):
    format: Literal["perceive-vpt"] = "perceive-vpt"
    version: int = 1
    base: Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl"] = "qwen2_vl"
    hidden_size: int
    special: SpecialIds
    region: RegionConfig | None = None
    branches: dict[str, BranchConfig] = Field(default_factory=dict)
    #: 1 = single pass (projector alignment), 2 = the paper's two-pass forward
    num_inner_forward_run: Literal[1, 2] = 2
    projector_scale: int = Field(1, ge=1)
    para_mask_id: Literal[0, 1, 2] = 0
    para_mask_ratio: float = Field(0.0, ge=0, le=1)
    #: every view (each image after the first) is resized by this factor before the image
    #: processor, so a crop is seen at one fixed zoom whatever its size; None: the processor's
    #: pixel bounds alone decide
    view_scale: float | None = Field(None, gt=0)
    #: options the model was trained with, per action (``{"region_select": {"margin": 0}}``);
    #: a run's config overrides them
    action_defaults: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: rotary positions of image tokens: Qwen2-VL's 3-D M-RoPE, or one 1-D index per token as the
    #: reference trains (see ``perceive.model.positions``); training and inference use the same
    positions: Literal["mrope", "sequential"] = "mrope"
    #: trigger prompts the model was trained with; None: not declared (the paper's are assumed)
    prompts: PromptConventions | None = None
    #: the view actions whose observations the model was trained to read (``["region_select"]``);
    #: a graph that forces another on it is refused. None: not declared
    views: list[str] | None = None
    #: the tool-call protocol the model was trained to speak, ``{"name": ..., "options": {...}}``
    #: (``protocol: auto`` reads it); None: not declared (a VPT model speaks ``vpt``)
    protocol: dict[str, Any] | None = None

    def branch_for_token(self, token_id: int) -> BranchConfig | None:
        for b in self.branches.values():
            if token_id in (b.start_id, b.action_id, b.end_id):
                return b
        return None
