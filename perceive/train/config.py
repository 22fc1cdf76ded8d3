"""Training config (YAML), validated like every perceive config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator

from perceive.config import ProtocolConfig, format_validation_error
from perceive.data.skipped import DEFAULT_MAX_SKIPPED_FRACTION
from perceive.errors import ConfigError
from perceive.model.config import PromptConventions
from perceive.strict import StrictModel


def installed_branch(name: str) -> str:
    """``name`` if an installed plugin registers a re-encode branch of that name, else a
    ``ValueError`` (a config error naming the field) with the installed ones."""
    from perceive.errors import did_you_mean
    from perceive.plugins import get_registry

    branches = get_registry().branches
    if name not in branches:
        hint = did_you_mean(name, branches)
        raise ValueError(f"no installed plugin provides a re-encode branch {name!r}"
                         + (f"; {hint}" if hint else "") + f" (installed: {', '.join(branches) or 'none'})")
    return name


class TinyModel(StrictModel):
    """A from-scratch Qwen2-VL-architecture model (no pretrained weights needed)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vision_depth: int = 2
    vision_dim: int = 32
    vision_heads: int = 2
    #: re-encode branches it starts with (names of installed branches), at their tiny sizes
    branches: list[str] = Field(default_factory=list)
    image_max_pixels: int = 112 * 112  # the full image
    view_max_pixels: int = 112 * 112  # crops and other views
    image_min_pixels: int = 28 * 28
    view_min_pixels: int = 28 * 28  # raise it to upscale small crops (digits span more patches)
    #: the language model's RoPE base. M-RoPE gives the image's columns the lowest frequencies;
    #: with 10000 and a 32-wide head, four columns of tokens are almost indistinguishable
    rope_theta: float = Field(10000.0, gt=1)
    #: Qwen2-VL's spatial_merge_size: 2x2 patches per language-model token (2), or one patch (1),
    #: so that at 112x112 each token is one cell of the 8x8 region grid
    merge: Literal[1, 2] = 2
    seed: int = 0

    @field_validator("branches")
    @classmethod
    def _installed(cls, names: list[str]) -> list[str]:
        return [installed_branch(n) for n in names]


class NewBranch(StrictModel):
    """A re-encode branch added to a checkpoint: its encoder and projector start random and
    train with the model. ``action``: an installed branch (its plugin registers it).
    ``encoder_config`` sizes the encoder, in the form the branch's plugin reads (None: the
    plugin's tiny test sizes, or the official sizes of ``encoder`` when given); ``encoder`` is the
    registered encoder name the model records; ``image_size`` is its input side."""

    action: str
    encoder: str | None = None
    encoder_config: dict[str, Any] | None = None
    image_size: int | None = None

    @field_validator("action")
    @classmethod
    def _installed(cls, name: str) -> str:
        return installed_branch(name)


class ModelSource(StrictModel):
    path: Path | None = None  # a local checkpoint to start from
    tiny: TinyModel | None = None  # or build one
    #: override the checkpoint's processors (curriculum stages that change resolutions)
    image_pixels: tuple[int, int] | None = None  # (min, max) for the first image
    view_pixels: tuple[int, int] | None = None  # (min, max) for crops and other views
    #: resize every view by this factor before its processor (stored in the model's perceive.json)
    view_scale: float | None = Field(None, gt=0)
    #: action options the model is trained for, e.g. {region_select: {margin: 0}} (stored likewise)
    action_defaults: dict[str, dict[str, Any]] | None = None
    add_branches: list[NewBranch] = Field(default_factory=list)
    #: a new RoPE base for the language model (see TinyModel.rope_theta); the weights are kept
    rope_theta: float | None = Field(None, gt=1)


class DataConfig(StrictModel):
    train: Path
    eval: Path | None = None
    policy: Literal["skip", "reject"] = "skip"
    max_eval_samples: int = 200
    #: with ``policy: skip``, the share of a set's items (train and eval alike) that may be skipped
    #: before training refuses to start: more is a broken set (say, a data file moved away from
    #: its images), not a few bad items
    max_skipped_fraction: float = Field(DEFAULT_MAX_SKIPPED_FRACTION, ge=0, le=1)


class OptimConfig(StrictModel):
    steps: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 0


class LoraConfig(StrictModel):
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class TrainConfig(StrictModel):
    """``stage``: ``alignment`` trains only the projectors with one pass; ``instruct`` runs the
    two-pass forward with the paragraph mask. ``freeze`` lists module-name prefixes kept fixed
    (``base.model.visual``, ``branches.NAME.encoder``, ...); ``trainable`` (if set) lists the only
    prefixes that train."""

    #: ``sft``: supervised (spans in the data); ``grpo``: reinforcement learning from rewards
    #: (:class:`perceive.rl.config.GRPOConfig`, whose fields the loader adds)
    method: Literal["sft"] = "sft"
    model: ModelSource
    data: DataConfig
    stage: Literal["alignment", "instruct"] = "instruct"
    optim: OptimConfig = Field(default_factory=OptimConfig)
    freeze: list[str] = Field(default_factory=list)
    trainable: list[str] | None = None
    lora: LoraConfig | None = None
    para_mask_id: Literal[0, 1, 2] = 1
    para_mask_ratio: float = 0.5
    #: True: the token-embedding lookup and every encoder run under no_grad, as in the reference
    #: (vpt-paper.md §2.6 step 0), so they stay fixed whatever ``freeze`` says. False: ``freeze``
    #: and ``trainable`` alone decide (a model trained from scratch needs its vision tower to learn)
    reference_no_grad: bool = False
    #: image-token positions; None: the model's own (``perceive.json``). Setting it stores it in
    #: the model, so the loop runs the model with the positions it was trained with
    positions: Literal["mrope", "sequential"] | None = None
    #: the trigger prompts the training data appends to questions (``{region: null, reencode:
    #: null}`` for data without them); stored in the model so graphs use the same. None: keep the
    #: model's own
    prompts: PromptConventions | None = None
    #: the view actions the training data shows (stored in the model, as ``prompts``)
    views: list[str] | None = None
    #: the tool-call protocol the training data's calls are written in (stored in the model's
    #: perceive.json, where ``protocol: auto`` reads it). None: keep the model's own
    protocol: ProtocolConfig | None = None
    precision: Literal["auto", "no", "bf16"] = "auto"
    output: Path = Path("runs/train")
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end
    num_workers: int = 0
    #: the file the config was read from (None: built in Python), for error messages
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> str:
        return str(self._source) if self._source is not None else "the training config"


def load_train_config(path: str | Path, *, overrides=(), cls: type[TrainConfig] | None = None,
                      **fields: Any) -> TrainConfig:
    """A training config, its ``extends`` chain merged (see :mod:`perceive.config.files`), then
    ``overrides`` (``--set``) and top-level ``fields``. Relative paths resolve against the folder
    of the file that wrote them (the working folder for ones from the command line). ``cls``: the
    schema (a subclass for another method; :func:`perceive.rl.config.load_training_config` picks
    it from ``method:``)."""
    from perceive.config import compose, rebase_paths

    cls = cls or TrainConfig
    data = compose(path, overrides)
    if cls is TrainConfig and data.get("method") == "grpo":
        raise ConfigError(f"{path}: method: grpo is a reinforcement-learning config",
                          hint="run it with `perceive train` (perceive.rl.config.load_training_config reads it)")
    try:
        cfg = cls.model_validate({**data, **fields})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), data, cls)) from None
    rebase_paths(cfg, data, [("data", "train"), ("data", "eval"), ("model", "path"), ("output",)], Path(path).parent)
    cfg._source = Path(path)
    return cfg
